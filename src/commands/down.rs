//! `stagectl down`: remove everything of this environment, and nothing else.
//!
//! What is removed is found by the environment's label on each host, never
//! by name. A host where the environment never existed is fine (nothing to
//! do). The local lab goes too, once no environment has containers left on
//! any of its hosts; then its keys are deleted with it.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};
use tokio::sync::Semaphore;

use super::{apply::apply_host, connect_hosts, Ctx};
use crate::connect::{local_engine, Connector};
use crate::error::EXIT_OK;
use crate::lab;
use crate::reconcile::plan_down;
use crate::topology::Host;

pub async fn run(ctx: &Ctx, keep_data: bool) -> Result<u8> {
    let started = Instant::now();
    let t = &ctx.topology;
    let reporter = ctx.reporter();

    // Lab hosts that do not exist (or are not running) hold nothing to
    // remove inside; they are skipped, and the lab itself handled below.
    let mut lab_state = None;
    let mut connector = Connector::new(ctx.connect_timeout, None)?;
    if let Some(lab) = &t.lab {
        let local = local_engine().await?;
        let observed = lab::observe(&local, &lab.name).await?;
        connector.set_lab(lab::access(&ctx.state, &lab.name));
        lab_state = Some((local, observed));
    }
    let hosts: Vec<&Host> = t
        .hosts
        .iter()
        .filter(|h| match (&lab_state, h.is_lab()) {
            (Some((_, obs)), true) => obs.hosts.get(&h.name).is_some_and(|(_, running)| *running),
            (None, true) => false,
            (_, false) => true,
        })
        .collect();
    let attempts = connect_hosts(&connector, &hosts, &reporter).await;

    let limit = Arc::new(Semaphore::new(ctx.parallel));
    let work = attempts.iter().map(|a| {
        let limit = limit.clone();
        async move {
            let _permit = limit.acquire().await.expect("semaphore is never closed");
            let conn = match &a.result {
                Ok(c) => c,
                Err(e) => return Err(anyhow!("{e:#}")),
            };
            let observed = conn.host.observe(&t.name, &[]).await?;
            let plan = plan_down(&a.host.name, &observed, keep_data);
            apply_host(&conn.host, &plan, &t.name, &a.line).await?;
            if plan.is_noop() {
                a.line.ok("nothing of this environment here");
            }
            let others = conn.host.environments().await?;
            a.line.finish();
            Ok(others)
        }
    });
    let results = futures_util::future::join_all(work).await;
    let mut failed = Vec::new();
    let mut other_envs = std::collections::BTreeSet::new();
    for (a, r) in attempts.iter().zip(results) {
        match r {
            Ok(envs) => other_envs.extend(envs.into_iter().filter(|e| *e != t.name)),
            Err(e) => failed.push(format!("{}: {e:#}", a.host.name)),
        }
    }
    drop(attempts);

    if let (Some(lab), Some((local, _))) = (&t.lab, &lab_state) {
        if !failed.is_empty() {
            reporter.println(&format!(
                "lab {} kept: not every host could be checked",
                lab.name
            ));
        } else if other_envs.is_empty() {
            let n = lab::remove(local, &lab.name, &ctx.state).await?;
            reporter.println(&format!(
                "lab {}: {n} hosts, bridge and keys removed",
                lab.name
            ));
        } else {
            let names: Vec<String> = other_envs.iter().cloned().collect();
            reporter.println(&format!(
                "lab {} kept: still used by {}",
                lab.name,
                names.join(", ")
            ));
        }
    }
    if !failed.is_empty() {
        return Err(anyhow!("{}", failed.join("\n")));
    }
    if !keep_data {
        ctx.state.remove_env(&t.name)?;
    }
    println!(
        "{} is down in {:.1} s; nothing of it is left on {} hosts{}",
        t.name,
        started.elapsed().as_secs_f64(),
        t.hosts.len(),
        if keep_data {
            " (data volumes and gossip key kept)"
        } else {
            ""
        }
    );
    Ok(EXIT_OK)
}
