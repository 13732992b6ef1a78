//! `stagectl gc [--dry-run]`: remove the environments whose `up --ttl` has
//! passed, on the hosts of the file (a shared hosts file will do), each as
//! `down -v` would (under its lock, where the expiry is read again), and
//! say what went. Environments without an expiry, or whose sealed record
//! cannot be read, are left alone. Certificates on the edge proxy near
//! their end are issued again.

use anyhow::Result;

use super::down::{Options, Outcome};
use super::ls::gather;
use super::Ctx;
use crate::cli::EventFormat;
use crate::clock::span;
use crate::error::{EXIT_FAILED, EXIT_OK};
use crate::plan::reconcile::Keep;
use crate::topology::Topology;

pub async fn run(ctx: &Ctx, dry_run: bool) -> Result<u8> {
    let (envs, unreachable) = gather(ctx).await?;
    let now = crate::clock::unix_now();
    let expired: Vec<_> = envs.iter().filter(|e| e.is_expired(now)).collect();
    for u in &unreachable {
        eprintln!("warning: {u}; environments only there are not looked at");
    }
    if !dry_run {
        match crate::pipeline::edge::renew_expiring(ctx).await {
            Ok(renewed) => {
                for r in renewed {
                    println!("{r}: certificate on the edge proxy issued again (near its end)");
                }
            }
            Err(e) => eprintln!("warning: edge certificates not renewed: {e:#}"),
        }
    }
    if expired.is_empty() {
        println!(
            "no expired environment on these hosts ({} looked at)",
            envs.len()
        );
        return Ok(EXIT_OK);
    }
    let mut failed = Vec::new();
    for e in expired {
        let ago = now - e.expires_at.unwrap_or(now);
        // The file's hosts, under this environment's name: what `down`
        // needs to find its containers, volumes, ports and lock.
        let this = Ctx {
            topology: Topology {
                name: e.name.clone(),
                ..ctx.topology.clone()
            },
            state: ctx.state.clone(),
            connect_timeout: ctx.connect_timeout,
            lock_timeout: ctx.lock_timeout,
            parallel: ctx.parallel,
        };
        if dry_run {
            println!("{}: expired {} ago; would be removed:", e.name, span(ago));
        }
        // An expired preview goes with its data; the expiry is read again
        // under the environment's lock, and a renewed one is left alone.
        let options = Options {
            keep: Keep::Nothing,
            dry_run,
            only_if_expired: true,
            output: EventFormat::Text,
        };
        match super::down::run_for(&this, options).await {
            Ok(Outcome::Removed) => println!("{}: expired {} ago; removed", e.name, span(ago)),
            Ok(Outcome::Left(why)) if !dry_run => println!("{}: left alone: {why}", e.name),
            Ok(Outcome::Left(_)) => {}
            Err(err) => {
                eprintln!("error: {}: {err:#}", e.name);
                failed.push(e.name.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(EXIT_OK)
    } else {
        eprintln!("error: not removed: {}", failed.join(", "));
        Ok(EXIT_FAILED)
    }
}
