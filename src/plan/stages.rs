//! Services brought up in order: a service with `depends_on` or
//! `before_rollout` gets a stage of its own, after the hosts' parallel
//! steps, the cluster and the other services' rolling replacements:
//!
//! 1. wait until every service it depends on has a passing instance;
//! 2. when any of its instances is created or replaced, run its
//!    `before_rollout` once, in a one-off container of the new spec on its
//!    first host; if that fails, `up` stops there and the old instances
//!    keep serving;
//! 3. its instances' creations and starts, hosts in parallel;
//! 4. its drained replacements, one at a time.
//!
//! Stages go in dependency order (a service after everything it depends
//! on), then by name. Services with neither key are not staged: their
//! instances start with everything else, as before.
//!
//! Pure: the hosts' plans in, the staged steps taken out of them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::desired::service_volume;
use super::reconcile::{HostPlan, Step};
use super::Wait;
use crate::spec::HostState;
use crate::topology::{Role, Service, Topology};

/// One service's stage.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub service: String,
    /// Waited for first: its dependencies passing.
    pub after: Option<Wait>,
    /// `(host, step)`: the `before_rollout` one-off, when it has to run.
    pub before_rollout: Option<(String, Step)>,
    /// Its instances' volumes, creations and starts, per host (only hosts
    /// with any).
    pub hosts: Vec<HostPlan>,
    /// Its drained replacements, `(host, step)`, one at a time.
    pub rolling: Vec<(String, Step)>,
}

impl Stage {
    /// Nothing of the service changes: no stage (and no wait).
    fn is_noop(&self) -> bool {
        self.hosts.iter().all(HostPlan::is_noop) && self.rolling.is_empty()
    }
}

/// Take the staged services' steps out of `hosts` and `rolling` and make
/// their stages, in order.
pub fn plan(
    t: &Topology,
    desired: &[HostState],
    hosts: &mut [HostPlan],
    rolling: &mut Vec<(String, Step)>,
) -> Vec<Stage> {
    let lb = t.hosts.iter().find(|h| h.has_role(Role::Lb));
    let mut stages = Vec::new();
    for service in in_dependency_order(&t.services) {
        let names = object_names(t, service);
        let mut stage = Stage {
            service: service.name.clone(),
            after: None,
            before_rollout: None,
            hosts: Vec::new(),
            rolling: Vec::new(),
        };
        for host in hosts.iter_mut() {
            let (mine, rest): (Vec<Step>, Vec<Step>) =
                std::mem::take(&mut host.steps).into_iter().partition(|s| {
                    matches!(
                        s,
                        Step::CreateVolume { .. }
                            | Step::Create { .. }
                            | Step::Replace { .. }
                            | Step::Start { .. }
                    ) && names.contains(s.subject())
                });
            host.steps = rest;
            if !mine.is_empty() {
                stage.hosts.push(HostPlan {
                    host: host.host.clone(),
                    steps: mine,
                    unchanged: vec![],
                });
            }
        }
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(rolling)
            .into_iter()
            .partition(|(_, s)| names.contains(s.subject()));
        *rolling = rest;
        stage.rolling = mine;
        if stage.is_noop() {
            continue;
        }
        let changes = stage
            .hosts
            .iter()
            .flat_map(|h| &h.steps)
            .chain(stage.rolling.iter().map(|(_, s)| s))
            .any(|s| matches!(s, Step::Create { .. } | Step::Replace { .. }));
        if changes {
            stage.before_rollout = desired.iter().find_map(|h| {
                let spec = h.before_rollout.get(&service.name)?;
                Some((
                    h.host.clone(),
                    Step::RunOnce {
                        spec: spec.clone(),
                        cause: format!("before_rollout of {}", service.name),
                    },
                ))
            });
        }
        if let (Some(lb), false) = (lb, service.depends_on.is_empty()) {
            stage.after = Some(Wait::Passing {
                host: lb.name.clone(),
                services: service.depends_on.clone(),
            });
        }
        stages.push(stage);
    }
    stages
}

/// The staged services, each after the services it depends on, else by
/// name. (Validation refused cycles.)
fn in_dependency_order(services: &[Service]) -> Vec<&Service> {
    let by_name: BTreeMap<&str, &Service> = services.iter().map(|s| (s.name.as_str(), s)).collect();
    fn depth<'a>(s: &'a Service, by_name: &BTreeMap<&str, &'a Service>, seen: usize) -> usize {
        if seen > by_name.len() {
            return 0; // a cycle: cannot be, validation refused it
        }
        s.depends_on
            .iter()
            .filter_map(|d| by_name.get(d.as_str()))
            .map(|d| 1 + depth(d, by_name, seen + 1))
            .max()
            .unwrap_or(0)
    }
    let mut staged: Vec<(usize, &Service)> = services
        .iter()
        .filter(|s| s.is_staged())
        .map(|s| (depth(s, &by_name, 0), s))
        .collect();
    staged.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    staged.into_iter().map(|(_, s)| s).collect()
}

/// The names of `service`'s containers and volumes on any host.
fn object_names(t: &Topology, service: &Service) -> BTreeSet<String> {
    (1..=service.per_host)
        .flat_map(|i| {
            std::iter::once(super::desired::object_name(
                &t.name,
                &format!("{}-{i}", service.name),
            ))
            .chain(
                service
                    .volumes
                    .keys()
                    .map(move |v| service_volume(t, service, i, v)),
            )
        })
        .collect()
}
