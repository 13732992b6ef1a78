//! The edge proxy: one front door on ports 80 and 443 of a load balancer
//! host, shared by every environment there that asks for it (`lb.edge`).
//!
//! Each environment keeps its own load balancer on its own port block; the
//! edge only sends `<service>.<env>.<domain>` (and `<env>.<domain>`), by
//! Host or SNI, to that environment's load balancer, which routes it as it
//! always does. So the edge holds no service routes and needs no agent: it
//! changes only when an environment is added or removed.
//!
//! It belongs to the host, not to an environment: one container,
//! [`CONTAINER`], made by the first environment that needs it and removed
//! with the last. Every environment owns exactly one file in it (its route,
//! [`conf::EnvFiles`]) and its certificate, so two runs for different
//! environments never write the same file; each change is checked with
//! `nginx -t` and applied with a graceful reload, which leaves the
//! connections of the other environments alone.
//!
//! - [`conf`]: the nginx files (pure).
//! - [`ca`]: the certificate authority of the hosts and the certificates
//!   it issues (pure).

pub mod ca;
pub mod conf;

/// The edge's container on each load balancer host: one per host.
pub const CONTAINER: &str = "stagectl-edge";
/// Value of the component label on the edge container (it has no
/// environment label: no environment's `down` or snapshot sees it).
pub const COMPONENT: &str = "edge";
/// The edge's image: stagectl's own nginx, never an environment's
/// `images.nginx` (the edge serves every environment, so no one of them
/// may choose what runs it).
pub const IMAGE: &str = "stagectl/nginx:1.22";
/// Prefix of the holder of a domain's CA: a container that is created and
/// never started, with the CA's volume (same name) mounted. stagectl reads
/// and writes the CA through the engine's archive API on it; the edge
/// container never mounts it, so the CA key is never where nginx runs.
/// Docker reserves a container name atomically, so of two first `up`s at
/// once one creates the holder and writes the CA, the other reads it.
/// The volume outlives the edge container, so a browser or CI job that
/// trusts the CA keeps trusting the next environments' certificates.
const CA_HOLDER_PREFIX: &str = "stagectl-edge-ca-";
/// Where the CA volume is mounted in its holder.
pub const CA_DIR: &str = "/var/lib/stagectl-edge-ca";
/// Value of the component label on a CA holder.
pub const CA_COMPONENT: &str = "edge-ca";

/// The holder (container and volume) of the CA for `domain`: one CA per
/// domain, constrained to it, so a CA trusted for previews cannot vouch
/// for any other name.
pub fn ca_holder(domain: &str) -> Result<String, String> {
    let ok = !domain.is_empty()
        && domain.len() <= 200
        && !domain.starts_with(['-', '.'])
        && domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    match ok {
        true => Ok(format!("{CA_HOLDER_PREFIX}{domain}")),
        false => Err(format!("domain `{domain}` cannot name the edge's CA")),
    }
}
/// The ports the edge answers on.
pub const PORTS: [u16; 2] = [80, 443];

use crate::spec::{ContainerSpec, FileSpec, Limits, Mount};

/// The edge container of a host: nginx ([`IMAGE`]) on the host's network,
/// answering on [`PORTS`], with the shared default server. No volume: the
/// only keys in it are the environments' certificates' keys.
pub fn container() -> ContainerSpec {
    ContainerSpec {
        name: CONTAINER.into(),
        component: COMPONENT.into(),
        image: IMAGE.into(),
        cmd: vec![],
        entrypoint: None,
        user: None,
        env: vec![],
        labels: std::collections::BTreeMap::from([(
            crate::labels::COMPONENT.to_string(),
            COMPONENT.to_string(),
        )]),
        network_mode: Some("host".into()),
        pid_mode: None,
        mounts: vec![],
        ports: vec![],
        files: vec![FileSpec::new(
            conf::DEFAULT_PATH,
            0o644,
            conf::default_server().into_bytes(),
        )],
        healthcheck: None,
        limits: Limits::default(),
        join_args: vec![],
        summary: "the edge proxy on ports 80 and 443".into(),
        drain: None,
    }
}

/// The host-wide lock on the edge's routes: a container that is never
/// started, whose name Docker reserves atomically. Held while a run adds a
/// route (making the edge if it is gone) and while a run takes the last
/// one away and removes the edge, so a route added meanwhile is never lost
/// with the edge.
pub const LOCK: &str = "stagectl-edge-lock";
/// Value of the component label on the lock.
pub const LOCK_COMPONENT: &str = "edge-lock";

/// The holder of a domain's CA (see [`ca_holder`]): never started, no
/// network, only its volume.
pub fn ca_holder_container(holder: &str) -> ContainerSpec {
    parked(holder, CA_COMPONENT, Some(holder))
}

/// The edge's lock ([`LOCK`]): never started, nothing mounted.
pub fn lock_container() -> ContainerSpec {
    parked(LOCK, LOCK_COMPONENT, None)
}

/// A container that is only ever created (a name, maybe a volume): no
/// network, its command `true`.
fn parked(name: &str, component: &str, volume: Option<&str>) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        component: component.into(),
        image: IMAGE.into(),
        cmd: vec!["true".into()],
        entrypoint: None,
        user: None,
        env: vec![],
        labels: std::collections::BTreeMap::from([(
            crate::labels::COMPONENT.to_string(),
            component.to_string(),
        )]),
        network_mode: Some("none".into()),
        pid_mode: None,
        mounts: volume
            .map(|v| Mount {
                source: v.into(),
                target: CA_DIR.into(),
                read_only: false,
                bind: false,
            })
            .into_iter()
            .collect(),
        ports: vec![],
        files: vec![],
        healthcheck: None,
        limits: Limits::default(),
        join_args: vec![],
        summary: format!("{component}, never started"),
        drain: None,
    }
}
