//! What a host should run and what it runs, as plain data: the specs the
//! plan makes and the engines carry out, and the observed state the
//! engines report and the plan reads.
//!
//! It imports nothing of the project: the plan, the engines, the edge and
//! the cluster all speak these types, and none of them needs another to do
//! so. Every field that should force a container to be replaced when it
//! changes is part of [`ContainerSpec`] and therefore of its hash; what
//! should not (the human summary, where to join) is skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Everything one host should have for this environment.
#[derive(Debug, Clone, Serialize)]
pub struct HostState {
    pub host: String,
    pub containers: Vec<ContainerSpec>,
    pub volumes: Vec<VolumeSpec>,
    /// The `before_rollout` one-offs of the services whose first host this
    /// is, by service name: run there when the service's instances change.
    #[serde(skip)]
    pub before_rollout: BTreeMap<String, ContainerSpec>,
}

impl HostState {
    /// The image references this host's containers use, each once.
    pub fn images(&self) -> Vec<String> {
        let set: BTreeSet<String> = self.containers.iter().map(|c| c.image.clone()).collect();
        set.into_iter().collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeSpec {
    pub name: String,
    pub component: String,
}

/// One container, described independently of Docker's API types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerSpec {
    pub name: String,
    pub component: String,
    pub image: String,
    pub cmd: Vec<String>,
    /// Left out of the hash when unset, as `user` is: specs that do not use
    /// them keep the hash they had before these fields existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `host` for agents that must bind the host's own address.
    pub network_mode: Option<String>,
    /// `container:<name>`: the template agent in nginx's process namespace,
    /// so it signals nginx's processes itself. Left out of the hash when
    /// unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_mode: Option<String>,
    pub mounts: Vec<Mount>,
    /// Container ports published on free host ports (TCP).
    pub ports: Vec<u16>,
    /// Files written into the container after it is created and before it
    /// starts: how secrets get in without appearing in `docker inspect`.
    pub files: Vec<FileSpec>,
    /// A health check Docker runs in the container (`health.cmd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<DockerHealthcheck>,
    /// Memory and CPU limits, restart policy (app services only).
    #[serde(skip_serializing_if = "Limits::is_default")]
    pub limits: Limits,
    /// Arguments after `cmd` that matter only when the container first
    /// starts: where a Consul agent joins and how many servers it waits
    /// for. Not part of the hash: a running member need not be replaced
    /// because the servers to join have changed (it knows the members and
    /// rejoins them from its own data), so adding servers restarts none of
    /// the others.
    #[serde(skip)]
    pub join_args: Vec<String>,
    /// One line for humans (plan output); not part of the hash.
    #[serde(skip)]
    pub summary: String,
    /// For app service instances: replace them one host at a time, taking
    /// them out of the pool first. Not part of the hash.
    #[serde(skip)]
    pub drain: Option<Drain>,
}

/// A command Docker runs in the container to tell its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DockerHealthcheck {
    /// Run directly (`CMD`), not through a shell.
    pub cmd: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
}

/// How to take an instance out of the load balancer before replacing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    /// The Consul service ID the registration agent gives it.
    pub service_id: String,
    pub service: String,
    /// How long in-flight requests get after deregistration.
    pub seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// A named volume (created by stagectl) or, for binds, a host path.
    pub source: String,
    pub target: String,
    pub read_only: bool,
    pub bind: bool,
}

#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    pub path: String,
    pub mode: u32,
    /// Only the hash of the content takes part in the spec hash.
    #[serde(skip)]
    pub content: Vec<u8>,
    /// sha256 of the content; for a service's secret, a keyed digest
    /// (HMAC-SHA256 under the environment's gossip key), so the spec hash
    /// label does not let anyone test guesses of the value.
    pub content_sha256: String,
    /// uid and gid, when not root's (a secret for a process that runs as
    /// another user must be readable by it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<(u64, u64)>,
}

impl std::fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileSpec({}, {:o}, sha256 {})",
            self.path, self.mode, self.content_sha256
        )
    }
}

impl FileSpec {
    pub fn new(path: &str, mode: u32, content: Vec<u8>) -> Self {
        FileSpec {
            path: path.into(),
            mode,
            content_sha256: format!("{:x}", Sha256::digest(&content)),
            content,
            owner: None,
        }
    }

    /// A secret's file: mode 0400, its digest keyed with `key`.
    pub fn secret(path: &str, content: Vec<u8>, key: &str, owner: Option<(u64, u64)>) -> Self {
        use hmac::{Hmac, Mac};
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(&content);
        FileSpec {
            path: path.into(),
            mode: 0o400,
            content_sha256: format!("{:x}", mac.finalize().into_bytes()),
            content,
            owner,
        }
    }
}

impl ContainerSpec {
    /// A short, stable hash of everything that defines this container. It is
    /// stored as a label; a different hash on the next `up` means "replace".
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("a spec always serializes");
        format!("{:x}", Sha256::digest(&json))[..16].to_string()
    }
}

/// Resource limits and the restart policy of a service's instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// Billionths of a CPU (Docker's NanoCPUs).
    pub nano_cpus: Option<u64>,
    /// Docker's restart policy name; `None` for stagectl's default,
    /// `unless-stopped`.
    pub restart: Option<String>,
}

impl Limits {
    pub fn is_default(&self) -> bool {
        *self == Limits::default()
    }
}

/// What runs on a host for this environment, found by its labels.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    pub containers: Vec<ObservedContainer>,
    pub volumes: Vec<String>,
    /// The ID each image reference the plan uses points at on the host, so a
    /// rebuilt image replaces the containers made from the old one.
    pub image_ids: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    pub component: String,
    pub spec_hash: Option<String>,
    /// For a Consul agent, whether it runs as a server (its role label);
    /// `None` for other containers and agents made before the label.
    pub consul_server: Option<bool>,
    /// The topology host it was made for (its host label). For a Consul
    /// agent that is its node name: a different one means the host was
    /// renamed.
    pub made_for: Option<String>,
    pub running: bool,
    /// Created but never started: `up` creates a container, puts its files
    /// in (gossip key, agent config), then starts it. One left in this
    /// state was interrupted in between and may lack its files, whatever
    /// its spec hash says: it is replaced, never started as it is.
    pub never_started: bool,
    pub image_id: String,
}

/// A host's edge proxy as the snapshot saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeSeen {
    pub running: bool,
    /// Environment → the text of its route file.
    pub routes: BTreeMap<String, String>,
    /// Environments whose certificate, issued by the hosts' CA, expires
    /// within the edge CA's renewal window (or cannot be read).
    pub expiring: BTreeSet<String>,
}

/// What exists of a lab on the local engine.
#[derive(Debug, Default, Clone)]
pub struct LabObserved {
    pub network: Option<String>,
    /// Lab host containers by topology host name: (id, running).
    pub hosts: HashMap<String, (String, bool)>,
    /// Their fixed addresses on the lab's bridge: how a lab host taken out
    /// of the topology is still reached (and its key checked).
    pub addresses: HashMap<String, std::net::Ipv4Addr>,
    /// Lab host containers created but never started: a run was
    /// interrupted before their keys went in. Replaced by `ensure`.
    pub half_made: Vec<String>,
}
