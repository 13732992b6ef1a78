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
/// The volume holding the hosts' certificate authority. It outlives the
/// edge container, so a browser or CI job that trusts it keeps trusting the
/// next environments' certificates.
pub const CA_VOLUME: &str = "stagectl-edge-ca";
/// Where the CA volume is mounted in the edge container.
pub const CA_DIR: &str = "/var/lib/stagectl-edge";
/// The ports the edge answers on.
pub const PORTS: [u16; 2] = [80, 443];

use crate::plan::desired::{ContainerSpec, FileSpec, Mount};
use crate::topology::Limits;

/// The edge container of a host: nginx (the environments' load balancer
/// image) on the host's network, answering on [`PORTS`], with the shared
/// default server and the CA volume.
pub fn container(nginx_image: &str) -> ContainerSpec {
    ContainerSpec {
        name: CONTAINER.into(),
        component: COMPONENT.into(),
        image: nginx_image.into(),
        cmd: vec![],
        entrypoint: None,
        user: None,
        env: vec![],
        labels: std::collections::BTreeMap::from([(
            crate::agent::labels::COMPONENT.to_string(),
            COMPONENT.to_string(),
        )]),
        network_mode: Some("host".into()),
        pid_mode: None,
        mounts: vec![Mount {
            source: CA_VOLUME.into(),
            target: CA_DIR.into(),
            read_only: false,
            bind: false,
        }],
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
