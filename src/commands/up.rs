//! `stagectl up`: converge every host to the topology, through the
//! pipeline: connect (abort if any host is unreachable: nothing changes
//! anywhere), take the lock, make the local lab, snapshot, work out the
//! keys, plan, and hand the plan's phases to the conductor
//! (`pipeline::conduct`).

use anyhow::{Context, Result};

use crate::cli::EventFormat;
use crate::cluster::consul;
use crate::error::EXIT_OK;
use crate::labels::Component;
use crate::pipeline::conduct::{Run, Timings, Tokens};
use crate::pipeline::events::Reporter;
use crate::pipeline::{open, resolve_ports, Ctx, Hosts, Unreachable};
use crate::plan::desired::{desired_state, images_of, Secrets};
use crate::plan::{lab_steps, Phase, Plan, Wait};
use crate::state::KeptKey;

/// `ttl`: `--ttl` in seconds (0: no expiry); none: the expiry stays as the
/// last `up` left it. `rotate_keys`: a new record key (and so new tokens)
/// even when the servers hold one.
pub async fn run(
    ctx: &Ctx,
    output: EventFormat,
    ttl: Option<u64>,
    rotate_keys: bool,
) -> Result<u8> {
    let mut timings = Timings::start();
    // Before anything is touched: a missing secret changes nothing.
    let values = crate::secrets::read(&ctx.topology.services)?;
    let reporter = ctx.event_reporter(output);
    let mut hosts = open(ctx, &reporter, Unreachable::Abort).await?;
    timings.mark("connect");
    // One run at a time per environment: taken before anything changes.
    let mut lock = super::lock::take(ctx, "up", &hosts, &reporter).await?;
    timings.mark("lock");
    let asked = Asked { ttl, rotate_keys };
    let converged = converge(
        ctx, &mut hosts, &mut lock, &reporter, timings, values, asked,
    )
    .await;
    super::lock::give_back(lock).await;
    converged
}

/// What this `up` was asked beyond the topology.
struct Asked {
    ttl: Option<u64>,
    rotate_keys: bool,
}

async fn converge<'a>(
    ctx: &'a Ctx,
    hosts: &mut Hosts<'a>,
    lock: &mut Option<crate::lock::Lock>,
    reporter: &Reporter,
    mut timings: Timings,
    values: std::collections::BTreeMap<String, Vec<u8>>,
    asked: Asked,
) -> Result<u8> {
    let t = &ctx.topology;
    // The lab first: its hosts can only be looked into once they run. As
    // it is now, under the lock (another run may have made it meanwhile).
    hosts.refresh_lab(ctx).await?;
    if let Some(l) = &t.lab {
        reporter.println(&format!(
            "lab {}: {} hosts on {}",
            l.name,
            t.lab_hosts().count(),
            l.subnet
        ));
        let lab = Plan {
            phases: vec![Phase::Lab(lab_steps(t, hosts.lab.as_ref()))],
        };
        Run::new(ctx, &ctx.topology, hosts, lock, reporter, &mut timings)
            .phases(&lab, None, async {})
            .await?;
        hosts.connect_lab(ctx, reporter).await?;
        timings.mark("lab");
    }

    let t = &resolve_ports(t, &hosts.reachable()).await?;
    let mut snapshot = hosts.snapshot(t, &images_of(t)).await?;
    // Read once: the last record is checked with it, every token derived
    // from it. Held but unreadable is an error, never a reason to make a
    // new key (the cluster's tokens would no longer match).
    let (held_key, held_seed) =
        tokio::join!(hosts.record_key(t, &snapshot), hosts.tls_seed(t, &snapshot));
    let held_key = match held_key? {
        Some(key) => Some(key),
        // `down --keep-data` left Consul's data and no container to ask.
        None => ctx.state.kept_key(&t.name, KeptKey::Record)?,
    };
    let held_seed = match held_seed? {
        Some(seed) => Some(seed),
        None => ctx.state.kept_key(&t.name, KeptKey::TlsSeed)?,
    };
    let last = hosts
        .believed_last_up(t, &snapshot, held_key.as_deref())
        .await;
    if let Some(record) = &last {
        hosts
            .find_departed(t, record, &mut snapshot, reporter)
            .await?;
    }
    if t.lb.edge {
        // Before anything of this environment is kept or changed.
        crate::plan::edge::refuse_overlaps(t, &snapshot).map_err(crate::error::input)?;
    }
    let expires_at = match asked.ttl {
        Some(0) => None,
        Some(seconds) => Some(crate::clock::unix_now() + seconds),
        None => last.and_then(|l| l.expires_at),
    };
    // A new key goes to the servers with their spec (see `desired`).
    let record_key = match &held_key {
        Some(key) if !asked.rotate_keys => key.clone(),
        _ => crate::cluster::record::new_key()?,
    };
    // Not rotated with the record key: servers replaced one at a time must
    // keep a CA in common with the others.
    let tls_seed = match held_seed {
        Some(seed) => seed,
        None if held_key.is_some() && !crate::pipeline::key_holders(t, &snapshot).is_empty() => {
            // Made by a stagectl before TLS: its servers, replaced one at a
            // time with TLS, could not talk to the ones still without it.
            return Err(crate::error::input(format!(
                "{}: its Consul agents run without TLS (made by an older stagectl), and \
                 turning TLS on in place is not supported yet; nothing was changed. \
                 Run `stagectl down --keep-data`, then `stagectl up`: the data stays \
                 (Consul's too), but nothing answers in between",
                t.name
            )));
        }
        None => crate::cluster::tls::new_seed()?,
    };
    let mut secrets = Secrets {
        record_key,
        tls_seed,
        values,
        ..Default::default()
    };
    let stored = ctx.state.existing_gossip_key(&t.name)?;
    secrets.gossip_key = match hosts
        .gossip_key(t, stored.clone(), &secrets, &snapshot)
        .await?
    {
        Some(key) => {
            ctx.state.keep_gossip_key(&t.name, &key)?;
            key
        }
        None => ctx.state.gossip_key(&t.name)?, // a new environment: a new key
    };
    let desired = desired_state(t, &secrets);
    let plan = Plan::up(t, &desired, &snapshot).map_err(crate::error::input)?;
    timings.mark("snapshot and plan");

    // Every token first: the agents' views of the cluster are read with
    // theirs. Departed hosts keep theirs until they are cleared (their
    // agents leave with them).
    let names: Vec<&str> = t
        .hosts
        .iter()
        .map(|h| h.name.as_str())
        .chain(hosts.departed.iter().map(|d| d.host.name.as_str()))
        .collect();
    let acl_plan = crate::cluster::acl::plan(&secrets.record_key, &t.name, &names);
    // Running servers are replaced one at a time, after the cluster wait
    // (membership changes): until then they know only the management
    // token of the key they were made with. The new tokens are made with
    // it, and once the servers run with the new key, with theirs.
    let held_master = held_key
        .as_deref()
        .map(|k| crate::cluster::acl::master(k, &t.name))
        .filter(|m| *m != acl_plan.master);
    let tokens = Tokens {
        server: t.consul_servers().find_map(|s| hosts.engine(&s.name)),
        first: crate::cluster::acl::AclPlan {
            master: held_master
                .clone()
                .unwrap_or_else(|| acl_plan.master.clone()),
            tokens: acl_plan.tokens.clone(),
        },
        then: held_master.is_some().then(|| acl_plan.clone()),
        timeout: std::time::Duration::from_secs(t.consul.join_timeout_secs),
    };
    let record = record_last_up(hosts, t, &secrets.record_key, &desired, &plan, expires_at);
    Run::new(ctx, t, hosts, lock, reporter, &mut timings)
        .phases(&plan, Some(&tokens), record)
        .await?;
    let lb = plan.routes().map(Wait::host).context("no lb host")?;
    Ok(finished(t, lb, &plan, timings, reporter))
}

/// The last line of `up`: how long, what changed, where the LB answers.
fn finished(
    t: &crate::topology::Topology,
    lb: &str,
    plan: &Plan,
    timings: Timings,
    reporter: &Reporter,
) -> u8 {
    let totals = plan.totals();
    let lb_address = t
        .host(lb)
        .map(|h| h.advertise.to_string())
        .unwrap_or_default();
    let url = format!("http://{lb_address}:{}/", t.ports.lb_http);
    // With the edge, the names answer on 80 and 443 too.
    let edge =
        t.lb.edge
            .then(|| format!("https://<service>.{}.{}/", t.name, t.lb.domain));
    let seconds = timings.started.elapsed().as_secs_f64();
    if reporter.is_json() {
        println!(
            "{}",
            serde_json::json!({"event": "up", "env": t.name, "seconds": (seconds * 10.0).round() / 10.0, "totals": totals, "lb": url, "edge": edge, "phases": timings.phases})
        );
    } else {
        let edge = edge.map(|e| format!(", and {e} on ports 80 and 443 (trust `stagectl ca`)"));
        println!(
            "{} is up in {seconds:.1} s ({totals}); load balancer {url}{}",
            t.name,
            edge.unwrap_or_default()
        );
    }
    EXIT_OK
}

/// Keep what this run applied in the cluster (see `consul::LastUp`). A
/// failure to is a warning: the environment is up either way.
async fn record_last_up(
    hosts: &Hosts<'_>,
    t: &crate::topology::Topology,
    record_key: &[u8],
    desired: &[crate::spec::HostState],
    plan: &Plan,
    expires_at: Option<u64>,
) {
    let Some(server) = plan.cluster().and_then(|w| hosts.engine(w.host())) else {
        return;
    };
    // Hosts out of the topology not reached: a later run clears them.
    let departed = hosts
        .departed
        .iter()
        .filter(|d| d.result.is_err())
        .map(|d| (d.host.name.clone(), d.host.endpoint.clone()))
        .collect();
    let container = Component::Consul.container(&t.name);
    let kept = async {
        let mut engines = hosts.engine_ids().await?;
        // Hosts still to clear keep the engine ID they were applied with.
        for d in hosts.departed.iter().filter(|d| d.result.is_err()) {
            if let Some(id) = &d.engine_id {
                engines.insert(d.host.name.clone(), id.clone());
            }
        }
        let record = consul::LastUp::of_this_run(t, desired, departed, expires_at, engines);
        consul::put_last_up(
            server,
            &container,
            t.ports.consul_http,
            &t.name,
            record_key,
            &record,
        )
        .await
    };
    if let Err(e) = kept.await {
        eprintln!("warning: the record of this run was not kept in Consul: {e:#}");
    }
}
