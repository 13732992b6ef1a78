//! The status as tables for people.

use comfy_table::{presets::NOTHING, Table};

use super::Status;
use crate::agent::registration::META_ORIGIN;
use crate::cluster::http::InstanceHealth;
use crate::commands::printable;
use crate::style::Stream;

pub fn print(s: &Status) {
    print_hosts(s);
    print_consul(s);
    print_services(s);
    print_lb(s);
    if let Some(last) = &s.last_up {
        println!(
            "\nlast up: {} ago by {} (stagectl {}, {} hosts, desired state {})",
            age(last.at),
            last.by,
            last.stagectl,
            last.hosts.len(),
            &last.desired[..last.desired.len().min(12)]
        );
        for host in last.departed.keys() {
            println!(
                "{host}: out of the topology and not reached by that up; `stagectl down --host {host}` clears it"
            );
        }
    }
    if s.healthy {
        println!("\n{}: {}", s.environment, Stream::Stdout.good("healthy"));
    } else {
        println!("\n{}: {}", s.environment, Stream::Stdout.bad("degraded"));
        for p in &s.problems {
            println!("  - {p}");
        }
    }
}

/// One row per host; then what carries the label without being ours.
fn print_hosts(s: &Status) {
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
    for h in s.hosts.iter().filter(|h| !h.not_managed.is_empty()) {
        println!(
            "  {}: labelled for {} but not stagectl's (left alone): {}",
            h.name,
            s.environment,
            h.not_managed.join(", ")
        );
    }
}

fn print_consul(s: &Status) {
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
}

fn print_services(s: &Status) {
    if !s.services.is_empty() {
        let mut t = Table::new();
        t.load_style(NOTHING);
        t.set_header(vec!["SERVICE", "INSTANCES", "HEALTHY"]);
        for (name, svc) in &s.services {
            let instances: Vec<String> = svc.instances.iter().map(instance_cell).collect();
            let want = if svc.expected > 0 {
                format!(" (want {})", svc.expected)
            } else {
                String::new()
            };
            t.add_row(vec![
                printable(name),
                instances.join("  "),
                format!("{}/{}{want}", svc.passing, svc.instances.len()),
            ]);
        }
        println!("\n{t}");
    }
}

fn print_lb(s: &Status) {
    if let Some(lb) = &s.lb {
        let mut t = Table::new();
        t.load_style(NOTHING);
        t.set_header(vec!["ROUTE", "PATH", "UPSTREAMS"]);
        for r in &lb.status.routes {
            let (route, at) = match r.tcp_port {
                Some(port) => (
                    format!("tcp → {}", r.service),
                    // `address` is the HTTP listener's `ip:port`.
                    format!(
                        "{}:{port}",
                        lb.address
                            .rsplit_once(':')
                            .map_or(lb.address.as_str(), |(ip, _)| ip)
                    ),
                ),
                None => (
                    format!("{} → {}", r.server_name, r.service),
                    format!("http://{}{}", lb.address, r.path),
                ),
            };
            t.add_row(vec![route, at, r.upstreams.len().to_string()]);
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
        if !lb.status.excluded.is_empty() {
            println!("\nLEFT OUT OF THE LB CONFIG");
            for e in &lb.status.excluded {
                println!("  {e}");
            }
        }
    }
}

/// One instance in a services table: `host-1:32768`, with its health when
/// not passing and `(ad-hoc)` when it is not one of the environment's
/// declared instances (a container that claimed the name, or a registration
/// made through Consul's API).
pub fn instance_cell(i: &InstanceHealth) -> String {
    let health = if i.status == "passing" {
        String::new()
    } else {
        format!(" ({})", i.status)
    };
    let adhoc = if i.instance.meta.get(META_ORIGIN).map(String::as_str) == Some("declared") {
        ""
    } else {
        " (ad-hoc)"
    };
    format!(
        "{}:{}{health}{adhoc}",
        printable(&i.instance.node),
        i.instance.port
    )
}

/// `42 s`, `7 min`, `3 h`, `2 d` since a Unix time.
fn age(unix: u64) -> String {
    crate::clock::span(crate::clock::unix_now().saturating_sub(unix))
}

/// `HH:MM:SS UTC` of a Unix time.
pub fn clock(unix: u64) -> String {
    let d = unix % 86_400;
    format!("{:02}:{:02}:{:02} UTC", d / 3600, d % 3600 / 60, d % 60)
}
