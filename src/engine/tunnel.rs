//! A local TCP port carried to an address on a host's loopback, such as
//! Consul's HTTP API, which stagectl never opens on a host's public
//! interfaces.
//!
//! Every connection accepted on the local listener becomes one `docker exec`
//! of a relay in one of the environment's containers (host network, so the
//! host's loopback is theirs), with the exec's stdin and stdout as the two
//! directions: `stagectl agent pipe ADDR` in an agent container, busybox's
//! `nc` in a Consul container (a server's host may run no agent). It goes over the
//! connection stagectl already has to the host's engine, so SSH, TLS and
//! unix hosts work alike and nothing new listens anywhere but here.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::engine::docker::DockerHost;

/// A listening tunnel; it stops when dropped.
pub struct Tunnel {
    pub local: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// What runs in the container at the far end of each connection.
#[derive(Clone)]
pub enum Relay {
    /// `stagectl agent pipe ADDR` (an agent container).
    Agent(String),
    /// busybox's `nc HOST PORT` (any container of stagectl's runtime).
    Netcat { host: String, port: u16 },
}

impl Relay {
    fn cmd(&self) -> Vec<String> {
        match self {
            Relay::Agent(addr) => ["stagectl", "agent", "pipe", addr].map(String::from).into(),
            Relay::Netcat { host, port } => vec!["nc".into(), host.clone(), port.to_string()],
        }
    }

    fn target(&self) -> String {
        match self {
            Relay::Agent(addr) => addr.clone(),
            Relay::Netcat { host, port } => format!("{host}:{port}"),
        }
    }
}

impl Tunnel {
    /// Listen on `listen` (port 0: any free one) and carry each connection
    /// through `relay` in `container` on `host`, adding `token` to every
    /// request as Consul's `X-Consul-Token` when given (see
    /// `tunnel_token`).
    pub async fn open(
        host: DockerHost,
        container: String,
        relay: Relay,
        listen: SocketAddr,
        token: Option<String>,
    ) -> Result<Tunnel> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    // Out of file descriptors, say: wait rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                };
                let _ = client.set_nodelay(true);
                let (host, container, relay) = (host.clone(), container.clone(), relay.clone());
                let injector = token.clone().map(super::tunnel_token::TokenInjector::new);
                tokio::spawn(async move {
                    // DNS rebinding: see `tunnel_host`.
                    let Some(head) = super::tunnel_host::admit(&mut client, local).await else {
                        return;
                    };
                    if let Err(e) = carry(&host, &container, &relay, client, head, injector).await {
                        eprintln!("tunnel to {} on {}: {e:#}", relay.target(), host.name);
                    }
                });
            }
        });
        Ok(Tunnel { local, accept })
    }
}

/// One connection: the client's bytes to the exec's stdin, its stdout back.
/// `head`: what the Host check already read from the client.
async fn carry(
    host: &DockerHost,
    container: &str,
    relay: &Relay,
    client: TcpStream,
    head: Vec<u8>,
    mut injector: Option<super::tunnel_token::TokenInjector>,
) -> Result<()> {
    let exec = host
        .docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(relay.cmd()),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot exec in {container}"))?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = host.docker.start_exec(&exec.id, None).await?
    else {
        anyhow::bail!("the exec in {container} did not attach");
    };
    let (mut from_client, mut to_client) = client.into_split();
    let upstream = async move {
        let mut pass = |bytes: &[u8]| match &mut injector {
            Some(injector) => injector.feed(bytes),
            None => Ok(bytes.to_vec()),
        };
        input.write_all(&pass(&head)?).await?;
        input.flush().await?;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from_client.read(&mut buf).await?;
            if n == 0 {
                // The client is done sending: so is the pipe's stdin.
                input.shutdown().await?;
                return Ok::<_, anyhow::Error>(());
            }
            input.write_all(&pass(&buf[..n])?).await?;
            input.flush().await?;
        }
    };
    let downstream = async move {
        while let Some(chunk) = output.next().await {
            match chunk? {
                bollard::container::LogOutput::StdOut { message } => {
                    to_client.write_all(&message).await?
                }
                bollard::container::LogOutput::StdErr { message } => {
                    anyhow::bail!("{}", String::from_utf8_lossy(&message).trim())
                }
                _ => {}
            }
        }
        to_client.shutdown().await?;
        Ok(())
    };
    // The answer's end ends the connection, whatever the client still sends.
    tokio::pin!(downstream);
    tokio::select! {
        r = &mut downstream => r,
        r = upstream => { r?; downstream.await }
    }
}

/// The other end, run by `stagectl agent pipe ADDR` inside the container:
/// stdin to a TCP connection to `addr`, its answers to stdout. Exits when
/// the connection's far side closes.
pub async fn pipe(addr: &str) -> Result<std::convert::Infallible> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let _ = stream.set_nodelay(true);
    let (mut from_target, mut to_target) = stream.into_split();
    let upstream = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut to_target).await;
        let _ = to_target.shutdown().await;
    });
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from_target.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        stdout.write_all(&buf[..n]).await?;
        stdout.flush().await?;
    }
    upstream.abort();
    // tokio reads stdin on a blocking thread that the runtime would wait for
    // on its way out, and the client may never close its side: done now.
    stdout.flush().await?;
    std::process::exit(0)
}
