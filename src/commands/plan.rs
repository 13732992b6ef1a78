//! `stagectl plan`: what `up` would do on each host, changing nothing.
//!
//! Lab hosts that do not exist yet are shown as to be created and count as
//! empty; existing hosts are connected to and observed, read-only. No key is
//! generated: without a stored gossip key the plan uses a placeholder, which
//! is exactly what `up` would see (a new key, so everything new).

use anyhow::{anyhow, Result};

use super::{connect_hosts, Ctx};
use crate::connect::{local_engine, Connector};
use crate::desired::{desired_state, Secrets};
use crate::error::EXIT_OK;
use crate::lab;
use crate::progress::Reporter;
use crate::reconcile::{plan_up, render, totals, HostPlan, Observed};
use crate::topology::Host;

pub async fn run(ctx: &Ctx) -> Result<u8> {
    let t = &ctx.topology;
    let mut connector = Connector::new(ctx.connect_timeout, None)?;
    let mut lab_lines = Vec::new();
    let mut lab_missing = Vec::new();
    if let Some(lab) = &t.lab {
        let local = local_engine().await?;
        let observed = lab::observe(&local, &lab.name).await?;
        if observed.network.is_none() {
            lab_lines.push(format!(
                "+ bridge {} ({})",
                lab::network_name(&lab.name),
                lab.subnet
            ));
        }
        for h in t.lab_hosts() {
            match observed.hosts.get(&h.name) {
                Some((_, true)) => {}
                Some((_, false)) => {
                    lab_lines.push(format!("> lab host {} (stopped; will be started)", h.name));
                    lab_missing.push(h.name.clone());
                }
                None => {
                    lab_lines.push(format!(
                        "+ lab host {} (container {}, {})",
                        h.name,
                        lab::host_container_name(&lab.name, &h.name),
                        h.advertise
                    ));
                    lab_missing.push(h.name.clone());
                }
            }
        }
        connector.set_lab(lab::access(&ctx.state, &lab.name));
    }

    // Progress goes to stderr and only while connecting; the plan itself is
    // stdout, so `plan > file` gives exactly the plan.
    let reporter = Reporter::plain(0);
    let reachable: Vec<&Host> = t
        .hosts
        .iter()
        .filter(|h| !lab_missing.contains(&h.name))
        .collect();
    let attempts = connect_hosts(&connector, &reachable, &reporter).await;
    let failed: Vec<String> = attempts
        .iter()
        .filter_map(|a| a.result.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    if !failed.is_empty() {
        return Err(anyhow!("{}", failed.join("\n")));
    }

    let resolved = super::resolve_ports(t, &super::reachable(&attempts)).await?;
    let t = &resolved;
    if !t.ports_declared {
        println!("ports: {}", crate::ports::to_label(&t.ports));
    }

    let key = ctx.state.existing_gossip_key(&t.name)?;
    let secrets = Secrets {
        gossip_key: key.unwrap_or_else(|| "(a new key)".into()),
    };
    let desired = desired_state(t, &secrets);
    // `up` streams the local engine's version of an image to a host that has
    // another: plan as if it had, so a rebuilt image shows as a replacement.
    let local = local_engine().await.ok();
    let mut plans: Vec<HostPlan> = Vec::new();
    for want in &desired {
        let mut observed = match attempts.iter().find(|a| a.host.name == want.host) {
            Some(a) => {
                let conn = a.result.as_ref().expect("checked above");
                conn.host.observe(&t.name, &want.images()).await?
            }
            None => Observed::default(),
        };
        if let Some(local) = &local {
            observed
                .image_ids
                .extend(local.image_ids(&want.images()).await?);
        }
        plans.push(plan_up(want, &observed));
    }

    println!(
        "{}: {} hosts, {} Consul servers (bootstrap-expect {})",
        t.name,
        t.hosts.len(),
        t.consul_servers().count(),
        t.consul.bootstrap_expect
    );
    if let Some(lab) = &t.lab {
        for l in &lab_lines {
            println!("lab {}  {l}", lab.name);
        }
    }
    print!("{}", render(&plans));
    println!("{}. Nothing was changed.", totals(&plans));
    Ok(EXIT_OK)
}
