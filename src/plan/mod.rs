//! From the validated topology and a snapshot of the hosts to one plan,
//! pure: what `plan` prints and `up` (or `down`) executes, step for step.
//!
//! - [`desired`]: what each host should run.
//! - [`ports`]: the environment's port block among the others on its hosts.
//! - [`reconcile`]: one host's desired state against what runs there.
//! - [`images`]: which images travel to which host, and how.
//! - [`lab`]: the local lab's missing parts.
//! - [`members`]: changes to the Consul cluster's membership, one at a time.
//! - [`print`]: a plan as text.
//!
//! [`Plan`] puts them together in the order `up` carries them out: the local
//! lab, then every host in parallel (images, then containers), then a wait
//! for the Consul cluster, then its membership changes one at a time, then
//! the drained replacements of app instances one host at a time, then the
//! [`stages`] of services that wait for others or migrate first, then a
//! wait until the load balancer routes every instance.

pub mod desired;
pub mod edge;
pub mod images;
pub mod lab;
pub mod members;
pub mod ports;
pub mod print;
pub mod reconcile;
pub mod stages;

pub use lab::{lab_steps, LabStep};
pub use members::{Expect, MemberChange};
pub use reconcile::StepRef;
pub use stages::Stage;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::spec::{EdgeSeen, HostState, LabObserved, Observed};
use crate::topology::{Role, Topology};
use reconcile::{HostPlan, Step};

/// What the pipeline saw before planning: one entry per topology host, in
/// topology order, and the local engine's images.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub hosts: Vec<HostSnapshot>,
    /// Image reference → ID on the local engine (the images `up` delivers).
    pub local_images: BTreeMap<String, String>,
    /// The local lab, when the topology has one.
    pub lab: Option<LabObserved>,
    /// Hosts the last `up` applied (or left to clear) that are out of the
    /// topology now: what of the environment is still there.
    pub departed: Vec<HostSnapshot>,
    /// The Consul servers the last `up` applied, if it left a record.
    pub last_servers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct HostSnapshot {
    pub host: String,
    /// What runs there for this environment; `None` for a lab host that
    /// does not run yet (it is created or started first, and holds nothing
    /// of this environment that could be seen before).
    pub observed: Option<Observed>,
    /// Environments with containers on the host (for `down` and the lab).
    pub environments: Vec<String>,
    /// Tried and not reached (`down` and `status` go on without it).
    pub unreachable: bool,
    /// The host's edge proxy, if it has one (see `crate::edge`).
    pub edge: Option<EdgeSeen>,
}

/// Something `up` waits for once the hosts' steps are done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Wait {
    /// A leader and every one of `members` alive, asked on `host`: every
    /// host but those renamed, which join under their new name only in
    /// their membership change.
    Cluster { host: String, members: Vec<String> },
    /// Every service's instances passing and routed by the LB on `host`.
    Routes { host: String, instances: usize },
    /// At least one passing instance of each of `services`, asked on `host`
    /// (a stage's dependencies).
    Passing { host: String, services: Vec<String> },
}

impl Wait {
    pub fn action(&self) -> &'static str {
        match self {
            Wait::Cluster { .. } => "wait_cluster",
            Wait::Routes { .. } => "wait_routes",
            Wait::Passing { .. } => "wait_passing",
        }
    }

    pub fn host(&self) -> &str {
        match self {
            Wait::Cluster { host, .. } | Wait::Routes { host, .. } | Wait::Passing { host, .. } => {
                host
            }
        }
    }
}

/// One part of a run. The phases of a [`Plan`] are carried out in order,
/// each once the one before has finished; inside a phase, as it says.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The local lab's missing parts, or (`down`) the lab itself.
    Lab(Vec<LabStep>),
    /// Every host's steps, the hosts in parallel; one per host.
    Hosts(Vec<HostPlan>),
    /// The environment's ACL tokens made sure of through a server, then
    /// the cluster waited for.
    Cluster(Wait),
    /// Membership changes, one at a time, each waited for; then the tokens
    /// made sure of again (servers replaced under a new record key know
    /// only its management token).
    Members(Vec<MemberChange>),
    /// Drained replacements of app instances, one at a time: (host, step).
    Rolling(Vec<(String, Step)>),
    /// A service that waits for others or migrates first.
    Stage(Box<Stage>),
    /// Every instance routed by the load balancer, waited for, while the
    /// run's record is kept in Consul.
    Routes(Wait),
    /// Nothing to change: the tokens, the cluster and the routes only
    /// checked, all at once, and the run's record kept.
    Check {
        cluster: Option<Wait>,
        routes: Option<Wait>,
    },
    /// The environment's entries on the hosts' edge proxies.
    Edge(Vec<edge::EdgeStep>),
}

impl Phase {
    /// The phase's name where a run reports its time (`up -o json`).
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Lab(_) => "lab",
            Phase::Hosts(_) => "hosts",
            Phase::Cluster(_) => "cluster",
            Phase::Members(_) => "members",
            Phase::Rolling(_) => "rolling",
            Phase::Stage(_) => "stages",
            Phase::Routes(_) => "routes",
            Phase::Check { .. } => "cluster and routes",
            Phase::Edge(_) => "edge",
        }
    }

    /// Its steps, flat, in the order they are carried out.
    pub fn steps(&self) -> Vec<StepRef> {
        match self {
            Phase::Lab(steps) => steps
                .iter()
                .map(|s| StepRef {
                    phase: "lab",
                    host: "lab".into(),
                    action: s.action(),
                    subject: s.subject().to_string(),
                })
                .collect(),
            Phase::Hosts(hosts) => hosts
                .iter()
                .flat_map(|h| h.steps.iter().map(|s| s.reference("host", &h.host)))
                .collect(),
            Phase::Cluster(wait) => vec![wait.reference("cluster")],
            Phase::Members(changes) => changes
                .iter()
                .flat_map(|c| {
                    c.steps
                        .iter()
                        .map(|s| s.reference("members", &c.host))
                        .chain([c.wait_reference()])
                })
                .collect(),
            Phase::Rolling(steps) => steps
                .iter()
                .map(|(host, s)| s.reference("rolling", host))
                .collect(),
            Phase::Stage(stage) => {
                let mut out: Vec<StepRef> =
                    stage.after.iter().map(|w| w.reference("stage")).collect();
                out.extend(
                    stage
                        .before_rollout
                        .iter()
                        .map(|(host, s)| s.reference("stage", host)),
                );
                for h in &stage.hosts {
                    out.extend(h.steps.iter().map(|s| s.reference("stage", &h.host)));
                }
                out.extend(
                    stage
                        .rolling
                        .iter()
                        .map(|(host, s)| s.reference("stage", host)),
                );
                out
            }
            Phase::Routes(wait) => vec![wait.reference("routes")],
            Phase::Check { cluster, routes } => cluster
                .iter()
                .map(|w| w.reference("cluster"))
                .chain(routes.iter().map(|w| w.reference("routes")))
                .collect(),
            Phase::Edge(steps) => steps.iter().map(edge::EdgeStep::reference).collect(),
        }
    }

    /// The container and volume steps it holds beyond the hosts' phase,
    /// for the totals.
    fn other_steps(&self) -> Vec<&Step> {
        match self {
            Phase::Members(changes) => changes.iter().flat_map(|c| &c.steps).collect(),
            Phase::Rolling(steps) => steps.iter().map(|(_, s)| s).collect(),
            Phase::Stage(stage) => stage
                .hosts
                .iter()
                .flat_map(|h| &h.steps)
                .chain(stage.rolling.iter().map(|(_, s)| s))
                .collect(),
            _ => vec![],
        }
    }

    /// Whether it changes anything on a host (waits and checks do not).
    pub fn changes(&self) -> bool {
        match self {
            Phase::Lab(steps) => !steps.is_empty(),
            Phase::Hosts(hosts) => !hosts.iter().all(HostPlan::is_noop),
            Phase::Members(changes) => !changes.is_empty(),
            Phase::Rolling(steps) => !steps.is_empty(),
            Phase::Stage(_) => true,
            Phase::Edge(steps) => !steps.is_empty(),
            Phase::Cluster(_) | Phase::Routes(_) | Phase::Check { .. } => false,
        }
    }
}

/// Everything a run will do: one list of phases, which `plan` prints, `up`
/// and `down` carry out (see `pipeline::conduct`) and the totals count.
/// Nothing else knows their order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub phases: Vec<Phase>,
}

impl Plan {
    /// Plan `up`: the lab's missing parts, each host's images and
    /// containers, the waits. An image no source can provide is an error
    /// (nothing is changed).
    ///
    /// In order: the local lab; every host in parallel (images, then
    /// containers); the Consul cluster waited for; its membership changes
    /// one at a time; the drained replacements of app instances one at a
    /// time; the [`stages`] of services that wait for others or migrate
    /// first; every instance routed, waited for; the edge. A plan that
    /// changes nothing only checks the cluster and the routes, at once.
    pub fn up(t: &Topology, desired: &[HostState], snapshot: &Snapshot) -> Result<Plan, String> {
        let mut hosts = Vec::new();
        let mut rolling = Vec::new();
        for want in desired {
            let seen = snapshot.hosts.iter().find(|h| h.host == want.host);
            let observed = seen.and_then(|h| h.observed.clone()).unwrap_or_default();
            let host = t
                .host(&want.host)
                .expect("desired state comes from the topology");
            let mut wanted_images = want.images();
            // The edge runs stagectl's own nginx, whatever `images.nginx` is.
            if t.lb.edge && host.has_role(Role::Lb) {
                wanted_images.push(crate::edge::IMAGE.to_string());
                wanted_images.sort();
                wanted_images.dedup();
            }
            let delivery = images::plan(
                &want.host,
                &wanted_images,
                &observed.image_ids,
                &snapshot.local_images,
                !host.is_lab(),
            )?;
            // Planned as if the deliveries were done: a rebuilt image then
            // shows as the replacement it causes.
            let mut after = observed;
            after.image_ids.extend(delivery.ids_after.clone());
            let (mut host_plan, host_rolling) = reconcile::plan_up(want, &after).split_rolling();
            host_plan.steps.splice(0..0, delivery.steps);
            rolling.extend(host_rolling.into_iter().map(|s| (want.host.clone(), s)));
            hosts.push(host_plan);
        }
        let members = members::plan(t, snapshot, &mut hosts)?;
        let stages = stages::plan(t, desired, &mut hosts, &mut rolling);
        let cluster = t.hosts.iter().find(|h| h.consul_server).map(|server| {
            let consul = crate::labels::Component::Consul.container(&t.name);
            Wait::Cluster {
                host: server.name.clone(),
                members: t
                    .hosts
                    .iter()
                    .map(|h| h.name.clone())
                    .filter(|h| members::renamed_from(snapshot, h, &consul).is_none())
                    .collect(),
            }
        });
        let routes = t
            .hosts
            .iter()
            .find(|h| h.has_role(Role::Lb))
            .map(|lb| Wait::Routes {
                host: lb.name.clone(),
                instances: t
                    .services
                    .iter()
                    .map(|s| s.hosts.len() * s.per_host as usize)
                    .sum(),
            });
        let edge = Phase::Edge(edge::up(t, snapshot)?);
        let mut phases = vec![
            Phase::Lab(lab_steps(t, snapshot.lab.as_ref())),
            Phase::Hosts(hosts),
        ];
        let changing = phases.iter().any(Phase::changes)
            || edge.changes()
            || !members.is_empty()
            || !rolling.is_empty()
            || !stages.is_empty();
        if changing {
            phases.extend(cluster.map(Phase::Cluster));
            phases.push(Phase::Members(members));
            phases.push(Phase::Rolling(rolling));
            phases.extend(stages.into_iter().map(|s| Phase::Stage(Box::new(s))));
            phases.extend(routes.map(Phase::Routes));
        } else {
            phases.push(Phase::Check { cluster, routes });
        }
        phases.push(edge);
        Ok(Plan { phases })
    }

    /// Plan `down`: every host's containers and the volumes `keep` does not
    /// keep, those out of the topology still to clear too, the environment's
    /// edge routes, then the lab once no environment is left on it and no
    /// volume is kept there (the kept volumes live in the lab hosts).
    pub fn down(t: &Topology, snapshot: &Snapshot, keep: reconcile::Keep) -> Plan {
        let hosts: Vec<HostPlan> = snapshot
            .hosts
            .iter()
            .chain(&snapshot.departed)
            .filter_map(|h| {
                let observed = h.observed.as_ref()?;
                Some(reconcile::plan_down(&t.name, &h.host, observed, keep))
            })
            .collect();
        let mut lab = Vec::new();
        if let (Some(l), Some(_)) = (&t.lab, &snapshot.lab) {
            // Only what was seen counts: an unreachable host may hold others.
            let others = snapshot
                .hosts
                .iter()
                .any(|h| h.unreachable || h.environments.iter().any(|e| *e != t.name));
            let kept = snapshot
                .hosts
                .iter()
                .filter_map(|h| h.observed.as_ref())
                .flat_map(|o| &o.volumes)
                .any(|v| keep.keeps(&t.name, v));
            if !others && !kept {
                lab.push(LabStep::RemoveLab {
                    name: l.name.clone(),
                });
            }
        }
        Plan {
            phases: vec![
                Phase::Hosts(hosts),
                Phase::Edge(edge::down(&t.name, snapshot)),
                Phase::Lab(lab),
            ],
        }
    }

    /// Every step, flat, in the order they are carried out.
    pub fn steps(&self) -> Vec<StepRef> {
        self.phases.iter().flat_map(Phase::steps).collect()
    }

    /// What the plan creates, replaces, starts and removes, all phases.
    pub fn totals(&self) -> reconcile::Totals {
        let steps: Vec<Step> = self
            .phases
            .iter()
            .flat_map(Phase::other_steps)
            .cloned()
            .collect();
        // The hosts' phase counts what it leaves unchanged too.
        let mut t = reconcile::totals(self.hosts());
        t.add(&steps);
        t
    }

    pub fn is_noop(&self) -> bool {
        !self.phases.iter().any(Phase::changes)
    }

    /// The hosts' parallel steps (the first such phase).
    pub fn hosts(&self) -> &[HostPlan] {
        self.phases
            .iter()
            .find_map(|p| match p {
                Phase::Hosts(h) => Some(h.as_slice()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The membership changes.
    pub fn members(&self) -> &[MemberChange] {
        self.phases
            .iter()
            .find_map(|p| match p {
                Phase::Members(m) => Some(m.as_slice()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The drained replacements outside stages.
    pub fn rolling(&self) -> &[(String, Step)] {
        self.phases
            .iter()
            .find_map(|p| match p {
                Phase::Rolling(r) => Some(r.as_slice()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The services' stages, in order.
    pub fn stages(&self) -> Vec<&Stage> {
        self.phases
            .iter()
            .filter_map(|p| match p {
                Phase::Stage(s) => Some(s.as_ref()),
                _ => None,
            })
            .collect()
    }

    /// The cluster wait, whether waited for or only checked.
    pub fn cluster(&self) -> Option<&Wait> {
        self.phases.iter().find_map(|p| match p {
            Phase::Cluster(w)
            | Phase::Check {
                cluster: Some(w), ..
            } => Some(w),
            _ => None,
        })
    }

    /// The routes wait, whether waited for or only checked.
    pub fn routes(&self) -> Option<&Wait> {
        self.phases.iter().find_map(|p| match p {
            Phase::Routes(w)
            | Phase::Check {
                routes: Some(w), ..
            } => Some(w),
            _ => None,
        })
    }
}

impl Wait {
    pub fn reference(&self, phase: &'static str) -> StepRef {
        StepRef {
            phase,
            host: self.host().to_string(),
            action: self.action(),
            subject: match self {
                Wait::Cluster { members, .. } => format!("{} members", members.len()),
                Wait::Routes { instances, .. } => format!("{instances} instances"),
                Wait::Passing { services, .. } => format!("{} passing", services.join(", ")),
            },
        }
    }
}
