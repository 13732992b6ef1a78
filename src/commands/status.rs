//! `stagectl status`: hosts, containers and the Consul cluster, as tables or
//! JSON. Exit code 1 when anything is degraded, so CI can gate on it.

use anyhow::Result;
use comfy_table::{presets::NOTHING, Table};
use serde::Serialize;

use super::{connect_hosts, Ctx};
use crate::agent::template::LbStatus;
use crate::cli::OutputFormat;
use crate::connect::{local_engine, Connector};
use crate::consul::{cluster_view, ClusterView};
use crate::consul_http::InstanceHealth;
use std::collections::BTreeMap;

use super::discovery;
use crate::desired::object_name;
use crate::error::{EXIT_FAILED, EXIT_OK};
use crate::lab;
use crate::progress::Reporter;
use crate::topology::Role;

#[derive(Debug, Serialize)]
pub struct Status {
    pub environment: String,
    pub healthy: bool,
    pub problems: Vec<String>,
    pub hosts: Vec<HostStatus>,
    pub consul: Option<ClusterStatus>,
    /// Every service in Consul with its instances and their health.
    pub services: BTreeMap<String, ServiceStatus>,
    /// What the template agent on the LB host last did.
    pub lb: Option<LbView>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    /// Instances the topology deploys (0 for services started by hand).
    pub expected: usize,
    pub passing: usize,
    pub instances: Vec<InstanceHealth>,
}

#[derive(Debug, Serialize)]
pub struct LbView {
    pub host: String,
    pub address: String,
    #[serde(flatten)]
    pub status: LbStatus,
}

#[derive(Debug, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub address: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub docker: Option<String>,
    pub consul_role: &'static str,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub component: String,
    pub running: bool,
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub asked: String,
    pub leader: Option<String>,
    pub servers: usize,
    pub members: Vec<crate::consul::Member>,
}

pub async fn run(ctx: &Ctx, output: OutputFormat) -> Result<u8> {
    let status = gather(ctx).await?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        OutputFormat::Table => print_tables(&status),
    }
    Ok(if status.healthy { EXIT_OK } else { EXIT_FAILED })
}

async fn gather(ctx: &Ctx) -> Result<Status> {
    let t = &ctx.topology;
    let mut connector = Connector::new(ctx.connect_timeout, None)?;
    let mut missing_lab_hosts = Vec::new();
    if let Some(lab) = &t.lab {
        let local = local_engine().await?;
        let observed = lab::observe(&local, &lab.name).await?;
        for h in t.lab_hosts() {
            if !observed
                .hosts
                .get(&h.name)
                .is_some_and(|(_, running)| *running)
            {
                missing_lab_hosts.push(h.name.clone());
            }
        }
        connector.set_lab(lab::access(&ctx.state, &lab.name));
    }
    let hosts: Vec<_> = t
        .hosts
        .iter()
        .filter(|h| !missing_lab_hosts.contains(&h.name))
        .collect();
    // Quiet: status prints its own tables; connection failures show there.
    let attempts = connect_hosts(&connector, &hosts, &Reporter::quiet()).await;

    let resolved = super::resolve_ports(t, &super::reachable(&attempts)).await?;
    let t = &resolved;
    let mut problems = Vec::new();
    let mut host_rows = Vec::new();
    let mut view: Option<(String, ClusterView)> = None;
    for h in &t.hosts {
        let role = if h.consul_server { "server" } else { "client" };
        let mut row = HostStatus {
            name: h.name.clone(),
            address: h.endpoint.to_string(),
            reachable: false,
            error: None,
            docker: None,
            consul_role: role,
            containers: vec![],
        };
        match attempts.iter().find(|a| a.host.name == h.name) {
            None => row.error = Some("lab host not running".into()),
            Some(a) => match &a.result {
                Err(e) => row.error = Some(format!("{e:#}")),
                Ok(conn) => {
                    row.reachable = true;
                    row.docker = Some(conn.engine_version.clone());
                    let observed = conn.host.observe(&t.name, &[]).await?;
                    row.containers = observed
                        .containers
                        .iter()
                        .map(|c| ContainerStatus {
                            name: c.name.clone(),
                            component: c.component.clone(),
                            running: c.running,
                        })
                        .collect();
                    let consul = object_name(&t.name, "consul");
                    if view.is_none()
                        && h.consul_server
                        && observed
                            .containers
                            .iter()
                            .any(|c| c.name == consul && c.running)
                    {
                        if let Ok(v) = cluster_view(&conn.host, &consul, t.ports.consul_http).await
                        {
                            view = Some((h.name.clone(), v));
                        }
                    }
                }
            },
        }
        if let Some(e) = &row.error {
            problems.push(format!("{}: unreachable: {e}", h.name));
        } else if row.containers.is_empty() {
            problems.push(format!("{}: nothing of {} runs here", h.name, t.name));
        }
        for c in row.containers.iter().filter(|c| !c.running) {
            problems.push(format!("{}: {} is not running", h.name, c.name));
        }
        host_rows.push(row);
    }
    // Services and routes, from the first LB host whose template agent runs.
    let mut services = BTreeMap::new();
    let mut lb = None;
    let expected = discovery::expected_instances(t);
    let lb_conn = attempts.iter().find_map(|a| {
        let conn = a.result.as_ref().ok()?;
        a.host.has_role(Role::Lb).then_some((a.host, conn))
    });
    match lb_conn {
        None => problems.push("lb: no load-balancer host answered".into()),
        Some((host, conn)) => {
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
        }
    }
    for (name, want) in &expected {
        let passing = services.get(name).map(|s| s.passing).unwrap_or(0);
        if passing < *want {
            problems.push(format!(
                "service {name}: {passing}/{want} instances passing"
            ));
        }
    }

    let consul = view.map(|(asked, v)| ClusterStatus {
        asked,
        leader: v.leader().map(str::to_string),
        servers: v.members.iter().filter(|m| m.kind == "server").count(),
        members: v.members.clone(),
    });
    match &consul {
        None => problems.push("consul: no server answered".into()),
        Some(c) => {
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
        }
    }
    Ok(Status {
        environment: t.name.clone(),
        healthy: problems.is_empty(),
        problems,
        hosts: host_rows,
        consul,
        services,
        lb,
    })
}

fn print_tables(s: &Status) {
    let leader = s.consul.as_ref().and_then(|c| c.leader.clone());
    let mut hosts = Table::new();
    hosts.load_style(NOTHING);
    hosts.set_header(vec![
        "HOST",
        "ADDRESS",
        "DOCKER",
        "CONSUL",
        "CONTAINERS",
        "STATE",
    ]);
    for h in &s.hosts {
        let consul = if leader.as_deref() == Some(h.name.as_str()) {
            "leader"
        } else {
            h.consul_role
        };
        let containers: Vec<String> = h
            .containers
            .iter()
            .map(|c| {
                if c.running {
                    c.component.clone()
                } else {
                    format!("{} (stopped)", c.component)
                }
            })
            .collect();
        let state = match &h.error {
            Some(e) => format!("unreachable: {e}"),
            None if h.containers.iter().all(|c| c.running) && !h.containers.is_empty() => {
                "ok".into()
            }
            None => "degraded".into(),
        };
        hosts.add_row(vec![
            h.name.clone(),
            h.address.clone(),
            h.docker.clone().unwrap_or_else(|| "-".into()),
            consul.to_string(),
            containers.join(", "),
            state,
        ]);
    }
    println!("{hosts}");
    if let Some(c) = &s.consul {
        let mut members = Table::new();
        members.load_style(NOTHING);
        members.set_header(vec!["MEMBER", "ADDRESS", "STATUS", "TYPE"]);
        for m in &c.members {
            let kind = if Some(&m.node) == c.leader.as_ref() {
                "server (leader)".to_string()
            } else {
                m.kind.clone()
            };
            members.add_row(vec![
                m.node.clone(),
                m.address.clone(),
                m.status.clone(),
                kind,
            ]);
        }
        println!(
            "\nCONSUL  leader {}, {} servers (asked {})",
            c.leader.as_deref().unwrap_or("none"),
            c.servers,
            c.asked
        );
        println!("{members}");
    }
    if !s.services.is_empty() {
        let mut t = Table::new();
        t.load_style(NOTHING);
        t.set_header(vec!["SERVICE", "INSTANCES", "HEALTHY"]);
        for (name, svc) in &s.services {
            let instances: Vec<String> = svc
                .instances
                .iter()
                .map(|i| {
                    let mark = if i.status == "passing" {
                        ""
                    } else {
                        " (critical)"
                    };
                    format!("{}:{}{mark}", i.node, i.port)
                })
                .collect();
            let want = if svc.expected > 0 {
                format!(" (want {})", svc.expected)
            } else {
                String::new()
            };
            t.add_row(vec![
                name.clone(),
                instances.join("  "),
                format!("{}/{}{want}", svc.passing, svc.instances.len()),
            ]);
        }
        println!("\n{t}");
    }
    if let Some(lb) = &s.lb {
        let mut t = Table::new();
        t.load_style(NOTHING);
        t.set_header(vec!["ROUTE", "PATH", "UPSTREAMS"]);
        for r in &lb.status.routes {
            t.add_row(vec![
                format!("{} → {}", r.server_name, r.service),
                format!("http://{}{}", lb.address, r.path),
                r.upstreams.len().to_string(),
            ]);
        }
        let reload = match (lb.status.last_reload_at, lb.status.last_reload_ok) {
            (Some(at), Some(ok)) => format!(
                "{} {}{}",
                clock(at),
                if ok { "ok" } else { "REJECTED" },
                lb.status
                    .config
                    .as_ref()
                    .map(|c| format!(" (config {c})"))
                    .unwrap_or_default()
            ),
            _ => "none yet".into(),
        };
        println!(
            "\nLB  {} on {}, {} reloads, last {reload}",
            lb.address, lb.host, lb.status.reloads
        );
        if !lb.status.routes.is_empty() {
            println!("{t}");
        }
        if let (Some(false), Some(e)) = (lb.status.last_reload_ok, &lb.status.last_error) {
            println!("  last error: {e}");
        }
    }
    if s.healthy {
        println!("\n{}: healthy", s.environment);
    } else {
        println!("\n{}: degraded", s.environment);
        for p in &s.problems {
            println!("  - {p}");
        }
    }
}

/// `HH:MM:SS UTC` of a Unix time.
fn clock(unix: u64) -> String {
    let d = unix % 86_400;
    format!("{:02}:{:02}:{:02} UTC", d / 3600, d % 3600 / 60, d % 60)
}
