//! The environment's lock (see `crate::lock`): where it lives, taking it
//! for `up` and `down`, and `stagectl lock status` / `stagectl unlock`.

use anyhow::Result;

use super::Ctx;
use crate::engine::connect::local_engine;
use crate::engine::docker::DockerHost;
use crate::error::{input, EXIT_FAILED, EXIT_OK};
use crate::lock::{self, Lock};
use crate::pipeline::events::{HostLine, Reporter};
use crate::pipeline::execute::provide_images;

/// Take the lock for `command`: on the local engine when the topology has
/// a lab (the lab lives there), else on the topology's first host (always
/// that one, reached or not, so two runs never lock in two places), after
/// making sure it has the agent image the lock runs.
///
/// `up` needs every host and may deliver images. `down` must be able to
/// clean up what it can reach: if the first host is unreachable or lacks
/// the agent image, it goes on without the lock (`None`), saying so.
pub async fn take(
    ctx: &Ctx,
    command: &str,
    hosts: &crate::pipeline::Hosts<'_>,
    reporter: &Reporter,
) -> Result<Option<Lock>> {
    let local = hosts.local.as_ref();
    let first: Option<(&DockerHost, &HostLine)> = hosts
        .attempts
        .first()
        .and_then(|a| a.result.as_ref().ok().map(|c| (&c.host, &a.line)));
    let t = &ctx.topology;
    let image = &t.images.agent;
    let best_effort = command == "down";
    let host = match (&t.lab, local, first) {
        (Some(_), Some(local), _) => local,
        (_, _, Some((host, line))) => {
            let source = if best_effort { None } else { local };
            let images = std::slice::from_ref(image);
            match provide_images(host, source, images, !best_effort, line).await {
                Ok(()) => host,
                Err(e) if best_effort => {
                    reporter.println(&format!("warning: {command} without the lock: {e:#}"));
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        _ if best_effort => {
            reporter.println(&format!(
                "warning: {command} without the lock: {} is not reachable",
                t.hosts[0].name
            ));
            return Ok(None);
        }
        _ => anyhow::bail!("no host to keep the lock of {} on", t.name),
    };
    Lock::acquire(host, &t.name, image, command, ctx.lock_timeout, |msg| {
        reporter.println(msg)
    })
    .await
    .map(Some)
}

/// Before the first change: the lock has started (see `Lock::confirm`).
pub async fn confirm(lock: &mut Option<Lock>) -> Result<()> {
    match lock {
        Some(lock) => lock.confirm().await,
        None => Ok(()),
    }
}

/// Give the lock back at the end of a run, whatever the run's outcome; a
/// failure to is only a warning (the next run takes a dead lock over).
pub async fn give_back(lock: Option<Lock>) {
    if let Some(lock) = lock {
        if let Err(e) = lock.release().await {
            eprintln!("warning: {e:#}");
        }
    }
}

/// The engine the lock of this topology lives on.
async fn lock_host(
    ctx: &Ctx,
) -> Result<(
    DockerHost,
    Option<crate::engine::connect::Connection>,
    crate::engine::connect::Connector,
)> {
    let connector = ctx.connector().await?;
    if ctx.topology.lab.is_some() {
        return Ok((local_engine().await?, None, connector));
    }
    let first = &ctx.topology.hosts[0];
    let connection = connector.connect(first).await?;
    Ok((connection.host.clone(), Some(connection), connector))
}

pub async fn status(ctx: &Ctx, output: crate::cli::OutputFormat) -> Result<u8> {
    let (host, _connection, _connector) = lock_host(ctx).await?;
    let holder = lock::holder(&host, &ctx.topology.name).await?;
    let locked = holder.as_ref().is_some_and(|h| h.alive);
    if output == crate::cli::OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({"env": ctx.topology.name, "kept_on": host.name, "locked": locked, "holder": holder})
        );
        return Ok(if locked { EXIT_FAILED } else { EXIT_OK });
    }
    match holder {
        None => {
            println!(
                "{} is not locked (lock kept on {})",
                ctx.topology.name, host.name
            );
            Ok(EXIT_OK)
        }
        Some(h) if !h.alive => {
            println!(
                "{} is not locked: the last holder, {h}, is gone (the next `up` takes it over)",
                ctx.topology.name
            );
            Ok(EXIT_OK)
        }
        Some(h) => {
            println!("{} is locked on {} by {h}", ctx.topology.name, host.name);
            Ok(EXIT_FAILED)
        }
    }
}

/// `stagectl unlock`: remove the lock it shows, by container ID, and no
/// other: a lock another run took meanwhile (or one not named by `--id`)
/// stays. A terminal is asked; a script passes `--yes` or `--id`.
pub async fn unlock(ctx: &Ctx, id: Option<&str>, yes: bool) -> Result<u8> {
    use std::io::IsTerminal;
    let env = &ctx.topology.name;
    let (host, _connection, _connector) = lock_host(ctx).await?;
    let Some(h) = lock::holder(&host, env).await? else {
        println!("{env} was not locked; nothing removed");
        return Ok(if id.is_some() { EXIT_FAILED } else { EXIT_OK });
    };
    let short = &h.id[..h.id.len().min(12)];
    let state = if h.alive {
        "held"
    } else {
        "left (its holder is gone)"
    };
    println!("{env}: lock {short} on {}, {state} by {h}", host.name);
    if let Some(wanted) = id {
        // A prefix as `docker ps` shows IDs, but never an empty one.
        if wanted.is_empty() || !h.id.starts_with(wanted) {
            println!("{env}: the lock is not {wanted}; nothing removed");
            return Ok(EXIT_FAILED);
        }
    } else if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(input(
                "unlock asks before removing a lock: pass --yes (or --id ID) when not on a terminal",
            ));
        }
        eprint!("remove it? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("{env}: nothing removed");
            return Ok(EXIT_FAILED);
        }
    }
    if lock::remove(&host, env, &h.id).await? {
        println!("{env}: lock {short} removed");
        Ok(EXIT_OK)
    } else {
        println!("{env}: the lock changed hands meanwhile; nothing removed");
        Ok(EXIT_FAILED)
    }
}
