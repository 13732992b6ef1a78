//! The token a [`Tunnel`](super::tunnel::Tunnel) adds to every request it
//! carries, so that a browser on the local port (Consul's UI) acts with a
//! token nobody has to paste, and nothing but the tunnel ever holds it.
//!
//! HTTP/1.1 requests follow each other on a kept-alive connection, so each
//! request head is found in the client's bytes, rewritten with the token
//! (any `X-Consul-Token` the client sent is dropped: the tunnel decides who
//! it acts as), and its body passed on by its `Content-Length`. A chunked
//! body, which Consul's UI never sends, ends the rewriting: the rest of
//! that connection is carried as it is, so its later requests go without
//! the token and Consul answers them as for nobody.

use anyhow::{bail, Result};

/// The most a request head may take.
const MAX_HEAD: usize = 16 * 1024;

/// Rewrites a client's request stream (see the module's documentation).
pub struct TokenInjector {
    token: String,
    /// Bytes of a head not yet complete.
    pending: Vec<u8>,
    body: Body,
}

enum Body {
    /// Bytes of the current request's body still to pass on (0: a head
    /// comes next).
    Left(u64),
    /// Carried as it is from here on.
    Raw,
}

impl TokenInjector {
    pub fn new(token: String) -> Self {
        TokenInjector {
            token,
            pending: Vec::new(),
            body: Body::Left(0),
        }
    }

    /// The bytes to send on for `data`, the client's next bytes.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len() + 64);
        loop {
            match &mut self.body {
                Body::Raw => {
                    out.extend_from_slice(data);
                    return Ok(out);
                }
                Body::Left(left) if *left > 0 => {
                    let n = (*left).min(data.len() as u64) as usize;
                    out.extend_from_slice(&data[..n]);
                    *left -= n as u64;
                    data = &data[n..];
                    if data.is_empty() {
                        return Ok(out);
                    }
                }
                Body::Left(_) => {
                    if data.is_empty() {
                        return Ok(out);
                    }
                    self.pending.extend_from_slice(data);
                    let Some((head_len, rewritten, body)) = self.rewrite_head()? else {
                        return Ok(out);
                    };
                    out.extend_from_slice(&rewritten);
                    let rest = self.pending.split_off(head_len);
                    self.pending.clear();
                    self.body = body;
                    // What followed the head: its body, or the next request.
                    let mut more = self.feed(&rest)?;
                    out.append(&mut more);
                    return Ok(out);
                }
            }
        }
    }

    /// The head at the start of `pending`, when complete: its length, its
    /// rewritten bytes, and how its body is to be passed on.
    fn rewrite_head(&self) -> Result<Option<(usize, Vec<u8>, Body)>> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let head_len = match request.parse(&self.pending) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if self.pending.len() < MAX_HEAD => return Ok(None),
            Ok(httparse::Status::Partial) => bail!("a request head over {MAX_HEAD} bytes"),
            Err(e) => bail!("not an HTTP request: {e}"),
        };
        let (Some(method), Some(path)) = (request.method, request.path) else {
            bail!("a request without a method or path");
        };
        let mut out = format!(
            "{method} {path} HTTP/1.{}\r\n",
            request.version.unwrap_or(1)
        )
        .into_bytes();
        let mut body = Body::Left(0);
        for h in request.headers.iter() {
            if h.name.eq_ignore_ascii_case("x-consul-token") {
                continue;
            }
            if h.name.eq_ignore_ascii_case("content-length") {
                let text = std::str::from_utf8(h.value).unwrap_or("").trim();
                match text.parse::<u64>() {
                    Ok(n) => body = Body::Left(n),
                    Err(_) => bail!("a Content-Length that is not a number"),
                }
            }
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                body = Body::Raw;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"X-Consul-Token: ");
        out.extend_from_slice(self.token.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        Ok(Some((head_len, out, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(bytes: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(bytes)
            .split("\r\n\r\n")
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_request_of_a_kept_connection_gets_the_token_and_only_ours() {
        let mut t = TokenInjector::new("ui-token".into());
        let stream = b"GET /v1/kv/a HTTP/1.1\r\nHost: localhost\r\nX-Consul-Token: theirs\r\n\r\n\
                       PUT /v1/kv/b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 26\r\n\r\n\
                       GET /not-a-head HTTP/1.1\r\n\
                       GET /v1/catalog/services HTTP/1.1\r\nHost: localhost\r\n\r\n";
        // Fed a few bytes at a time, as a socket may deliver them.
        let mut out = Vec::new();
        for chunk in stream.chunks(7) {
            out.extend(t.feed(chunk).unwrap());
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.matches("X-Consul-Token: ui-token\r\n").count(),
            3,
            "{text}"
        );
        assert!(!text.contains("theirs"));
        // The body passed as it was, not taken for a head.
        assert!(text.contains("\r\n\r\nGET /not-a-head HTTP/1.1\r\nGET /v1/catalog"));
        assert_eq!(
            heads(text.as_bytes())[0].lines().next(),
            Some("GET /v1/kv/a HTTP/1.1")
        );
    }

    #[test]
    fn a_chunked_body_ends_the_rewriting_and_garbage_is_an_error() {
        let mut t = TokenInjector::new("tok".into());
        let out = t
            .feed(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /y HTTP/1.1\r\n\r\n")
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("X-Consul-Token").count(), 1);
        assert!(text.ends_with("GET /y HTTP/1.1\r\n\r\n"));
        assert!(TokenInjector::new("t".into())
            .feed(b"\x00\x01 nonsense\r\n\r\n")
            .is_err());
    }
}
