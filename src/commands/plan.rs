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
use crate::plan::reconcile::{render, HostPlan, Step};
use crate::plan::{lab_steps, Plan};

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
    let mut plan = Plan::up(t, &desired, &snapshot).map_err(crate::error::input)?;
    plan.lab = lab_steps(t, snapshot.lab.as_ref());

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
    if let Some(lab) = &t.lab {
        for step in &plan.lab {
            println!("lab {}  {}", lab.name, step.describe());
        }
    }
    print!("{}", render(&with_rolling(&plan.hosts, &plan.rolling)));
    if !plan.members.is_empty() {
        println!("Consul membership, one change at a time:");
        for change in &plan.members {
            print!("{}", render(&[change.as_host_plan()]));
            let wait = change.wait_reference();
            println!("  then wait until {} (asked {})", wait.subject, wait.host);
        }
    }
    for stage in &plan.stages {
        println!("service {}, in order:", stage.service);
        if let Some(crate::plan::Wait::Passing { services, host }) = &stage.after {
            let who = match &services[..] {
                [one] => format!("{one} has"),
                many => format!("{} each have", crate::pipeline::join_and(many)),
            };
            println!("  first wait until {who} a passing instance the LB routes to (asked {host})");
        }
        if let Some((host, step)) = &stage.before_rollout {
            println!("  then run once on {host}: {}", step.describe());
        }
        print!("{}", render(&with_rolling(&stage.hosts, &stage.rolling)));
    }
    for step in &plan.edge {
        let r = step.reference();
        println!("edge on {}: {} {}", r.host, step.verb(), r.subject);
    }
    for gone in snapshot.departed.iter().filter(|d| d.unreachable) {
        println!(
            "{}: out of the topology and not reached; what runs there stays until `stagectl down --host {}` clears it",
            gone.host, gone.host
        );
    }
    println!("{}. Nothing was changed.", plan.totals());
    Ok(EXIT_OK)
}

/// Host plans with the drained replacements shown under their hosts, last.
fn with_rolling(hosts: &[HostPlan], rolling: &[(String, Step)]) -> Vec<HostPlan> {
    let mut out = hosts.to_vec();
    for (host, step) in rolling {
        match out.iter_mut().find(|p| p.host == *host) {
            Some(p) => p.steps.push(step.clone()),
            None => out.push(HostPlan {
                host: host.clone(),
                steps: vec![step.clone()],
                unchanged: vec![],
            }),
        }
    }
    out
}
