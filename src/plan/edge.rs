//! The environment's entries on its hosts' edge proxies (see
//! `crate::edge`): what `up` and `down` change there, from what the
//! snapshot saw (pure).
//!
//! An environment touches only its own route. The edge container is made
//! when a host has none and an environment needs it, and removed when the
//! route taken away was its last.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Snapshot, StepRef};
use crate::edge::conf::{self, Route};
use crate::spec::EdgeSeen;
use crate::topology::Topology;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum EdgeStep {
    /// Make (or start) the host's edge proxy; the hosts' CA is written
    /// into it if the host has none.
    EdgeCreate { host: String },
    /// Write the environment's route and a certificate for its names,
    /// check, reload.
    EdgeRoute {
        host: String,
        /// `*.<env>.<domain>` and `<env>.<domain>`.
        names: Vec<String>,
        /// Where they go: the environment's load balancer.
        to: String,
        #[serde(skip)]
        text: String,
    },
    /// Take the environment's route and certificate away, reload.
    EdgeUnroute { host: String },
    /// Remove the edge proxy: the route just taken away was its last.
    EdgeRemove { host: String },
}

impl EdgeStep {
    pub fn host(&self) -> &str {
        match self {
            EdgeStep::EdgeCreate { host }
            | EdgeStep::EdgeRoute { host, .. }
            | EdgeStep::EdgeUnroute { host }
            | EdgeStep::EdgeRemove { host } => host,
        }
    }

    pub fn action(&self) -> &'static str {
        match self {
            EdgeStep::EdgeCreate { .. } => "edge_create",
            EdgeStep::EdgeRoute { .. } => "edge_route",
            EdgeStep::EdgeUnroute { .. } => "edge_unroute",
            EdgeStep::EdgeRemove { .. } => "edge_remove",
        }
    }

    /// For `plan`'s text: what happens to [`Self::reference`]'s subject.
    pub fn verb(&self) -> &'static str {
        match self {
            EdgeStep::EdgeCreate { .. } => "create",
            EdgeStep::EdgeRoute { .. } => "route",
            EdgeStep::EdgeUnroute { .. } => "take away",
            EdgeStep::EdgeRemove { .. } => "remove",
        }
    }

    pub fn reference(&self) -> StepRef {
        StepRef {
            phase: "edge",
            host: self.host().to_string(),
            action: self.action(),
            subject: match self {
                EdgeStep::EdgeCreate { .. } => "the edge proxy on ports 80 and 443".into(),
                EdgeStep::EdgeRoute { names, to, .. } => format!("{} → {to}", names.join(" ")),
                EdgeStep::EdgeUnroute { .. } => "this environment's names".into(),
                EdgeStep::EdgeRemove { .. } => "the edge proxy (no environment left on it)".into(),
            },
        }
    }
}

/// `up`: a route on every load balancer host when the topology has
/// `lb.edge`; the environment's routes elsewhere (or all of them, without
/// `lb.edge`) taken away.
pub fn up(t: &Topology, snapshot: &Snapshot) -> Result<Vec<EdgeStep>, String> {
    let mut steps = Vec::new();
    let mut wanted = BTreeMap::new();
    if t.lb.edge {
        refuse_overlaps(t, snapshot)?;
        for h in t.lb_hosts() {
            let route = Route {
                env: t.name.clone(),
                domain: t.lb.domain.clone(),
                lb: h.advertise,
                lb_port: t.ports.lb_http,
                given_cert_sha256: t.lb.edge_tls.as_ref().map(|tls| {
                    use sha2::{Digest, Sha256};
                    format!("{:x}", Sha256::digest(tls.cert_pem.as_bytes()))
                }),
            };
            wanted.insert(h.name.clone(), (route.clone(), conf::route(&route)?));
        }
    }
    for h in &snapshot.hosts {
        let seen = h.edge.as_ref();
        let ours = seen.and_then(|e| e.routes.get(&t.name));
        match wanted.remove(&h.host) {
            Some((route, text)) => {
                if !seen.is_some_and(|e| e.running) {
                    steps.push(EdgeStep::EdgeCreate {
                        host: h.host.clone(),
                    });
                }
                let expiring = seen.is_some_and(|e| e.expiring.contains(&t.name));
                if ours != Some(&text) || expiring {
                    steps.push(EdgeStep::EdgeRoute {
                        host: h.host.clone(),
                        names: conf::names(&route.env, &route.domain).to_vec(),
                        to: format!("{}:{}", route.lb, route.lb_port),
                        text,
                    });
                }
            }
            None => steps.extend(take_away(&t.name, &h.host, seen)),
        }
    }
    Ok(steps)
}

/// An environment whose names meet another's on the same edge would take
/// some of them (`*.web.pr-1.<domain>` for `web` on `pr-1.<domain>` is
/// preview `pr-1`'s), and get a certificate for them: refused before
/// anything changes, naming the other environment. `up` asks this as soon
/// as it has the snapshot, before it keeps a new environment's key, and
/// [`up`] again.
pub fn refuse_overlaps(t: &Topology, snapshot: &Snapshot) -> Result<(), String> {
    let ours = conf::names(&t.name, &t.lb.domain)[0].clone();
    for h in &snapshot.hosts {
        let Some(seen) = &h.edge else { continue };
        for (env, text) in seen.routes.iter().filter(|(env, _)| **env != t.name) {
            let Some(theirs) = conf::routed_name(text) else {
                continue;
            };
            if conf::overlaps(&ours, theirs) {
                return Err(format!(
                    "lb.domain `{}`: environment {} would answer to {ours} and every name below it, \
                     which meets environment {env}'s {theirs} on the edge proxy of {}; \
                     choose a domain whose names no other environment has",
                    t.lb.domain, t.name, h.host
                ));
            }
        }
    }
    Ok(())
}

/// `down`: the environment's routes taken away, wherever they are.
pub fn down(env: &str, snapshot: &Snapshot) -> Vec<EdgeStep> {
    snapshot
        .hosts
        .iter()
        .chain(&snapshot.departed)
        .flat_map(|h| take_away(env, &h.host, h.edge.as_ref()))
        .collect()
}

fn take_away(env: &str, host: &str, seen: Option<&EdgeSeen>) -> Vec<EdgeStep> {
    let Some(seen) = seen.filter(|e| e.routes.contains_key(env)) else {
        return vec![];
    };
    let mut steps = vec![EdgeStep::EdgeUnroute { host: host.into() }];
    if seen.routes.keys().all(|e| e == env) {
        steps.push(EdgeStep::EdgeRemove { host: host.into() });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::HostSnapshot;

    fn topology(edge: bool) -> Topology {
        let mut t = crate::topology::parse(
            "name: pr-7\nlab: { subnet: 10.77.0.0/24 }\nhosts:\n  h1: { driver: local, address: 10.77.0.11, roles: [app, lb] }\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        t.lb.edge = edge;
        t.lb.domain = "preview.test".into();
        t
    }

    fn snapshot(edge: Option<EdgeSeen>) -> Snapshot {
        Snapshot {
            hosts: vec![HostSnapshot {
                host: "h1".into(),
                edge,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn actions(steps: &[EdgeStep]) -> Vec<&'static str> {
        steps.iter().map(EdgeStep::action).collect()
    }

    #[test]
    fn the_first_environment_makes_the_edge_and_an_unchanged_route_is_left() {
        let t = topology(true);
        let steps = up(&t, &snapshot(None)).unwrap();
        assert_eq!(actions(&steps), ["edge_create", "edge_route"]);
        let EdgeStep::EdgeRoute { text, names, .. } = &steps[1] else {
            panic!()
        };
        assert_eq!(names, &["pr-7.preview.test", "*.pr-7.preview.test"]);
        let seen = EdgeSeen {
            running: true,
            routes: BTreeMap::from([("pr-7".to_string(), text.clone())]),
            ..Default::default()
        };
        assert!(up(&t, &snapshot(Some(seen.clone()))).unwrap().is_empty());
        // A certificate near its end is issued again.
        let mut expiring = seen;
        expiring.expiring.insert("pr-7".into());
        assert_eq!(
            actions(&up(&t, &snapshot(Some(expiring))).unwrap()),
            ["edge_route"]
        );
    }

    #[test]
    fn names_that_meet_another_environments_are_refused() {
        let mut t = topology(true);
        t.name = "web".into();
        t.lb.domain = "pr-7.preview.test".into();
        let preview = topology(true);
        let Some(EdgeStep::EdgeRoute { text, .. }) = up(&preview, &snapshot(None)).unwrap().pop()
        else {
            panic!()
        };
        let seen = EdgeSeen {
            running: true,
            routes: BTreeMap::from([("pr-7".to_string(), text)]),
            ..Default::default()
        };
        // Its own domain beside the preview's: fine.
        t.lb.domain = "web.test".into();
        assert!(up(&t, &snapshot(Some(seen.clone()))).is_ok());
        t.lb.domain = "pr-7.preview.test".into();
        let refused = up(&t, &snapshot(Some(seen))).unwrap_err();
        assert!(
            refused.contains("environment pr-7's pr-7.preview.test"),
            "{refused}"
        );
    }

    #[test]
    fn without_edge_the_route_goes_and_the_edge_with_its_last_route() {
        let t = topology(false);
        let only = EdgeSeen {
            running: true,
            routes: BTreeMap::from([("pr-7".to_string(), "x".to_string())]),
            ..Default::default()
        };
        assert_eq!(
            actions(&up(&t, &snapshot(Some(only.clone()))).unwrap()),
            ["edge_unroute", "edge_remove"]
        );
        let mut shared = only;
        shared.routes.insert("pr-8".into(), "y".into());
        assert_eq!(
            actions(&down("pr-7", &snapshot(Some(shared.clone())))),
            ["edge_unroute"]
        );
        // Another environment's route alone: nothing of ours to do.
        assert!(down("pr-9", &snapshot(Some(shared))).is_empty());
        assert!(up(&t, &snapshot(None)).unwrap().is_empty());
    }
}
