//! The `local` driver: a lab of Docker-in-Docker hosts on this machine.
//!
//! Each `driver: local` host becomes a container of the lab host image on the
//! local engine, with its own fixed IP on the lab's bridge, an inner dockerd
//! (overlay2 on an anonymous volume) and sshd. stagectl generates the lab's
//! client key and every host's SSH host key, so it can write a known_hosts
//! file and keep strict host key checking on; from then on a lab host is
//! reached over SSH exactly like a real server.
//!
//! A lab is named (by default after the environment), so several
//! environments can share its hosts; `remove` is only called by `down` once
//! no environment has containers left on them.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig,
    NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListNetworksOptions,
};

use crate::connect::LabAccess;
use crate::desired::FileSpec;
use crate::docker::{is_not_found, DockerHost};
use crate::labels;
use crate::state::{private_dir, StateDir};
use crate::topology::{Endpoint, Lab, Topology};

/// Keys and known_hosts of a lab, under the state directory.
pub fn access(state: &StateDir, lab: &str) -> LabAccess {
    let dir = state.lab_dir(lab);
    LabAccess {
        identity: dir.join("id_ed25519"),
        known_hosts: dir.join("known_hosts"),
    }
}

pub fn network_name(lab: &str) -> String {
    format!("{lab}-lab")
}

pub fn host_container_name(lab: &str, host: &str) -> String {
    format!("{lab}-{host}")
}

/// What exists of a lab on the local engine.
#[derive(Debug, Default, Clone)]
pub struct LabObserved {
    pub network: Option<String>,
    /// Lab host containers by topology host name: (id, running).
    pub hosts: HashMap<String, (String, bool)>,
}

pub async fn observe(local: &DockerHost, lab: &str) -> Result<LabObserved> {
    let filter = labels::filter(labels::LAB, lab);
    let nets = local
        .docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filter.clone()),
        }))
        .await
        .context("cannot list networks on the local engine")?;
    let containers = local
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filter),
            ..Default::default()
        }))
        .await
        .context("cannot list containers on the local engine")?;
    Ok(LabObserved {
        network: nets.into_iter().find_map(|n| n.name),
        hosts: containers
            .into_iter()
            .filter_map(|c| {
                let host = c.labels.as_ref()?.get(labels::LAB_HOST)?.clone();
                let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
                Some((host, (c.id?, running)))
            })
            .collect(),
    })
}

/// Create whatever of the lab is missing: keys, bridge, host containers.
/// Idempotent; existing hosts are started if stopped, never recreated.
pub async fn ensure(
    local: &DockerHost,
    topology: &Topology,
    state: &StateDir,
) -> Result<LabAccess> {
    let lab = topology.lab.as_ref().context("the topology has no lab")?;
    let access = access(state, &lab.name);
    ensure_keys(state, topology, lab, &access)?;
    let observed = observe(local, &lab.name).await?;

    let image = &topology.images.labhost;
    if !local.has_image(image).await? {
        bail!("image {image} is not on the local engine; build it with scripts/build-images.sh");
    }
    let network = match observed.network {
        Some(n) => n,
        None => create_network(local, lab).await?,
    };
    let client_pub = std::fs::read(access.identity.with_extension("pub"))?;
    for host in topology.lab_hosts() {
        let Endpoint::Lab { ip } = host.endpoint else {
            continue;
        };
        match observed.hosts.get(&host.name) {
            Some((_, true)) => {}
            Some((id, false)) => local
                .start(id)
                .await
                .with_context(|| format!("cannot start lab host {}", host.name))?,
            None => {
                let name = host_container_name(&lab.name, &host.name);
                let body = ContainerCreateBody {
                    image: Some(image.clone()),
                    hostname: Some(host.name.clone()),
                    labels: Some(HashMap::from([
                        (labels::LAB.to_string(), lab.name.clone()),
                        (labels::LAB_HOST.to_string(), host.name.clone()),
                    ])),
                    // The inner dockerd's storage: an anonymous volume keeps
                    // it on overlay2 (a container filesystem would force vfs).
                    volumes: Some(vec!["/var/lib/docker".into()]),
                    host_config: Some(HostConfig {
                        // `--privileged` is refused on this kind of machine
                        // (CAP_SYS_RESOURCE is not in the bounding set);
                        // everything else a nested dockerd needs is granted.
                        cap_add: Some(vec!["ALL".into()]),
                        cap_drop: Some(vec!["SYS_RESOURCE".into()]),
                        security_opt: Some(vec![
                            "seccomp=unconfined".into(),
                            "apparmor=unconfined".into(),
                        ]),
                        binds: Some(vec!["/sys/fs/cgroup:/sys/fs/cgroup".into()]),
                        network_mode: Some(network.clone()),
                        ..Default::default()
                    }),
                    networking_config: Some(NetworkingConfig {
                        endpoints_config: Some(HashMap::from([(
                            network.clone(),
                            EndpointSettings {
                                ipam_config: Some(EndpointIpamConfig {
                                    ipv4_address: Some(ip.to_string()),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                        )])),
                    }),
                    ..Default::default()
                };
                let created = local
                    .docker
                    .create_container(
                        Some(CreateContainerOptions {
                            name: Some(name.clone()),
                            platform: String::new(),
                        }),
                        body,
                    )
                    .await
                    .with_context(|| format!("cannot create lab host {} ({ip})", host.name))?;
                let host_dir = state.lab_dir(&lab.name).join("hosts").join(&host.name);
                let files = vec![
                    FileSpec::new(
                        "/etc/ssh/ssh_host_ed25519_key",
                        0o600,
                        std::fs::read(host_dir.join("ssh_host_ed25519_key"))?,
                    ),
                    FileSpec::new(
                        "/etc/ssh/ssh_host_ed25519_key.pub",
                        0o644,
                        std::fs::read(host_dir.join("ssh_host_ed25519_key.pub"))?,
                    ),
                    FileSpec::new("/root/.ssh/authorized_keys", 0o600, client_pub.clone()),
                ];
                local.upload_files(&created.id, &files).await?;
                local
                    .start(&created.id)
                    .await
                    .with_context(|| format!("cannot start lab host {} ({ip})", host.name))?;
            }
        }
    }
    Ok(access)
}

async fn create_network(local: &DockerHost, lab: &Lab) -> Result<String> {
    let name = network_name(&lab.name);
    local
        .docker
        .create_network(NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(labels::LAB.to_string(), lab.name.clone())])),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(lab.subnet.to_string()),
                    gateway: Some(lab.subnet.gateway().to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create the lab bridge {name} ({})", lab.subnet))?;
    Ok(name)
}

/// Generate the lab's client key and each host's host key once; rewrite
/// known_hosts from them so it always matches the topology's addresses.
fn ensure_keys(state: &StateDir, topology: &Topology, lab: &Lab, access: &LabAccess) -> Result<()> {
    let dir = state.lab_dir(&lab.name);
    private_dir(&dir)?;
    keygen(&access.identity, &format!("stagectl-lab-{}", lab.name))?;
    let mut known = String::new();
    for host in topology.lab_hosts() {
        let Endpoint::Lab { ip } = host.endpoint else {
            continue;
        };
        let host_dir = dir.join("hosts").join(&host.name);
        private_dir(&host_dir)?;
        let key = host_dir.join("ssh_host_ed25519_key");
        keygen(&key, &format!("{}-{}", lab.name, host.name))?;
        let public = std::fs::read_to_string(key.with_extension("pub"))?;
        let mut parts = public.split_whitespace();
        let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
            bail!(
                "{} is not an SSH public key",
                key.with_extension("pub").display()
            );
        };
        known.push_str(&format!("{ip} {kind} {b64}\n"));
    }
    crate::state::write_secret(&access.known_hosts, known.as_bytes())
}

fn keygen(path: &Path, comment: &str) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .context("cannot run ssh-keygen (install openssh-client)")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Remove the lab's host containers (with their inner engines' volumes),
/// its bridge and its keys. Returns how many hosts were removed.
pub async fn remove(local: &DockerHost, lab: &str, state: &StateDir) -> Result<usize> {
    let observed = observe(local, lab).await?;
    for (id, _) in observed.hosts.values() {
        local.remove_container(id).await?;
    }
    if let Some(net) = observed.network {
        match local.docker.remove_network(&net).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove the lab bridge {net}")),
        }
    }
    state.remove_lab(lab)?;
    Ok(observed.hosts.len())
}
