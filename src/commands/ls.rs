//! `stagectl ls`: the environments found on the hosts of a topology (any
//! topology naming the servers will do), with their state, ports and load
//! balancer address: found by labels on the hosts, not from local state.

use std::collections::BTreeMap;

use anyhow::Result;
use comfy_table::{presets::NOTHING, Table};
use serde::Serialize;

use super::{connect_hosts, Ctx};
use crate::cli::OutputFormat;
use crate::connect::{local_engine, Connector};
use crate::error::{EXIT_FAILED, EXIT_OK};
use crate::lab;
use crate::labels;
use crate::progress::Reporter;

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
    let t = &ctx.topology;
    let mut connector = Connector::new(ctx.connect_timeout, None)?;
    let mut skip = Vec::new();
    if let Some(l) = &t.lab {
        let observed = lab::observe(&local_engine().await?, &l.name).await?;
        skip = t
            .lab_hosts()
            .filter(|h| {
                !observed
                    .hosts
                    .get(&h.name)
                    .is_some_and(|(_, running)| *running)
            })
            .map(|h| h.name.clone())
            .collect();
        connector.set_lab(lab::access(&ctx.state, &l.name));
    }
    let hosts: Vec<_> = t.hosts.iter().filter(|h| !skip.contains(&h.name)).collect();
    let attempts = connect_hosts(&connector, &hosts, &Reporter::quiet()).await;
    let mut envs: BTreeMap<String, EnvSummary> = BTreeMap::new();
    let mut unreachable = Vec::new();
    for a in &attempts {
        let conn = match &a.result {
            Ok(c) => c,
            Err(e) => {
                unreachable.push(format!("{e:#}"));
                continue;
            }
        };
        let containers = conn.host.stagectl_containers().await?;
        for c in containers {
            let l = c.labels;
            let Some(env) = l.get(labels::ENV) else {
                continue;
            };
            let e = envs.entry(env.clone()).or_insert_with(|| EnvSummary {
                name: env.clone(),
                ..Default::default()
            });
            if !e.hosts.contains(&a.host.name) {
                e.hosts.push(a.host.name.clone());
            }
            e.containers += 1;
            if c.running {
                e.running += 1;
            }
            let ports = l
                .get(crate::ports::LABEL)
                .and_then(|p| crate::ports::from_label(p));
            if let Some(p) = &ports {
                e.ports = Some(format!(
                    "lb {} consul {}-{}",
                    p.lb_http, p.consul_server, p.consul_http
                ));
            }
            if l.get(labels::COMPONENT).map(String::as_str) == Some("nginx") {
                if let Some(p) = ports {
                    e.lb = Some(format!("http://{}:{}/", a.host.advertise, p.lb_http));
                }
            }
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
        OutputFormat::Table => {
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
            for e in &list {
                table.add_row(vec![
                    e.name.clone(),
                    e.state.clone(),
                    e.hosts.join(", "),
                    format!("{}/{} running", e.running, e.containers),
                    e.ports.clone().unwrap_or_else(|| "-".into()),
                    e.lb.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            if list.is_empty() {
                println!("no environment on these hosts");
            } else {
                println!("{table}");
            }
        }
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
