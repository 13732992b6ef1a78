//! `stagectl up`: converge every host to the topology, then wait for the
//! Consul cluster to have a leader and every member.
//!
//! Order matters for "bad input loses nothing": remote hosts are connected
//! first and any failure stops the run before anything is created anywhere;
//! then the local lab (if any) is created and its hosts connected; only then
//! are plans computed and applied, all hosts in parallel (bounded).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::sync::Semaphore;

use super::{
    apply::{apply_host, ensure_images, rolling_replace, ImageSource},
    connect_hosts, discovery, join_or, resolve_ports, Attempt, Ctx,
};
use crate::connect::{local_engine, Connection, Connector};
use crate::consul;
use crate::desired::{desired_state, object_name, Secrets};
use crate::error::EXIT_OK;
use crate::lab;
use crate::reconcile::{plan_up, totals, Step};
use crate::topology::{Host, Role};

pub async fn run(ctx: &Ctx) -> Result<u8> {
    let started = Instant::now();
    let t = &ctx.topology;
    let reporter = ctx.reporter();
    // Summary lines ("cluster", "route") align with the host lines.
    let label_width = reporter.width();

    // Remote hosts first: if one is unreachable, nothing is created at all.
    let remote: Vec<&Host> = t.hosts.iter().filter(|h| !h.is_lab()).collect();
    let lab_hosts: Vec<&Host> = t.lab_hosts().collect();
    let local = if t.lab.is_some() {
        Some(local_engine().await?)
    } else {
        local_engine().await.ok()
    };
    let mut connector = Connector::new(ctx.connect_timeout, None)?;
    let mut attempts = connect_hosts(&connector, &remote, &reporter).await;
    fail_if_unreachable(&attempts, t.hosts.iter().map(|h| h.name.as_str()))?;

    if let (Some(lab), Some(local)) = (&t.lab, &local) {
        reporter.println(&format!(
            "lab {}: {} hosts on {}",
            lab.name,
            lab_hosts.len(),
            lab.subnet
        ));
        let access = lab::ensure(local, t, &ctx.state).await?;
        connector.set_lab(access);
        let lab_attempts = connect_hosts(&connector, &lab_hosts, &reporter).await;
        fail_if_unreachable(&lab_attempts, t.hosts.iter().map(|h| h.name.as_str()))?;
        attempts.extend(lab_attempts);
    }
    // Back to topology order.
    attempts.sort_by_key(|a| t.hosts.iter().position(|h| h.name == a.host.name));

    let resolved = resolve_ports(t, &super::reachable(&attempts)).await?;
    let t = &resolved;

    let secrets = Secrets {
        gossip_key: ctx.state.gossip_key(&t.name)?,
    };
    let desired = desired_state(t, &secrets);

    let limit = Arc::new(Semaphore::new(ctx.parallel));
    let work = attempts.iter().zip(&desired).map(|(a, want)| {
        let limit = limit.clone();
        let local = local.as_ref();
        async move {
            let _permit = limit.acquire().await.expect("semaphore is never closed");
            let conn = a.result.as_ref().expect("all hosts are connected here");
            let images_from = ImageSource {
                local,
                allow_pull: !a.host.is_lab(),
            };
            ensure_images(&conn.host, &want.images(), images_from, &a.line).await?;
            let observed = conn.host.observe(&t.name, &want.images()).await?;
            // App service instances being replaced go one host at a time,
            // after the rest is up (they need the agents and the LB).
            let (plan, rolling) = plan_up(want, &observed).split_rolling();
            apply_host(&conn.host, &plan, &t.name, &a.line).await?;
            Ok::<_, anyhow::Error>((plan, rolling))
        }
    });
    let results = futures_util::future::join_all(work).await;
    let mut plans = Vec::new();
    let mut rolling = Vec::new();
    let mut failed = Vec::new();
    for (a, r) in attempts.iter().zip(results) {
        match r {
            Ok((p, r)) => {
                plans.push(p);
                rolling.push(r);
            }
            Err(e) => failed.push(format!("{}: {e:#}", a.host.name)),
        }
    }
    if !failed.is_empty() {
        return Err(anyhow!("{}", failed.join("\n")));
    }

    let server = attempts
        .iter()
        .find(|a| a.host.consul_server)
        .expect("validation guarantees a server");
    let conn: &Connection = server.result.as_ref().expect("connected");
    let expected: Vec<String> = t.hosts.iter().map(|h| h.name.clone()).collect();
    let view = consul::wait_for_cluster(
        &conn.host,
        &object_name(&t.name, "consul"),
        t.ports.consul_http,
        &expected,
        Duration::from_secs(t.consul.join_timeout_secs),
    )
    .await?;
    reporter.println(&format!(
        "{:<w$}  ✔ leader {}, {}/{} members alive",
        "cluster",
        view.leader().unwrap_or("?"),
        expected.iter().filter(|n| view.is_alive(n)).count(),
        expected.len(),
        w = label_width,
    ));
    let lb = attempts
        .iter()
        .find(|a| a.host.has_role(Role::Lb))
        .expect("validation guarantees an lb host");
    let lb_conn: &Connection = lb.result.as_ref().expect("connected");
    for (a, steps) in attempts.iter().zip(&rolling) {
        let conn = a.result.as_ref().expect("connected");
        for step in steps {
            if let Step::Replace { spec, old_id, .. } = step {
                rolling_replace(&conn.host, &lb_conn.host, t, spec, old_id, &a.line).await?;
            }
        }
    }
    for a in &attempts {
        a.line.finish();
    }
    // Services are registered by the agents, not by `up`: wait until the
    // load balancer routes every instance, so "up" means "answering".
    let routed = discovery::wait_for_routes(
        &lb_conn.host,
        t,
        Duration::from_secs(t.consul.join_timeout_secs),
    )
    .await?;
    for r in &routed.routes {
        reporter.println(&format!(
            "{:<w$}  ✔ {} → {} instance(s): http://{}:{}{}  or  Host: {}",
            "route",
            r.service,
            r.upstreams.len(),
            lb.host.advertise,
            t.ports.lb_http,
            r.path,
            r.server_name,
            w = label_width,
        ));
    }
    for (p, r) in plans.iter_mut().zip(rolling) {
        p.steps.extend(r);
    }
    let totals = totals(&plans);
    println!(
        "{} is up in {:.1} s ({totals}); load balancer http://{}:{}/",
        t.name,
        started.elapsed().as_secs_f64(),
        lb.host.advertise,
        t.ports.lb_http,
    );
    Ok(EXIT_OK)
}

/// Stop before changing anything when a host cannot be reached.
fn fail_if_unreachable<'a>(
    attempts: &[Attempt<'_>],
    all: impl Iterator<Item = &'a str>,
) -> Result<()> {
    let failed: Vec<String> = attempts
        .iter()
        .filter_map(|a| a.result.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    let bad: Vec<&str> = attempts
        .iter()
        .filter(|a| a.result.is_err())
        .map(|a| a.host.name.as_str())
        .collect();
    let others: Vec<&str> = all.filter(|n| !bad.contains(n)).collect();
    let mut msg = failed.join("\n");
    if !others.is_empty() {
        msg.push_str(&format!("\nnothing was changed on {}", join_or(&others)));
    }
    Err(anyhow!(msg))
}
