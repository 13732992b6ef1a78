//! `stagectl status`: hosts, containers, the Consul cluster, services and
//! the load balancer, as tables or JSON. Exit code 1 when anything is
//! degraded, so CI can gate on it.
//!
//! `gather` collects the facts (through the pipeline's connection step,
//! reporting unreachable hosts instead of stopping); `tables` prints them.

mod gather;
mod tables;

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::agent::template::LbStatus;
use crate::cli::OutputFormat;
use crate::cluster::http::InstanceHealth;
use crate::error::{EXIT_FAILED, EXIT_OK};
use crate::pipeline::Ctx;

pub use tables::{clock, instance_cell};

#[derive(Debug, Serialize)]
pub struct Status {
    pub environment: String,
    pub healthy: bool,
    pub problems: Vec<String>,
    pub hosts: Vec<HostStatus>,
    pub consul: Option<ClusterStatus>,
    /// Every service in Consul with its instances and their health.
    pub services: BTreeMap<String, ServiceStatus>,
    /// What the template agent on the LB host last did.
    pub lb: Option<LbView>,
    /// What the last `up` applied and who ran it (kept in Consul).
    pub last_up: Option<crate::cluster::consul::LastUp>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    /// Instances the topology deploys (0 for services started by hand).
    pub expected: usize,
    pub passing: usize,
    pub instances: Vec<InstanceHealth>,
}

#[derive(Debug, Serialize)]
pub struct LbView {
    pub host: String,
    pub address: String,
    #[serde(flatten)]
    pub status: LbStatus,
}

#[derive(Debug, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub address: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub docker: Option<String>,
    pub consul_role: &'static str,
    pub containers: Vec<ContainerStatus>,
    /// Containers carrying this environment's label that stagectl did not
    /// create (a user's, for `registration.adopt: labeled`): `up` and
    /// `down` leave them alone.
    pub not_managed: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub component: String,
    pub running: bool,
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub asked: String,
    pub leader: Option<String>,
    pub servers: usize,
    pub members: Vec<crate::cluster::view::Member>,
}

pub async fn run(ctx: &Ctx, output: OutputFormat) -> Result<u8> {
    let status = gather::gather(ctx).await?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        OutputFormat::Table => tables::print(&status),
    }
    Ok(if status.healthy { EXIT_OK } else { EXIT_FAILED })
}
