//! `stagectl demo-http`: the demo app of the local lab. It answers every
//! request with its instance identity, so a test (or a person with curl) can
//! see which instance the load balancer picked.

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::error::EXIT_OK;

pub async fn serve(port: u16) -> Result<u8> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("cannot listen on port {port}"))?;
    // INSTANCE names the instance when set; else the container's hostname
    // (its short id), which is unique per container.
    let identity = std::env::var("INSTANCE").ok().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    });
    let body = format!("instance={identity}\n");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // Read the request head; its content does not matter.
                    let _ = stream.read(&mut buf).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
            _ = term.recv() => return Ok(EXIT_OK),
            _ = tokio::signal::ctrl_c() => return Ok(EXIT_OK),
        }
    }
}
