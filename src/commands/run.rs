//! `stagectl run SERVICE [--host H] [--volumes] -- CMD...`: a one-off
//! container with the service's spec (image, user, env with the other
//! services' addresses, secrets), its output streamed as it comes, removed
//! when it ends; the exit code is the command's. For migrations, seeds and
//! checks, as `docker compose run` and `kamal app exec` do them.
//!
//! Its volumes are mounted only with `--volumes` (instance 1's on that
//! host): a one-off that writes into a database's files while the database
//! runs is rarely what was meant.

use anyhow::Result;

use super::exec::{exit_code, terminal_for, write_output};
use super::Ctx;
use crate::cli::AttachArgs;
use crate::error::input;
use crate::pipeline::resolve_ports;
use crate::plan::desired::{one_off, Secrets};

pub async fn run(
    ctx: &Ctx,
    service: &str,
    host: Option<&str>,
    volumes: bool,
    attach: AttachArgs,
    cmd: &[String],
) -> Result<u8> {
    let t = &ctx.topology;
    let Some(s) = t.services.iter().find(|s| s.name == service) else {
        return Err(input(t.unknown_service(service)));
    };
    let host_name = s
        .hosts_for(host)
        .map_err(input)?
        .first()
        .copied()
        .unwrap_or_default();
    let h = t
        .host(host_name)
        .ok_or_else(|| input(format!("no host {host_name} in {}", t.source.display())))?;
    // Before anything is contacted: a missing secret runs nothing.
    let values = crate::secrets::read([s])?;
    let connector = ctx.connector().await?;
    let conn = connector.connect(h).await?;
    // The addresses of the other services depend on the environment's
    // ports, as recorded on its hosts.
    let t = resolve_ports(t, &[&conn.host]).await?;
    let secrets = Secrets {
        values,
        ..Default::default()
    };
    // Random, not the PID alone: two runs at once (from two machines, or
    // containers with the same PIDs) must not collide on one host.
    let mut nonce = [0u8; 4];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness for a name: {e}"))?;
    let name = format!(
        "run-{}-{}",
        std::process::id(),
        nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let cmd = (!cmd.is_empty()).then_some(cmd);
    let spec = one_off(&t, h, s, &secrets, cmd, volumes, &name);
    let (attach, _raw) = terminal_for(attach);
    let code = conn
        .host
        .run_once_streaming(&spec, attach, write_output)
        .await?;
    Ok(exit_code(code))
}
