//! An engine kept in memory, for unit tests of the planner, the executor
//! and the pipeline: it holds containers, volumes and images as a Docker
//! engine would for what stagectl asks, and can be told to fail a call.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::{bail, Result};

use super::{Delivered, Engine, ExecOutput};
use crate::spec::{ContainerSpec, Observed, ObservedContainer, VolumeSpec};

/// One host's containers, volumes and images, in memory.
#[derive(Default)]
pub struct MemoryEngine {
    name: String,
    state: Mutex<State>,
}

#[derive(Default, Clone)]
struct State {
    /// By ID.
    containers: BTreeMap<String, MemoryContainer>,
    /// Volume name → environment.
    volumes: BTreeMap<String, String>,
    /// Image reference → ID.
    images: BTreeMap<String, String>,
    next_id: u64,
    /// Every call that changed something, in order: what a test reads to
    /// check the order of work.
    journal: Vec<String>,
    /// A container name whose creation fails (a broken host).
    fail_create: Option<String>,
    /// Commands run with `exec`.
    execs: Vec<String>,
}

/// A container as the memory engine keeps it.
#[derive(Debug, Clone)]
pub struct MemoryContainer {
    pub id: String,
    pub spec: ContainerSpec,
    pub env: String,
    pub spec_hash: String,
    pub running: bool,
    pub started_once: bool,
    pub image_id: String,
}

impl MemoryEngine {
    pub fn new(name: &str) -> Self {
        MemoryEngine {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Put an image here, as `docker load` would.
    pub fn add_image(&self, reference: &str, id: &str) {
        let mut s = self.state.lock().unwrap();
        s.images.insert(reference.to_string(), id.to_string());
    }

    /// Take an image away.
    pub fn remove_image(&self, reference: &str) {
        self.state.lock().unwrap().images.remove(reference);
    }

    /// Make the creation of container `name` fail.
    pub fn fail_creating(&self, name: &str) {
        self.state.lock().unwrap().fail_create = Some(name.to_string());
    }

    /// Stop a container, as a crash or `docker stop` would.
    pub fn stop(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        for c in s.containers.values_mut().filter(|c| c.spec.name == name) {
            c.running = false;
        }
    }

    /// Create a container without starting it: a run interrupted between
    /// create and start.
    pub fn create_only(&self, env: &str, spec: &ContainerSpec) {
        let mut s = self.state.lock().unwrap();
        let id = s.insert(env, spec);
        s.containers.get_mut(&id).unwrap().running = false;
    }

    /// Containers by name, sorted.
    pub fn containers(&self) -> Vec<MemoryContainer> {
        let s = self.state.lock().unwrap();
        let mut all: Vec<MemoryContainer> = s.containers.values().cloned().collect();
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        all
    }

    pub fn volumes(&self) -> Vec<String> {
        self.state.lock().unwrap().volumes.keys().cloned().collect()
    }

    /// The changes made so far, e.g. `create qa-consul`, `remove qa-web-1`.
    pub fn journal(&self) -> Vec<String> {
        self.state.lock().unwrap().journal.clone()
    }

    /// The commands run with `exec`, as `container: arg arg`.
    pub fn execs(&self) -> Vec<String> {
        self.state.lock().unwrap().execs.clone()
    }
}

impl State {
    fn insert(&mut self, env: &str, spec: &ContainerSpec) -> String {
        self.next_id += 1;
        let id = format!("{:012x}", self.next_id);
        let image_id = self.images.get(&spec.image).cloned().unwrap_or_default();
        self.containers.insert(
            id.clone(),
            MemoryContainer {
                id: id.clone(),
                spec: spec.clone(),
                env: env.to_string(),
                spec_hash: spec.hash(),
                running: true,
                started_once: false,
                image_id,
            },
        );
        id
    }
}

impl Engine for MemoryEngine {
    fn name(&self) -> &str {
        &self.name
    }

    async fn observe(&self, env: &str, images: &[String]) -> Result<Observed> {
        let s = self.state.lock().unwrap();
        let mut containers: Vec<ObservedContainer> = s
            .containers
            .values()
            .filter(|c| c.env == env)
            .map(|c| ObservedContainer {
                id: c.id.clone(),
                name: c.spec.name.clone(),
                component: c.spec.component.clone(),
                spec_hash: Some(c.spec_hash.clone()),
                consul_server: c
                    .spec
                    .labels
                    .get(crate::labels::CONSUL_ROLE)
                    .map(|r| r == "server"),
                made_for: c.spec.labels.get(crate::labels::HOST).cloned(),
                running: c.running,
                never_started: !c.started_once,
                image_id: c.image_id.clone(),
            })
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Observed {
            containers,
            volumes: s
                .volumes
                .iter()
                .filter(|(_, e)| *e == env)
                .map(|(v, _)| v.clone())
                .collect(),
            image_ids: images
                .iter()
                .filter_map(|r| Some((r.clone(), s.images.get(r)?.clone())))
                .collect(),
        })
    }

    async fn image_ids(&self, references: &[String]) -> Result<BTreeMap<String, String>> {
        let s = self.state.lock().unwrap();
        Ok(references
            .iter()
            .filter_map(|r| Some((r.clone(), s.images.get(r)?.clone())))
            .collect())
    }

    async fn create_volume(&self, env: &str, volume: &VolumeSpec) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        if s.volumes.contains_key(&volume.name) {
            bail!("{}: volume {} exists", self.name, volume.name);
        }
        s.volumes.insert(volume.name.clone(), env.to_string());
        s.journal.push(format!("create volume {}", volume.name));
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        s.volumes.remove(name);
        s.journal.push(format!("remove volume {name}"));
        Ok(())
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String> {
        let mut s = self.state.lock().unwrap();
        if s.fail_create.as_deref() == Some(spec.name.as_str()) {
            bail!("{}: cannot create container {}", self.name, spec.name);
        }
        if s.containers.values().any(|c| c.spec.name == spec.name) {
            bail!("{}: the name {} is in use (409)", self.name, spec.name);
        }
        if !s.images.contains_key(&spec.image) {
            bail!("{}: no such image {}", self.name, spec.image);
        }
        let env = spec
            .labels
            .get(crate::labels::ENV)
            .cloned()
            .unwrap_or_default();
        let id = s.insert(&env, spec);
        s.containers.get_mut(&id).unwrap().started_once = true;
        s.journal.push(format!("create {}", spec.name));
        Ok(id)
    }

    async fn no_restart(&self, id: &str) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        let Some(c) = s.containers.get(id) else {
            bail!("{}: no such container {id}", self.name);
        };
        let name = c.spec.name.clone();
        s.journal.push(format!("no-restart {name}"));
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        let Some(c) = s.containers.get_mut(id) else {
            bail!("{}: no such container {id}", self.name);
        };
        c.running = true;
        c.started_once = true;
        let name = c.spec.name.clone();
        s.journal.push(format!("start {name}"));
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        if let Some(c) = s.containers.remove(id) {
            s.journal.push(format!("remove {}", c.spec.name));
        }
        Ok(())
    }

    async fn exec(&self, container: &str, cmd: &[&str], _env: &[String]) -> Result<ExecOutput> {
        let mut s = self.state.lock().unwrap();
        s.execs.push(format!("{container}: {}", cmd.join(" ")));
        Ok(ExecOutput::default())
    }

    async fn receive_images(
        &self,
        source: &Self,
        references: &[String],
        progress: impl Fn(u64, u64) + Send + Sync + Clone + 'static,
    ) -> Result<Delivered> {
        let ids = source.image_ids(references).await?;
        let mut s = self.state.lock().unwrap();
        for r in references {
            let Some(id) = ids.get(r) else {
                bail!("{}: the source has no image {r}", self.name);
            };
            s.images.insert(r.clone(), id.clone());
        }
        s.journal
            .push(format!("receive images {}", references.join(", ")));
        progress(1, 1);
        Ok(Delivered { sent: 1, full: 1 })
    }

    async fn pull(&self, reference: &str) -> Result<()> {
        bail!("{}: no registry to pull {reference} from", self.name)
    }

    /// Exits 1 when the command is `false`, else 0.
    async fn run_once(&self, spec: &ContainerSpec) -> Result<(i64, String)> {
        let mut s = self.state.lock().unwrap();
        s.execs
            .push(format!("{}: {}", spec.name, spec.cmd.join(" ")));
        let code = i64::from(spec.cmd.first().map(String::as_str) == Some("false"));
        Ok((code, String::new()))
    }
}
