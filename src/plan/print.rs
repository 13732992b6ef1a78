//! A plan as `plan` and `down --dry-run` print it: one section per phase,
//! in the plan's order. The drained replacements show under their hosts,
//! as the last of their steps.

use std::fmt::Write as _;

use super::reconcile::{render, HostPlan, Step};
use super::{Phase, Plan, Wait};
use crate::topology::Topology;

/// Every phase of `plan` that has something to say, as lines of text.
pub fn text(t: &Topology, plan: &Plan) -> String {
    let mut out = String::new();
    for phase in &plan.phases {
        match phase {
            Phase::Lab(steps) => {
                if let Some(lab) = &t.lab {
                    for step in steps {
                        let _ = writeln!(out, "lab {}  {}", lab.name, step.describe());
                    }
                }
            }
            Phase::Hosts(hosts) => out.push_str(&render(&with_rolling(hosts, plan.rolling()))),
            Phase::Members(changes) if !changes.is_empty() => {
                out.push_str("Consul membership, one change at a time:\n");
                for change in changes {
                    out.push_str(&render(&[change.as_host_plan()]));
                    let wait = change.wait_reference();
                    let _ = writeln!(
                        out,
                        "  then wait until {} (asked {})",
                        wait.subject, wait.host
                    );
                }
            }
            Phase::Stage(stage) => {
                let _ = writeln!(out, "service {}, in order:", stage.service);
                if let Some(Wait::Passing { services, host }) = &stage.after {
                    let who = match &services[..] {
                        [one] => format!("{one} has"),
                        many => format!("{} each have", join_and(many)),
                    };
                    let _ = writeln!(
                        out,
                        "  first wait until {who} a passing instance the LB routes to (asked {host})"
                    );
                }
                if let Some((host, step)) = &stage.before_rollout {
                    let _ = writeln!(out, "  then run once on {host}: {}", step.describe());
                }
                out.push_str(&render(&with_rolling(&stage.hosts, &stage.rolling)));
            }
            Phase::Edge(steps) => {
                for step in steps {
                    let r = step.reference();
                    let _ = writeln!(out, "edge on {}: {} {}", r.host, step.verb(), r.subject);
                }
            }
            // Shown with the hosts.
            Phase::Rolling(_) => {}
            // Waits change nothing: the JSON lists them.
            Phase::Members(_) | Phase::Cluster(_) | Phase::Routes(_) | Phase::Check { .. } => {}
        }
    }
    out
}

/// Host plans with the drained replacements shown under their hosts, last.
fn with_rolling(hosts: &[HostPlan], rolling: &[(String, Step)]) -> Vec<HostPlan> {
    let mut out = hosts.to_vec();
    for (host, step) in rolling {
        match out.iter_mut().find(|p| p.host == *host) {
            Some(p) => p.steps.push(step.clone()),
            None => out.push(HostPlan {
                host: host.clone(),
                steps: vec![step.clone()],
                unchanged: vec![],
            }),
        }
    }
    out
}

/// "redis, db and cache".
fn join_and(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}
