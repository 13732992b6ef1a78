//! `stagectl ls`: the environments found on the hosts of a topology (any
//! topology naming the servers will do), with their state, ports and load
//! balancer address: found by labels on the hosts, not from local state.

use std::collections::BTreeMap;

use anyhow::Result;
use comfy_table::{presets::NOTHING, Table};
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::clock::span;
use crate::cluster::consul;
use crate::error::{EXIT_FAILED, EXIT_OK};
use crate::labels::{self, Component};
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
    /// Unix seconds when its oldest container was made: its age.
    pub created_at: Option<u64>,
    /// Who ran the last `up`, and when (unix seconds); from its record in
    /// the environment's Consul.
    pub last_up_by: Option<String>,
    pub last_up_at: Option<u64>,
    /// Unix seconds after which `gc` removes it (`up --ttl`).
    pub expires_at: Option<u64>,
    /// A host whose Consul agent of this environment runs, and its HTTP
    /// port: where the record is read.
    #[serde(skip)]
    consul: Option<(String, u16)>,
}

impl EnvSummary {
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Every environment on the hosts that answered, with its last `up`
/// record; and the hosts that did not answer.
pub async fn gather(ctx: &Ctx) -> Result<(Vec<EnvSummary>, Vec<String>)> {
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
    let records = envs.values().map(|e| async {
        let (host, port) = e.consul.as_ref()?;
        let engine = hosts.engine(host)?;
        let container = Component::Consul.container(&e.name);
        let holders: Vec<&str> = e.hosts.iter().map(String::as_str).collect();
        let key = hosts
            .record_key_among(&e.name, &holders)
            .await
            .ok()
            .flatten();
        let read = consul::get_last_up(engine, &container, *port, &e.name, key.as_deref())
            .await
            .ok()?;
        if let Some(warning) = read.warning(&e.name) {
            eprintln!("warning: {warning}");
        }
        read.believed()
    });
    let records = futures_util::future::join_all(records).await;
    for (e, record) in envs.values_mut().zip(records) {
        e.state = if e.running == e.containers {
            "up"
        } else {
            "degraded"
        }
        .into();
        if let Some(r) = record {
            e.last_up_by = Some(r.by);
            e.last_up_at = Some(r.at);
            e.expires_at = r.expires_at;
        }
    }
    Ok((envs.into_values().collect(), unreachable))
}

pub async fn run(ctx: &Ctx, output: OutputFormat) -> Result<u8> {
    let (envs, unreachable) = gather(ctx).await?;
    let list: Vec<&EnvSummary> = envs.iter().collect();
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
    if c.created > 0 {
        e.created_at = Some(e.created_at.map_or(c.created, |at| at.min(c.created)));
    }
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
    let component = l.get(labels::COMPONENT).map(String::as_str);
    // A server's: only stagectl's token, which servers hold, reads the
    // environment's record.
    let server = l.get(labels::CONSUL_ROLE).is_some_and(|r| r == "server");
    if component == Some(Component::Consul.label()) && server && c.running && e.consul.is_none() {
        if let Some(p) = &ports {
            e.consul = Some((host.to_string(), p.consul_http));
        }
    }
    if component == Some(Component::Nginx.label()) {
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
        "AGE",
        "LAST UP",
        "EXPIRES",
    ]);
    let now = crate::clock::unix_now();
    for e in list {
        let last_up = match (&e.last_up_by, e.last_up_at) {
            (Some(by), Some(at)) => format!("{} ago by {by}", span(now.saturating_sub(at))),
            _ => "-".into(),
        };
        let expires = match e.expires_at {
            Some(at) if at <= now => format!("expired {} ago", span(now - at)),
            Some(at) => format!("in {}", span(at - now)),
            None => "never".into(),
        };
        table.add_row(vec![
            e.name.clone(),
            e.state.clone(),
            e.hosts.join(", "),
            format!("{}/{} running", e.running, e.containers),
            e.ports.clone().unwrap_or_else(|| "-".into()),
            e.lb.clone().unwrap_or_else(|| "-".into()),
            e.created_at
                .map(|at| span(now.saturating_sub(at)))
                .unwrap_or_else(|| "-".into()),
            last_up,
            expires,
        ]);
    }
    println!("{table}");
}
