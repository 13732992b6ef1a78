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

use crate::engine::Engine;
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

use crate::engine::connect::LabAccess;
use crate::engine::docker::{is_not_found, DockerHost};
use crate::labels;
use crate::labels::{lab_host_container, lab_network};
use crate::spec::{FileSpec, LabObserved};
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
    let (half_made, made): (Vec<_>, Vec<_>) = containers
        .into_iter()
        .partition(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::CREATED));
    let addresses = made
        .iter()
        .filter_map(|c| {
            let host = c.labels.as_ref()?.get(labels::LAB_HOST)?.clone();
            Some((host, lab_address(c)?))
        })
        .collect();
    Ok(LabObserved {
        network: nets.into_iter().find_map(|n| n.name),
        hosts: made
            .into_iter()
            .filter_map(|c| {
                let host = c.labels.as_ref()?.get(labels::LAB_HOST)?.clone();
                let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
                Some((host, (c.id?, running)))
            })
            .collect(),
        half_made: half_made.into_iter().filter_map(|c| c.id).collect(),
        addresses,
    })
}

/// A lab host container's fixed address on the lab bridge (kept in its
/// IPAM config even while it is stopped).
fn lab_address(c: &bollard::models::ContainerSummary) -> Option<std::net::Ipv4Addr> {
    let networks = c.network_settings.as_ref()?.networks.as_ref()?;
    networks.values().find_map(|n| {
        let fixed = n.ipam_config.as_ref().and_then(|i| i.ipv4_address.clone());
        fixed.or(n.ip_address.clone())?.parse().ok()
    })
}

/// Before lab hosts are made: the lab host image must be here.
pub async fn prepare(local: &DockerHost, topology: &Topology) -> Result<()> {
    let image = &topology.images.labhost;
    if !local.has_image(image).await? {
        bail!("image {image} is not on the local engine; build it with scripts/build-images.sh");
    }
    Ok(())
}

/// Create the container of lab host `host` (its fixed IP on the lab's
/// bridge), put its SSH host key and the lab's client key in, start it.
pub async fn create_host(
    local: &DockerHost,
    topology: &Topology,
    state: &StateDir,
    host: &str,
) -> Result<()> {
    let lab = topology.lab.as_ref().context("the topology has no lab")?;
    let Some(Endpoint::Lab { ip }) = topology.host(host).map(|h| &h.endpoint) else {
        bail!("{host} is not a lab host");
    };
    let network = lab_network(&lab.name);
    let name = lab_host_container(&lab.name, host);
    let body = ContainerCreateBody {
        image: Some(topology.images.labhost.clone()),
        hostname: Some(host.to_string()),
        labels: Some(HashMap::from([
            (labels::LAB.to_string(), lab.name.clone()),
            (labels::LAB_HOST.to_string(), host.to_string()),
        ])),
        // The inner dockerd's storage: an anonymous volume keeps it on
        // overlay2 (a container filesystem would force vfs).
        volumes: Some(vec!["/var/lib/docker".into()]),
        host_config: Some(HostConfig {
            // `--privileged` is refused on this kind of machine
            // (CAP_SYS_RESOURCE is not in the bounding set); everything
            // else a nested dockerd needs is granted.
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
                network,
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
                name: Some(name),
                platform: String::new(),
            }),
            body,
        )
        .await
        .with_context(|| format!("cannot create lab host {host} ({ip})"))?;
    let host_dir = state.lab_dir(&lab.name).join("hosts").join(host);
    let client_pub = std::fs::read(access(state, &lab.name).identity.with_extension("pub"))?;
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
        FileSpec::new("/root/.ssh/authorized_keys", 0o600, client_pub),
    ];
    local.upload_files(&created.id, &files).await?;
    local
        .start(&created.id)
        .await
        .with_context(|| format!("cannot start lab host {host} ({ip})"))
}

/// The lab's bridge, with the topology's subnet.
pub async fn create_network(local: &DockerHost, lab: &Lab) -> Result<String> {
    let name = lab_network(&lab.name);
    local
        .docker
        .create_network(NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(labels::LAB.to_string(), lab.name.clone())])),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(lab.subnet.to_string()),
                    gateway: Some(crate::topology::model::gateway(&lab.subnet).to_string()),
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

/// Make this state directory able to reach the lab, whatever made it: the
/// lab is on the local engine, so its access is recovered from there. The
/// client key is generated once per state directory and authorized on every
/// existing lab host (appended to its `authorized_keys`); known_hosts is
/// written from each existing host's own public key (read from its
/// container) and, for hosts still to be created, from the key generated
/// for them here. A second state directory (another user, a CI job) or a
/// deleted one thus reaches the same lab with strict host key checking.
pub async fn ensure_access(
    local: &DockerHost,
    topology: &Topology,
    state: &StateDir,
    seen: &LabObserved,
) -> Result<()> {
    let lab = topology.lab.as_ref().context("the topology has no lab")?;
    let access = access(state, &lab.name);
    let dir = state.lab_dir(&lab.name);
    private_dir(&dir)?;
    {
        // Two runs from this state directory at once (before either has
        // the environment's lock) must not both generate the same keys:
        // held only while generating, never across a wait on an engine.
        let _guard = lock_file(&dir.join(".access.lock"))?;
        keygen(&access.identity, &format!("stagectl-lab-{}", lab.name))?;
        for host in topology.lab_hosts() {
            if !seen.hosts.contains_key(&host.name) {
                let host_dir = dir.join("hosts").join(&host.name);
                private_dir(&host_dir)?;
                let key = host_dir.join("ssh_host_ed25519_key");
                keygen(&key, &format!("{}-{}", lab.name, host.name))?;
            }
        }
    }
    let client_pub = std::fs::read_to_string(access.identity.with_extension("pub"))?;
    // Existing hosts this state directory has not met yet (or that were
    // made again since): authorize it there and read their keys, at once.
    // Lab hosts out of the topology too: `up` clears what is left there.
    let unmet: Vec<(&str, &str)> = seen
        .hosts
        .iter()
        .filter_map(|(name, (id, _))| {
            met_key(&dir, name, id)
                .is_none()
                .then_some((name.as_str(), id.as_str()))
        })
        .collect();
    let met = futures_util::future::join_all(
        unmet
            .iter()
            .map(|(host, id)| existing_host_key(local, id, host, &client_pub)),
    )
    .await;
    for ((host, id), public) in unmet.iter().zip(met) {
        let record = format!("{id} {}", public?.trim());
        crate::state::write_secret(&dir.join("hosts").join(host).join("met"), record.as_bytes())?;
    }
    let mut known = String::new();
    let in_topology = topology.lab_hosts().filter_map(|h| match h.endpoint {
        Endpoint::Lab { ip } => Some((h.name.as_str(), ip)),
        _ => None,
    });
    let out_of_it = seen
        .addresses
        .iter()
        .filter(|(name, _)| topology.host(name).is_none())
        .map(|(name, ip)| (name.as_str(), *ip));
    for (name, ip) in in_topology.chain(out_of_it) {
        let public = match seen.hosts.get(name) {
            Some((id, _)) => met_key(&dir, name, id)
                .with_context(|| format!("lab host {name}: its key was not recorded"))?,
            None => {
                let key = dir.join("hosts").join(name);
                std::fs::read_to_string(key.join("ssh_host_ed25519_key.pub"))?
            }
        };
        let mut parts = public.split_whitespace();
        let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
            bail!("lab host {name}: its SSH host key is not a public key");
        };
        known.push_str(&format!("{ip} {kind} {b64}\n"));
    }
    crate::state::write_secret(&access.known_hosts, known.as_bytes())
}

/// The host key of lab host `host` as recorded when this state directory
/// last met its container `id` (authorized there, key read): `None` if it
/// has not met this very container.
fn met_key(dir: &Path, host: &str, id: &str) -> Option<String> {
    let met = std::fs::read_to_string(dir.join("hosts").join(host).join("met")).ok()?;
    let (met_id, key) = met.split_once(' ')?;
    (met_id == id).then(|| key.trim().to_string())
}

/// An exclusive advisory lock on `path`, held until the file is dropped.
/// Waits at most 30 s (the holder may be a stopped process).
fn lock_file(path: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // SAFETY: flock on a file descriptor this function owns.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if std::time::Instant::now() >= deadline {
            bail!(
                "{} is held by another stagectl run for over 30 s (a stopped process?)",
                path.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(file)
}

/// An existing lab host's public host key; this state directory's client
/// key is authorized there first if it is not yet.
async fn existing_host_key(
    local: &DockerHost,
    id: &str,
    host: &str,
    client_pub: &str,
) -> Result<String> {
    let authorized = local
        .read_file(id, "/root/.ssh/authorized_keys")
        .await?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let client_pub = client_pub.trim();
    if !authorized.lines().any(|l| l.trim() == client_pub) {
        let mut updated = authorized;
        if !updated.is_empty() && !updated.ends_with('\n') {
            updated.push('\n');
        }
        updated.push_str(client_pub);
        updated.push('\n');
        let file = FileSpec::new("/root/.ssh/authorized_keys", 0o600, updated.into_bytes());
        local.upload_files(id, &[file]).await.with_context(|| {
            format!("lab host {host}: cannot authorize this state directory's key")
        })?;
    }
    let public = local
        .read_file(id, "/etc/ssh/ssh_host_ed25519_key.pub")
        .await?
        .with_context(|| format!("lab host {host} has no SSH host key (a half-made host)"))?;
    Ok(String::from_utf8_lossy(&public).into_owned())
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
    for id in observed
        .hosts
        .values()
        .map(|(id, _)| id)
        .chain(&observed.half_made)
    {
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
