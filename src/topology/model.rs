//! The validated topology: what the rest of stagectl works from.
//!
//! Every value here has been checked (`validate/`); code downstream never
//! re-validates and never sees YAML. Types are plain so that planning is a
//! pure function of this model.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Defined with the container specs, which carry it as it is (it is part
/// of their hash); the topology is where it is read from.
pub use crate::spec::Limits;

/// A whole environment, as described by one topology file.
#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    /// Environment name; prefixes every container, network and volume.
    pub name: String,
    /// The file it came from (for messages).
    pub source: PathBuf,
    /// Hosts, in the file's order of names (sorted, so output is stable).
    pub hosts: Vec<Host>,
    /// Present when at least one host uses `driver: local`.
    pub lab: Option<Lab>,
    pub images: Images,
    pub consul: ConsulSettings,
    /// The ports in effect: as declared, or resolved by `ports::resolve`
    /// against the other environments on the same hosts.
    pub ports: Ports,
    /// Whether `ports:` was in the file (else a free block is chosen).
    pub ports_declared: bool,
    pub lb: LbSettings,
    /// Which containers the registration agents register.
    pub registration: RegistrationSettings,
    /// App services, in name order.
    pub services: Vec<Service>,
}

impl Topology {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Hosts that run a Consul server, in order.
    pub fn consul_servers(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.consul_server)
    }

    pub fn lab_hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.is_lab())
    }

    /// Whether stagectl may connect to `endpoint`, which came from a record
    /// kept on the hosts (a host taken out of the topology): only the ways
    /// this topology itself uses. No plain TCP unless one of its hosts is
    /// `insecure`; identity, known_hosts and TLS files only those its hosts
    /// name; a lab address only inside its lab's subnet; a unix socket only
    /// one of its hosts uses. `Err` says why not.
    pub fn allows_endpoint(&self, endpoint: &Endpoint) -> Result<(), String> {
        let ours = || self.hosts.iter().map(|h| &h.endpoint);
        let allowed = match endpoint {
            Endpoint::Unix { path } => {
                ours().any(|e| matches!(e, Endpoint::Unix { path: p } if p == path))
            }
            Endpoint::Tcp { tls: None, .. } => {
                ours().any(|e| matches!(e, Endpoint::Tcp { tls: None, .. }))
            }
            Endpoint::Tcp {
                tls: Some(files), ..
            } => ours().any(|e| matches!(e, Endpoint::Tcp { tls: Some(f), .. } if f == files)),
            Endpoint::Ssh(target) => {
                let files_ours = |of: fn(&SshTarget) -> &Option<PathBuf>| {
                    of(target).is_none()
                        || ours().any(|e| matches!(e, Endpoint::Ssh(t) if of(t) == of(target)))
                };
                ours().any(|e| matches!(e, Endpoint::Ssh(_)))
                    && files_ours(|t| &t.identity_file)
                    && files_ours(|t| &t.known_hosts)
            }
            Endpoint::Lab { ip } => self.lab.as_ref().is_some_and(|l| l.subnet.contains(ip)),
        };
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "{endpoint} is reached in a way {} does not use for any of its hosts",
                self.source.display()
            ))
        }
    }

    /// "no service `x` in FILE; services: a, b": for a name given on the
    /// command line that names no service here.
    pub fn unknown_service(&self, name: &str) -> String {
        let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        format!(
            "no service `{name}` in {}; services: {}",
            self.source.display(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        )
    }

    pub fn lb_hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.has_role(Role::Lb))
    }

    /// The load balancer's TCP listeners: each `expose: tcp` service with
    /// its port, the declared `lb_port` or else the next of the ports right
    /// after `ports.lb_http` (its block's spare ones: see `plan::ports`), in
    /// service name order.
    pub fn tcp_ports(&self) -> Vec<(&Service, u16)> {
        tcp_ports_for(&self.services, &self.ports)
    }
}

/// [`Topology::tcp_ports`] for the ports `ports` (a candidate block).
pub fn tcp_ports_for<'a>(services: &'a [Service], ports: &Ports) -> Vec<(&'a Service, u16)> {
    let mut next = ports.lb_http;
    services
        .iter()
        .filter(|s| s.expose == Expose::Tcp)
        .map(|s| {
            let port = s.lb_port.unwrap_or_else(|| {
                next = next.saturating_add(1);
                next
            });
            (s, port)
        })
        .collect()
}

/// How many `expose: tcp` services may leave `lb_port` out: the spare
/// ports of a port block.
pub const MAX_DEFAULT_TCP_PORTS: usize = 5;

/// How the load balancer routes and reloads.
#[derive(Debug, Clone, Serialize)]
pub struct LbSettings {
    /// Services answer as `<service>.<env>.<domain>`.
    pub domain: String,
    /// A user template (its path, and its text, read at validation).
    pub template: Option<(PathBuf, String)>,
    pub quiet_ms: u64,
    pub max_wait_ms: u64,
    /// Answer as `http(s)://<service>.<env>.<domain>/` on ports 80 and
    /// 443 too, through the hosts' edge proxy (see `crate::edge`).
    pub edge: bool,
    /// A certificate of the user's for the edge, instead of the hosts' CA's.
    pub edge_tls: Option<EdgeTls>,
}

/// A certificate and key the user gives for an environment's names on the
/// edge, read at validation. Shown by path; the key never.
#[derive(Clone, Serialize)]
pub struct EdgeTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    #[serde(skip)]
    pub cert_pem: String,
    #[serde(skip)]
    pub key_pem: String,
}

impl fmt::Debug for EdgeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeTls")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl Default for LbSettings {
    fn default() -> Self {
        LbSettings {
            domain: "stagectl.test".into(),
            template: None,
            quiet_ms: 3,
            max_wait_ms: 250,
            edge: false,
            edge_tls: None,
        }
    }
}

/// An app service: instances of one image on some app hosts.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub name: String,
    pub image: String,
    /// The port it listens on in its container; published on a free host port.
    pub port: u16,
    pub hosts: Vec<String>,
    pub per_host: u16,
    pub env: std::collections::BTreeMap<String, String>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// How its instances' health is checked.
    pub health: Health,
    pub drain_seconds: u64,
    /// Only this service's own instances may register under its name.
    pub reserved: bool,
    /// The image's command and entrypoint, when replaced.
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub user: Option<String>,
    /// Volume name → path in the container; each instance has its own
    /// volume per name (see `desired::service_volume`).
    pub volumes: std::collections::BTreeMap<String, String>,
    /// Host paths mounted in: (host path, container path, read-only).
    pub binds: Vec<(String, String, bool)>,
    pub limits: Limits,
    pub expose: Expose,
    /// For `expose: tcp`: the load balancer's port for it, when declared
    /// (else one of the environment's block: see [`Topology::tcp_ports`]).
    pub lb_port: Option<u16>,
    pub secrets: Vec<Secret>,
    /// Services with a passing instance before this one's instances start.
    pub depends_on: Vec<String>,
    /// Run once, in a one-off container of the new spec, before any
    /// instance is created or replaced (a migration); a failure stops the
    /// rollout with the old instances serving.
    pub before_rollout: Option<Vec<String>>,
}

/// How an instance's health is checked, and how often. A check that
/// fails `retries` times in a row takes the instance out of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub check: HealthCheck,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    /// Whether `health:` was written: only then do the instances carry the
    /// timing settings (so the others keep their spec hash).
    pub declared: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            check: HealthCheck::Tcp,
            interval_ms: 1000,
            timeout_ms: 1000,
            retries: 1,
            declared: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// A connection to the published port, by Consul.
    Tcp,
    /// `GET <path>` on the published port, by Consul.
    Http(String),
    /// A command inside the container, by Docker; the registration agent
    /// registers the instance only while Docker says it is healthy.
    Cmd(Vec<String>),
}

/// A secret a service's instances get as the file `/run/secrets/<name>`
/// (mode 0400), its value read by `up` from the operator's side.
#[derive(Debug, Clone, Serialize)]
pub struct Secret {
    pub name: String,
    pub source: SecretSource,
    /// Also this environment variable, when asked for.
    pub env: Option<String>,
    /// `file:line:col` of its declaration, for messages.
    pub declared_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl Service {
    /// The hosts a command about this service may use: all of them, or the
    /// one `--host` names, which must be one of them.
    pub fn hosts_for(&self, host: Option<&str>) -> Result<Vec<&str>, String> {
        match host {
            None => Ok(self.hosts.iter().map(String::as_str).collect()),
            Some(h) => match self.hosts.iter().find(|x| *x == h) {
                Some(x) => Ok(vec![x.as_str()]),
                None => Err(format!(
                    "--host {h}: service {} does not run there; it runs on {}",
                    self.name,
                    self.hosts.join(", ")
                )),
            },
        }
    }

    /// Whether `up` brings its instances up in a stage of their own (see
    /// `plan::Stage`), after its dependencies and its `before_rollout`.
    pub fn is_staged(&self) -> bool {
        !self.depends_on.is_empty() || self.before_rollout.is_some()
    }

    /// The prefix of the variables that give its address to the others:
    /// `payments-api` → `PAYMENTS_API` (`PAYMENTS_API_SERVICE_HOST`, ...).
    pub fn env_prefix(&self) -> String {
        self.name.to_ascii_uppercase().replace('-', "_")
    }
}

/// The variables every instance gets for every service `s` the load
/// balancer serves: `<S>_SERVICE_HOST` and `<S>_SERVICE_PORT` (the load
/// balancer's address, and its HTTP port or the service's TCP port), and
/// for HTTP services `<S>_SERVICE_URL` (`http://host:port/<s>/`, no Host
/// header needed).
pub fn service_variables(
    services: &[Service],
) -> impl Iterator<Item = (&Service, ServiceVariables)> {
    services
        .iter()
        .filter(|s| s.expose != Expose::None)
        .map(|s| {
            let p = s.env_prefix();
            (
                s,
                ServiceVariables {
                    host: format!("{p}_SERVICE_HOST"),
                    port: format!("{p}_SERVICE_PORT"),
                    url: (s.expose == Expose::Http).then(|| format!("{p}_SERVICE_URL")),
                },
            )
        })
}

/// The names of one service's variables (see [`service_variables`]).
pub struct ServiceVariables {
    pub host: String,
    pub port: String,
    pub url: Option<String>,
}

impl ServiceVariables {
    pub fn names(self) -> impl Iterator<Item = String> {
        [self.host, self.port].into_iter().chain(self.url)
    }
}

/// `value` with every `${NAME}` replaced by `vars[NAME]` (`$${` is a
/// literal `${`); the names it refers to that `vars` lacks, in order.
pub fn interpolate(
    value: &str,
    vars: &std::collections::BTreeMap<String, String>,
) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut missing = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix("${").and_then(|t| t.split_once('}'))
        {
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    missing.push(name.to_string());
                    out.push_str(&after[..name.len() + 3]);
                }
            }
            rest = tail;
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    (out, missing)
}

/// How a service is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expose {
    /// Routed by the load balancer: `<service>.<env>.<domain>` and
    /// `/<service>/`.
    #[default]
    Http,
    /// A TCP listener on the load balancer (nginx `stream`), for a
    /// database or any other protocol.
    Tcp,
    /// Registered in Consul (found, health-checked), not routed: a worker.
    None,
}

impl Expose {
    /// The values `expose` accepts, as written in YAML.
    pub const CHOICES: &'static [(&'static str, Expose)] = &[
        ("http", Expose::Http),
        ("tcp", Expose::Tcp),
        ("none", Expose::None),
    ];
}

/// `registration:` in the topology.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RegistrationSettings {
    pub adopt: Adopt,
}

/// Which containers without a declared service the agents register.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Adopt {
    /// Containers with no environment label too, while this is the only
    /// environment with agents on the host (registrator's behaviour).
    #[default]
    All,
    /// Only containers labelled with this environment.
    Labeled,
}

impl Adopt {
    /// The values `registration.adopt` accepts, as written in YAML.
    pub const CHOICES: &'static [(&'static str, Adopt)] =
        &[("all", Adopt::All), ("labeled", Adopt::Labeled)];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    App,
    Lb,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::App => "app",
            Role::Lb => "lb",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    pub endpoint: Endpoint,
    /// The address other hosts (and Consul) reach this host at.
    pub advertise: IpAddr,
    pub roles: BTreeSet<Role>,
    pub consul_server: bool,
}

impl Host {
    pub fn is_lab(&self) -> bool {
        matches!(self.endpoint, Endpoint::Lab { .. })
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// How to reach a host's Docker engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Endpoint {
    /// The engine on this machine, through its socket.
    Unix { path: PathBuf },
    /// A remote engine's TCP port; TLS unless the topology said `insecure`.
    Tcp {
        host: String,
        port: u16,
        tls: Option<TlsFiles>,
    },
    /// A remote engine reached through the system ssh client.
    Ssh(SshTarget),
    /// A host of the local lab: a Docker-in-Docker container stagectl creates,
    /// reached over SSH with keys stagectl generated for the lab.
    Lab { ip: Ipv4Addr },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix { path } => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp { host, port, .. } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Ssh(t) => write!(f, "ssh://{}@{}:{}", t.user, t.host, t.port),
            Endpoint::Lab { ip } => write!(f, "ssh://root@{ip}:22 (local lab)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshTarget {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    /// A known_hosts file to check the host key against; ssh's own default
    /// (`~/.ssh/known_hosts`) when absent. Checking is always strict.
    pub known_hosts: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The local lab that `driver: local` hosts live in.
#[derive(Debug, Clone, Serialize)]
pub struct Lab {
    /// Lab name; several environments naming the same lab share its hosts.
    pub name: String,
    pub subnet: Ipv4Net,
}

/// An IPv4 network in CIDR form (kept truncated to its network address).
pub use ipnet::Ipv4Net;

/// The lab bridge's own address: the first one in the network.
pub fn gateway(net: &Ipv4Net) -> std::net::Ipv4Addr {
    net.hosts().next().unwrap_or(net.network())
}

/// Image references for each component.
#[derive(Debug, Clone, Serialize)]
pub struct Images {
    pub consul: String,
    pub agent: String,
    pub nginx: String,
    pub labhost: String,
}

impl Default for Images {
    fn default() -> Self {
        Images {
            consul: "stagectl/consul:1.8.7".into(),
            agent: "stagectl/agent:latest".into(),
            nginx: "stagectl/nginx:1.22".into(),
            labhost: "stagectl/labhost:latest".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsulSettings {
    pub datacenter: String,
    /// Number of servers; what `-bootstrap-expect` is set to.
    pub bootstrap_expect: usize,
    /// How long `up` waits for a leader and every member.
    pub join_timeout_secs: u64,
}

/// Host ports the environment binds on every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ports {
    pub lb_http: u16,
    pub consul_http: u16,
    pub consul_serf_lan: u16,
    pub consul_serf_wan: u16,
    pub consul_server: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            lb_http: 80,
            consul_http: 8500,
            consul_serf_lan: 8301,
            consul_serf_wan: 8302,
            consul_server: 8300,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_replaces_known_names_only() {
        let vars = std::collections::BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(interpolate("x${A}y", &vars), ("x1y".into(), vec![]));
        assert_eq!(
            interpolate("$${A} $A $", &vars),
            ("${A} $A $".into(), vec![])
        );
        assert_eq!(
            interpolate("${B}${A}${", &vars),
            ("${B}1${".into(), vec!["B".to_string()])
        );
    }
}
