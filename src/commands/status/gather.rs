//! The facts `status` reports, gathered in three phases: the hosts (what
//! runs, reached or not), the Consul cluster (asked on every server whose
//! agent runs; the view that knows a leader wins), the services and routes
//! (asked on the first LB host that answers). Each phase adds the problems
//! it finds.

use std::collections::BTreeMap;

use anyhow::Result;

use super::{ClusterStatus, ContainerStatus, HostStatus, LbView, ServiceStatus, Status};
use crate::cluster::consul::{cluster_view, get_last_up};
use crate::cluster::view::ClusterView;
use crate::engine::connect::Connection;
use crate::labels::{self, Component};
use crate::pipeline::discovery;
use crate::pipeline::events::Reporter;
use crate::pipeline::{open, resolve_ports, Attempt, Ctx, Unreachable};
use crate::topology::{Host, Role, Topology};

pub async fn gather(ctx: &Ctx) -> Result<Status> {
    // Quiet: status prints its own tables; connection failures show there.
    let hosts = open(ctx, &Reporter::quiet(), Unreachable::Report).await?;
    let t = &resolve_ports(&ctx.topology, &hosts.reachable()).await?;
    let mut problems = Vec::new();
    // Every host at once: each is a round trip or two to its own engine.
    let rows = futures_util::future::join_all(t.hosts.iter().map(|h| {
        let attempt = hosts.attempts.iter().find(|a| a.host.name == h.name);
        host_row(t, h, attempt)
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    for row in &rows {
        problems.extend(host_problems(t, row));
    }
    // The record of the last `up` lives in Consul: asked of the first
    // server whose agent runs, at the same time as the cluster and the
    // services; again of the server whose view won, should that differ
    // and the first have had no answer (cut off from the leader, say).
    let last_up_from = |host: Option<String>| {
        let hosts = &hosts;
        async move {
            let host = host?;
            let engine = hosts.engine(&host)?;
            let container = Component::Consul.container(&t.name);
            let key = hosts
                .record_key_among(&t.name, &[&host])
                .await
                .ok()
                .flatten();
            let read = get_last_up(
                engine,
                &container,
                t.ports.consul_http,
                &t.name,
                key.as_deref(),
            )
            .await
            .ok()?;
            if let Some(warning) = read.warning(&t.name) {
                eprintln!("warning: {warning}");
            }
            read.believed()
        }
    };
    let first_server = running_servers(t, &rows).next().map(|row| row.name.clone());
    let (cluster, (services, lb), first_answer) = tokio::join!(
        cluster_as_best_seen(t, &hosts, &rows),
        services_and_lb(t, &hosts.attempts, &mut problems),
        last_up_from(first_server.clone())
    );
    let consul = cluster.map(|(asked, v)| ClusterStatus {
        asked,
        leader: v.leader().map(str::to_string),
        servers: v
            .members
            .iter()
            .filter(|m| m.kind == "server" && m.status != "left")
            .count(),
        members: v.members.clone(),
    });
    let best_server = consul.as_ref().map(|c| c.asked.clone());
    let last_up = match first_answer {
        None if best_server != first_server => last_up_from(best_server).await,
        answer => answer,
    };
    problems.extend(service_problems(t, &services));
    problems.extend(cluster_problems(t, consul.as_ref()));
    Ok(Status {
        environment: t.name.clone(),
        healthy: problems.is_empty(),
        problems,
        hosts: rows,
        consul,
        services,
        lb,
        last_up,
    })
}

/// One host: reached or why not, what of the environment runs there, what
/// carries its label without being stagectl's.
async fn host_row(t: &Topology, h: &Host, attempt: Option<&Attempt<'_>>) -> Result<HostStatus> {
    let mut row = HostStatus {
        name: h.name.clone(),
        address: h.endpoint.to_string(),
        reachable: false,
        error: None,
        docker: None,
        consul_role: if h.consul_server { "server" } else { "client" },
        containers: vec![],
        not_managed: vec![],
    };
    let conn: &Connection = match attempt.map(|a| &a.result) {
        None => {
            row.error = Some("lab host not running".into());
            return Ok(row);
        }
        Some(Err(e)) => {
            row.error = Some(format!("{e:#}"));
            return Ok(row);
        }
        Some(Ok(conn)) => conn,
    };
    row.reachable = true;
    row.docker = Some(conn.engine_version.clone());
    // One listing answers both: this environment's containers are the
    // ones with its label, stagectl's own those with a component too.
    let (mut managed, not_managed): (Vec<_>, Vec<_>) = conn
        .host
        .stagectl_containers()
        .await?
        .into_iter()
        .filter(|c| c.labels.get(labels::ENV) == Some(&t.name))
        .partition(|c| c.labels.contains_key(labels::COMPONENT));
    managed.sort_by(|a, b| a.name.cmp(&b.name));
    row.containers = managed
        .into_iter()
        .map(|c| ContainerStatus {
            component: c.labels[labels::COMPONENT].clone(),
            name: c.name,
            running: c.running,
        })
        .collect();
    row.not_managed = not_managed.into_iter().map(|c| c.name).collect();
    Ok(row)
}

/// The cluster as the servers whose agent runs see it, asked in parallel.
/// A server that was cut off and has just come back still sees the others
/// as failed for a while (until gossip reaches it again), and one in a
/// minority sees no leader: the view that knows a leader and the most alive
/// members is the cluster's, so one stale server does not speak for it.
async fn cluster_as_best_seen(
    t: &Topology,
    hosts: &crate::pipeline::Hosts<'_>,
    rows: &[HostStatus],
) -> Option<(String, ClusterView)> {
    let asked = running_servers(t, rows).filter_map(|row| {
        let engine = hosts.engine(&row.name)?;
        Some(async move {
            let view = cluster_view(engine, &t.name, t.ports.consul_http)
                .await
                .ok()?;
            Some((row.name.clone(), view))
        })
    });
    let views = futures_util::future::join_all(asked).await;
    // max_by_key keeps the last of equals: reversed, the first server wins.
    views.into_iter().flatten().rev().max_by_key(|(_, v)| {
        let alive = v.members.iter().filter(|m| m.status == "alive").count();
        (v.leader().is_some(), alive)
    })
}

/// The hosts that are Consul servers and whose agent runs.
fn running_servers<'r>(
    t: &Topology,
    rows: &'r [HostStatus],
) -> impl Iterator<Item = &'r HostStatus> {
    let consul = Component::Consul.container(&t.name);
    rows.iter().filter(move |row| {
        row.consul_role == "server" && row.containers.iter().any(|c| c.name == consul && c.running)
    })
}

fn host_problems(t: &Topology, row: &HostStatus) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(e) = &row.error {
        problems.push(format!("{}: unreachable: {e}", row.name));
    } else if row.containers.is_empty() {
        problems.push(format!("{}: nothing of {} runs here", row.name, t.name));
    }
    for c in row.containers.iter().filter(|c| !c.running) {
        problems.push(format!("{}: {} is not running", row.name, c.name));
    }
    problems
}

/// Services and routes, from the first LB host that answers.
async fn services_and_lb(
    t: &Topology,
    attempts: &[Attempt<'_>],
    problems: &mut Vec<String>,
) -> (BTreeMap<String, ServiceStatus>, Option<LbView>) {
    let mut services = BTreeMap::new();
    let mut lb = None;
    let expected = discovery::expected_instances(t);
    let lb_conn = attempts.iter().find_map(|a| {
        let conn = a.result.as_ref().ok()?;
        a.host.has_role(Role::Lb).then_some((a.host, conn))
    });
    let Some((host, conn)) = lb_conn else {
        problems.push("lb: no load-balancer host answered".into());
        return (services, lb);
    };
    match discovery::service_report(&conn.host, t).await {
        Ok(report) => {
            for (name, instances) in report {
                let passing = instances.iter().filter(|i| i.status == "passing").count();
                let want = expected.get(&name).copied().unwrap_or(0);
                services.insert(
                    name,
                    ServiceStatus {
                        expected: want,
                        passing,
                        instances,
                    },
                );
            }
        }
        Err(e) => problems.push(format!(
            "services: cannot ask the template agent on {}: {e:#}",
            host.name
        )),
    }
    match discovery::lb_status(&conn.host, t).await {
        Ok(Some(st)) => {
            for e in &st.excluded {
                problems.push(format!("lb: left out of the config: {e}"));
            }
            if st.last_reload_ok == Some(false) {
                problems.push(format!(
                    "lb: the last config was rejected, nginx serves the previous one: {}",
                    st.last_error.clone().unwrap_or_default()
                ));
            }
            lb = Some(LbView {
                host: host.name.clone(),
                address: format!("{}:{}", host.advertise, t.ports.lb_http),
                status: st,
            });
        }
        Ok(None) => problems.push(format!(
            "lb: the template agent on {} has not rendered yet",
            host.name
        )),
        Err(e) => problems.push(format!("lb: {e:#}")),
    }
    (services, lb)
}

/// Services with fewer passing instances than the topology asks for.
fn service_problems(t: &Topology, services: &BTreeMap<String, ServiceStatus>) -> Vec<String> {
    discovery::expected_instances(t)
        .into_iter()
        .filter_map(|(name, want)| {
            let passing = services.get(&name).map(|s| s.passing).unwrap_or(0);
            (passing < want).then(|| format!("service {name}: {passing}/{want} instances passing"))
        })
        .collect()
}

fn cluster_problems(t: &Topology, consul: Option<&ClusterStatus>) -> Vec<String> {
    let Some(c) = consul else {
        return vec!["consul: no server answered".into()];
    };
    let mut problems = Vec::new();
    if c.leader.is_none() {
        problems.push("consul: no leader".into());
    }
    for h in &t.hosts {
        if !c
            .members
            .iter()
            .any(|m| m.node == h.name && m.status == "alive")
        {
            problems.push(format!("consul: {} is not an alive member", h.name));
        }
    }
    problems
}
