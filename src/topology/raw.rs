//! The topology file as written: serde structs that mirror the YAML.
//!
//! Nothing here is checked beyond types and key names (`deny_unknown_fields`
//! everywhere, so a typo is an error, not a silently ignored key). Values that
//! later checks may complain about are wrapped in [`Spanned`] so those checks
//! can point at the line and column they came from. `validate` turns this into
//! the model the rest of the program uses.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTopology {
    /// A base topology this one extends (hosts, SSH settings, images...):
    /// what this file sets wins, key by key for `hosts`, `services`, `ssh`
    /// and `images`, section by section for the rest. Relative paths in the
    /// base (key files, `lb.template`) are relative to the base's folder, so
    /// a base works the same from every environment that extends it.
    #[serde(default)]
    pub extends: Option<Spanned<String>>,
    /// Environment name; prefixes every container, network and volume.
    /// Required, but may come from nowhere but the environment's own file.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub hosts: Option<Spanned<BTreeMap<String, Spanned<RawHost>>>>,
    #[serde(default)]
    pub lab: Option<Spanned<RawLab>>,
    /// SSH defaults for every `ssh://` host; a host's own `ssh:` overrides.
    #[serde(default)]
    pub ssh: Option<RawSsh>,
    #[serde(default)]
    pub images: Option<RawImages>,
    #[serde(default)]
    pub consul: Option<RawConsul>,
    #[serde(default)]
    pub ports: Option<RawPorts>,
    #[serde(default)]
    pub lb: Option<RawLb>,
    /// Which containers the registration agents register.
    #[serde(default)]
    pub registration: Option<RawRegistration>,
    /// App services to deploy; registered by the agents, not by `up`.
    /// Keyed by name, a DNS label (services answer as
    /// `<service>.<env>.<domain>`), so up to 63 characters.
    #[serde(default)]
    pub services: Option<BTreeMap<String, Spanned<RawService>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRegistration {
    /// `all` (default): containers with no environment label are registered
    /// too, while only one environment has agents on the host, as registrator
    /// did. `labeled`: only containers labelled `io.stagectl.env=<env>`, for
    /// hosts where other people's containers must never reach the LB.
    /// A string rather than an enum so a bad value is reported with the
    /// file's other problems, not alone as a parse error.
    #[serde(default)]
    pub adopt: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLb {
    /// Services are served as `<service>.<env>.<domain>`.
    #[serde(default)]
    pub domain: Option<Spanned<String>>,
    /// A minijinja template for the nginx config, instead of the built-in;
    /// a relative path is relative to the file it is written in.
    #[serde(default)]
    pub template: Option<Spanned<String>>,
    /// Quiet period before a burst of changes is applied.
    #[serde(default)]
    pub quiet_ms: Option<Spanned<i64>>,
    /// Longest a change waits while changes keep coming.
    #[serde(default)]
    pub max_wait_ms: Option<Spanned<i64>>,
    /// Also answer on ports 80 and 443 of the load balancer hosts, by
    /// name, through the hosts' shared edge proxy.
    #[serde(default)]
    pub edge: Option<bool>,
    /// The certificate the edge serves for this environment, instead of
    /// one issued by the hosts' CA: PEM files, relative to the file.
    #[serde(default)]
    pub edge_tls: Option<Spanned<RawEdgeTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEdgeTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub image: Spanned<String>,
    /// The port the service listens on inside its container.
    pub port: Spanned<i64>,
    /// Hosts to run on; default: every `app` host.
    #[serde(default)]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    /// Instances per host.
    #[serde(default)]
    pub per_host: Option<Spanned<i64>>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Path of an HTTP health check; default: a TCP check on the port.
    /// (Short for `health: { http: PATH }`.)
    #[serde(default)]
    pub check_http: Option<Spanned<String>>,
    /// How an instance's health is checked: one of `http`, `tcp`, `cmd`,
    /// and how often.
    #[serde(default)]
    pub health: Option<Spanned<RawHealth>>,
    /// Seconds to wait between deregistering an instance and stopping it.
    #[serde(default)]
    pub drain_seconds: Option<Spanned<i64>>,
    /// Only this service's own instances are registered under its name by
    /// the registration agent: a stray container claiming it (by
    /// `SERVICE_NAME` or its image's name) is not. A process that calls
    /// Consul's API on a host's loopback directly is not stopped by this.
    #[serde(default)]
    pub reserved: Option<bool>,
    /// Replaces the image's command (`CMD`).
    #[serde(default)]
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    /// Replaces the image's entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Spanned<Vec<Spanned<String>>>>,
    /// The user (or `uid[:gid]`) the process runs as.
    #[serde(default)]
    pub user: Option<Spanned<String>>,
    /// Host paths mounted into the container: `HOST:CONTAINER[:ro]`.
    #[serde(default)]
    pub binds: Option<Vec<Spanned<String>>>,
    /// Memory limit: `512m`, `2g` (bytes with k, m or g).
    #[serde(default)]
    pub memory: Option<Spanned<String>>,
    /// CPU limit, in CPUs: `0.5`, `2`.
    #[serde(default)]
    pub cpus: Option<Spanned<f64>>,
    /// `unless-stopped` (default), `always`, `on-failure`, `no`.
    #[serde(default)]
    pub restart: Option<Spanned<String>>,
    /// Named volumes, volume name → path in the container: kept across
    /// replacements and `up`, removed by `down` unless `--keep-data`.
    #[serde(default)]
    pub volumes: Option<BTreeMap<String, Spanned<String>>>,
    /// `http` (default): routed by the load balancer; `tcp`: a TCP port on
    /// the load balancer; `none`: registered in Consul, not routed (a
    /// worker).
    #[serde(default)]
    pub expose: Option<Spanned<String>>,
    /// For `expose: tcp`: the load balancer's port (default: one of the
    /// environment's port block).
    #[serde(default)]
    pub lb_port: Option<Spanned<i64>>,
    /// Services that must have a passing instance before this one's
    /// instances start.
    #[serde(default)]
    pub depends_on: Option<Spanned<Vec<Spanned<String>>>>,
    /// A command run once with the new spec before the instances are
    /// created or replaced (a migration); if it fails, nothing is replaced.
    #[serde(default)]
    pub before_rollout: Option<Spanned<Vec<Spanned<String>>>>,
    /// Secrets, name → where `up` reads the value (never the topology).
    #[serde(default)]
    pub secrets: Option<BTreeMap<String, Spanned<RawSecret>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// A path asked over HTTP on the instance's port (2xx passes).
    #[serde(default)]
    pub http: Option<Spanned<String>>,
    /// A TCP connection to the instance's port (the default).
    #[serde(default)]
    pub tcp: Option<Spanned<bool>>,
    /// A command run inside the container (exit 0 passes), by Docker.
    #[serde(default)]
    pub cmd: Option<Spanned<Vec<Spanned<String>>>>,
    /// `500ms`, `5s`, `1m`.
    #[serde(default)]
    pub interval: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    /// Failed checks in a row before the instance counts as failing.
    #[serde(default)]
    pub retries: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    /// An environment variable of the operator's (or CI job's) shell.
    #[serde(default)]
    pub from_env: Option<Spanned<String>>,
    /// A file; relative to the topology file.
    #[serde(default)]
    pub from_file: Option<Spanned<String>>,
    /// Also give it to the process as this environment variable (then it
    /// shows in `docker inspect`).
    #[serde(default)]
    pub env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawDriver {
    Local,
    Remote,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum RawRole {
    App,
    Lb,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    /// `ssh://user@host:port`, `tcp://host:port`, `unix:///path`; for
    /// `driver: local`, the lab host's IP address.
    pub address: Spanned<String>,
    #[serde(default)]
    pub driver: Option<Spanned<RawDriver>>,
    /// The IP other hosts reach this one at; defaults to the address's IP.
    #[serde(default)]
    pub advertise: Option<Spanned<String>>,
    #[serde(default)]
    pub roles: Option<Spanned<Vec<Spanned<RawRole>>>>,
    #[serde(default)]
    pub ssh: Option<RawSsh>,
    #[serde(default)]
    pub tls: Option<Spanned<RawTls>>,
    /// Allow plain `tcp://` to a non-loopback address.
    #[serde(default)]
    pub insecure: Option<bool>,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    #[serde(default)]
    pub user: Option<Spanned<String>>,
    #[serde(default)]
    pub port: Option<Spanned<i64>>,
    /// Key files: a relative path is relative to the file it is written in
    /// (a base's, to the base's folder), whichever file extends it.
    #[serde(default)]
    pub identity_file: Option<Spanned<String>>,
    #[serde(default)]
    pub known_hosts: Option<Spanned<String>>,
}

/// Client certificate files; relative paths as for `ssh.identity_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLab {
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    pub subnet: Spanned<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawImages {
    #[serde(default)]
    pub consul: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub nginx: Option<String>,
    #[serde(default)]
    pub labhost: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConsul {
    #[serde(default)]
    pub datacenter: Option<Spanned<String>>,
    /// Hosts that run a Consul server; default: every host.
    #[serde(default)]
    pub servers: Option<Spanned<Vec<Spanned<String>>>>,
    /// Seconds `up` waits for a leader and every member.
    #[serde(default)]
    pub join_timeout: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPorts {
    #[serde(default)]
    pub lb_http: Option<Spanned<i64>>,
    #[serde(default)]
    pub consul_http: Option<Spanned<i64>>,
    #[serde(default)]
    pub consul_serf_lan: Option<Spanned<i64>>,
    #[serde(default)]
    pub consul_serf_wan: Option<Spanned<i64>>,
    #[serde(default)]
    pub consul_server: Option<Spanned<i64>>,
}

impl RawTopology {
    /// This file over `base`: maps merge by key (this file's entries win),
    /// `ssh` and `images` key by key, every other section whole.
    pub fn over(self, base: RawTopology) -> RawTopology {
        let hosts = match (self.hosts, base.hosts) {
            (Some(mut mine), Some(theirs)) => {
                for (name, host) in theirs.value {
                    mine.value.entry(name).or_insert(host);
                }
                Some(mine)
            }
            (mine, theirs) => mine.or(theirs),
        };
        let services = match (self.services, base.services) {
            (Some(mut mine), Some(theirs)) => {
                for (name, svc) in theirs {
                    mine.entry(name).or_insert(svc);
                }
                Some(mine)
            }
            (mine, theirs) => mine.or(theirs),
        };
        let ssh = match (self.ssh, base.ssh) {
            (Some(m), Some(b)) => Some(RawSsh {
                user: m.user.or(b.user),
                port: m.port.or(b.port),
                identity_file: m.identity_file.or(b.identity_file),
                known_hosts: m.known_hosts.or(b.known_hosts),
            }),
            (m, b) => m.or(b),
        };
        let images = match (self.images, base.images) {
            (Some(m), Some(b)) => Some(RawImages {
                consul: m.consul.or(b.consul),
                agent: m.agent.or(b.agent),
                nginx: m.nginx.or(b.nginx),
                labhost: m.labhost.or(b.labhost),
            }),
            (m, b) => m.or(b),
        };
        RawTopology {
            extends: self.extends,
            name: self.name,
            hosts,
            lab: self.lab.or(base.lab),
            ssh,
            images,
            consul: self.consul.or(base.consul),
            ports: self.ports.or(base.ports),
            lb: self.lb.or(base.lb),
            registration: self.registration.or(base.registration),
            services,
        }
    }
}
