//! `stagectl down`: remove everything of this environment, and nothing else.
//!
//! The same pipeline as `up` with nothing desired: connect (unreachable
//! hosts are reported and skipped: what can be removed is), snapshot, plan,
//! execute. What is removed is found by the managed mark on each host,
//! never by name. The local lab goes too, once no environment has
//! containers left on any of its hosts; then its keys are deleted with it.

use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::cli::EventFormat;
use crate::cluster::consul;
use crate::error::EXIT_OK;
use crate::labels::Component;
use crate::pipeline::conduct::Run;
use crate::pipeline::events::Reporter;
use crate::pipeline::{execute, open, own_ports, Ctx, Unreachable};
use crate::plan::reconcile::Keep;
use crate::plan::{members, HostSnapshot, Phase, Plan};
use crate::state::KeptKey;

/// How far `down` goes.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub keep: Keep,
    /// Only print what would go (the plan), changing nothing.
    pub dry_run: bool,
    /// `gc`: go only if the environment's sealed record, read again under
    /// its lock, still says it has expired (a CI `up --ttl` may have renewed
    /// it meanwhile).
    pub only_if_expired: bool,
    pub output: EventFormat,
}

/// What `down` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Removed,
    /// Nothing changed, and why (a dry run, or no longer expired).
    Left(String),
}

pub async fn run(ctx: &Ctx, options: Options) -> Result<u8> {
    run_for(ctx, options).await.map(|_| EXIT_OK)
}

pub async fn run_for(ctx: &Ctx, options: Options) -> Result<Outcome> {
    let started = Instant::now();
    // A dry run prints the plan alone on stdout, as `plan` does.
    let reporter = match (options.dry_run, options.output) {
        (false, output) => ctx.event_reporter(output),
        (true, EventFormat::Text) => Reporter::plain(0),
        (true, EventFormat::Json) => Reporter::quiet(),
    };
    let mut hosts = open(ctx, &reporter, Unreachable::Report).await?;
    // Its own agents only: on the port block its containers record.
    let t = &own_ports(&ctx.topology, &hosts.reachable()).await?;
    // One run at a time per environment: taken before anything changes.
    let mut lock = match options.dry_run {
        true => None,
        false => super::lock::take(ctx, "down", &hosts, &reporter).await?,
    };
    let removed = async {
        let mut snapshot = hosts.snapshot_with_others(t).await?;
        let key = hosts.record_key(t, &snapshot).await.ok().flatten();
        let record = hosts.believed_last_up(t, &snapshot, key.as_deref()).await;
        if let (Keep::Everything, false) = (options.keep, options.dry_run) {
            let seed = hosts.tls_seed(t, &snapshot).await.ok().flatten();
            for (kept, key) in [(KeptKey::Record, key.as_ref()), (KeptKey::TlsSeed, seed.as_ref())] {
                if let Some(key) = key {
                    ctx.state.keep_key(&t.name, kept, key)?;
                }
            }
        }
        if options.only_if_expired {
            let now = crate::clock::unix_now();
            match record.as_ref().and_then(|r| r.expires_at) {
                Some(at) if at <= now => {}
                Some(at) => {
                    return Ok(Outcome::Left(format!(
                        "no longer expired: renewed, now expires in {}",
                        crate::clock::span(at - now)
                    )))
                }
                None => return Ok(Outcome::Left("no expiry in its sealed record".into())),
            }
        }
        // Hosts taken out of the topology and not yet cleared go too.
        if let Some(record) = &record {
            hosts
                .find_departed(t, record, &mut snapshot, &reporter)
                .await?;
        }
        let plan = Plan::down(t, &snapshot, options.keep);
        if options.dry_run {
            hosts.finish();
            print_dry_run(t, &plan, options.output)?;
            return Ok(Outcome::Left("a dry run".into()));
        }
        let mut timings = crate::pipeline::conduct::Timings::start();
        let executed = Run::new(ctx, t, &hosts, &mut lock, &reporter, &mut timings)
            .phases(&plan, None, async {})
            .await;
        for p in plan.hosts().iter().filter(|p| p.is_noop()) {
            if let Some(line) = hosts.line(&p.host) {
                line.ok("nothing of this environment here");
            }
        }
        hosts.finish();
        let unreachable: Vec<String> = hosts
            .attempts
            .iter()
            .map(|a| &a.result)
            .chain(hosts.departed.iter().map(|d| &d.result))
            .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
            .collect();
        if executed.is_ok() {
            say_why_the_lab_stays(ctx, &snapshot, &plan, options.keep, &reporter);
        }
        executed?;
        if !unreachable.is_empty() {
            return Err(anyhow!("{}", unreachable.join("\n")));
        }
        if options.keep != Keep::Everything {
            ctx.state.remove_env(&t.name)?;
        }
        let note = match options.keep {
            Keep::Everything => " (data volumes and gossip key kept)",
            Keep::ServiceData if kept_volumes(t, &snapshot, Keep::ServiceData) => {
                " (the services' data volumes kept: `down -v` removes them)"
            }
            _ => "",
        };
        let seconds = started.elapsed().as_secs_f64();
        if reporter.is_json() {
            println!(
                "{}",
                serde_json::json!({"event": "down", "env": t.name, "seconds": (seconds * 10.0).round() / 10.0, "keep": options.keep, "keep_data": options.keep == Keep::Everything})
            );
        } else {
            println!(
                "{} is down in {seconds:.1} s; nothing of it is left on {} hosts{note}",
                t.name,
                t.hosts.len(),
            );
        }
        Ok(Outcome::Removed)
    }
    .await;
    super::lock::give_back(lock).await;
    removed
}

/// Whether `keep` keeps any volume of the environment seen on its hosts.
fn kept_volumes(
    t: &crate::topology::Topology,
    snapshot: &crate::plan::Snapshot,
    keep: Keep,
) -> bool {
    snapshot
        .hosts
        .iter()
        .filter_map(|h| h.observed.as_ref())
        .flat_map(|o| &o.volumes)
        .any(|v| keep.keeps(&t.name, v))
}

/// `down --dry-run`: exactly what would go, as `plan` prints it.
fn print_dry_run(t: &crate::topology::Topology, plan: &Plan, output: EventFormat) -> Result<()> {
    if output == EventFormat::Json {
        for step in plan.steps() {
            println!("{}", serde_json::to_string(&step)?);
        }
        return Ok(());
    }
    print!("{}", crate::plan::print::text(t, plan));
    println!("{}. Nothing was changed (--dry-run).", plan.totals());
    Ok(())
}

/// When the plan keeps the lab, say why: another environment uses it, a
/// host could not be checked, or it holds the kept data.
fn say_why_the_lab_stays(
    ctx: &Ctx,
    snapshot: &crate::plan::Snapshot,
    plan: &Plan,
    keep: Keep,
    reporter: &Reporter,
) {
    let t = &ctx.topology;
    let Some(lab) = &t.lab else {
        return;
    };
    let removed = plan
        .phases
        .iter()
        .any(|p| matches!(p, Phase::Lab(steps) if !steps.is_empty()));
    if removed {
        return;
    }
    let users: std::collections::BTreeSet<&str> = snapshot
        .hosts
        .iter()
        .flat_map(|h| &h.environments)
        .map(String::as_str)
        .filter(|e| *e != t.name)
        .collect();
    let why = if kept_volumes(t, snapshot, keep) {
        "its hosts hold the kept data (`down -v` removes it)".to_string()
    } else if users.is_empty() {
        "not every host could be checked".to_string()
    } else {
        format!(
            "still used by {}",
            users.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    reporter.println(&format!("lab {} kept: {why}", lab.name));
}

/// `down --host`: clear one host (its agent leaves the cluster first), of
/// the topology or one taken out of it that `up` could not reach then (the
/// last up's record knows how to reach it). The record forgets it once
/// cleared.
pub async fn one_host(ctx: &Ctx, name: &str, keep: Keep, output: EventFormat) -> Result<u8> {
    let started = Instant::now();
    let reporter = ctx.event_reporter(output);
    let mut hosts = open(ctx, &reporter, Unreachable::Report).await?;
    // Its own agents only: on the port block its containers record.
    let t = &own_ports(&ctx.topology, &hosts.reachable()).await?;
    let mut lock = super::lock::take(ctx, "down", &hosts, &reporter).await?;
    super::lock::confirm(&mut lock).await?;
    let cleared = async {
        let mut snapshot = hosts.snapshot(t, &[]).await?;
        let key = hosts.record_key(t, &snapshot).await.ok().flatten();
        let record = hosts.believed_last_up(t, &snapshot, key.as_deref()).await;
        if let Some(record) = &record {
            hosts
                .find_departed(t, record, &mut snapshot, &reporter)
                .await?;
        }
        let seen = snapshot
            .hosts
            .iter()
            .chain(&snapshot.departed)
            .find(|h| h.host == name)
            .cloned()
            .ok_or_else(|| {
                let known: Vec<&str> = snapshot
                    .hosts
                    .iter()
                    .chain(&snapshot.departed)
                    .map(|h| h.host.as_str())
                    .collect();
                crate::error::input(format!(
                    "--host {name}: neither a host of {} nor one its last up left to clear (known: {})",
                    t.source.display(),
                    known.join(", ")
                ))
            })?;
        let Some(mut observed) = seen.observed.clone() else {
            let why = hosts
                .attempts
                .iter()
                .find(|a| a.host.name == name)
                .and_then(|a| a.result.as_ref().err().map(|e| format!("{e:#}")))
                .or_else(|| {
                    hosts
                        .departed
                        .iter()
                        .find(|d| d.host.name == name)
                        .and_then(|d| d.result.as_ref().err().map(|e| format!("{e:#}")))
                })
                .unwrap_or_else(|| "lab host not running".into());
            return Err(anyhow!("{why}\nnothing was changed"));
        };
        observed.volumes.retain(|v| !keep.keeps(&t.name, v));
        let consul = Component::Consul.container(&t.name);
        // Asked whether it has left: another server whose agent runs.
        let asked = snapshot
            .hosts
            .iter()
            .filter(|h| h.host != name && t.host(&h.host).is_some_and(|h| h.consul_server))
            .find(|h| {
                h.observed
                    .as_ref()
                    .is_some_and(|o| o.containers.iter().any(|c| c.name == consul && c.running))
            })
            .map(|h| h.host.clone());
        let seen = HostSnapshot { observed: Some(observed), ..seen };
        if let Some(mut change) = members::clear(t, &seen, &consul, asked.clone().unwrap_or_default())
        {
            if asked.is_none() {
                // No other server to ask: the steps alone.
                let line = hosts.line(name).context("the host is connected")?;
                let engine = hosts.engine(name).context("the host is connected")?;
                change.steps.retain(|s| !matches!(s, crate::plan::reconcile::Step::Leave { .. }));
                execute::host_steps(engine, None, &change.steps, &t.name, line, "members").await?;
            } else {
                execute::member_changes(&hosts, t, &[change], &reporter).await?;
            }
        } else if let Some(line) = hosts.line(name) {
            line.ok("nothing of this environment here");
        }
        hosts.finish();
        if let (Some(mut record), Some(server)) = (record, asked.as_deref().and_then(|a| hosts.engine(a))) {
            if record.departed.remove(name).is_some() {
                let key = key.as_deref().context("no Consul server holds the record key")?;
                consul::put_last_up(server, &consul, t.ports.consul_http, &t.name, key, &record).await?;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        if reporter.is_json() {
            println!(
                "{}",
                serde_json::json!({"event": "down", "env": t.name, "host": name, "seconds": (seconds * 10.0).round() / 10.0, "keep": keep})
            );
        } else {
            println!("{name}: nothing of {} is left there ({seconds:.1} s)", t.name);
        }
        Ok(EXIT_OK)
    }
    .await;
    super::lock::give_back(lock).await;
    cleared
}
