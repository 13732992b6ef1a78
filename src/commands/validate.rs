//! `stagectl validate`: the topology as understood, or its problems.

use anyhow::Result;

use serde_json::json;

use super::Ctx;
use crate::cli::OutputFormat;
use crate::error::EXIT_OK;
use crate::topology::{Expose, HealthCheck, Service};

pub fn run(ctx: &Ctx, output: OutputFormat) -> Result<u8> {
    let t = &ctx.topology;
    if output == OutputFormat::Json {
        // Environment values are the user's own; they are printed as
        // names only (values may be secrets).
        let hosts: Vec<_> = t
            .hosts
            .iter()
            .map(|h| {
                json!({
                    "name": h.name,
                    "address": h.endpoint.to_string(),
                    "advertise": h.advertise.to_string(),
                    "consul": if h.consul_server { "server" } else { "client" },
                    "roles": h.roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let services: Vec<_> = t
            .services
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "image": s.image,
                    "port": s.port,
                    "hosts": s.hosts,
                    "per_host": s.per_host,
                    "env": s.env.keys().collect::<Vec<_>>(),
                    "expose": s.expose,
                    "lb_port": s.lb_port,
                    "health": health(s),
                    "depends_on": s.depends_on,
                    "before_rollout": s.before_rollout,
                    "volumes": s.volumes.keys().collect::<Vec<_>>(),
                    "secrets": s.secrets.iter().map(|x| &x.name).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "file": t.source.display().to_string(),
                "valid": true,
                "name": t.name,
                "lab": t.lab.as_ref().map(|l| json!({"name": l.name, "subnet": l.subnet.to_string()})),
                "datacenter": t.consul.datacenter,
                "bootstrap_expect": t.consul.bootstrap_expect,
                "hosts": hosts,
                "services": services,
            })
        );
        return Ok(EXIT_OK);
    }
    println!("{}: valid", t.source.display());
    println!(
        "environment {}: {} hosts, {} Consul servers (bootstrap-expect {}), datacenter {}",
        t.name,
        t.hosts.len(),
        t.consul_servers().count(),
        t.consul.bootstrap_expect,
        t.consul.datacenter
    );
    if let Some(lab) = &t.lab {
        println!("lab {} on {}", lab.name, lab.subnet);
    }
    println!("hosts:");
    let width = t.hosts.iter().map(|h| h.name.len()).max().unwrap_or(0);
    for h in &t.hosts {
        let roles: Vec<String> = h.roles.iter().map(|r| r.to_string()).collect();
        println!(
            "  {:<width$}  {}  advertise {}  consul {}  roles [{}]",
            h.name,
            h.endpoint,
            h.advertise,
            if h.consul_server { "server" } else { "client" },
            roles.join(", ")
        );
    }
    if !t.services.is_empty() {
        println!("services:");
    }
    let width = t.services.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &t.services {
        let reached = match s.expose {
            Expose::Http => format!("http /{}/", s.name),
            Expose::Tcp => match s.lb_port {
                Some(p) => format!("tcp :{p}"),
                None => "tcp (a port of the block)".into(),
            },
            Expose::None => "not routed".into(),
        };
        let mut line = format!(
            "  {:<width$}  {}  {} instance(s) on {}  {reached}  health {}",
            s.name,
            s.image,
            s.hosts.len() * s.per_host as usize,
            s.hosts.join(", "),
            health(s)
        );
        if !s.depends_on.is_empty() {
            line.push_str(&format!("  after {}", s.depends_on.join(", ")));
        }
        if let Some(cmd) = &s.before_rollout {
            line.push_str(&format!("  before_rollout: {}", cmd.join(" ")));
        }
        println!("{line}");
    }
    Ok(EXIT_OK)
}

/// `http /health`, `tcp`, `cmd redis-cli ping`.
fn health(s: &Service) -> String {
    match &s.health.check {
        HealthCheck::Tcp => "tcp".into(),
        HealthCheck::Http(path) => format!("http {path}"),
        HealthCheck::Cmd(cmd) => format!("cmd {}", cmd.join(" ")),
    }
}
