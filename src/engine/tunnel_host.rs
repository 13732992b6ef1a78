//! The Host check at the front of a [`Tunnel`](super::tunnel::Tunnel): a
//! web page on another site can make the browser connect to our local port
//! by pointing its own name at 127.0.0.1 (DNS rebinding), and would then
//! read Consul's API. Its requests still carry its own name in `Host`, so a
//! connection is carried only when its first request names the address we
//! listen on, `localhost`, or (when listening on every address) any IP
//! literal: names an attacker's DNS cannot answer for.
//!
//! A browser keeps a connection to one origin, so the first request's
//! `Host` stands for the connection's.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most a request head may take before it counts as malformed.
const MAX_HEAD: usize = 16 * 1024;

/// Read `client`'s first request head and return the bytes read when its
/// `Host` is acceptable for a listener on `local`; otherwise answer 403
/// (400 for no readable head) and return `None`.
pub async fn admit(client: &mut TcpStream, local: SocketAddr) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let host = loop {
        let n = client.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                break request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_string);
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => continue,
            _ => {
                refuse(client, "400 Bad Request", "not an HTTP request\n").await;
                return None;
            }
        }
    };
    match host {
        Some(h) if host_allowed(&h, local) => Some(head),
        _ => {
            refuse(
                client,
                "403 Forbidden",
                "this tunnel answers requests for its own address or localhost only\n",
            )
            .await;
            None
        }
    }
}

async fn refuse(client: &mut TcpStream, status: &str, body: &str) {
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// Whether a `Host` value (`name`, `name:port`, `[v6]:port`) names the
/// listener on `local`.
pub fn host_allowed(host: &str, local: SocketAddr) -> bool {
    let host = host.trim();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((name, after)) => (name, after.strip_prefix(':')),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if port.parse::<u16>().ok() != Some(local.port()) {
            return false;
        }
    }
    let listening = local.ip();
    if name.eq_ignore_ascii_case("localhost") {
        return listening.is_loopback() || listening.is_unspecified();
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => {
            ip == listening
                || (listening.is_unspecified() && !ip.is_unspecified())
                || (listening.is_loopback() && ip.is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_the_listening_address_and_localhost_pass_never_a_foreign_name() {
        let lo = "127.0.0.1:8500".parse().unwrap();
        assert!(host_allowed("127.0.0.1:8500", lo));
        assert!(host_allowed("localhost:8500", lo));
        assert!(host_allowed("localhost", lo));
        assert!(!host_allowed("evil.example", lo));
        assert!(!host_allowed("evil.example:8500", lo));
        assert!(!host_allowed("127.0.0.1:8501", lo));
        assert!(!host_allowed("10.0.0.5:8500", lo));
        let one = "10.0.0.5:8500".parse().unwrap();
        assert!(host_allowed("10.0.0.5:8500", one));
        assert!(!host_allowed("localhost:8500", one));
        assert!(!host_allowed("stage.example:8500", one));
        let all = "0.0.0.0:8500".parse().unwrap();
        assert!(host_allowed("192.168.1.20:8500", all));
        assert!(host_allowed("[::1]:8500", all));
        assert!(!host_allowed("evil.example:8500", all));
    }
}
