//! `stagectl ls`: the environments found on the hosts of a topology (any
//! topology naming the servers will do), with their state, ports and load
//! balancer address: found by labels on the hosts, not from local state.

use std::collections::BTreeMap;

use anyhow::Result;
use comfy_table::{presets::NOTHING, Table};
use serde::Serialize;

use crate::agent::labels::{self, Component};
use crate::cli::OutputFormat;
use crate::error::{EXIT_FAILED, EXIT_OK};
use crate::pipeline::events::Reporter;
use crate::pipeline::{open, Ctx, Unreachable};

#[derive(Debug, Default, Serialize)]
pub struct EnvSummary {
    pub name: String,
    /// `up` when every container runs, else `degraded`.
    pub state: String,
    pub hosts: Vec<String>,
    pub containers: usize,
    pub running: usize,
    pub ports: Option<String>,
    pub lb: Option<String>,
}

pub async fn run(ctx: &Ctx, output: OutputFormat) -> Result<u8> {
    let hosts = open(ctx, &Reporter::quiet(), Unreachable::Report).await?;
    let mut envs: BTreeMap<String, EnvSummary> = BTreeMap::new();
    let mut unreachable = Vec::new();
    for a in &hosts.attempts {
        match &a.result {
            Ok(conn) => {
                for c in conn.host.stagectl_containers().await? {
                    count(&mut envs, &a.host.name, &a.host.advertise.to_string(), c);
                }
            }
            Err(e) => unreachable.push(format!("{e:#}")),
        }
    }
    for e in envs.values_mut() {
        e.state = if e.running == e.containers {
            "up"
        } else {
            "degraded"
        }
        .into();
    }
    let list: Vec<&EnvSummary> = envs.values().collect();
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        OutputFormat::Table => print_table(&list),
    }
    for u in &unreachable {
        eprintln!("error: {u}");
    }
    Ok(if unreachable.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

/// Count one container of some environment on `host`.
fn count(
    envs: &mut BTreeMap<String, EnvSummary>,
    host: &str,
    advertise: &str,
    c: crate::engine::docker::LabeledContainer,
) {
    let l = c.labels;
    let Some(env) = l.get(labels::ENV) else {
        return;
    };
    let e = envs.entry(env.clone()).or_insert_with(|| EnvSummary {
        name: env.clone(),
        ..Default::default()
    });
    if !e.hosts.iter().any(|h| h == host) {
        e.hosts.push(host.to_string());
    }
    e.containers += 1;
    if c.running {
        e.running += 1;
    }
    let ports = l
        .get(labels::PORTS)
        .and_then(|p| crate::plan::ports::from_label(p));
    if let Some(p) = &ports {
        e.ports = Some(format!(
            "lb {} consul {}-{}",
            p.lb_http, p.consul_server, p.consul_http
        ));
    }
    if l.get(labels::COMPONENT).map(String::as_str) == Some(Component::Nginx.label()) {
        if let Some(p) = ports {
            e.lb = Some(format!("http://{advertise}:{}/", p.lb_http));
        }
    }
}

fn print_table(list: &[&EnvSummary]) {
    if list.is_empty() {
        println!("no environment on these hosts");
        return;
    }
    let mut table = Table::new();
    table.load_style(NOTHING);
    table.set_header(vec![
        "ENVIRONMENT",
        "STATE",
        "HOSTS",
        "CONTAINERS",
        "PORTS",
        "LOAD BALANCER",
    ]);
    for e in list {
        table.add_row(vec![
            e.name.clone(),
            e.state.clone(),
            e.hosts.join(", "),
            format!("{}/{} running", e.running, e.containers),
            e.ports.clone().unwrap_or_else(|| "-".into()),
            e.lb.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{table}");
}
