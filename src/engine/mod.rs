//! The hosts' container engines, behind one trait.
//!
//! [`Engine`] is everything the pipeline asks of a host: observe this
//! environment's containers, volumes and images, create, start and remove
//! containers and volumes, receive images. [`docker::DockerHost`] is the real
//! one (a Docker engine reached over SSH, TLS or a unix socket, see
//! [`connect`]); [`memory::MemoryEngine`] keeps the same state in memory, so
//! the planner, the executor and the whole pipeline are unit-tested without
//! a daemon. The lab tests on real engines stay the proof that it works.

pub mod connect;
pub mod docker;
pub mod kept_ssh;
pub mod lab;
pub mod layers;
pub mod memory;
pub mod scratch;
pub mod tunnel;
pub mod tunnel_host;
pub mod tunnel_token;

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::spec::{ContainerSpec, Observed, VolumeSpec};

/// What a host's engine does for the pipeline. Methods take and return plain
/// types; an engine's own types stay in its module.
#[allow(async_fn_in_trait)] // used through generics, never as `dyn`
pub trait Engine {
    /// The topology host this engine serves.
    fn name(&self) -> &str;

    /// This environment's containers (running or not) and volumes, found by
    /// the managed mark, and the IDs `images` point at here.
    async fn observe(&self, env: &str, images: &[String]) -> Result<Observed>;

    /// Image IDs of these references here (absent ones left out).
    async fn image_ids(&self, references: &[String]) -> Result<BTreeMap<String, String>>;

    async fn create_volume(&self, env: &str, volume: &VolumeSpec) -> Result<()>;

    /// Remove a volume; gone already is fine.
    async fn remove_volume(&self, name: &str) -> Result<()>;

    /// Create the container, put its files in, start it; its ID.
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String>;

    async fn start(&self, id: &str) -> Result<()>;

    /// Let the container stay stopped when its process exits (the engine
    /// restarts stagectl's containers otherwise): before an agent is told
    /// to leave the cluster and stop.
    async fn no_restart(&self, id: &str) -> Result<()>;

    /// Remove a container and its anonymous volumes; gone already is fine.
    async fn remove_container(&self, id: &str) -> Result<()>;

    /// Run a command in a running container: exit code and output.
    async fn exec(&self, container: &str, cmd: &[&str], env: &[String]) -> Result<ExecOutput>;

    /// Copy images from `source` (the local engine) into this one, in one
    /// archive without the layers this one has. `progress` gets the bytes
    /// sent so far and the bytes to send.
    async fn receive_images(
        &self,
        source: &Self,
        references: &[String],
        progress: impl Fn(u64, u64) + Send + Sync + Clone + 'static,
    ) -> Result<Delivered>;

    /// Pull an image from its registry.
    async fn pull(&self, reference: &str) -> Result<()>;

    /// Run a one-off container to its end and remove it: its exit code
    /// and the end of its output (stdout and stderr as they came).
    async fn run_once(&self, spec: &ContainerSpec) -> Result<(i64, String)>;
}

/// What an image delivery sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Bytes of the archive sent to the host.
    pub sent: u64,
    /// Bytes of the whole archive (every layer).
    pub full: u64,
}

/// What a command run in a container printed, and how it ended.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    /// stdout when the command succeeded, else an error carrying stderr.
    pub fn ok_or_stderr(self, what: &str) -> Result<String> {
        if self.code == 0 {
            Ok(self.stdout)
        } else {
            Err(anyhow::anyhow!("{}", self.stderr.trim()))
                .with_context(|| format!("`{what}` exited with {}", self.code))
        }
    }
}
