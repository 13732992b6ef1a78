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
    /// and `images`, section by section for the rest.
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
    /// App services to deploy; registered by the agents, not by `up`.
    #[serde(default)]
    pub services: Option<BTreeMap<String, Spanned<RawService>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLb {
    /// Services are served as `<service>.<env>.<domain>`.
    #[serde(default)]
    pub domain: Option<Spanned<String>>,
    /// A minijinja template for the nginx config, instead of the built-in.
    #[serde(default)]
    pub template: Option<Spanned<String>>,
    /// Quiet period before a burst of changes is applied.
    #[serde(default)]
    pub quiet_ms: Option<Spanned<i64>>,
    /// Longest a change waits while changes keep coming.
    #[serde(default)]
    pub max_wait_ms: Option<Spanned<i64>>,
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
    #[serde(default)]
    pub check_http: Option<Spanned<String>>,
    /// Seconds to wait between deregistering an instance and stopping it.
    #[serde(default)]
    pub drain_seconds: Option<Spanned<i64>>,
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
    #[serde(default)]
    pub identity_file: Option<Spanned<String>>,
    #[serde(default)]
    pub known_hosts: Option<Spanned<String>>,
}

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
            services,
        }
    }
}
