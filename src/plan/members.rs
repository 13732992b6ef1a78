//! Changes to the Consul cluster's membership (phase `members`), planned
//! from the role each agent runs with (its label) and the role the
//! topology gives it.
//!
//! Changing the server set changes the raft quorum, so the changes are made
//! one at a time, each waited for before the next, in an order that keeps a
//! majority throughout: hosts that become servers join first (and become
//! voters); servers that stay servers are replaced next; servers that
//! become clients leave the raft peers gracefully before they are replaced;
//! hosts taken out of the topology leave (or, when they cannot be reached,
//! are marked as left by a server) and are cleared; clients come last.
//! Agents whose spec did not change are not touched: adding servers
//! restarts none of the others (see `desired::ContainerSpec::join_args`).
//!
//! A new environment has no cluster yet: its agents are created with the
//! hosts' other containers, all at once.

use serde::Serialize;

use super::desired::CONSUL_DATA_DIR;
use super::reconcile::{HostPlan, Rejoin, Step, StepRef};
use super::{HostSnapshot, Snapshot};
use crate::labels::Component;
use crate::topology::Topology;

/// One membership change and what must hold before the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberChange {
    /// Where the steps run.
    pub host: String,
    pub steps: Vec<Step>,
    /// The server whose agent is asked until `expect` holds.
    pub asked: String,
    pub expect: Expect,
}

/// The cluster's state a change waits for (as well as a leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "node_is", content = "node", rename_all = "snake_case")]
pub enum Expect {
    /// An alive member and a voting raft peer; its own agent sees the
    /// leader.
    Voter(String),
    /// An alive member and not a raft peer; its own agent sees the leader.
    Client(String),
    /// Left (or never a member).
    Gone(String),
    /// Not in the member list at all, not even as left.
    Pruned(String),
    /// Not a failed member: marked as left, or still alive where stagectl
    /// cannot reach it (its agent runs; clearing it waits for a later run).
    NotFailed(String),
}

impl Expect {
    pub fn node(&self) -> &str {
        match self {
            Expect::Voter(n)
            | Expect::Client(n)
            | Expect::Gone(n)
            | Expect::Pruned(n)
            | Expect::NotFailed(n) => n,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Expect::Voter(n) => format!("{n} a voting server"),
            Expect::Client(n) => format!("{n} a client"),
            Expect::Gone(n) => format!("{n} left"),
            Expect::Pruned(n) => format!("{n} out of the member list"),
            Expect::NotFailed(n) => format!("{n} not a failed member"),
        }
    }
}

impl MemberChange {
    /// Its steps as a host's block, for plan output.
    pub fn as_host_plan(&self) -> HostPlan {
        HostPlan {
            host: self.host.clone(),
            steps: self.steps.clone(),
            unchanged: vec![],
        }
    }

    /// The wait after the steps, as a flat record (`plan -o json`).
    pub fn wait_reference(&self) -> StepRef {
        StepRef {
            phase: "members",
            host: self.asked.clone(),
            action: "wait_member",
            subject: self.expect.describe(),
        }
    }
}

/// Take the Consul agents' replacements out of `host_plans` (when a
/// cluster runs) and order them, with the clearing of hosts out of the
/// topology, into one change at a time.
///
/// Refused (nothing planned, the reason returned) when no server of the
/// running cluster stays a server: the new servers, joining only each
/// other, would form a second cluster and the first one's data would be
/// left behind.
pub fn plan(
    t: &Topology,
    snapshot: &Snapshot,
    host_plans: &mut [HostPlan],
) -> Result<Vec<MemberChange>, String> {
    let consul = Component::Consul.container(&t.name);
    let everywhere = || snapshot.hosts.iter().chain(&snapshot.departed);
    if !everywhere().any(|h| consul_runs(h, &consul)) {
        return Ok(vec![]);
    }
    let is_server_now = |host: &str| -> bool {
        let seen = everywhere().find(|h| h.host == host);
        let labelled = seen
            .and_then(|h| h.observed.as_ref())
            .and_then(|o| o.containers.iter().find(|c| c.name == consul))
            .and_then(|c| c.consul_server);
        labelled.unwrap_or_else(|| {
            // Made before the role label: the last up's record says.
            snapshot
                .last_servers
                .as_ref()
                .map(|s| s.iter().any(|n| n == host))
                .unwrap_or_else(|| t.host(host).is_some_and(|h| h.consul_server))
        })
    };
    let has_agent = |h: &HostSnapshot| match &h.observed {
        Some(o) => o.containers.iter().any(|c| c.name == consul),
        None => h.unreachable, // not seen: it may have one
    };
    let servers_now: Vec<&str> = everywhere()
        .filter(|h| has_agent(h) && is_server_now(&h.host))
        .map(|h| h.host.as_str())
        .collect();
    if !servers_now.is_empty()
        && !servers_now
            .iter()
            .any(|s| t.host(s).is_some_and(|h| h.consul_server))
    {
        return Err(format!(
            "{}: consul.servers keeps none of the servers the cluster runs with now ({}): the new servers would form a second cluster without its data; keep at least one of them in consul.servers, and take the others out in a later run",
            t.source.display(),
            servers_now.join(", ")
        ));
    }
    // Asked while `changing` changes: a server before and after, else any
    // server it will have.
    let asked = |changing: &str| -> String {
        let servers: Vec<&str> = t
            .consul_servers()
            .map(|h| h.name.as_str())
            .filter(|n| *n != changing)
            .collect();
        servers
            .iter()
            .find(|n| is_server_now(n))
            .or(servers.first())
            .map(|n| n.to_string())
            .unwrap_or_else(|| changing.to_string())
    };

    // (order, change): sorted by order, stable within it.
    let mut changes: Vec<(u8, MemberChange)> = Vec::new();
    for host_plan in host_plans.iter_mut() {
        // Only a running agent is a member to change; one stopped or never
        // started is replaced with the host's other containers (the cluster
        // is waited for with it alive).
        let member = snapshot
            .hosts
            .iter()
            .find(|h| h.host == host_plan.host)
            .is_some_and(|h| consul_runs(h, &consul));
        let Some(at) = host_plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::Replace { spec, .. } if spec.name == consul))
            .filter(|_| member)
        else {
            continue;
        };
        let replace = host_plan.steps.remove(at);
        let host = host_plan.host.clone();
        let (before, after) = (
            is_server_now(&host),
            t.host(&host).is_some_and(|h| h.consul_server),
        );
        let renamed = renamed_from(snapshot, &host, &consul);
        let (leave_first, rejoin) = if let Some(old) = &renamed {
            // The old name leaves, and the agent joins again under the new
            // one with its data and a node ID of its own (see `Rejoin`).
            let sole = servers_now == [host.as_str()] && t.consul_servers().count() == 1;
            (
                Some(format!(
                    "renamed from {old}: {old} leaves first, the agent joins again as {host} with its data and a new node ID"
                )),
                t.host(&host).map(|h| Rejoin {
                    data_dir: CONSUL_DATA_DIR.to_string(),
                    node_id: node_id(&t.name, &host),
                    sole_server: sole
                        .then(|| format!("{}:{}", h.advertise, t.ports.consul_server)),
                }),
            )
        } else if before && !after {
            (
                Some("no longer a server: it leaves the raft peers first".into()),
                None,
            )
        } else {
            (None, None)
        };
        let mut steps = vec![];
        if let (Some(cause), Step::Replace { old_id, .. }) = (leave_first, &replace) {
            steps.push(Step::Leave {
                name: consul.clone(),
                id: old_id.clone(),
                consul_http: t.ports.consul_http,
                rejoin,
                cause,
            });
        }
        steps.push(replace);
        let (order, expect) = match (before, after) {
            (false, true) => (0, Expect::Voter(host.clone())),
            (true, true) => (1, Expect::Voter(host.clone())),
            (true, false) => (2, Expect::Client(host.clone())),
            (false, false) => (4, Expect::Client(host.clone())),
        };
        changes.push((
            order,
            MemberChange {
                asked: asked(&host),
                host: host.clone(),
                steps,
                expect,
            },
        ));
        if let Some(old) = renamed {
            // Right after the rename (same order, stable sort): the old
            // name, left, would otherwise stay in every member list for days
            // beside the new one at the same address. Asked of a server that
            // saw it leave (the new agent never knew it); the prune spreads
            // by gossip.
            let server = asked(&host);
            changes.push((
                order,
                MemberChange {
                    host: server.clone(),
                    steps: vec![Step::ForceLeave {
                        container: consul.clone(),
                        node: old.clone(),
                        consul_http: t.ports.consul_http,
                        prune: true,
                        cause: format!("{host}'s old name, left"),
                    }],
                    asked: server,
                    expect: Expect::Pruned(old),
                },
            ));
        }
    }
    for gone in &snapshot.departed {
        if let Some(change) = clear(t, gone, &consul, asked(&gone.host)) {
            changes.push((3, change));
        }
    }
    changes.sort_by_key(|(order, _)| *order);
    Ok(changes.into_iter().map(|(_, c)| c).collect())
}

/// The node ID a renamed host's agent joins again with: its own for each
/// environment and name (a UUID's form, from a hash), so that the next
/// rename, or a rename back, gives yet another one.
pub fn node_id(env: &str, host: &str) -> String {
    use sha2::{Digest, Sha256};
    let hex = format!(
        "{:x}",
        Sha256::digest(format!("stagectl node-id\0{env}\0{host}"))
    );
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The node name `host`'s running agent has, when it is not `host`: the
/// host was renamed in the topology (same engine, same data).
pub fn renamed_from(snapshot: &Snapshot, host: &str, consul: &str) -> Option<String> {
    snapshot
        .hosts
        .iter()
        .find(|h| h.host == host)?
        .observed
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == consul && c.running)?
        .made_for
        .clone()
        .filter(|old| old != host)
}

fn consul_runs(h: &HostSnapshot, consul: &str) -> bool {
    h.observed
        .as_ref()
        .is_some_and(|o| o.containers.iter().any(|c| c.name == consul && c.running))
}

/// A host out of the topology (or cleared by `down --host`): its agent
/// leaves, then everything of the environment there goes (volumes too).
/// Unreachable, it is marked as left by the server asked, and cleared by a
/// later run or `down --host`. `None` when nothing is left to do.
pub fn clear(
    t: &Topology,
    gone: &HostSnapshot,
    consul: &str,
    asked: String,
) -> Option<MemberChange> {
    let Some(observed) = &gone.observed else {
        return Some(MemberChange {
            host: asked.clone(),
            steps: vec![Step::ForceLeave {
                container: consul.to_string(),
                node: gone.host.clone(),
                consul_http: t.ports.consul_http,
                prune: false,
                cause: format!("{} is out of the topology and was not reached", gone.host),
            }],
            asked,
            expect: Expect::NotFailed(gone.host.clone()),
        });
    };
    if observed.containers.is_empty() && observed.volumes.is_empty() {
        return None; // cleared already
    }
    let mut steps = Vec::new();
    if let Some(agent) = observed
        .containers
        .iter()
        .find(|c| c.name == consul && c.running)
    {
        steps.push(Step::Leave {
            name: agent.name.clone(),
            id: agent.id.clone(),
            consul_http: t.ports.consul_http,
            rejoin: None,
            cause: "out of the topology".into(),
        });
    }
    // The agent last: the registration agent deregisters through it.
    let mut containers: Vec<_> = observed.containers.iter().collect();
    containers.sort_by_key(|c| c.name == consul);
    steps.extend(containers.into_iter().map(|c| Step::Remove {
        name: c.name.clone(),
        id: c.id.clone(),
        cause: "out of the topology".into(),
    }));
    steps.extend(
        observed
            .volumes
            .iter()
            .map(|v| Step::RemoveVolume { name: v.clone() }),
    );
    Some(MemberChange {
        host: gone.host.clone(),
        steps,
        asked,
        expect: Expect::Gone(gone.host.clone()),
    })
}
