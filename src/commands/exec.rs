//! `stagectl exec INSTANCE [--host HOST] -- CMD...`: run a command in a
//! running service instance (a check, a console's one-liner, a data fix)
//! and exit with its exit code, its output streamed as it comes.
//!
//! Instances are named `<service>-<i>` on every host their service runs
//! on; without `--host`, the first of those hosts (in topology order) that
//! runs it is used, as `docker compose exec` uses a service's first
//! container.

use std::io::Write;

use anyhow::{bail, Result};

use super::Ctx;
use crate::cli::AttachArgs;
use crate::engine::docker::Attach;
use crate::error::input;
use crate::plan::desired::object_name;
use crate::terminal::RawMode;

pub async fn run(
    ctx: &Ctx,
    instance: &str,
    host: Option<&str>,
    attach: AttachArgs,
    cmd: &[String],
) -> Result<u8> {
    let t = &ctx.topology;
    let all: Vec<(String, &crate::topology::Service)> = t
        .services
        .iter()
        .flat_map(|s| (1..=s.per_host).map(move |i| (format!("{}-{i}", s.name), s)))
        .collect();
    let Some((_, service)) = all.iter().find(|(name, _)| name == instance) else {
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        return Err(input(format!(
            "no instance `{instance}` in {}; instances: {}",
            t.source.display(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        )));
    };
    let candidates = service.hosts_for(host).map_err(input)?;
    let container = object_name(&t.name, instance);
    let connector = ctx.connector().await?;
    let mut tried = Vec::new();
    for name in candidates {
        let Some(h) = t.host(name) else { continue };
        let conn = match connector.connect(h).await {
            Ok(conn) => conn,
            Err(e) => {
                tried.push(format!("{e:#}"));
                continue;
            }
        };
        let observed = crate::engine::Engine::observe(&conn.host, &t.name, &[]).await?;
        if !observed
            .containers
            .iter()
            .any(|c| c.name == container && c.running)
        {
            tried.push(format!("{name}: {container} is not running"));
            continue;
        }
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let (attach, _raw) = terminal_for(attach);
        let code = conn
            .host
            .exec_streaming(&container, &args, &[], attach, write_output)
            .await?;
        return Ok(exit_code(code));
    }
    bail!("{}", tried.join("\n"))
}

/// A remote process's output, written here as it comes; a closed pipe
/// (`| head`) is not an error.
pub fn write_output(is_stderr: bool, bytes: &[u8]) {
    let _ = if is_stderr {
        std::io::stderr().write_all(bytes)
    } else {
        let mut out = std::io::stdout();
        out.write_all(bytes).and_then(|()| out.flush())
    };
}

/// What `-i`/`-t` ask for: stdin, a terminal of this one's size, and raw
/// mode here while it runs (kept in the guard; `-t` implies stdin).
pub fn terminal_for(args: AttachArgs) -> (Attach, Option<RawMode>) {
    let tty = args
        .tty
        .then(|| crate::terminal::size().unwrap_or((24, 80)));
    let raw = if args.tty { RawMode::enable() } else { None };
    (
        Attach {
            stdin: args.interactive || args.tty,
            tty,
        },
        raw,
    )
}

/// A container's exit code as the process's: 0..=255 as they are, anything
/// else (a container killed by the engine, -1 for unknown) as 1.
pub fn exit_code(code: i64) -> u8 {
    u8::try_from(code).unwrap_or(1)
}
