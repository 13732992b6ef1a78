//! `stagectl down`: remove everything of this environment, and nothing else.
//!
//! The same pipeline as `up` with nothing desired: connect (unreachable
//! hosts are reported and skipped: what can be removed is), snapshot, plan,
//! execute. What is removed is found by the managed mark on each host,
//! never by name. The local lab goes too, once no environment has
//! containers left on any of its hosts; then its keys are deleted with it.

use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::agent::labels::Component;
use crate::cli::EventFormat;
use crate::cluster::consul;
use crate::error::EXIT_OK;
use crate::pipeline::events::Reporter;
use crate::pipeline::{execute, open, Ctx, Unreachable};
use crate::plan::{members, HostSnapshot, Plan};

pub async fn run(ctx: &Ctx, keep_data: bool, output: EventFormat) -> Result<u8> {
    let started = Instant::now();
    let t = &ctx.topology;
    let reporter = ctx.event_reporter(output);
    let mut hosts = open(ctx, &reporter, Unreachable::Report).await?;
    // One run at a time per environment: taken before anything changes.
    let mut lock = super::lock::take(ctx, "down", &hosts, &reporter).await?;
    let removed = async {
        let mut snapshot = hosts.snapshot_with_others(t).await?;
        // Hosts taken out of the topology and not yet cleared go too.
        if let Some(record) = hosts.believed_last_up(t, &snapshot).await {
            hosts
                .find_departed(t, &record, &mut snapshot, &reporter)
                .await?;
        }
        let plan = Plan::down(t, &snapshot, keep_data);
        super::lock::confirm(&mut lock).await?;
        let executed = execute::hosts_in_parallel(&hosts, &plan.hosts, &t.name, ctx.parallel, "host")
            .await;
        let executed = match executed {
            Ok(()) => crate::pipeline::edge::execute(&hosts, t, &plan.edge, &reporter).await,
            failed => failed,
        };
        for p in plan.hosts.iter().filter(|p| p.is_noop()) {
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
            remove_lab(ctx, &hosts, &snapshot, &plan, keep_data, &reporter).await?;
        }
        executed?;
        if !unreachable.is_empty() {
            return Err(anyhow!("{}", unreachable.join("\n")));
        }
        if !keep_data {
            ctx.state.remove_env(&t.name)?;
        }
        let note = if keep_data {
            " (data volumes and gossip key kept)"
        } else {
            ""
        };
        let seconds = started.elapsed().as_secs_f64();
        if reporter.is_json() {
            println!(
                "{}",
                serde_json::json!({"event": "down", "env": t.name, "seconds": (seconds * 10.0).round() / 10.0, "keep_data": keep_data})
            );
        } else {
            println!(
                "{} is down in {seconds:.1} s; nothing of it is left on {} hosts{note}",
                t.name,
                t.hosts.len(),
            );
        }
        Ok(EXIT_OK)
    }
    .await;
    super::lock::give_back(lock).await;
    removed
}

/// The lab goes once no environment is left on its hosts (the plan says
/// so); otherwise say why it stays.
async fn remove_lab(
    ctx: &Ctx,
    hosts: &crate::pipeline::Hosts<'_>,
    snapshot: &crate::plan::Snapshot,
    plan: &Plan,
    keep_data: bool,
    reporter: &Reporter,
) -> Result<()> {
    let t = &ctx.topology;
    let (Some(lab), Some(local)) = (&t.lab, &hosts.local) else {
        return Ok(());
    };
    if !plan.lab.is_empty() {
        let line = reporter.host("lab");
        execute::lab_steps(local, t, &ctx.state, &plan.lab, &line).await?;
        hosts.close_kept_masters(t.lab_hosts()).await;
        line.finish();
        return Ok(());
    }
    let users: std::collections::BTreeSet<&str> = snapshot
        .hosts
        .iter()
        .flat_map(|h| &h.environments)
        .map(String::as_str)
        .filter(|e| *e != t.name)
        .collect();
    let why = if keep_data {
        "its hosts hold the kept data".to_string()
    } else if users.is_empty() {
        "not every host could be checked".to_string()
    } else {
        format!(
            "still used by {}",
            users.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    reporter.println(&format!("lab {} kept: {why}", lab.name));
    Ok(())
}

/// `down --host`: clear one host (its agent leaves the cluster first), of
/// the topology or one taken out of it that `up` could not reach then (the
/// last up's record knows how to reach it). The record forgets it once
/// cleared.
pub async fn one_host(ctx: &Ctx, name: &str, keep_data: bool, output: EventFormat) -> Result<u8> {
    let started = Instant::now();
    let t = &ctx.topology;
    let reporter = ctx.event_reporter(output);
    let mut hosts = open(ctx, &reporter, Unreachable::Report).await?;
    let mut lock = super::lock::take(ctx, "down", &hosts, &reporter).await?;
    super::lock::confirm(&mut lock).await?;
    let cleared = async {
        let mut snapshot = hosts.snapshot(t, &[]).await?;
        let record = hosts.believed_last_up(t, &snapshot).await;
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
        if keep_data {
            observed.volumes.clear();
        }
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
                let key = hosts.ensure_record_key(t, &snapshot).await?;
                consul::put_last_up(server, &consul, t.ports.consul_http, &t.name, &key, &record).await?;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        if reporter.is_json() {
            println!(
                "{}",
                serde_json::json!({"event": "down", "env": t.name, "host": name, "seconds": (seconds * 10.0).round() / 10.0, "keep_data": keep_data})
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
