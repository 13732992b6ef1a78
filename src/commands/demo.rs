//! The demo apps of the local lab, in the stagectl binary (so the lab needs
//! no image it cannot build):
//!
//! - `demo-http` answers every request with its instance identity, so a
//!   test (or a person with curl) sees which instance the load balancer
//!   picked. With `REDIS_ADDR` set it is a small stateful app: every request
//!   counts a visit in Redis and the answer shows the count, the schema
//!   version the last migration wrote and the worker's ticks: data that
//!   lives in the database, not in the instance.
//! - `demo-http --worker` also adds one to `worker_ticks` every second.
//! - `demo-migrate --version N` writes the schema version, as a migration
//!   run by `before_rollout` or `stagectl run` would.
//!
//! Redis is reached at `REDIS_ADDR` (`host:port`), with the password in the
//! file `REDIS_PASSWORD_FILE` when set (a stagectl secret).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{EXIT_FAILED, EXIT_OK};

pub async fn serve(port: u16, worker: bool) -> Result<u8> {
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
    let database = Database::from_env()?;
    if worker {
        let Some(db) = database.clone() else {
            bail!("--worker needs REDIS_ADDR");
        };
        tokio::spawn(tick(db));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                let identity = identity.clone();
                let database = database.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // Read the request head; only the path matters.
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let health = head.split_whitespace().nth(1) == Some("/health");
                    let (status, body) = match (&database, health) {
                        (Some(db), false) => match db.visit().await {
                            Ok(state) => ("200 OK", format!("instance={identity} {state}\n")),
                            Err(e) => ("503 Service Unavailable", format!("instance={identity} database: {e:#}\n")),
                        },
                        _ => ("200 OK", format!("instance={identity}\n")),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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

/// `demo-migrate`: write the schema version; fails (exit 1) when the
/// database cannot be reached.
pub async fn migrate(version: u32) -> Result<u8> {
    let Some(db) = Database::from_env()? else {
        eprintln!("demo-migrate: REDIS_ADDR is not set");
        return Ok(EXIT_FAILED);
    };
    match db
        .command(&["SET", "schema_version", &version.to_string()])
        .await
    {
        Ok(_) => {
            println!("schema version {version}");
            Ok(EXIT_OK)
        }
        Err(e) => {
            eprintln!("demo-migrate: {e:#}");
            Ok(EXIT_FAILED)
        }
    }
}

async fn tick(db: Database) {
    loop {
        if let Err(e) = db.command(&["INCR", "worker_ticks"]).await {
            eprintln!("worker: {e:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Where Redis is, and its password. One connection per command: the demo
/// is about surviving replacements and restarts, not about speed.
#[derive(Clone)]
struct Database {
    addr: String,
    password: Option<String>,
}

impl Database {
    fn from_env() -> Result<Option<Database>> {
        let Ok(addr) = std::env::var("REDIS_ADDR") else {
            return Ok(None);
        };
        let password = match std::env::var("REDIS_PASSWORD_FILE") {
            Ok(path) => Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read REDIS_PASSWORD_FILE {path}"))?
                    .trim_end()
                    .to_string(),
            ),
            Err(_) => None,
        };
        Ok(Some(Database { addr, password }))
    }

    /// Count a visit; the visits, schema version and worker ticks.
    async fn visit(&self) -> Result<String> {
        let visits = self.command(&["INCR", "visits"]).await?;
        let schema = self.command(&["GET", "schema_version"]).await?;
        let ticks = self.command(&["GET", "worker_ticks"]).await?;
        Ok(format!(
            "visits={} schema={} worker_ticks={}",
            visits.unwrap_or_default(),
            schema.unwrap_or_else(|| "none".into()),
            ticks.unwrap_or_else(|| "0".into())
        ))
    }

    /// Run one command (after AUTH when there is a password); its answer
    /// as text, `None` for nil.
    async fn command(&self, args: &[&str]) -> Result<Option<String>> {
        let connect = TcpStream::connect(&self.addr);
        let stream = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .with_context(|| format!("connecting to {}: timed out", self.addr))?
            .with_context(|| format!("connecting to {}", self.addr))?;
        let mut conn = BufReader::new(stream);
        if let Some(p) = &self.password {
            send(&mut conn, &["AUTH", p]).await?;
            read_reply(&mut conn).await.context("AUTH")?;
        }
        send(&mut conn, args).await?;
        tokio::time::timeout(Duration::from_secs(2), read_reply(&mut conn))
            .await
            .context("no answer within 2 s")?
    }
}

/// A command in Redis's protocol (RESP): an array of bulk strings.
async fn send(conn: &mut BufReader<TcpStream>, args: &[&str]) -> Result<()> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    conn.get_mut().write_all(out.as_bytes()).await?;
    Ok(())
}

/// One reply: a simple string, integer or bulk string (what the commands
/// above answer); an error reply is an error.
async fn read_reply(conn: &mut BufReader<TcpStream>) -> Result<Option<String>> {
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        bail!("the connection closed");
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(Some(rest.to_string())),
        "-" => bail!("{rest}"),
        "$" => {
            let len: i64 = rest.parse().context("a bad bulk length")?;
            if len < 0 {
                return Ok(None);
            }
            let mut data = vec![0; len as usize + 2];
            conn.read_exact(&mut data).await?;
            data.truncate(len as usize);
            Ok(Some(String::from_utf8_lossy(&data).into_owned()))
        }
        _ => bail!("an answer Redis does not give: {line:?}"),
    }
}
