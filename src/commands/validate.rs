//! `stagectl validate`: the topology as understood, or its problems.

use anyhow::Result;

use super::Ctx;
use crate::error::EXIT_OK;

pub fn run(ctx: &Ctx) -> Result<u8> {
    let t = &ctx.topology;
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
    Ok(EXIT_OK)
}
