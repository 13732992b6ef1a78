//! From the validated topology and a snapshot of the hosts to one plan,
//! pure: what `plan` prints and `up` (or `down`) executes, step for step.
//!
//! - [`desired`]: what each host should run.
//! - [`ports`]: the environment's port block among the others on its hosts.
//! - [`reconcile`]: one host's desired state against what runs there.
//! - [`images`]: which images travel to which host, and how.
//! - [`lab`]: the local lab's missing parts.
//! - [`members`]: changes to the Consul cluster's membership, one at a time.
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

/// Everything a run will do, in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub lab: Vec<LabStep>,
    /// One per topology host, in topology order; carried out in parallel.
    pub hosts: Vec<HostPlan>,
    /// Waited for after the hosts' steps.
    pub cluster: Option<Wait>,
    /// Then made one at a time, each waited for.
    pub members: Vec<MemberChange>,
    /// Drained replacements of app instances, one at a time, in order:
    /// (host, step).
    pub rolling: Vec<(String, Step)>,
    /// Then the services that wait for others or migrate first, in order.
    pub stages: Vec<Stage>,
    /// Waited for last.
    pub routes: Option<Wait>,
    /// Then the environment's entries on the hosts' edge proxies.
    pub edge: Vec<edge::EdgeStep>,
}

impl Plan {
    /// Plan `up`: the lab's missing parts, each host's images and
    /// containers, the waits. An image no source can provide is an error
    /// (nothing is changed).
    pub fn up(t: &Topology, desired: &[HostState], snapshot: &Snapshot) -> Result<Plan, String> {
        let mut plan = Plan {
            lab: lab_steps(t, snapshot.lab.as_ref()),
            ..Default::default()
        };
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
            let (mut host_plan, rolling) = reconcile::plan_up(want, &after).split_rolling();
            host_plan.steps.splice(0..0, delivery.steps);
            plan.rolling
                .extend(rolling.into_iter().map(|s| (want.host.clone(), s)));
            plan.hosts.push(host_plan);
        }
        plan.members = members::plan(t, snapshot, &mut plan.hosts)?;
        plan.stages = stages::plan(t, desired, &mut plan.hosts, &mut plan.rolling);
        if let Some(server) = t.hosts.iter().find(|h| h.consul_server) {
            let consul = crate::labels::Component::Consul.container(&t.name);
            plan.cluster = Some(Wait::Cluster {
                host: server.name.clone(),
                members: t
                    .hosts
                    .iter()
                    .map(|h| h.name.clone())
                    .filter(|h| members::renamed_from(snapshot, h, &consul).is_none())
                    .collect(),
            });
        }
        if let Some(lb) = t.hosts.iter().find(|h| h.has_role(Role::Lb)) {
            plan.routes = Some(Wait::Routes {
                host: lb.name.clone(),
                instances: t
                    .services
                    .iter()
                    .map(|s| s.hosts.len() * s.per_host as usize)
                    .sum(),
            });
        }
        plan.edge = edge::up(t, snapshot)?;
        Ok(plan)
    }

    /// Plan `down`: every host's containers and the volumes `keep` does not
    /// keep, those out of the topology still to clear too, then the lab
    /// once no environment is left on it and no volume is kept there (the
    /// kept volumes live in the lab hosts).
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
            lab,
            hosts,
            edge: edge::down(&t.name, snapshot),
            ..Default::default()
        }
    }

    /// Every step, flat, in the order they are carried out.
    pub fn steps(&self) -> Vec<StepRef> {
        let mut out: Vec<StepRef> = self
            .lab
            .iter()
            .map(|s| StepRef {
                phase: "lab",
                host: "lab".into(),
                action: s.action(),
                subject: s.subject().to_string(),
            })
            .collect();
        for h in &self.hosts {
            out.extend(h.steps.iter().map(|s| s.reference("host", &h.host)));
        }
        out.extend(self.cluster.iter().map(|w| w.reference("cluster")));
        for change in &self.members {
            out.extend(
                change
                    .steps
                    .iter()
                    .map(|s| s.reference("members", &change.host)),
            );
            out.push(change.wait_reference());
        }
        out.extend(
            self.rolling
                .iter()
                .map(|(host, s)| s.reference("rolling", host)),
        );
        for stage in &self.stages {
            out.extend(stage.after.iter().map(|w| w.reference("stage")));
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
        }
        out.extend(self.routes.iter().map(|w| w.reference("routes")));
        out.extend(self.edge.iter().map(edge::EdgeStep::reference));
        out
    }

    /// What the plan creates, replaces, starts and removes, all phases.
    pub fn totals(&self) -> reconcile::Totals {
        let mut t = reconcile::totals(&self.hosts);
        let rolling: Vec<Step> = self.rolling.iter().map(|(_, s)| s.clone()).collect();
        t.add(&rolling);
        for change in &self.members {
            t.add(&change.steps);
        }
        for stage in &self.stages {
            for h in &stage.hosts {
                t.add(&h.steps);
            }
            let rolling: Vec<Step> = stage.rolling.iter().map(|(_, s)| s.clone()).collect();
            t.add(&rolling);
        }
        t
    }

    pub fn is_noop(&self) -> bool {
        self.lab.is_empty()
            && self.members.is_empty()
            && self.rolling.is_empty()
            && self.stages.is_empty()
            && self.edge.is_empty()
            && self.hosts.iter().all(HostPlan::is_noop)
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
