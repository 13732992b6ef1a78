//! The local lab as planning sees it: what exists of it on the local
//! engine, the names of its objects, and the steps that make what is
//! missing (carried out by `engine::lab`).

use serde::Serialize;

use crate::spec::LabObserved;
use crate::topology::{Endpoint, Topology};

/// A step of the local lab, carried out on the local engine before any host
/// is connected to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum LabStep {
    CreateNetwork {
        name: String,
        subnet: String,
    },
    /// A lab host container created but never started (an interrupted run):
    /// its keys may be missing, so it goes and is made again.
    RemoveHalfMade {
        id: String,
    },
    CreateHost {
        host: String,
        ip: String,
    },
    StartHost {
        host: String,
        id: String,
    },
    /// `down`: no environment is left on the lab's hosts.
    RemoveLab {
        name: String,
    },
}

impl LabStep {
    pub fn subject(&self) -> &str {
        match self {
            LabStep::CreateNetwork { name, .. } | LabStep::RemoveLab { name } => name,
            LabStep::RemoveHalfMade { id } => id,
            LabStep::CreateHost { host, .. } | LabStep::StartHost { host, .. } => host,
        }
    }

    pub fn action(&self) -> &'static str {
        match self {
            LabStep::CreateNetwork { .. } => "create_network",
            LabStep::RemoveHalfMade { .. } => "remove_half_made",
            LabStep::CreateHost { .. } => "create_lab_host",
            LabStep::StartHost { .. } => "start_lab_host",
            LabStep::RemoveLab { .. } => "remove_lab",
        }
    }

    /// One line of `plan`'s text.
    pub fn describe(&self) -> String {
        match self {
            LabStep::CreateNetwork { name, subnet } => format!("+ bridge {name} ({subnet})"),
            LabStep::RemoveHalfMade { id } => format!(
                "- lab host container {} (created but never started: an interrupted run)",
                &id[..id.len().min(12)]
            ),
            LabStep::CreateHost { host, ip } => format!("+ lab host {host} ({ip})"),
            LabStep::StartHost { host, .. } => format!(
                "> lab host {host} (stopped; will be started, its containers planned once it runs)"
            ),
            LabStep::RemoveLab { name } => format!("- lab {name}: hosts, bridge and keys"),
        }
    }
}

/// The lab's missing or stopped parts, from what the local engine has.
pub fn lab_steps(t: &Topology, seen: Option<&LabObserved>) -> Vec<LabStep> {
    let (Some(lab), Some(seen)) = (&t.lab, seen) else {
        return vec![];
    };
    let mut steps = Vec::new();
    if seen.network.is_none() {
        steps.push(LabStep::CreateNetwork {
            name: crate::labels::lab_network(&lab.name),
            subnet: lab.subnet.to_string(),
        });
    }
    steps.extend(
        seen.half_made
            .iter()
            .map(|id| LabStep::RemoveHalfMade { id: id.clone() }),
    );
    for h in t.lab_hosts() {
        let Endpoint::Lab { ip } = h.endpoint else {
            continue;
        };
        match seen.hosts.get(&h.name) {
            Some((_, true)) => {}
            Some((id, false)) => steps.push(LabStep::StartHost {
                host: h.name.clone(),
                id: id.clone(),
            }),
            None => steps.push(LabStep::CreateHost {
                host: h.name.clone(),
                ip: ip.to_string(),
            }),
        }
    }
    steps
}
