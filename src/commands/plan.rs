//! `stagectl plan`: the plan `up` would carry out, changing nothing.
//!
//! The same pipeline as `up` up to the plan: connect (abort if a host is
//! unreachable), snapshot, plan. Lab hosts that do not exist yet count as
//! empty; a stopped one cannot be looked into, so its containers are
//! planned once `up` has started it. No key is generated: without a
//! stored gossip key the plan uses a placeholder, which is exactly what
//! `up` would see (a new key, so everything new).

use anyhow::Result;

use crate::cli::OutputFormat;
use crate::error::EXIT_OK;
use crate::pipeline::events::Reporter;
use crate::pipeline::{open, resolve_ports, Ctx, Unreachable};
use crate::plan::desired::{desired_state, images_of, Secrets};
use crate::plan::Plan;

pub async fn run(ctx: &Ctx, output: OutputFormat) -> Result<u8> {
    let values = crate::secrets::read(&ctx.topology.services)?;
    // Progress goes to stderr and only while connecting; the plan itself is
    // stdout, so `plan > file` gives exactly the plan.
    let reporter = match output {
        OutputFormat::Table => Reporter::plain(0),
        OutputFormat::Json => Reporter::quiet(),
    };
    let mut hosts = open(ctx, &reporter, Unreachable::Abort).await?;
    let t = &resolve_ports(&ctx.topology, &hosts.reachable()).await?;
    let mut snapshot = hosts.snapshot(t, &images_of(t)).await?;
    let (held_key, held_seed) =
        tokio::join!(hosts.record_key(t, &snapshot), hosts.tls_seed(t, &snapshot));
    let held_key = held_key?;
    if let Some(record) = hosts
        .believed_last_up(t, &snapshot, held_key.as_deref())
        .await
    {
        hosts
            .find_departed(t, &record, &mut snapshot, &reporter)
            .await?;
    }
    // A new environment's keys are made by its first `up`: until then the
    // plan derives its (unused) tokens and certificates from empty ones.
    let mut secrets = Secrets {
        record_key: held_key.unwrap_or_default(),
        tls_seed: held_seed?.unwrap_or_default(),
        values,
        ..Default::default()
    };
    let stored = ctx.state.existing_gossip_key(&t.name)?;
    let key = hosts.gossip_key(t, stored, &secrets, &snapshot).await?;
    secrets.gossip_key = key.unwrap_or_else(|| "(a new key)".into());
    let desired = desired_state(t, &secrets);
    let plan = Plan::up(t, &desired, &snapshot).map_err(crate::error::input)?;

    if output == OutputFormat::Json {
        for step in plan.steps() {
            println!("{}", serde_json::to_string(&step)?);
        }
        return Ok(EXIT_OK);
    }
    if !t.ports_declared {
        println!(
            "ports: {}",
            crate::plan::ports::to_label(
                &t.ports,
                &t.tcp_ports().iter().map(|(_, p)| *p).collect::<Vec<_>>()
            )
        );
    }
    println!(
        "{}: {} hosts, {} Consul servers (bootstrap-expect {})",
        t.name,
        t.hosts.len(),
        t.consul_servers().count(),
        t.consul.bootstrap_expect
    );
    print!("{}", crate::plan::print::text(t, &plan));
    for gone in snapshot.departed.iter().filter(|d| d.unreachable) {
        println!(
            "{}: out of the topology and not reached; what runs there stays until `stagectl down --host {}` clears it",
            gone.host, gone.host
        );
    }
    println!("{}. Nothing was changed.", plan.totals());
    Ok(EXIT_OK)
}
