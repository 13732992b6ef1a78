//! `stagectl status`: hosts, containers and the Consul cluster, as tables or
//! JSON. Exit code 1 when anything is degraded, so CI can gate on it.

use anyhow::Result;
use comfy_table::{presets::NOTHING, Table};
use serde::Serialize;

use super::{connect_hosts, Ctx};
use crate::cli::OutputFormat;
use crate::connect::{local_engine, Connector};
use crate::consul::{cluster_view, ClusterView};
use crate::desired::object_name;
use crate::error::{EXIT_FAILED, EXIT_OK};
use crate::lab;
use crate::progress::Reporter;

#[derive(Debug, Serialize)]
pub struct Status {
    pub environment: String,
    pub healthy: bool,
    pub problems: Vec<String>,
    pub hosts: Vec<HostStatus>,
    pub consul: Option<ClusterStatus>,
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
                    let observed = conn.host.observe(&t.name).await?;
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
    if s.healthy {
        println!("\n{}: healthy", s.environment);
    } else {
        println!("\n{}: degraded", s.environment);
        for p in &s.problems {
            println!("  - {p}");
        }
    }
}
