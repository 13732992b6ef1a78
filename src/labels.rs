//! The contract between stagectl, its agents and the hosts: the labels it
//! puts on everything it creates, the names it gives them, and the Consul
//! service IDs the registration agent makes (the plan drains instances by
//! them). It imports nothing of the project, so every layer can share it.
//!
//! Ownership is decided by labels, never by names: `down` removes exactly what
//! carries this environment's label, so a same-named container someone else
//! made is never touched, and a renamed one of ours is still found.

/// The environment a container, volume or network belongs to.
pub const ENV: &str = "io.stagectl.env";
/// What the container is: a [`Component`]'s label.
pub const COMPONENT: &str = "io.stagectl.component";
/// The topology host it was planned for.
pub const HOST: &str = "io.stagectl.host";
/// Hash of the desired spec it was created from; a different hash means the
/// topology changed and the container is replaced.
pub const SPEC_HASH: &str = "io.stagectl.spec-hash";
/// On a Consul agent: `server` or `client`. The plan reads it to order
/// membership changes (new servers first, a server that becomes a client
/// leaves the raft peers before it is replaced).
pub const CONSUL_ROLE: &str = "io.stagectl.consul-role";
/// The Consul tag of an instance registered but not routed (a service
/// with `expose: none`): the load balancer leaves such instances out.
pub const NOT_ROUTED_TAG: &str = "stagectl-not-routed";
/// On the template agent: the spec hash of the nginx container whose
/// processes it shares, so it is made again with it.
pub const NGINX_SPEC: &str = "io.stagectl.nginx-spec";
/// The service an app instance belongs to.
pub const SERVICE: &str = "io.stagectl.service";
/// The port block an environment holds on its hosts (on every container),
/// so other environments (and the next `up`) keep out of it.
pub const PORTS: &str = "io.stagectl.ports";
/// On a lock container: the environment it locks, who holds it (user@machine,
/// pid), with which command, since when (Unix seconds).
pub const LOCK: &str = "io.stagectl.lock";
pub const LOCK_HOLDER: &str = "io.stagectl.lock.holder";
pub const LOCK_COMMAND: &str = "io.stagectl.lock.command";
pub const LOCK_SINCE: &str = "io.stagectl.lock.since";
/// The local lab a lab host container or lab network belongs to.
pub const LAB: &str = "io.stagectl.lab";
/// The topology host name a lab host container stands for.
pub const LAB_HOST: &str = "io.stagectl.lab-host";

/// A Docker API filter for what stagectl created for `env`: the
/// environment's label and a component. The environment's label alone is
/// not ownership: with `registration.adopt: labeled`, users put it on their
/// own containers so that the registration agent serves them, and `up` or
/// `down` must never remove those.
pub fn owned_by(env: &str) -> std::collections::HashMap<String, Vec<String>> {
    std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("{ENV}={env}"), COMPONENT.to_string()],
    )])
}

/// A Docker API label filter for `key=value`.
pub fn filter(key: &str, value: &str) -> std::collections::HashMap<String, Vec<String>> {
    std::collections::HashMap::from([("label".to_string(), vec![format!("{key}={value}")])])
}

/// What a container stagectl creates is: the value of its [`COMPONENT`]
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// The Consul agent (server or client) of a host.
    Consul,
    /// The registration agent: containers with published ports → Consul.
    Register,
    /// The load balancer.
    Nginx,
    /// The template agent: Consul → nginx's config.
    Template,
    /// An instance of an app service from the topology's `services:`.
    Service,
    /// A one-off container of a service (`stagectl run`, `before_rollout`),
    /// removed when its command ends.
    Run,
}

impl Component {
    /// stagectl's own agents, one container each per host that runs them.
    pub const AGENTS: [Component; 4] = [
        Component::Consul,
        Component::Register,
        Component::Nginx,
        Component::Template,
    ];

    /// The label value, also the agents' container name suffix.
    pub const fn label(self) -> &'static str {
        match self {
            Component::Consul => "consul",
            Component::Register => "register",
            Component::Nginx => "nginx",
            Component::Template => "template",
            Component::Service => "service",
            Component::Run => "run",
        }
    }

    /// The container of this agent in environment `env`: `<env>-<label>`.
    pub fn container(self, env: &str) -> String {
        format!("{env}-{}", self.label())
    }

    pub fn from_label(value: &str) -> Option<Component> {
        Self::AGENTS
            .into_iter()
            .chain([Component::Service, Component::Run])
            .find(|c| c.label() == value)
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The Consul service ID of one published port of a container: unique per
/// host, container and port, and readable in `consul catalog`.
pub fn service_id(host: &str, container: &str, port: u16) -> String {
    format!("{host}:{}:{port}", container.trim_start_matches('/'))
}

/// The lab's bridge network on the local engine.
pub fn lab_network(lab: &str) -> String {
    format!("{lab}-lab")
}

/// The container of lab host `host` on the local engine.
pub fn lab_host_container(lab: &str, host: &str) -> String {
    format!("{lab}-{host}")
}
