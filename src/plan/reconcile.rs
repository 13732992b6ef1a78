//! Desired state against observed state: a plan of steps per host.
//!
//! Pure: the observed side is plain data ([`crate::spec::Observed`]) that
//! an engine's `observe` gathers, so every decision (create, replace,
//! start, remove, leave alone) is made here with its cause and unit-tested
//! without a daemon. `pipeline::execute` then carries the steps out.

use std::fmt::Write as _;

use serde::Serialize;

use crate::labels::Component;
use crate::spec::{ContainerSpec, HostState, Observed, VolumeSpec};

/// A planned step as a flat record: what `plan -o json` prints and what
/// `up -o json` reports when it carries it out (same fields, so the two
/// can be compared).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct StepRef {
    /// `lab`, `host`, `cluster`, `rolling` or `routes`: the order of phases.
    pub phase: &'static str,
    /// The topology host, or `lab` for the local lab's steps.
    pub host: String,
    pub action: &'static str,
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Step {
    /// Stream these images from the local engine, in one archive.
    DeliverImages {
        images: Vec<String>,
    },
    /// Have the host pull an image no other source has.
    PullImage {
        image: String,
    },
    CreateVolume {
        volume: VolumeSpec,
    },
    Create {
        spec: ContainerSpec,
        cause: String,
    },
    Replace {
        spec: ContainerSpec,
        old_id: String,
        cause: String,
    },
    Start {
        name: String,
        id: String,
        cause: String,
    },
    Remove {
        name: String,
        id: String,
        cause: String,
    },
    RemoveVolume {
        name: String,
    },
    /// Have the Consul agent in container `name` leave the cluster
    /// gracefully (a server leaves the raft peers, so the quorum shrinks
    /// with it) and stop, not to be restarted by the engine.
    Leave {
        name: String,
        id: String,
        consul_http: u16,
        /// Set when the agent comes back under another name (its host was
        /// renamed in the topology).
        rejoin: Option<Rejoin>,
        cause: String,
    },
    /// Mark `node`, which cannot be reached to leave by itself, as left:
    /// asked of this host's agent (in `container`). With `prune`, a node
    /// that has left is taken out of the member list altogether.
    ForceLeave {
        container: String,
        node: String,
        consul_http: u16,
        prune: bool,
        cause: String,
    },
    /// Run a one-off container to its end (a service's `before_rollout`);
    /// a non-zero exit fails the step, and `up` stops.
    RunOnce {
        spec: ContainerSpec,
        cause: String,
    },
}

/// What an agent's data directory is given before it leaves under its old
/// name, to join again under a new one with its data.
///
/// Consul ties a node ID (kept in the data directory) to a node name. Under
/// the old ID the new name would share it with the old name, which stays in
/// the member list as left for days, and the leader's reconciliation of the
/// left name removes the raft peer with that ID every minute: the renamed
/// server, or with a sole server the leader itself. So the agent gets an ID
/// of its own; a sole server, which no other server can tell about its new
/// ID, also gets its raft configuration recovered to it (Consul's
/// `raft/peers.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejoin {
    pub data_dir: String,
    pub node_id: String,
    /// The server's raft address, when it is the cluster's only server.
    pub sole_server: Option<String>,
}

impl Step {
    /// The step's name in JSON output (`plan -o json`, `up -o json`).
    pub fn action(&self) -> &'static str {
        match self {
            Step::DeliverImages { .. } => "deliver_images",
            Step::PullImage { .. } => "pull_image",
            Step::CreateVolume { .. } => "create_volume",
            Step::Create { .. } => "create",
            Step::Replace { .. } => "replace",
            Step::Start { .. } => "start",
            Step::Remove { .. } => "remove",
            Step::RemoveVolume { .. } => "remove_volume",
            Step::Leave { .. } => "leave",
            Step::ForceLeave { .. } => "force_leave",
            Step::RunOnce { .. } => "run_once",
        }
    }

    /// This step as a flat record, for JSON output.
    pub fn reference(&self, phase: &'static str, host: &str) -> StepRef {
        StepRef {
            phase,
            host: host.to_string(),
            action: self.action(),
            subject: self.subject().to_string(),
        }
    }

    /// The symbol plan output uses, as terraform and the UX sketch do.
    pub fn symbol(&self) -> char {
        match self {
            Step::DeliverImages { .. } | Step::PullImage { .. } => '↓',
            Step::CreateVolume { .. } | Step::Create { .. } => '+',
            Step::Replace { .. } => '~',
            Step::Start { .. } => '>',
            Step::Remove { .. } | Step::RemoveVolume { .. } => '-',
            Step::Leave { .. } | Step::ForceLeave { .. } => '<',
            Step::RunOnce { .. } => '!',
        }
    }

    /// The container or volume the step is about.
    pub fn subject(&self) -> &str {
        match self {
            Step::DeliverImages { .. } => "images",
            Step::PullImage { image } => image,
            Step::CreateVolume { volume } => &volume.name,
            Step::Create { spec, .. } | Step::Replace { spec, .. } | Step::RunOnce { spec, .. } => {
                &spec.name
            }
            Step::Start { name, .. } | Step::Remove { name, .. } => name,
            Step::RemoveVolume { name } => name,
            Step::Leave { name, .. } => name,
            Step::ForceLeave { node, .. } => node,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Step::DeliverImages { images } => {
                format!(
                    "{} (from the local engine, missing layers only)",
                    images.join(", ")
                )
            }
            Step::PullImage { .. } => "pull (on neither the host nor the local engine)".into(),
            Step::CreateVolume { .. } => "volume".into(),
            Step::Create { spec, .. } => format!("{}  {}", spec.image, spec.summary),
            Step::Replace { spec, cause, .. } if spec.drain.is_some() => {
                format!("replace, drained, one host at a time: {cause}")
            }
            Step::Replace { cause, .. } => format!("replace: {cause}"),
            Step::Start { cause, .. } => format!("start: {cause}"),
            Step::Remove { cause, .. } => format!("remove: {cause}"),
            Step::RemoveVolume { .. } => "remove volume (data is lost)".into(),
            Step::Leave { cause, .. } => format!("leave the Consul cluster: {cause}"),
            Step::ForceLeave {
                cause, prune: true, ..
            } => format!("taken out of the member list: {cause}"),
            Step::ForceLeave { cause, .. } => format!("marked as left: {cause}"),
            Step::RunOnce { spec, cause } => {
                format!("{cause}: {} in {}, once", spec.cmd.join(" "), spec.image)
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub steps: Vec<Step>,
    /// Containers already as desired.
    pub unchanged: Vec<String>,
}

impl HostPlan {
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Plan `up` for one host.
pub fn plan_up(desired: &HostState, observed: &Observed) -> HostPlan {
    let mut steps = Vec::new();
    let mut unchanged = Vec::new();
    for v in &desired.volumes {
        if !observed.volumes.contains(&v.name) {
            steps.push(Step::CreateVolume { volume: v.clone() });
        }
    }
    // Obsolete containers go first: they may hold ports or names the new
    // ones need.
    for o in &observed.containers {
        // A one-off still running is someone's migration or console: left
        // to finish (and remove itself); one that ended is a leftover.
        if o.component == Component::Run.label() && o.running {
            continue;
        }
        if !desired.containers.iter().any(|d| d.name == o.name) {
            steps.push(Step::Remove {
                name: o.name.clone(),
                id: o.id.clone(),
                cause: "no longer in the topology".into(),
            });
        }
    }
    for spec in &desired.containers {
        let hash = spec.hash();
        match observed.containers.iter().find(|o| o.name == spec.name) {
            None => steps.push(Step::Create {
                spec: spec.clone(),
                cause: "no existing container".into(),
            }),
            Some(o) if o.spec_hash.as_deref() != Some(hash.as_str()) => steps.push(Step::Replace {
                spec: spec.clone(),
                old_id: o.id.clone(),
                cause: format!(
                    "spec changed ({} → {hash})",
                    o.spec_hash.as_deref().unwrap_or("no hash")
                ),
            }),
            Some(o)
                if observed
                    .image_ids
                    .get(&spec.image)
                    .is_some_and(|id| *id != o.image_id) =>
            {
                steps.push(Step::Replace {
                    spec: spec.clone(),
                    old_id: o.id.clone(),
                    cause: format!("image {} changed", spec.image),
                })
            }
            Some(o) if o.never_started => steps.push(Step::Replace {
                spec: spec.clone(),
                old_id: o.id.clone(),
                cause: "created but never started (an interrupted run)".into(),
            }),
            Some(o) if !o.running => steps.push(Step::Start {
                name: o.name.clone(),
                id: o.id.clone(),
                cause: "stopped".into(),
            }),
            Some(_) => unchanged.push(spec.name.clone()),
        }
    }
    HostPlan {
        host: desired.host.clone(),
        steps,
        unchanged,
    }
}

impl HostPlan {
    /// Take out the replacements that must happen one host at a time with
    /// a drain (app service instances), leaving the rest to run in parallel.
    pub fn split_rolling(mut self) -> (HostPlan, Vec<Step>) {
        let (rolling, rest): (Vec<Step>, Vec<Step>) = self
            .steps
            .into_iter()
            .partition(|s| matches!(s, Step::Replace { spec, .. } if spec.drain.is_some()));
        self.steps = rest;
        (self, rolling)
    }
}

/// What of an environment's volumes `down` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Nothing: every volume goes (`down -v`, `gc` of an expired preview).
    Nothing,
    /// The services' data volumes (the default, as `docker compose down`
    /// keeps named volumes); stagectl's own (Consul's data, nginx's config)
    /// go, as they hold nothing of the user's.
    ServiceData,
    /// Every volume, Consul's data included, and the gossip key
    /// (`down --keep-data`).
    Everything,
}

impl Keep {
    /// Whether `volume`, of environment `env`, stays.
    pub fn keeps(self, env: &str, volume: &str) -> bool {
        match self {
            Keep::Nothing => false,
            Keep::Everything => true,
            Keep::ServiceData => !super::desired::OWN_VOLUMES
                .iter()
                .any(|own| volume == super::desired::object_name(env, own)),
        }
    }
}

/// Plan `down` for one host of environment `env`: every container of the
/// environment goes, and the volumes `keep` does not keep.
pub fn plan_down(env: &str, host: &str, observed: &Observed, keep: Keep) -> HostPlan {
    let mut steps: Vec<Step> = observed
        .containers
        .iter()
        .map(|o| Step::Remove {
            name: o.name.clone(),
            id: o.id.clone(),
            cause: "down".into(),
        })
        .collect();
    steps.extend(
        observed
            .volumes
            .iter()
            .filter(|v| !keep.keeps(env, v))
            .map(|v| Step::RemoveVolume { name: v.clone() }),
    );
    HostPlan {
        host: host.to_string(),
        steps,
        unchanged: vec![],
    }
}

/// Counts for the summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub create: usize,
    pub replace: usize,
    pub start: usize,
    pub remove: usize,
    pub unchanged: usize,
}

pub fn totals(plans: &[HostPlan]) -> Totals {
    let mut t = Totals::default();
    for p in plans {
        t.unchanged += p.unchanged.len();
        t.add(&p.steps);
    }
    t
}

impl Totals {
    /// Count `steps` in.
    pub fn add(&mut self, steps: &[Step]) {
        let t = self;
        for s in steps {
            match s {
                Step::Create { .. } | Step::CreateVolume { .. } => t.create += 1,
                Step::Replace { .. } => t.replace += 1,
                Step::Start { .. } => t.start += 1,
                Step::Remove { .. } | Step::RemoveVolume { .. } => t.remove += 1,
                // Not containers: counted by the lines beside them.
                Step::DeliverImages { .. }
                | Step::PullImage { .. }
                | Step::Leave { .. }
                | Step::ForceLeave { .. }
                | Step::RunOnce { .. } => {}
            }
        }
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} to create, {} to replace, {} to start, {} to remove, {} unchanged",
            self.create, self.replace, self.start, self.remove, self.unchanged
        )
    }
}

/// Plan text as `plan` prints it: one block per host, stable order.
pub fn render(plans: &[HostPlan]) -> String {
    let width = plans.iter().map(|p| p.host.len()).max().unwrap_or(4);
    let mut out = String::new();
    for p in plans {
        let mut first = true;
        let mut line = |sym: char, subject: &str, what: &str| {
            let host = if first { p.host.as_str() } else { "" };
            first = false;
            let _ = writeln!(out, "{host:<width$}  {sym} {subject:<18} {what}");
        };
        for s in &p.steps {
            line(s.symbol(), s.subject(), &s.describe());
        }
        for u in &p.unchanged {
            line('=', u, "unchanged");
        }
        if p.steps.is_empty() && p.unchanged.is_empty() {
            line(' ', "(nothing)", "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::desired::{desired_state, Secrets};
    use crate::spec::ObservedContainer;
    use crate::topology;
    use std::path::Path;

    fn state() -> Vec<HostState> {
        let t = topology::parse(
            "name: qa\nlab: { subnet: 10.77.0.0/24 }\nhosts:\n  host-1: { driver: local, address: 10.77.0.11, roles: [app] }\n  host-2: { driver: local, address: 10.77.0.12, roles: [lb] }\n  host-3: { driver: local, address: 10.77.0.13 }\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        desired_state(
            &t,
            &Secrets {
                gossip_key: "a2V5".into(),
                ..Default::default()
            },
        )
    }

    fn running(spec: &ContainerSpec, hash: Option<String>, running: bool) -> ObservedContainer {
        ObservedContainer {
            id: format!("id-{}", spec.name),
            name: spec.name.clone(),
            component: spec.component.clone(),
            spec_hash: hash,
            consul_server: None,
            made_for: None,
            running,
            never_started: false,
            image_id: format!("sha256:{}", spec.image),
        }
    }

    fn converged(h: &HostState) -> Observed {
        Observed {
            containers: h
                .containers
                .iter()
                .map(|c| running(c, Some(c.hash()), true))
                .collect(),
            volumes: h.volumes.iter().map(|v| v.name.clone()).collect(),
            image_ids: h
                .containers
                .iter()
                .map(|c| (c.image.clone(), format!("sha256:{}", c.image)))
                .collect(),
        }
    }

    #[test]
    fn nothing_running_creates_everything() {
        let s = state();
        let plans: Vec<HostPlan> = s.iter().map(|h| plan_up(h, &Observed::default())).collect();
        insta::assert_snapshot!(render(&plans));
        assert_eq!(
            totals(&plans),
            Totals {
                create: 10,
                ..Default::default()
            }
        );
    }

    #[test]
    fn converged_host_is_a_noop() {
        let s = state();
        let p = plan_up(&s[0], &converged(&s[0]));
        assert!(p.is_noop(), "{p:?}");
        assert_eq!(
            p.unchanged,
            vec!["qa-consul".to_string(), "qa-register".to_string()]
        );
    }

    #[test]
    fn changed_hash_replaces_stopped_starts_extra_removes() {
        let s = state();
        let mut obs = converged(&s[0]);
        obs.containers[0].spec_hash = Some("0000".into());
        let p = plan_up(&s[0], &obs);
        assert!(matches!(&p.steps[..], [Step::Replace { old_id, .. }] if old_id == "id-qa-consul"));

        let mut obs = converged(&s[0]);
        obs.containers[0].running = false;
        let p = plan_up(&s[0], &obs);
        assert!(matches!(&p.steps[..], [Step::Start { .. }]));

        // Interrupted between create and start: its files may be missing.
        let mut obs = converged(&s[0]);
        obs.containers[0].running = false;
        obs.containers[0].never_started = true;
        let p = plan_up(&s[0], &obs);
        assert!(
            matches!(&p.steps[..], [Step::Replace { cause, .. }] if cause.contains("never started")),
            "{:?}",
            p.steps
        );

        let mut obs = converged(&s[0]);
        obs.containers.push(ObservedContainer {
            id: "x".into(),
            name: "qa-old".into(),
            component: "old".into(),
            spec_hash: None,
            consul_server: None,
            made_for: None,
            running: true,
            never_started: false,
            image_id: "x".into(),
        });
        let p = plan_up(&s[0], &obs);
        assert!(matches!(&p.steps[..], [Step::Remove { name, .. }] if name == "qa-old"));
    }

    #[test]
    fn a_rebuilt_image_replaces_its_containers() {
        let s = state();
        let mut obs = converged(&s[0]);
        obs.image_ids
            .insert("stagectl/agent:latest".into(), "sha256:new".into());
        let p = plan_up(&s[0], &obs);
        assert!(
            matches!(&p.steps[..], [Step::Replace { spec, cause, .. }] if spec.name == "qa-register" && cause.contains("image")),
            "{p:?}"
        );
        // An image the host does not know (not yet delivered) decides nothing.
        let mut obs = converged(&s[0]);
        obs.image_ids.clear();
        assert!(plan_up(&s[0], &obs).is_noop());
    }

    #[test]
    fn service_replacements_roll_and_the_rest_does_not() {
        let t = topology::parse(
            "name: qa\nlab: { subnet: 10.77.0.0/24 }\nhosts:\n  host-1: { driver: local, address: 10.77.0.11, roles: [app, lb] }\nservices:\n  web: { image: web:1, port: 80 }\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        let s = desired_state(
            &t,
            &Secrets {
                gossip_key: "a2V5".into(),
                ..Default::default()
            },
        );
        let mut obs = converged(&s[0]);
        for c in &mut obs.containers {
            c.spec_hash = Some("old".into());
        }
        let (now, rolling) = plan_up(&s[0], &obs).split_rolling();
        assert_eq!(rolling.len(), 1);
        assert!(
            matches!(&rolling[0], Step::Replace { spec, .. } if spec.name == "qa-web-1"
            && spec.drain.as_ref().unwrap().service_id == "host-1:qa-web-1:80")
        );
        assert!(now
            .steps
            .iter()
            .all(|s| matches!(s, Step::Replace { spec, .. } if spec.drain.is_none())));
        assert_eq!(now.steps.len(), 4, "consul, register, nginx, template");
    }

    #[test]
    fn removed_by_hand_is_recreated_volume_kept() {
        let s = state();
        let mut obs = converged(&s[0]);
        obs.containers.retain(|c| c.name != "qa-register");
        let p = plan_up(&s[0], &obs);
        assert!(matches!(&p.steps[..], [Step::Create { spec, .. }] if spec.name == "qa-register"));
        assert_eq!(p.unchanged, vec!["qa-consul".to_string()]);
    }

    #[test]
    fn down_removes_containers_and_the_volumes_it_does_not_keep() {
        let s = state();
        let mut obs = converged(&s[0]);
        obs.volumes.push("qa-web-1-uploads".into());
        let removed_volumes = |keep| -> Vec<String> {
            plan_down("qa", "host-1", &obs, keep)
                .steps
                .into_iter()
                .filter_map(|s| match s {
                    Step::RemoveVolume { name } => Some(name),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            removed_volumes(Keep::Nothing),
            ["qa-consul-data", "qa-web-1-uploads"]
        );
        // By default a service's data stays; Consul's goes.
        assert_eq!(removed_volumes(Keep::ServiceData), ["qa-consul-data"]);
        assert!(removed_volumes(Keep::Everything).is_empty());
        let containers = plan_down("qa", "host-1", &obs, Keep::Everything);
        assert_eq!(totals(&[containers]).remove, 2);
        assert!(plan_down("qa", "host-1", &Observed::default(), Keep::Nothing).is_noop());
    }
}
