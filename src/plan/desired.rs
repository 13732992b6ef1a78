//! What each host should run: a pure function of the validated topology.
//!
//! No Docker here: the output is plain data ([`HostState`], from
//! `crate::spec`) that `reconcile` compares with what runs and `plan`
//! prints. What goes into a container's spec hash is decided there.

use std::collections::BTreeMap;

use crate::cluster::{acl, record, tls};
use crate::labels::{self, Component};
use crate::spec::{
    ContainerSpec, DockerHealthcheck, Drain, FileSpec, HostState, Limits, Mount, VolumeSpec,
};
use crate::topology::{Adopt, Expose, Health, HealthCheck, Host, Role, Service, Topology};

/// Where the Consul agent keeps its state inside its container.
pub const CONSUL_DATA_DIR: &str = "/consul/data";
/// Where it reads extra configuration (the gossip key) from.
pub const CONSUL_CONFIG_DIR: &str = "/consul/config";

/// The volumes stagectl makes for itself (after the environment's name):
/// Consul's data and nginx's config. Every other volume of an environment
/// holds a service's data.
pub const OWN_VOLUMES: [&str; 2] = ["consul-data", "nginx-conf"];

/// Secrets that go into containers but never into output.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Consul's gossip encryption key (base64 of 32 random bytes).
    pub gossip_key: String,
    /// The environment's record key (see `cluster::record`), which every
    /// ACL token is derived from (see `cluster::acl`).
    pub record_key: Vec<u8>,
    /// The seed of the CA and certificates of Consul's RPC (see
    /// `cluster::tls`), kept beside the record key.
    pub tls_seed: Vec<u8>,
    /// The services' secrets, by [`secret_key`], as read when `up` runs.
    pub values: BTreeMap<String, Vec<u8>>,
}

/// Where a service's secret is kept in [`Secrets::values`].
pub fn secret_key(service: &str, secret: &str) -> String {
    format!("{service}/{secret}")
}

/// Where an instance finds its secret `name`.
pub fn secret_path(name: &str) -> String {
    format!("/run/secrets/{name}")
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
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
                before_rollout: BTreeMap::new(),
            };
            if host.has_role(Role::App) {
                state
                    .containers
                    .push(register_agent(topology, host, secrets));
            }
            if host.has_role(Role::Lb) {
                let (nginx, template, volume) = load_balancer(topology, host, secrets);
                state.volumes.push(volume);
                state.containers.push(nginx);
                state.containers.push(template);
            }
            for service in &topology.services {
                if service.hosts.contains(&host.name) {
                    state
                        .containers
                        .extend(service_instances(topology, host, service, secrets));
                    state.volumes.extend(service_volumes(topology, service));
                }
                if let (Some(cmd), Some(first)) = (&service.before_rollout, service.hosts.first()) {
                    if *first == host.name {
                        let spec = one_off(
                            topology,
                            host,
                            service,
                            secrets,
                            Some(cmd),
                            false,
                            "before-rollout",
                        );
                        state.before_rollout.insert(service.name.clone(), spec);
                    }
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
/// Flags for `registration:` and reserved services are added only when
/// used, so environments that use neither keep their agents' spec hash.
fn register_agent(topology: &Topology, host: &Host, secrets: &Secrets) -> ContainerSpec {
    let mut cmd = vec![
        "agent".into(),
        "register".into(),
        format!("--env={}", topology.name),
        format!("--host={}", host.name),
        format!("--advertise={}", host.advertise),
        format!("--consul={}", consul_addr(topology)),
        format!("--token-file={}", acl::TOKEN_PATH),
    ];
    let mut summary = format!(
        "registers containers of {} at {}",
        host.name, host.advertise
    );
    let mut notes = Vec::new();
    if topology.registration.adopt == Adopt::Labeled {
        cmd.push("--only-labeled".into());
        notes.push(format!(
            "only those labelled {}={}",
            labels::ENV,
            topology.name
        ));
    }
    let reserved: Vec<&str> = topology
        .services
        .iter()
        .filter(|s| s.reserved)
        .map(|s| s.name.as_str())
        .collect();
    if !reserved.is_empty() {
        cmd.push(format!("--reserved={}", reserved.join(",")));
        notes.push(format!("reserved: {}", reserved.join(", ")));
    }
    if !notes.is_empty() {
        summary.push_str(&format!(" ({})", notes.join("; ")));
    }
    ContainerSpec {
        name: Component::Register.container(&topology.name),
        component: Component::Register.label().into(),
        image: topology.images.agent.clone(),
        cmd,
        entrypoint: None,
        user: None,
        env: vec![],
        labels: base_labels(topology, host, Component::Register),
        network_mode: Some("host".into()),
        pid_mode: None,
        mounts: vec![docker_socket()],
        ports: vec![],
        files: vec![token_file(
            topology,
            secrets,
            &acl::Role::Register { host: &host.name },
        )],
        join_args: vec![],
        healthcheck: None,
        limits: Limits::default(),
        drain: None,
        summary,
    }
}

/// Where the template agent reads a user template from.
pub const USER_TEMPLATE_PATH: &str = "/etc/stagectl/nginx.conf.j2";

/// nginx, and the template agent that writes its config and reloads it;
/// they share the config folder as a volume.
fn load_balancer(
    topology: &Topology,
    host: &Host,
    secrets: &Secrets,
) -> (ContainerSpec, ContainerSpec, VolumeSpec) {
    let volume = VolumeSpec {
        name: object_name(&topology.name, "nginx-conf"),
        component: Component::Nginx.label().into(),
    };
    let nginx_name = Component::Nginx.container(&topology.name);
    let port = topology.ports.lb_http;
    let nginx = ContainerSpec {
        name: nginx_name.clone(),
        component: Component::Nginx.label().into(),
        image: topology.images.nginx.clone(),
        cmd: vec![],
        entrypoint: None,
        user: None,
        env: vec![],
        labels: base_labels(topology, host, Component::Nginx),
        network_mode: Some("host".into()),
        pid_mode: None,
        mounts: vec![Mount {
            source: volume.name.clone(),
            target: "/etc/nginx/conf.d".into(),
            read_only: false,
            bind: false,
        }],
        ports: vec![],
        files: vec![],
        join_args: vec![],
        healthcheck: None,
        limits: Limits::default(),
        summary: format!("load balancer on {}:{port}", host.advertise),
        drain: None,
    };
    let lb = &topology.lb;
    let mut cmd = vec![
        "agent".into(),
        "template".into(),
        format!("--env={}", topology.name),
        format!("--consul={}", consul_addr(topology)),
        format!("--token-file={}", acl::TOKEN_PATH),
        format!("--nginx-container={nginx_name}"),
        "--conf-dir=/conf".into(),
        format!("--domain={}", lb.domain),
        format!("--port={port}"),
        format!("--advertise={}", host.advertise),
        format!("--quiet-ms={}", lb.quiet_ms),
        format!("--max-wait-ms={}", lb.max_wait_ms),
    ];
    // Trusted here, from the topology: which services get a TCP listener
    // (a registration cannot ask for one).
    cmd.extend(
        topology
            .tcp_ports()
            .into_iter()
            .map(|(s, port)| format!("--tcp={}={port}", s.name)),
    );
    let mut files = vec![token_file(topology, secrets, &acl::Role::Template)];
    if let Some((_, text)) = &lb.template {
        cmd.push(format!("--template={USER_TEMPLATE_PATH}"));
        files.push(FileSpec::new(
            USER_TEMPLATE_PATH,
            0o644,
            text.clone().into_bytes(),
        ));
    }
    let template = ContainerSpec {
        name: Component::Template.container(&topology.name),
        component: Component::Template.label().into(),
        image: topology.images.agent.clone(),
        cmd,
        entrypoint: None,
        user: None,
        env: vec![],
        labels: {
            // Made again whenever nginx is: it joins that container's
            // process namespace when it starts.
            let mut labels = base_labels(topology, host, Component::Template);
            labels.insert(labels::NGINX_SPEC.into(), nginx.hash());
            labels
        },
        network_mode: Some("host".into()),
        // Signals nginx's master and old workers itself (see
        // `agent::template`): faster than through the engine's API.
        pid_mode: Some(format!("container:{nginx_name}")),
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
        join_args: vec![],
        healthcheck: None,
        limits: Limits::default(),
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

/// What the registration agent reads to make an instance's Consul check:
/// the HTTP path, and when `health` was written, how often and how many
/// failures in a row count. (Nothing for a service that wrote none, so its
/// instances keep the spec hash they had.)
fn health_labels(h: &Health) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if let HealthCheck::Http(path) = &h.check {
        labels.insert("SERVICE_CHECK_HTTP".into(), path.clone());
    }
    if h.declared {
        labels.insert(
            "SERVICE_CHECK_INTERVAL".into(),
            format!("{}ms", h.interval_ms),
        );
        labels.insert(
            "SERVICE_CHECK_TIMEOUT".into(),
            format!("{}ms", h.timeout_ms),
        );
        labels.insert("SERVICE_CHECK_RETRIES".into(), h.retries.to_string());
    }
    labels
}

/// Instance `i`'s volumes, mounted where the service wants them.
fn volume_mounts<'a>(
    topology: &'a Topology,
    service: &'a Service,
    i: u16,
) -> impl Iterator<Item = Mount> + 'a {
    service.volumes.iter().map(move |(volume, path)| Mount {
        source: service_volume(topology, service, i, volume),
        target: path.clone(),
        read_only: false,
        bind: false,
    })
}

/// The service's bind mounts of host paths.
fn binds(service: &Service) -> impl Iterator<Item = Mount> + '_ {
    service.binds.iter().map(|(host, target, read_only)| Mount {
        source: host.clone(),
        target: target.clone(),
        read_only: *read_only,
        bind: true,
    })
}

/// The Docker health check of `health.cmd`.
fn service_healthcheck(service: &Service) -> Option<DockerHealthcheck> {
    match &service.health.check {
        HealthCheck::Cmd(cmd) => Some(DockerHealthcheck {
            cmd: cmd.clone(),
            interval_ms: service.health.interval_ms,
            timeout_ms: service.health.timeout_ms,
            retries: service.health.retries,
        }),
        _ => None,
    }
}

/// An instance's environment: the addresses of the routed services through
/// the load balancer (see `topology::service_variables`), then the
/// service's own `env`, with `${NAME}` in it replaced by them (its own
/// values win over ours).
fn instance_env(topology: &Topology, service: &Service) -> Vec<String> {
    let lb = topology.hosts.iter().find(|h| h.has_role(Role::Lb));
    let mut vars = BTreeMap::new();
    if let Some(lb) = lb {
        let port = topology.ports.lb_http;
        // SocketAddr's text brackets an IPv6 address.
        let endpoint = std::net::SocketAddr::new(lb.advertise, port);
        let tcp = topology.tcp_ports();
        for (s, names) in crate::topology::service_variables(&topology.services) {
            let port = match tcp.iter().find(|(t, _)| t.name == s.name) {
                Some((_, tcp_port)) => *tcp_port,
                None => port,
            };
            if let Some(url) = names.url {
                vars.insert(url, format!("http://{endpoint}/{}/", s.name));
            }
            vars.insert(names.host, lb.advertise.to_string());
            vars.insert(names.port, port.to_string());
        }
    }
    let mut env = vars.clone();
    for (k, v) in &service.env {
        env.insert(k.clone(), crate::topology::interpolate(v, &vars).0);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The tags setting (label) that marks `service`'s instances as not
/// routed: its own tags kept, ours added, under the key the registration
/// agent reads first (`SERVICE_<port>_TAGS` when the service uses it).
fn not_routed_tags(service: &Service) -> (String, String) {
    let per_port = format!("SERVICE_{}_TAGS", service.port);
    let key = if service.labels.contains_key(&per_port) || service.env.contains_key(&per_port) {
        per_port
    } else {
        "SERVICE_TAGS".to_string()
    };
    // Labels win over env, as the agent reads them.
    let theirs = service.labels.get(&key).or(service.env.get(&key));
    let tags = match theirs {
        Some(t) if !t.trim().is_empty() => format!("{t},{}", labels::NOT_ROUTED_TAG),
        _ => labels::NOT_ROUTED_TAG.to_string(),
    };
    (key, tags)
}

/// The volume `volume` of instance `i` of `service`: `<env>-<service>-<i>-<volume>`.
/// Each instance has its own, so two instances on a host never share data
/// they did not ask to share, and the name stays when `per_host` changes.
pub fn service_volume(topology: &Topology, service: &Service, i: u16, volume: &str) -> String {
    object_name(&topology.name, &format!("{}-{i}-{volume}", service.name))
}

/// Every volume of `service`'s instances on one host.
fn service_volumes(topology: &Topology, service: &Service) -> Vec<VolumeSpec> {
    (1..=service.per_host)
        .flat_map(|i| {
            service.volumes.keys().map(move |volume| VolumeSpec {
                name: service_volume(topology, service, i, volume),
                component: Component::Service.label().into(),
            })
        })
        .collect()
}

/// `uid:gid` (or `uid`) as numbers; `None` for root, names or nothing
/// (a named user's IDs are only known inside the image).
fn numeric_owner(user: Option<&str>) -> Option<(u64, u64)> {
    let (uid, gid) = match user?.split_once(':') {
        Some((u, g)) => (u.parse().ok()?, g.parse().ok()?),
        None => {
            let uid: u64 = user?.parse().ok()?;
            (uid, uid)
        }
    };
    (uid != 0).then_some((uid, gid))
}

fn service_instances(
    topology: &Topology,
    host: &Host,
    service: &Service,
    secrets: &Secrets,
) -> Vec<ContainerSpec> {
    (1..=service.per_host)
        .map(|i| {
            let mut labels = base_labels(topology, host, Component::Service);
            labels.extend(service.labels.clone());
            // Ours last: a user label cannot move an instance to another
            // environment or hide it from `down`.
            labels.insert(labels::ENV.into(), topology.name.clone());
            labels.insert(labels::COMPONENT.into(), Component::Service.label().into());
            labels.insert(labels::SERVICE.into(), service.name.clone());
            labels.insert("SERVICE_NAME".into(), service.name.clone());
            labels.extend(health_labels(&service.health));
            if service.expose == Expose::None {
                let (key, tags) = not_routed_tags(service);
                labels.insert(key, tags);
            }
            let (env, files) = process_env_and_files(topology, service, secrets);
            let name = object_name(&topology.name, &format!("{}-{i}", service.name));
            ContainerSpec {
                name: name.clone(),
                component: format!("service {}", service.name),
                image: service.image.clone(),
                cmd: service.command.clone().unwrap_or_default(),
                entrypoint: service.entrypoint.clone(),
                user: service.user.clone(),
                env,
                labels,
                network_mode: None,
                pid_mode: None,
                mounts: volume_mounts(topology, service, i)
                    .chain(binds(service))
                    .collect(),
                ports: vec![service.port],
                files,
                join_args: vec![],
                healthcheck: service_healthcheck(service),
                limits: service.limits.clone(),
                summary: format!(
                    "{} instance {i}, port {} published",
                    service.name, service.port
                ),
                drain: Some(Drain {
                    service_id: labels::service_id(&host.name, &name, service.port),
                    service: service.name.clone(),
                    seconds: service.drain_seconds,
                }),
            }
        })
        .collect()
}

/// What every container of `service` gets, instances and one-offs alike:
/// the environment (see `instance_env`) and its secrets' files (and
/// variables, where asked for).
fn process_env_and_files(
    topology: &Topology,
    service: &Service,
    secrets: &Secrets,
) -> (Vec<String>, Vec<FileSpec>) {
    let mut env = instance_env(topology, service);
    let owner = numeric_owner(service.user.as_deref());
    let mut files = Vec::new();
    for secret in &service.secrets {
        let value = secrets
            .values
            .get(&secret_key(&service.name, &secret.name))
            .cloned()
            .unwrap_or_default();
        if let Some(var) = &secret.env {
            // Asked for: then it is in `docker inspect` too.
            env.push(format!("{var}={}", String::from_utf8_lossy(&value)));
        }
        files.push(FileSpec::secret(
            &secret_path(&secret.name),
            value,
            &secrets.gossip_key,
            owner,
        ));
    }
    (env, files)
}

/// A one-off container of `service` on `host` (`stagectl run`, and
/// `before_rollout`): its image, user, env and secrets, `cmd` instead of
/// its command when given, no published port (so no registration agent
/// registers it), its instance 1's volumes only when asked. `name_suffix`
/// tells runs apart (`run-<pid>`, `before-rollout`).
pub fn one_off(
    topology: &Topology,
    host: &Host,
    service: &Service,
    secrets: &Secrets,
    cmd: Option<&[String]>,
    with_volumes: bool,
    name_suffix: &str,
) -> ContainerSpec {
    let (env, files) = process_env_and_files(topology, service, secrets);
    let mut labels = base_labels(topology, host, Component::Run);
    labels.insert(labels::SERVICE.into(), service.name.clone());
    let mounts = if with_volumes {
        volume_mounts(topology, service, 1).collect()
    } else {
        vec![]
    };
    ContainerSpec {
        name: object_name(&topology.name, &format!("{}-{name_suffix}", service.name)),
        component: format!("run {}", service.name),
        image: service.image.clone(),
        cmd: cmd
            .map(<[String]>::to_vec)
            .or_else(|| service.command.clone())
            .unwrap_or_default(),
        entrypoint: service.entrypoint.clone(),
        user: service.user.clone(),
        env,
        labels,
        network_mode: None,
        pid_mode: None,
        mounts,
        ports: vec![],
        files,
        join_args: vec![],
        healthcheck: None,
        limits: Limits::default(),
        summary: format!("one-off {} container", service.name),
        drain: None,
    }
}

/// Every image reference the environment uses, each once (what the
/// snapshot asks the hosts about; it does not depend on the secrets).
pub fn images_of(topology: &Topology) -> Vec<String> {
    let placeholder = Secrets {
        gossip_key: String::new(),
        ..Default::default()
    };
    let mut all: std::collections::BTreeSet<String> = desired_state(topology, &placeholder)
        .iter()
        .flat_map(HostState::images)
        .collect();
    if topology.lb.edge {
        all.insert(crate::edge::IMAGE.to_string());
    }
    all.into_iter().collect()
}

/// The file of `role`'s ACL token, at [`acl::TOKEN_PATH`] (a secret's
/// file: 0400, its digest keyed, so neither the spec nor `plan -o json`
/// tells anything of it).
fn token_file(topology: &Topology, secrets: &Secrets, role: &acl::Role) -> FileSpec {
    let token = acl::token(&secrets.record_key, &topology.name, role);
    FileSpec::secret(
        acl::TOKEN_PATH,
        token.secret.into_bytes(),
        &secrets.gossip_key,
        None,
    )
}

/// The load balancer's TCP listener ports.
fn tcp_listeners(topology: &Topology) -> Vec<u16> {
    topology.tcp_ports().into_iter().map(|(_, p)| p).collect()
}

/// Name of an object of this environment: `<env>-<what>`.
pub fn object_name(env: &str, what: &str) -> String {
    format!("{env}-{what}")
}

fn base_labels(topology: &Topology, host: &Host, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::ENV.to_string(), topology.name.clone()),
        (labels::COMPONENT.to_string(), component.label().to_string()),
        (labels::HOST.to_string(), host.name.clone()),
        // Recorded on every container, so other environments on these hosts
        // (and the next `up`) know which ports this one holds.
        (
            crate::labels::PORTS.to_string(),
            crate::plan::ports::to_label(&topology.ports, &tcp_listeners(topology)),
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
        // The web UI, on that same loopback-only port: `stagectl ui`
        // tunnels to it.
        "-ui".into(),
        format!("-serf-lan-port={}", ports.consul_serf_lan),
        format!("-serf-wan-port={}", ports.consul_serf_wan),
        format!("-server-port={}", ports.consul_server),
        // DNS is not used by stagectl and would take port 8600 on every host.
        "-dns-port=-1".into(),
        // The default of 30 s between join attempts would make the cluster
        // wait for the slowest host to start plus 30 s.
        "-retry-interval=2s".into(),
    ];
    let mut join_args = Vec::new();
    if host.consul_server {
        cmd.push("-server".into());
        join_args.push(format!(
            "-bootstrap-expect={}",
            topology.consul.bootstrap_expect
        ));
    }
    join_args.extend(
        topology
            .consul_servers()
            .filter(|s| s.name != host.name)
            .map(|s| format!("-retry-join={}:{}", s.advertise, ports.consul_serf_lan)),
    );

    let volume = VolumeSpec {
        name: object_name(&topology.name, "consul-data"),
        component: Component::Consul.label().into(),
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
    //
    // ACLs deny whatever no token allows (see `cluster::acl`): the agent's
    // own token from the start, the management token on servers (Consul
    // creates it when a server first leads; `up` then
    // makes the others, whose secrets are known before they exist). A
    // server that cannot reach the others keeps using the tokens it has
    // seen (`extend-cache`) rather than denying everything.
    let agent_token = acl::token(
        &secrets.record_key,
        &topology.name,
        &acl::Role::ConsulAgent { host: &host.name },
    );
    let mut tokens = serde_json::json!({ "agent": agent_token.secret });
    if host.consul_server {
        tokens["master"] = acl::master(&secrets.record_key, &topology.name).into();
    }
    let mut config = serde_json::json!({
        "encrypt": secrets.gossip_key,
        "performance": { "raft_multiplier": 1 },
        "gossip_lan": { "probe_interval": "500ms", "suspicion_mult": 3 },
        "primary_datacenter": topology.consul.datacenter,
        "acl": {
            "enabled": true,
            "default_policy": "deny",
            "down_policy": "extend-cache",
            "enable_token_persistence": false,
            "tokens": tokens,
        },
        // RPC over TLS only (see `cluster::tls`): every agent checks that
        // it talks to a server of this CA; servers take RPC only from a
        // holder of a certificate of it, or of the one Consul gives a
        // client that asked with its agent token (`auto_encrypt`, which
        // needs Connect's CA on the servers).
        "ca_file": tls::CA_FILE,
        "verify_outgoing": true,
        "verify_server_hostname": true,
    });
    if host.consul_server {
        config["cert_file"] = tls::CERT_FILE.into();
        config["key_file"] = tls::KEY_FILE.into();
        config["verify_incoming_rpc"] = true.into();
        config["auto_encrypt"] = serde_json::json!({ "allow_tls": true });
        config["connect"] = serde_json::json!({ "enabled": true });
    } else {
        config["auto_encrypt"] = serde_json::json!({ "tls": true });
    }
    let config = config.to_string();
    // The Consul CLI in this container (what stagectl execs) acts with
    // stagectl's token on a server, with the agent's own on a client.
    let cli_role = if host.consul_server {
        acl::Role::Stagectl
    } else {
        acl::Role::ConsulAgent { host: &host.name }
    };
    let mut files = vec![
        FileSpec::secret(
            &format!("{CONSUL_CONFIG_DIR}/stagectl.json"),
            config.into_bytes(),
            &secrets.gossip_key,
            None,
        ),
        token_file(topology, secrets, &cli_role),
        FileSpec::new(
            tls::CA_FILE,
            0o444,
            tls::ca_pem(&secrets.tls_seed, &topology.name)
                .expect("an Ed25519 key and fixed fields always make a certificate")
                .into_bytes(),
        ),
    ];
    if host.consul_server {
        let server = tls::server(
            &secrets.tls_seed,
            &topology.name,
            &topology.consul.datacenter,
            &host.name,
        )
        .expect("validated host and datacenter names always make a certificate");
        files.push(FileSpec::new(
            tls::CERT_FILE,
            0o444,
            server.cert_pem.into_bytes(),
        ));
        // Beside the cluster's data: the servers are where the record key
        // and the TLS seed are kept (see `cluster::record`, `cluster::tls`).
        for (path, content) in [
            (tls::KEY_FILE, server.key_pem.into_bytes()),
            (record::KEY_PATH, secrets.record_key.clone()),
            (tls::SEED_PATH, secrets.tls_seed.clone()),
        ] {
            files.push(FileSpec::secret(path, content, &secrets.gossip_key, None));
        }
    }
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
        name: Component::Consul.container(&topology.name),
        component: Component::Consul.label().into(),
        image: topology.images.consul.clone(),
        cmd,
        entrypoint: None,
        user: None,
        env: vec![],
        labels: {
            let mut labels = base_labels(topology, host, Component::Consul);
            let role = if host.consul_server {
                "server"
            } else {
                "client"
            };
            labels.insert(labels::CONSUL_ROLE.into(), role.into());
            labels
        },
        network_mode: Some("host".into()),
        pid_mode: None,
        mounts: vec![Mount {
            source: volume.name.clone(),
            target: CONSUL_DATA_DIR.into(),
            read_only: false,
            bind: false,
        }],
        ports: vec![],
        files,
        join_args,
        healthcheck: None,
        limits: Limits::default(),
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
            ..Default::default()
        }
    }

    /// The container `name` of a host's desired state.
    fn container<'a>(host: &'a HostState, name: &str) -> &'a ContainerSpec {
        host.containers.iter().find(|c| c.name == name).unwrap()
    }

    const THREE: &str = "name: qa\nlab: { subnet: 10.77.0.0/24 }\nhosts:\n  host-1: { driver: local, address: 10.77.0.11, roles: [app] }\n  host-2: { driver: local, address: 10.77.0.12, roles: [app] }\n  host-3: { driver: local, address: 10.77.0.13, roles: [lb] }\n";

    #[test]
    fn three_servers_join_each_other() {
        let state = desired_state(&topo(THREE), &secrets());
        // Not part of the hash, so not serialized with the spec.
        let join_args: Vec<&Vec<String>> =
            state.iter().map(|h| &h.containers[0].join_args).collect();
        insta::assert_json_snapshot!((&state, join_args));
    }

    #[test]
    fn clients_join_every_server_and_do_not_bootstrap() {
        let t = topo(&format!("{THREE}consul: {{ servers: [host-2] }}\n"));
        let state = desired_state(&t, &secrets());
        let host1 = &state[0].containers[0];
        assert!(!host1.cmd.iter().any(|a| a == "-server"));
        assert_eq!(host1.join_args, vec!["-retry-join=10.77.0.12:8301"]);
        assert_eq!(host1.labels[labels::CONSUL_ROLE], "client");
        let host2 = &state[1].containers[0];
        assert!(host2.cmd.iter().any(|a| a == "-server"));
        assert_eq!(host2.join_args, vec!["-bootstrap-expect=1"]);
        assert_eq!(host2.labels[labels::CONSUL_ROLE], "server");
    }

    #[test]
    fn a_changed_server_set_replaces_only_the_agents_whose_role_changes() {
        let one = desired_state(
            &topo(&format!("{THREE}consul: {{ servers: [host-2] }}\n")),
            &secrets(),
        );
        let three = desired_state(&topo(THREE), &secrets());
        let consul_hash = |state: &[HostState], i: usize| state[i].containers[0].hash();
        assert_ne!(
            consul_hash(&one, 0),
            consul_hash(&three, 0),
            "host-1 becomes a server"
        );
        assert_eq!(
            consul_hash(&one, 1),
            consul_hash(&three, 1),
            "host-2 stays one"
        );
        assert_ne!(
            three[1].containers[0].join_args,
            one[1].containers[0].join_args
        );
    }

    #[test]
    fn a_worker_is_tagged_not_routed_keeping_its_own_tags() {
        let t = topo(&format!(
            "{THREE}services:\n  worker:\n    image: w:1\n    port: 9000\n    expose: none\n    labels: {{ SERVICE_TAGS: blue }}\n    volumes: {{ spool: /var/spool }}\n"
        ));
        let state = desired_state(&t, &secrets());
        let worker = container(&state[0], "qa-worker-1");
        assert_eq!(
            worker.labels["SERVICE_TAGS"],
            format!("blue,{}", labels::NOT_ROUTED_TAG)
        );
        assert_eq!(worker.mounts[0].source, "qa-worker-1-spool");
        assert_eq!(worker.mounts[0].target, "/var/spool");
        assert!(state[0]
            .volumes
            .iter()
            .any(|v| v.name == "qa-worker-1-spool"));
    }

    #[test]
    fn health_settings_reach_the_registration_agent_and_docker() {
        let t = topo(&format!(
            "{THREE}services:\n  db:\n    image: redis:7\n    port: 6379\n    health: {{ cmd: [redis-cli, ping], interval: 2s, timeout: 500ms, retries: 3 }}\n  web:\n    image: w:1\n    port: 80\n    health: {{ http: /up, interval: 5s }}\n  old:\n    image: o:1\n    port: 80\n    check_http: /health\n"
        ));
        let state = desired_state(&t, &secrets());
        let db = container(&state[0], "qa-db-1");
        let hc = db.healthcheck.as_ref().expect("a Docker health check");
        assert_eq!(hc.cmd, ["redis-cli", "ping"]);
        assert_eq!((hc.interval_ms, hc.timeout_ms, hc.retries), (2000, 500, 3));
        assert_eq!(db.labels["SERVICE_CHECK_RETRIES"], "3");
        assert!(!db.labels.contains_key("SERVICE_CHECK_HTTP"));
        let web = container(&state[0], "qa-web-1");
        assert!(web.healthcheck.is_none());
        assert_eq!(web.labels["SERVICE_CHECK_HTTP"], "/up");
        assert_eq!(web.labels["SERVICE_CHECK_INTERVAL"], "5000ms");
        // check_http alone: the label it always had, nothing more (same hash).
        let old = container(&state[0], "qa-old-1");
        assert_eq!(old.labels["SERVICE_CHECK_HTTP"], "/health");
        assert!(!old.labels.contains_key("SERVICE_CHECK_INTERVAL"));
        assert!(!serde_json::to_string(old).unwrap().contains("healthcheck"));
    }

    #[test]
    fn a_one_off_has_the_service_spec_but_no_port_and_volumes_only_when_asked() {
        let t = topo(&format!(
            "{THREE}services:\n  web:\n    image: w:1\n    port: 80\n    user: \"1000\"\n    volumes: {{ data: /data }}\n    env: {{ A: b }}\n    secrets: {{ token: {{ from_env: T }} }}\n"
        ));
        let host = t.host("host-1").unwrap();
        let web = &t.services[0];
        let mut s = secrets();
        s.values.insert(secret_key("web", "token"), b"v".to_vec());
        let cmd = vec!["migrate".to_string()];
        let spec = one_off(&t, host, web, &s, Some(&cmd), false, "run-7");
        assert_eq!(spec.name, "qa-web-run-7");
        assert_eq!(spec.cmd, ["migrate"]);
        assert!(spec.ports.is_empty(), "nothing for the agents to register");
        assert!(spec.mounts.is_empty());
        assert_eq!(spec.labels[labels::COMPONENT], "run");
        assert!(spec.env.contains(&"A=b".to_string()));
        assert_eq!(spec.files[0].path, "/run/secrets/token");
        assert_eq!(spec.user.as_deref(), Some("1000"));
        let with = one_off(&t, host, web, &s, None, true, "run-8");
        assert_eq!(with.mounts[0].source, "qa-web-1-data");
        assert!(with.cmd.is_empty(), "the image's own command");
    }

    #[test]
    fn limits_restart_and_binds_only_where_written() {
        let t = topo(&format!(
            "{THREE}services:\n  web:\n    image: w:1\n    port: 80\n    memory: 256m\n    cpus: 0.5\n    restart: on-failure\n    binds: [\"/srv/conf:/etc/app:ro\"]\n  plain:\n    image: p:1\n    port: 80\n"
        ));
        let state = desired_state(&t, &secrets());
        let web = container(&state[0], "qa-web-1");
        assert_eq!(web.limits.memory_bytes, Some(256 << 20));
        assert_eq!(web.limits.nano_cpus, Some(500_000_000));
        assert_eq!(web.limits.restart.as_deref(), Some("on-failure"));
        assert!(web.mounts.contains(&Mount {
            source: "/srv/conf".into(),
            target: "/etc/app".into(),
            read_only: true,
            bind: true
        }));
        let plain = container(&state[0], "qa-plain-1");
        assert!(!serde_json::to_string(plain).unwrap().contains("limits"));
        assert!("on-failure"
            .parse::<bollard::models::RestartPolicyNameEnum>()
            .is_ok());
    }

    #[test]
    fn tcp_services_get_a_listener_port_and_their_address_variables() {
        let t = topo(&format!(
            "{THREE}services:\n  db:\n    image: redis:7\n    port: 6379\n    expose: tcp\n  cache:\n    image: redis:7\n    port: 6379\n    expose: tcp\n    lb_port: 16379\n  web:\n    image: w:1\n    port: 80\n    env: {{ DB: \"${{DB_SERVICE_HOST}}:${{DB_SERVICE_PORT}}\" }}\n"
        ));
        let state = desired_state(&t, &secrets());
        let web = container(&state[0], "qa-web-1");
        assert!(
            web.env.contains(&"DB=10.77.0.13:81".to_string()),
            "{:?}",
            web.env
        );
        assert!(web.env.contains(&"CACHE_SERVICE_PORT=16379".to_string()));
        assert!(!web.env.iter().any(|e| e.starts_with("DB_SERVICE_URL=")));
        let lb = state.iter().find(|h| h.host == "host-3").unwrap();
        let template = container(lb, "qa-template");
        assert!(
            template.cmd.contains(&"--tcp=db=81".to_string()),
            "{:?}",
            template.cmd
        );
        assert!(template.cmd.contains(&"--tcp=cache=16379".to_string()));
        assert!(
            web.labels[labels::PORTS].ends_with(",tcp=16379+81"),
            "{}",
            web.labels[labels::PORTS]
        );
    }

    #[test]
    fn instances_get_the_routed_services_addresses_and_may_refer_to_them() {
        let t = topo(&format!(
            "{THREE}services:\n  payments-api:\n    image: p:1\n    port: 8080\n  worker:\n    image: w:1\n    port: 9000\n    expose: none\n    env: {{ API: \"${{PAYMENTS_API_SERVICE_URL}}v1\", LITERAL: \"$${{X}}\" }}\n"
        ));
        let state = desired_state(&t, &secrets());
        let worker = container(&state[0], "qa-worker-1");
        let env = |k: &str| {
            worker
                .env
                .iter()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
        };
        assert_eq!(
            env("PAYMENTS_API_SERVICE_HOST").as_deref(),
            Some("10.77.0.13")
        );
        assert_eq!(env("PAYMENTS_API_SERVICE_PORT").as_deref(), Some("80"));
        assert_eq!(
            env("API").as_deref(),
            Some("http://10.77.0.13:80/payments-api/v1")
        );
        assert_eq!(env("LITERAL").as_deref(), Some("${X}"));
        assert_eq!(env("WORKER_SERVICE_HOST"), None, "a worker is not routed");
    }

    #[test]
    fn each_agent_gets_its_own_token_in_a_file_and_only_servers_the_management_one() {
        let t = topo(&format!("{THREE}consul: {{ servers: [host-1] }}\n"));
        let mut s = secrets();
        s.record_key = vec![9; 32];
        let state = desired_state(&t, &s);
        let secret = |role: &acl::Role| acl::token(&s.record_key, "qa", role).secret;
        let file = |c: &ContainerSpec, path: &str| {
            let f = c.files.iter().find(|f| f.path == path).unwrap();
            assert_eq!(f.mode, 0o400, "{path}");
            String::from_utf8(f.content.clone()).unwrap()
        };
        let config = |host: usize| -> serde_json::Value {
            let c = container(&state[host], "qa-consul");
            serde_json::from_str(&file(c, &format!("{CONSUL_CONFIG_DIR}/stagectl.json"))).unwrap()
        };
        let master = acl::master(&s.record_key, "qa");
        assert_eq!(config(0)["acl"]["default_policy"], "deny");
        assert_eq!(config(0)["acl"]["tokens"]["master"], master.as_str());
        assert!(
            config(1)["acl"]["tokens"].get("master").is_none(),
            "a client has none"
        );
        for (i, host) in ["host-1", "host-2", "host-3"].iter().enumerate() {
            let agent = secret(&acl::Role::ConsulAgent { host });
            assert_eq!(config(i)["acl"]["tokens"]["agent"], agent.as_str());
        }
        // The CLI's token: stagectl's on the server, the agent's own elsewhere.
        let cli = |host: usize| file(container(&state[host], "qa-consul"), acl::TOKEN_PATH);
        assert_eq!(cli(0), secret(&acl::Role::Stagectl));
        assert_eq!(cli(1), secret(&acl::Role::ConsulAgent { host: "host-2" }));
        let key = container(&state[0], "qa-consul")
            .files
            .iter()
            .find(|f| f.path == record::KEY_PATH);
        assert_eq!(key.map(|f| f.content.clone()), Some(s.record_key.clone()));
        assert!(container(&state[1], "qa-consul")
            .files
            .iter()
            .all(|f| f.path != record::KEY_PATH));
        let register = container(&state[1], "qa-register");
        assert_eq!(
            file(register, acl::TOKEN_PATH),
            secret(&acl::Role::Register { host: "host-2" })
        );
        let template = container(&state[2], "qa-template");
        assert_eq!(
            file(template, acl::TOKEN_PATH),
            secret(&acl::Role::Template)
        );
        // No secret in what `docker inspect` or the plan shows.
        let shown = serde_json::to_string(&state).unwrap();
        for role in [
            acl::Role::Stagectl,
            acl::Role::Template,
            acl::Role::Register { host: "host-2" },
        ] {
            assert!(!shown.contains(&secret(&role)), "{role:?}");
        }
        assert!(!shown.contains(&master));
    }

    #[test]
    fn only_servers_hold_a_tls_key_and_every_agent_verifies_rpc() {
        let t = topo(&format!("{THREE}consul: {{ servers: [host-1] }}\n"));
        let mut s = secrets();
        s.tls_seed = vec![3; 32];
        let state = desired_state(&t, &s);
        let consul = |host: usize| container(&state[host], "qa-consul");
        let paths = |host: usize| -> Vec<&str> {
            consul(host).files.iter().map(|f| f.path.as_str()).collect()
        };
        let config = |host: usize| -> serde_json::Value {
            let f = consul(host)
                .files
                .iter()
                .find(|f| f.path.ends_with("stagectl.json"))
                .unwrap();
            serde_json::from_slice(&f.content).unwrap()
        };
        let server = paths(0);
        for path in [tls::CA_FILE, tls::CERT_FILE, tls::KEY_FILE, tls::SEED_PATH] {
            assert!(server.contains(&path), "{path}");
        }
        assert_eq!(config(0)["verify_incoming_rpc"], true);
        assert_eq!(config(0)["auto_encrypt"]["allow_tls"], true);
        for client in [1, 2] {
            let held = paths(client);
            assert!(held.contains(&tls::CA_FILE));
            for path in [tls::CERT_FILE, tls::KEY_FILE, tls::SEED_PATH] {
                assert!(!held.contains(&path), "host {client} holds {path}");
            }
            assert_eq!(config(client)["auto_encrypt"]["tls"], true);
        }
        for host in 0..3 {
            assert_eq!(config(host)["verify_outgoing"], true);
            assert_eq!(config(host)["verify_server_hostname"], true);
        }
        let key = consul(0)
            .files
            .iter()
            .find(|f| f.path == tls::KEY_FILE)
            .unwrap();
        assert_eq!(key.mode, 0o400);
        let shown = serde_json::to_string(&state).unwrap();
        assert!(!shown.contains("PRIVATE KEY"));
    }

    #[test]
    fn a_service_secret_is_a_0400_file_with_a_keyed_digest_and_an_env_only_when_asked() {
        let t = topo(&format!(
            "{THREE}services:\n  web:\n    image: w:1\n    port: 80\n    user: \"1000\"\n    secrets:\n      token: {{ from_env: WEB_TOKEN }}\n      key: {{ from_file: key.pem, env: API_KEY }}\n"
        ));
        let mut s = secrets();
        s.values
            .insert(secret_key("web", "token"), b"hunter2".to_vec());
        s.values
            .insert(secret_key("web", "key"), b"pem-text".to_vec());
        let state = desired_state(&t, &s);
        let web = container(&state[0], "qa-web-1");
        let token = web
            .files
            .iter()
            .find(|f| f.path == "/run/secrets/token")
            .unwrap();
        assert_eq!(
            (token.mode, token.content.as_slice()),
            (0o400, &b"hunter2"[..])
        );
        assert_eq!(token.owner, Some((1000, 1000)));
        let plain = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(b"hunter2"));
        assert_ne!(
            token.content_sha256, plain,
            "a keyed digest, not the plain one"
        );
        let json = serde_json::to_string(web).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(!web.env.iter().any(|e| e.contains("hunter2")));
        assert!(
            web.env.contains(&"API_KEY=pem-text".to_string()),
            "asked for"
        );
        // Another value, another hash: the instance is replaced.
        let before = web.hash();
        s.values
            .insert(secret_key("web", "token"), b"hunter3".to_vec());
        let after = container(&desired_state(&t, &s)[0], "qa-web-1").hash();
        assert_ne!(before, after);
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
    fn register_agent_flags_follow_the_topology() {
        let register = |yaml: &str| {
            desired_state(&topo(yaml), &secrets())[0]
                .containers
                .iter()
                .find(|c| c.component == Component::Register.label())
                .unwrap()
                .clone()
        };
        let plain = register(THREE);
        assert!(!plain
            .cmd
            .iter()
            .any(|a| a == "--only-labeled" || a.starts_with("--reserved")));

        let strict = register(&format!(
            "{THREE}registration: {{ adopt: labeled }}\nservices:\n  web: {{ image: web:1, port: 80, reserved: true }}\n  api: {{ image: api:1, port: 90, reserved: true }}\n  docs: {{ image: docs:1, port: 80 }}\n"
        ));
        assert!(strict.cmd.contains(&"--only-labeled".to_string()));
        assert!(strict.cmd.contains(&"--reserved=api,web".to_string()));
        assert_eq!(
            strict.summary,
            "registers containers of host-1 at 10.77.0.11 (only those labelled io.stagectl.env=qa; reserved: api, web)"
        );
        assert_ne!(plain.hash(), strict.hash());
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
            ..Default::default()
        };
        let c = desired_state(&t, &other_key)[0].containers[0].clone();
        assert_ne!(a.hash(), c.hash());
    }
}
