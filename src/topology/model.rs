//! The validated topology: what the rest of stagectl works from.
//!
//! Every value here has been checked (`validate.rs`); code downstream never
//! re-validates and never sees YAML. Types are plain so that planning is a
//! pure function of this model.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::Serialize;

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

    pub fn lb_hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.has_role(Role::Lb))
    }
}

/// How the load balancer routes and reloads.
#[derive(Debug, Clone, Serialize)]
pub struct LbSettings {
    /// Services answer as `<service>.<env>.<domain>`.
    pub domain: String,
    /// A user template (its path, and its text, read at validation).
    pub template: Option<(PathBuf, String)>,
    pub quiet_ms: u64,
    pub max_wait_ms: u64,
}

impl Default for LbSettings {
    fn default() -> Self {
        LbSettings {
            domain: "stagectl.test".into(),
            template: None,
            quiet_ms: 10,
            max_wait_ms: 250,
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
    pub check_http: Option<String>,
    pub drain_seconds: u64,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshTarget {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    /// A known_hosts file to check the host key against; ssh's own default
    /// (`~/.ssh/known_hosts`) when absent. Checking is always strict.
    pub known_hosts: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// An IPv4 network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = self.mask();
        (u32::from(ip) & mask) == (u32::from(self.addr) & mask)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// The bridge's own address: the first one in the network.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
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
