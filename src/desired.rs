//! What each host should run: a pure function of the validated topology.
//!
//! No Docker here: the output is plain data ([`HostState`]) that `reconcile`
//! compares with what runs and `plan` prints. Every field that should force a
//! container to be replaced when it changes is part of [`ContainerSpec`] and
//! therefore of its hash; what should not (the human summary) is skipped.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::labels;
use crate::topology::{Host, Role, Service, Topology};

/// Where the Consul agent keeps its state inside its container.
pub const CONSUL_DATA_DIR: &str = "/consul/data";
/// Where it reads extra configuration (the gossip key) from.
pub const CONSUL_CONFIG_DIR: &str = "/consul/config";

/// Secrets that go into containers but never into output.
#[derive(Clone)]
pub struct Secrets {
    /// Consul's gossip encryption key (base64 of 32 random bytes).
    pub gossip_key: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

/// Everything one host should have for this environment.
#[derive(Debug, Clone, Serialize)]
pub struct HostState {
    pub host: String,
    pub containers: Vec<ContainerSpec>,
    pub volumes: Vec<VolumeSpec>,
}

impl HostState {
    /// The image references this host's containers use, each once.
    pub fn images(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<String> =
            self.containers.iter().map(|c| c.image.clone()).collect();
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
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `host` for agents that must bind the host's own address.
    pub network_mode: Option<String>,
    pub mounts: Vec<Mount>,
    /// Container ports published on free host ports (TCP).
    pub ports: Vec<u16>,
    /// Files written into the container after it is created and before it
    /// starts: how secrets get in without appearing in `docker inspect`.
    pub files: Vec<FileSpec>,
    /// One line for humans (plan output); not part of the hash.
    #[serde(skip)]
    pub summary: String,
    /// For app service instances: replace them one host at a time, taking
    /// them out of the pool first. Not part of the hash.
    #[serde(skip)]
    pub drain: Option<Drain>,
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
    pub content_sha256: String,
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
            content_sha256: hex(&Sha256::digest(&content)),
            content,
        }
    }
}

impl ContainerSpec {
    /// A short, stable hash of everything that defines this container. It is
    /// stored as a label; a different hash on the next `up` means "replace".
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("a spec always serializes");
        hex(&Sha256::digest(&json))[..16].to_string()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The desired state of every host, in topology order. Within a host,
/// containers are in start order: Consul first (the agents talk to it),
/// nginx before the template agent that reloads it, services last.
pub fn desired_state(topology: &Topology, secrets: &Secrets) -> Vec<HostState> {
    topology
        .hosts
        .iter()
        .map(|host| {
            let (consul, consul_volume) = consul_agent(topology, host, secrets);
            let mut state = HostState {
                host: host.name.clone(),
                containers: vec![consul],
                volumes: vec![consul_volume],
            };
            if host.has_role(Role::App) {
                state.containers.push(register_agent(topology, host));
            }
            if host.has_role(Role::Lb) {
                let (nginx, template, volume) = load_balancer(topology, host);
                state.volumes.push(volume);
                state.containers.push(nginx);
                state.containers.push(template);
            }
            for service in &topology.services {
                if service.hosts.contains(&host.name) {
                    state
                        .containers
                        .extend(service_instances(topology, host, service));
                }
            }
            state
        })
        .collect()
}

/// The Docker socket, for the agents that watch or signal containers.
fn docker_socket() -> Mount {
    Mount {
        source: "/var/run/docker.sock".into(),
        target: "/var/run/docker.sock".into(),
        read_only: false,
        bind: true,
    }
}

fn consul_addr(topology: &Topology) -> String {
    format!("127.0.0.1:{}", topology.ports.consul_http)
}

/// The registration agent: containers of this host → Consul services.
fn register_agent(topology: &Topology, host: &Host) -> ContainerSpec {
    ContainerSpec {
        name: object_name(&topology.name, "register"),
        component: "register".into(),
        image: topology.images.agent.clone(),
        cmd: vec![
            "agent".into(),
            "register".into(),
            format!("--env={}", topology.name),
            format!("--host={}", host.name),
            format!("--advertise={}", host.advertise),
            format!("--consul={}", consul_addr(topology)),
        ],
        env: vec![],
        labels: base_labels(topology, host, "register"),
        network_mode: Some("host".into()),
        mounts: vec![docker_socket()],
        ports: vec![],
        files: vec![],
        drain: None,
        summary: format!(
            "registers containers of {} at {}",
            host.name, host.advertise
        ),
    }
}

/// Where the template agent reads a user template from.
pub const USER_TEMPLATE_PATH: &str = "/etc/stagectl/nginx.conf.j2";

/// nginx, and the template agent that writes its config and reloads it;
/// they share the config folder as a volume.
fn load_balancer(topology: &Topology, host: &Host) -> (ContainerSpec, ContainerSpec, VolumeSpec) {
    let volume = VolumeSpec {
        name: object_name(&topology.name, "nginx-conf"),
        component: "nginx".into(),
    };
    let nginx_name = object_name(&topology.name, "nginx");
    let port = topology.ports.lb_http;
    let nginx = ContainerSpec {
        name: nginx_name.clone(),
        component: "nginx".into(),
        image: topology.images.nginx.clone(),
        cmd: vec![],
        env: vec![],
        labels: base_labels(topology, host, "nginx"),
        network_mode: Some("host".into()),
        mounts: vec![Mount {
            source: volume.name.clone(),
            target: "/etc/nginx/conf.d".into(),
            read_only: false,
            bind: false,
        }],
        ports: vec![],
        files: vec![],
        summary: format!("load balancer on {}:{port}", host.advertise),
        drain: None,
    };
    let lb = &topology.lb;
    let mut cmd = vec![
        "agent".into(),
        "template".into(),
        format!("--env={}", topology.name),
        format!("--consul={}", consul_addr(topology)),
        format!("--nginx-container={nginx_name}"),
        "--conf-dir=/conf".into(),
        format!("--domain={}", lb.domain),
        format!("--port={port}"),
        format!("--quiet-ms={}", lb.quiet_ms),
        format!("--max-wait-ms={}", lb.max_wait_ms),
    ];
    let mut files = vec![];
    if let Some((_, text)) = &lb.template {
        cmd.push(format!("--template={USER_TEMPLATE_PATH}"));
        files.push(FileSpec::new(
            USER_TEMPLATE_PATH,
            0o644,
            text.clone().into_bytes(),
        ));
    }
    let template = ContainerSpec {
        name: object_name(&topology.name, "template"),
        component: "template".into(),
        image: topology.images.agent.clone(),
        cmd,
        env: vec![],
        labels: base_labels(topology, host, "template"),
        network_mode: Some("host".into()),
        mounts: vec![
            Mount {
                source: volume.name.clone(),
                target: "/conf".into(),
                read_only: false,
                bind: false,
            },
            docker_socket(),
        ],
        ports: vec![],
        files,
        drain: None,
        summary: format!(
            "routes <service>.{}.{} and /<service>/ (template: {})",
            topology.name,
            lb.domain,
            lb.template
                .as_ref()
                .map(|(p, _)| p.display().to_string())
                .unwrap_or_else(|| "built-in".into())
        ),
    };
    (nginx, template, volume)
}

/// Label naming the service an instance belongs to.
pub const SERVICE_LABEL: &str = "io.stagectl.service";

fn service_instances(topology: &Topology, host: &Host, service: &Service) -> Vec<ContainerSpec> {
    (1..=service.per_host)
        .map(|i| {
            let mut labels = base_labels(topology, host, "service");
            labels.extend(service.labels.clone());
            // Ours last: a user label cannot move an instance to another
            // environment or hide it from `down`.
            labels.insert(labels::ENV.into(), topology.name.clone());
            labels.insert(labels::COMPONENT.into(), "service".into());
            labels.insert(SERVICE_LABEL.into(), service.name.clone());
            labels.insert("SERVICE_NAME".into(), service.name.clone());
            if let Some(path) = &service.check_http {
                labels.insert("SERVICE_CHECK_HTTP".into(), path.clone());
            }
            let env = service
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let name = object_name(&topology.name, &format!("{}-{i}", service.name));
            ContainerSpec {
                name: name.clone(),
                component: format!("service {}", service.name),
                image: service.image.clone(),
                cmd: vec![],
                env,
                labels,
                network_mode: None,
                mounts: vec![],
                ports: vec![service.port],
                files: vec![],
                summary: format!(
                    "{} instance {i}, port {} published",
                    service.name, service.port
                ),
                drain: Some(Drain {
                    service_id: crate::agent::registration::service_id(
                        &host.name,
                        &name,
                        service.port,
                    ),
                    service: service.name.clone(),
                    seconds: service.drain_seconds,
                }),
            }
        })
        .collect()
}

/// Name of an object of this environment: `<env>-<what>`.
pub fn object_name(env: &str, what: &str) -> String {
    format!("{env}-{what}")
}

fn base_labels(topology: &Topology, host: &Host, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::ENV.to_string(), topology.name.clone()),
        (labels::COMPONENT.to_string(), component.to_string()),
        (labels::HOST.to_string(), host.name.clone()),
        // Recorded on every container, so other environments on these hosts
        // (and the next `up`) know which ports this one holds.
        (
            crate::ports::LABEL.to_string(),
            crate::ports::to_label(&topology.ports),
        ),
    ])
}

/// The Consul agent: a server on server hosts, a client elsewhere; host
/// networking so it binds and advertises the host's own address.
fn consul_agent(
    topology: &Topology,
    host: &Host,
    secrets: &Secrets,
) -> (ContainerSpec, VolumeSpec) {
    let ports = &topology.ports;
    let ip = host.advertise.to_string();
    let mut cmd: Vec<String> = vec![
        "agent".into(),
        format!("-node={}", host.name),
        format!("-datacenter={}", topology.consul.datacenter),
        format!("-data-dir={CONSUL_DATA_DIR}"),
        format!("-config-dir={CONSUL_CONFIG_DIR}"),
        format!("-bind={ip}"),
        format!("-advertise={ip}"),
        // The HTTP API answers on loopback only: agents on this host (host
        // network) reach it, nothing outside the host does.
        "-client=127.0.0.1".into(),
        format!("-http-port={}", ports.consul_http),
        format!("-serf-lan-port={}", ports.consul_serf_lan),
        format!("-serf-wan-port={}", ports.consul_serf_wan),
        format!("-server-port={}", ports.consul_server),
        // DNS is not used by stagectl and would take port 8600 on every host.
        "-dns-port=-1".into(),
        // The default of 30 s between join attempts would make the cluster
        // wait for the slowest host to start plus 30 s.
        "-retry-interval=2s".into(),
    ];
    if host.consul_server {
        cmd.push("-server".into());
        cmd.push(format!(
            "-bootstrap-expect={}",
            topology.consul.bootstrap_expect
        ));
    }
    let joins: Vec<String> = topology
        .consul_servers()
        .filter(|s| s.name != host.name)
        .map(|s| format!("{}:{}", s.advertise, ports.consul_serf_lan))
        .collect();
    for j in &joins {
        cmd.push(format!("-retry-join={j}"));
    }

    let volume = VolumeSpec {
        name: object_name(&topology.name, "consul-data"),
        component: "consul".into(),
    };
    // Written as a file, not passed as `-encrypt=`, so the key shows in
    // neither `docker inspect` nor `ps`. raft_multiplier 1 is Consul's
    // production timing (its default of 5 is tuned for tiny dev machines)
    // and makes leader election several times faster.
    //
    // Gossip timing: by memberlist's formula, Consul's defaults let the
    // suspicion of a silent host run up to ~14 s on a 3-node cluster (too
    // few peers to confirm it sooner); probing twice as often with a shorter
    // suspicion brings that to a few seconds, which is how long a dead
    // host's instances stay in the load balancer.
    let config = serde_json::json!({
        "encrypt": secrets.gossip_key,
        "performance": { "raft_multiplier": 1 },
        "gossip_lan": { "probe_interval": "500ms", "suspicion_mult": 3 },
    })
    .to_string();
    let role = if host.consul_server {
        format!(
            "server (bootstrap-expect {})",
            topology.consul.bootstrap_expect
        )
    } else {
        "client".into()
    };
    let join_ips: Vec<String> = topology
        .consul_servers()
        .filter(|s| s.name != host.name)
        .map(|s| s.advertise.to_string())
        .collect();
    let summary = format!("{role}, advertise {ip}, retry-join {}", join_ips.join(" "));
    let spec = ContainerSpec {
        name: object_name(&topology.name, "consul"),
        component: "consul".into(),
        image: topology.images.consul.clone(),
        cmd,
        env: vec![],
        labels: base_labels(topology, host, "consul"),
        network_mode: Some("host".into()),
        mounts: vec![Mount {
            source: volume.name.clone(),
            target: CONSUL_DATA_DIR.into(),
            read_only: false,
            bind: false,
        }],
        ports: vec![],
        files: vec![FileSpec::new(
            &format!("{CONSUL_CONFIG_DIR}/stagectl.json"),
            0o600,
            config.into_bytes(),
        )],
        summary,
        drain: None,
    };
    (spec, volume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology;
    use std::path::Path;

    fn topo(yaml: &str) -> Topology {
        topology::parse(yaml, Path::new("t.yaml")).unwrap()
    }

    fn secrets() -> Secrets {
        Secrets {
            gossip_key: "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY3OA==".into(),
        }
    }

    const THREE: &str = "name: qa\nlab: { subnet: 10.77.0.0/24 }\nhosts:\n  host-1: { driver: local, address: 10.77.0.11, roles: [app] }\n  host-2: { driver: local, address: 10.77.0.12, roles: [app] }\n  host-3: { driver: local, address: 10.77.0.13, roles: [lb] }\n";

    #[test]
    fn three_servers_join_each_other() {
        let state = desired_state(&topo(THREE), &secrets());
        insta::assert_json_snapshot!(state);
    }

    #[test]
    fn clients_join_every_server_and_do_not_bootstrap() {
        let t = topo(&format!("{THREE}consul: {{ servers: [host-2] }}\n"));
        let state = desired_state(&t, &secrets());
        let host1 = &state[0].containers[0];
        assert!(!host1.cmd.iter().any(|a| a == "-server"));
        assert!(host1
            .cmd
            .contains(&"-retry-join=10.77.0.12:8301".to_string()));
        let host2 = &state[1].containers[0];
        assert!(host2.cmd.contains(&"-bootstrap-expect=1".to_string()));
        assert!(!host2.cmd.iter().any(|a| a.starts_with("-retry-join")));
    }

    #[test]
    fn secret_is_in_a_file_not_in_the_command_or_output() {
        let s = secrets();
        let state = desired_state(&topo(THREE), &s);
        let consul = &state[0].containers[0];
        assert!(!consul.cmd.iter().any(|a| a.contains(&s.gossip_key)));
        let shown = format!("{state:?}{}", serde_json::to_string(&state).unwrap());
        assert!(!shown.contains(&s.gossip_key));
        assert!(String::from_utf8_lossy(&consul.files[0].content).contains(&s.gossip_key));
    }

    #[test]
    fn hash_changes_with_spec_and_key_but_not_summary() {
        let t = topo(THREE);
        let a = desired_state(&t, &secrets())[0].containers[0].clone();
        let mut b = a.clone();
        b.summary = "something else".into();
        assert_eq!(a.hash(), b.hash());
        b.cmd.push("-ui".into());
        assert_ne!(a.hash(), b.hash());
        let other_key = Secrets {
            gossip_key: "b3RoZXI=".into(),
        };
        let c = desired_state(&t, &other_key)[0].containers[0].clone();
        assert_ne!(a.hash(), c.hash());
    }
}
