//! The Docker engine of one host, behind plain types.
//!
//! Everything stagectl asks of an engine goes through [`DockerHost`]: observe
//! this environment's containers and volumes (by label), create a container
//! from a [`ContainerSpec`], remove, exec, move images between engines.
//! bollard types stay inside this module.

use std::collections::HashMap;
use std::io;

use anyhow::{Context, Result};
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount as DockerMount, MountType, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, ImportImageOptions, ListContainersOptions, ListVolumesOptions,
    RemoveContainerOptions, RemoveVolumeOptions, UploadToContainerOptions,
};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};

use crate::engine::{Delivered, Engine, ExecOutput};
use crate::labels;
use crate::spec::{ContainerSpec, EdgeSeen, FileSpec, Observed, ObservedContainer, VolumeSpec};

/// One host's engine, named after the topology host it serves.
#[derive(Clone)]
pub struct DockerHost {
    pub name: String,
    pub docker: Docker,
}

/// A container of some environment, as `ls` and port resolution see it.
#[derive(Debug, Clone)]
pub struct LabeledContainer {
    pub name: String,
    pub running: bool,
    pub labels: HashMap<String, String>,
    /// Unix seconds when it was created.
    pub created: u64,
}

/// A listed container's name, without the API's leading `/`.
fn container_name(names: Option<Vec<String>>) -> String {
    names
        .unwrap_or_default()
        .first()
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default()
}

/// How a one-off or an exec is attached to this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attach {
    /// Our stdin goes to the process (its stdin closes when ours does).
    pub stdin: bool,
    /// A terminal of this size (`rows`, `columns`) is allocated for it.
    pub tty: Option<(u16, u16)>,
}

/// Hand a process's output to `sink` until it ends (`true` for stderr; a
/// terminal's output is all stdout).
async fn pump(
    mut output: std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
    sink: &mut impl FnMut(bool, &[u8]),
) -> Result<()> {
    while let Some(chunk) = output.next().await {
        match chunk? {
            bollard::container::LogOutput::StdErr { message } => sink(true, &message),
            other => sink(false, &other.into_bytes()),
        }
    }
    Ok(())
}

/// Copy this process's stdin to a process's input until either ends, then
/// close it (the process sees end of input). Read on a thread of its own:
/// a read from a terminal blocks until a key is pressed, and tokio's stdin
/// would hold up the runtime's shutdown (and so the exit) until then.
async fn copy_stdin(mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>) {
    use tokio::io::AsyncWriteExt;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        while let Ok(n @ 1..) = stdin.read(&mut buf) {
            if tx.blocking_send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    while let Some(bytes) = rx.recv().await {
        if input.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = input.shutdown().await;
}

/// True when the engine answered "no such object" (404).
pub fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// True when the error (through its context) is the engine answering
/// `status`: 409 for a name already taken, 304 for a container already
/// started.
pub fn is_status(err: &anyhow::Error, status: u16) -> bool {
    matches!(
        err.downcast_ref::<bollard::errors::Error>(),
        Some(bollard::errors::Error::DockerResponseServerError { status_code, .. }) if *status_code == status
    )
}

impl DockerHost {
    pub fn new(name: impl Into<String>, docker: Docker) -> Self {
        DockerHost {
            name: name.into(),
            docker,
        }
    }

    /// Every container of any environment on this host (running or not).
    pub async fn stagectl_containers(&self) -> Result<Vec<LabeledContainer>> {
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![labels::ENV.to_string()],
                )])),
                ..Default::default()
            }))
            .await
            .with_context(|| format!("{}: cannot list containers", self.name))?;
        Ok(containers
            .into_iter()
            .map(|c| LabeledContainer {
                name: container_name(c.names),
                running: c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
                labels: c.labels.unwrap_or_default(),
                created: c.created.and_then(|t| u64::try_from(t).ok()).unwrap_or(0),
            })
            .collect())
    }

    /// The ports labels of the environments with containers here, as
    /// (environment, label), each pair once; `plan::ports::claims` reads
    /// them.
    pub async fn port_labels(&self) -> Result<Vec<(String, String)>> {
        let mut found: Vec<(String, String)> = self
            .stagectl_containers()
            .await?
            .into_iter()
            .filter_map(|c| {
                Some((
                    c.labels.get(labels::ENV)?.clone(),
                    c.labels.get(labels::PORTS)?.clone(),
                ))
            })
            .collect();
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Names of environments with containers on this host.
    pub async fn environments(&self) -> Result<Vec<String>> {
        let mut envs: Vec<String> = self
            .stagectl_containers()
            .await?
            .into_iter()
            .filter_map(|c| c.labels.get(labels::ENV).cloned())
            .collect();
        envs.sort();
        envs.dedup();
        Ok(envs)
    }

    /// A file of a container (running or not), or `None` when it has no
    /// such file: how stagectl reads back what it put on a host (the gossip
    /// key, a lab host's SSH keys) without a shell in the container.
    pub async fn read_file(&self, container: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(tar_bytes) = self.download(container, path).await? else {
            return Ok(None);
        };
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        for entry in archive.entries()? {
            let mut entry = entry?;
            if entry.header().entry_type().is_file() {
                let mut content = Vec::new();
                io::Read::read_to_end(&mut entry, &mut content)?;
                return Ok(Some(content));
            }
        }
        Ok(None)
    }

    /// `path` of a container (running or not) as the engine's tar archive,
    /// or `None` when there is no such path.
    async fn download(&self, container: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let mut stream = self.docker.download_from_container(
            container,
            Some(bollard::query_parameters::DownloadFromContainerOptions {
                path: path.to_string(),
            }),
        );
        let mut tar_bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => tar_bytes.extend_from_slice(&c),
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("{}: cannot read {path} in {container}", self.name)
                    })
                }
            }
        }
        Ok(Some(tar_bytes))
    }

    /// Make a volume that belongs to no environment (labelled with its
    /// component only), unless it exists.
    pub async fn ensure_volume(&self, name: &str, component: &str) -> Result<()> {
        if self.docker.inspect_volume(name).await.is_ok() {
            return Ok(());
        }
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(HashMap::from([(
                    labels::COMPONENT.to_string(),
                    component.to_string(),
                )])),
                ..Default::default()
            })
            .await
            .with_context(|| format!("{}: cannot create volume {name}", self.name))?;
        Ok(())
    }

    /// Every file directly in a folder of a container (running or not),
    /// by name, or `None` when it has no such folder.
    pub async fn read_dir(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, Vec<u8>>>> {
        let Some(tar_bytes) = self.download(container, path).await? else {
            return Ok(None);
        };
        let mut files = std::collections::BTreeMap::new();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        for entry in archive.entries()? {
            let mut entry = entry?;
            let entry_path = entry.path()?.into_owned();
            // `conf.d/x.conf`: the folder itself is the first component.
            let mut parts = entry_path.components().skip(1);
            let (Some(name), None) = (parts.next(), parts.next()) else {
                continue;
            };
            if entry.header().entry_type().is_file() {
                let mut content = Vec::new();
                io::Read::read_to_end(&mut entry, &mut content)?;
                files.insert(name.as_os_str().to_string_lossy().into_owned(), content);
            }
        }
        Ok(Some(files))
    }

    /// Whether the host has an edge proxy (see `crate::edge`), and if so
    /// whether it runs: one listing, for what needs no more (the ports).
    pub async fn edge_running(&self) -> Result<Option<bool>> {
        use crate::edge;
        let found = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(labels::filter(labels::COMPONENT, edge::COMPONENT)),
                ..Default::default()
            }))
            .await
            .with_context(|| format!("{}: cannot list containers", self.name))?;
        Ok(found
            .into_iter()
            .find(|c| container_name(c.names.clone()) == edge::CONTAINER)
            .map(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)))
    }

    /// The host's edge proxy and the routes in it, if it has one.
    pub async fn edge_seen(&self) -> Result<Option<EdgeSeen>> {
        use crate::edge;
        let Some(running) = self.edge_running().await? else {
            return Ok(None);
        };
        let files = self
            .read_dir(edge::CONTAINER, edge::conf::CONF_DIR)
            .await?
            .unwrap_or_default();
        let routes: std::collections::BTreeMap<String, String> = files
            .into_iter()
            .filter_map(|(name, text)| {
                let env = edge::conf::env_of_route_file(&name)?.to_string();
                Some((env, String::from_utf8_lossy(&text).into_owned()))
            })
            .collect();
        let certs = self
            .read_dir(edge::CONTAINER, edge::conf::TLS_DIR)
            .await?
            .unwrap_or_default();
        let renew_before = crate::clock::unix_now() as i64 + edge::ca::RENEW_WITHIN_SECS;
        let expiring = routes
            .iter()
            .filter(|(_, text)| edge::conf::route_is_issued(text))
            .filter(|(env, _)| {
                let cert = edge::conf::EnvFiles::of(env)
                    .ok()
                    .and_then(|f| certs.get(f.cert.rsplit('/').next()?))
                    .and_then(|pem| edge::ca::not_after(&String::from_utf8_lossy(pem)));
                cert.is_none_or(|end| end < renew_before)
            })
            .map(|(env, _)| env.clone())
            .collect();
        Ok(Some(EdgeSeen {
            running,
            routes,
            expiring,
        }))
    }

    /// Create `spec`'s container and write its files in (not started).
    pub async fn create(
        &self,
        spec: &ContainerSpec,
        restart: RestartPolicyNameEnum,
        attach: Attach,
    ) -> Result<String> {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(labels::SPEC_HASH.into(), spec.hash());
        let mounts = spec
            .mounts
            .iter()
            .map(|m| DockerMount {
                target: Some(m.target.clone()),
                source: Some(m.source.clone()),
                typ: Some(if m.bind {
                    MountType::BIND
                } else {
                    MountType::VOLUME
                }),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        let port_keys: Vec<String> = spec.ports.iter().map(|p| format!("{p}/tcp")).collect();
        // An empty host port asks the engine for a free one.
        let bindings: bollard::models::PortMap = port_keys
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    Some(vec![bollard::models::PortBinding {
                        host_ip: None,
                        host_port: Some(String::new()),
                    }]),
                )
            })
            .collect();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            exposed_ports: (!port_keys.is_empty()).then_some(port_keys),
            // No command: the image's own.
            cmd: (!spec.cmd.is_empty()).then(|| [&spec.cmd[..], &spec.join_args[..]].concat()),
            entrypoint: spec.entrypoint.clone(),
            user: spec.user.clone(),
            env: Some(spec.env.clone()),
            labels: Some(labels),
            tty: Some(attach.tty.is_some()),
            open_stdin: Some(attach.stdin),
            attach_stdin: Some(attach.stdin),
            // The container's stdin closes when ours does (input piped in).
            stdin_once: Some(attach.stdin),
            healthcheck: spec.healthcheck.as_ref().map(|h| {
                let ns = |ms: u64| i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
                bollard::models::HealthConfig {
                    test: Some(
                        std::iter::once("CMD".to_string())
                            .chain(h.cmd.clone())
                            .collect(),
                    ),
                    interval: Some(ns(h.interval_ms)),
                    timeout: Some(ns(h.timeout_ms)),
                    retries: Some(i64::from(h.retries)),
                    ..Default::default()
                }
            }),
            host_config: Some(HostConfig {
                network_mode: spec.network_mode.clone(),
                pid_mode: spec.pid_mode.clone(),
                mounts: Some(mounts),
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                restart_policy: Some(RestartPolicy {
                    name: Some(match (&spec.limits.restart, restart) {
                        // A one-off is never restarted, whatever its service's policy.
                        (_, RestartPolicyNameEnum::NO) => RestartPolicyNameEnum::NO,
                        (Some(p), _) => p.parse().unwrap_or(restart),
                        (None, _) => restart,
                    }),
                    maximum_retry_count: None,
                }),
                memory: spec.limits.memory_bytes.and_then(|b| i64::try_from(b).ok()),
                nano_cpus: spec.limits.nano_cpus.and_then(|n| i64::try_from(n).ok()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    platform: String::new(),
                }),
                body,
            )
            .await
            .with_context(|| format!("{}: cannot create container {}", self.name, spec.name))?;
        if !spec.files.is_empty() {
            self.upload_files(&created.id, &spec.files)
                .await
                .with_context(|| format!("{}: cannot write files into {}", self.name, spec.name))?;
        }
        Ok(created.id)
    }

    /// Run `spec` once: create it (never restarted), attach to its output
    /// (and this process's stdin, a terminal, as `attach` says), start it,
    /// hand each piece of output to `sink` as it comes (`true` for stderr),
    /// and remove it when it ends; its exit code. Dropped midway (Ctrl-C),
    /// the container is left: labelled a one-off, the next `up` or `down`
    /// removes it.
    pub async fn run_once_streaming(
        &self,
        spec: &ContainerSpec,
        attach: Attach,
        mut sink: impl FnMut(bool, &[u8]),
    ) -> Result<i64> {
        use bollard::query_parameters::{
            AttachContainerOptions, ResizeContainerTTYOptions, WaitContainerOptions,
        };
        let _ = self.remove_container(&spec.name).await; // a leftover of the same name
        let id = self.create(spec, RestartPolicyNameEnum::NO, attach).await?;
        let ran = async {
            let attached = self
                .docker
                .attach_container(
                    &id,
                    Some(AttachContainerOptions {
                        stdin: attach.stdin,
                        stdout: true,
                        stderr: true,
                        stream: true,
                        ..Default::default()
                    }),
                )
                .await
                .with_context(|| format!("{}: cannot attach to {}", self.name, spec.name))?;
            self.start(&id)
                .await
                .with_context(|| format!("{}: cannot start {}", self.name, spec.name))?;
            if let Some((h, w)) = attach.tty {
                let size = ResizeContainerTTYOptions {
                    h: i32::from(h),
                    w: i32::from(w),
                };
                let _ = self.docker.resize_container_tty(&id, size).await;
            }
            if attach.stdin {
                tokio::spawn(copy_stdin(attached.input));
            }
            pump(attached.output, &mut sink).await?;
            // A non-zero exit is an answer here, not an error.
            let mut waited = self
                .docker
                .wait_container(&id, None::<WaitContainerOptions>);
            let code = match waited.next().await {
                Some(Ok(r)) => r.status_code,
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                Some(Err(e)) => return Err(e.into()),
                None => self
                    .docker
                    .inspect_container(&id, None)
                    .await?
                    .state
                    .and_then(|s| s.exit_code)
                    .unwrap_or(-1),
            };
            anyhow::Ok(code)
        }
        .await;
        let removed = self.remove_container(&id).await;
        let code = ran?;
        removed.with_context(|| format!("{}: cannot remove {}", self.name, spec.name))?;
        Ok(code)
    }

    /// Run `cmd` in a running container (attached to this process's stdin
    /// and a terminal as `attach` says), handing each piece of its output
    /// to `sink` as it comes (`true` for stderr); its exit code.
    pub async fn exec_streaming(
        &self,
        container: &str,
        cmd: &[&str],
        env: &[String],
        attach: Attach,
        mut sink: impl FnMut(bool, &[u8]),
    ) -> Result<i64> {
        use bollard::exec::{
            CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults,
        };
        let exec = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                    env: Some(env.to_vec()),
                    attach_stdin: Some(attach.stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(attach.tty.is_some()),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("{}: cannot exec in {container}", self.name))?;
        let options = StartExecOptions {
            detach: false,
            tty: attach.tty.is_some(),
            output_capacity: None,
        };
        if let StartExecResults::Attached { output, input } =
            self.docker.start_exec(&exec.id, Some(options)).await?
        {
            if let Some((h, w)) = attach.tty {
                let size = ResizeExecOptions {
                    height: h,
                    width: w,
                };
                let _ = self.docker.resize_exec(&exec.id, size).await;
            }
            if attach.stdin {
                tokio::spawn(copy_stdin(input));
            }
            pump(output, &mut sink).await?;
        }
        Ok(self
            .docker
            .inspect_exec(&exec.id)
            .await?
            .exit_code
            .unwrap_or(-1))
    }

    /// Write files into a (created, not necessarily started) container.
    pub async fn upload_files(&self, id: &str, files: &[FileSpec]) -> Result<()> {
        let tar = tar_of(files)?;
        self.docker
            .upload_to_container(
                id,
                Some(UploadToContainerOptions {
                    path: "/".into(),
                    // Keep the owners the archive gives (a secret for a
                    // process that is not root's); the others are root's.
                    copy_uidgid: files
                        .iter()
                        .any(|f| f.owner.is_some())
                        .then(|| "1".to_string()),
                    ..Default::default()
                }),
                bollard::body_full(tar.into()),
            )
            .await?;
        Ok(())
    }

    /// The engine's own ID (`docker info`'s ID): what tells one engine from
    /// another whatever name or address it is reached by.
    pub async fn engine_id(&self) -> Result<String> {
        let info = self
            .docker
            .info()
            .await
            .with_context(|| format!("{}: cannot ask the engine for its ID", self.name))?;
        info.id
            .filter(|id| !id.is_empty())
            .with_context(|| format!("{}: the engine reports no ID", self.name))
    }

    pub async fn has_image(&self, reference: &str) -> Result<bool> {
        Ok(self.image_id(reference).await?.is_some())
    }

    /// The ID a reference points at here, if the image is present.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(i.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("{}: cannot inspect image {reference}", self.name))
            }
        }
    }

    /// The chain IDs of every layer of every image this engine has (see
    /// `layers::chain_ids`): what an image archive for it can leave out.
    pub async fn layer_chains(&self) -> Result<std::collections::HashSet<String>> {
        let images = self
            .docker
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .with_context(|| format!("{}: cannot list images", self.name))?;
        let mut chains = std::collections::HashSet::new();
        for image in images {
            let Ok(inspect) = self.docker.inspect_image(&image.id).await else {
                continue; // removed meanwhile
            };
            let diffs = inspect.root_fs.and_then(|r| r.layers).unwrap_or_default();
            chains.extend(crate::engine::layers::chain_ids(&diffs));
        }
        Ok(chains)
    }
}

impl Engine for DockerHost {
    fn name(&self) -> &str {
        &self.name
    }

    /// This environment's containers (running or not) and volumes, and the
    /// IDs `images` point at here.
    async fn observe(&self, env: &str, images: &[String]) -> Result<Observed> {
        let filter = labels::owned_by(env);
        // Three independent questions, asked at once: every run asks them
        // of every host, and each is a round trip (over SSH, say).
        let (containers, volumes, image_ids) = tokio::join!(
            self.docker.list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filter.clone()),
                ..Default::default()
            })),
            self.docker.list_volumes(Some(ListVolumesOptions {
                filters: Some(filter),
            })),
            self.image_ids(images)
        );
        let containers =
            containers.with_context(|| format!("{}: cannot list containers", self.name))?;
        let volumes = volumes.with_context(|| format!("{}: cannot list volumes", self.name))?;
        let mut observed = Observed {
            containers: containers
                .into_iter()
                .map(|c| {
                    let labels = c.labels.unwrap_or_default();
                    ObservedContainer {
                        id: c.id.unwrap_or_default(),
                        name: container_name(c.names),
                        component: labels.get(labels::COMPONENT).cloned().unwrap_or_default(),
                        spec_hash: labels.get(labels::SPEC_HASH).cloned(),
                        consul_server: labels.get(labels::CONSUL_ROLE).map(|r| r == "server"),
                        made_for: labels.get(labels::HOST).cloned(),
                        running: c.state.is_some_and(|s| {
                            s == bollard::models::ContainerSummaryStateEnum::RUNNING
                        }),
                        never_started: c.state.is_some_and(|s| {
                            s == bollard::models::ContainerSummaryStateEnum::CREATED
                        }),
                        image_id: c.image_id.unwrap_or_default(),
                    }
                })
                .collect(),
            volumes: volumes
                .volumes
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.name)
                .collect(),
            image_ids: image_ids?,
        };
        observed.containers.sort_by(|a, b| a.name.cmp(&b.name));
        observed.volumes.sort();
        Ok(observed)
    }

    async fn create_volume(&self, env: &str, v: &VolumeSpec) -> Result<()> {
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(v.name.clone()),
                labels: Some(HashMap::from([
                    (labels::ENV.to_string(), env.to_string()),
                    (labels::COMPONENT.to_string(), v.component.clone()),
                ])),
                ..Default::default()
            })
            .await
            .with_context(|| format!("{}: cannot create volume {}", self.name, v.name))?;
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        match self
            .docker
            .remove_volume(name, Some(RemoveVolumeOptions { force: false }))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("{}: cannot remove volume {name}", self.name)),
        }
    }

    /// Create the container, write its files, start it. The spec hash goes
    /// into a label so the next `up` can tell whether it is still current.
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String> {
        let id = self
            .create(
                spec,
                RestartPolicyNameEnum::UNLESS_STOPPED,
                Attach::default(),
            )
            .await?;
        self.start(&id)
            .await
            .with_context(|| format!("{}: cannot start {}", self.name, spec.name))?;
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.docker.start_container(id, None).await?;
        Ok(())
    }

    async fn no_restart(&self, id: &str) -> Result<()> {
        let no = bollard::models::ContainerUpdateBody {
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        self.docker
            .update_container(id, no)
            .await
            .with_context(|| format!("{}: cannot change the restart policy of {id}", self.name))
    }

    /// Remove a container and its anonymous volumes; gone already is fine.
    async fn remove_container(&self, id: &str) -> Result<()> {
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("{}: cannot remove container {id}", self.name))
            }
        }
    }

    /// Run a command in a running container and collect its output.
    async fn exec(&self, container: &str, cmd: &[&str], env: &[String]) -> Result<ExecOutput> {
        let mut stdout = String::new();
        let mut stderr = String::new();
        let code = self
            .exec_streaming(
                container,
                cmd,
                env,
                Attach::default(),
                |is_stderr, bytes| {
                    let text = String::from_utf8_lossy(bytes);
                    if is_stderr {
                        stderr.push_str(&text)
                    } else {
                        stdout.push_str(&text)
                    }
                },
            )
            .await?;
        Ok(ExecOutput {
            code,
            stdout,
            stderr,
        })
    }

    /// IDs of the given references on this host (absent ones left out).
    async fn image_ids(
        &self,
        references: &[String],
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let found =
            futures_util::future::try_join_all(references.iter().map(|r| self.image_id(r))).await?;
        Ok(references
            .iter()
            .zip(found)
            .filter_map(|(r, id)| Some((r.clone(), id?)))
            .collect())
    }

    async fn receive_images(
        &self,
        source: &Self,
        references: &[String],
        progress: impl Fn(u64, u64) + Send + Sync + Clone + 'static,
    ) -> Result<Delivered> {
        transfer_images(source, self, references, progress).await
    }

    async fn run_once(&self, spec: &ContainerSpec) -> Result<(i64, String)> {
        // The end of the output is what explains a failure.
        const KEEP: usize = 4096;
        let mut tail: Vec<u8> = Vec::new();
        let code = self
            .run_once_streaming(spec, Attach::default(), |_, bytes| {
                tail.extend_from_slice(bytes);
                if tail.len() > 2 * KEEP {
                    tail.drain(..tail.len() - KEEP);
                }
            })
            .await?;
        let start = tail.len().saturating_sub(KEEP);
        Ok((code, String::from_utf8_lossy(&tail[start..]).into_owned()))
    }

    async fn pull(&self, reference: &str) -> Result<()> {
        let mut pull = self.docker.create_image(
            Some(bollard::query_parameters::CreateImageOptions {
                from_image: Some(reference.to_string()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(r) = pull.next().await {
            r.with_context(|| {
                format!(
                    "image {reference} is neither on {} nor on the local engine, and pulling it failed",
                    self.name
                )
            })?;
        }
        Ok(())
    }
}

/// Copy images from one engine into another (`docker save | docker load`),
/// all in one archive so shared layers travel once, and without the layers
/// the receiving engine already has (see `layers`). If the receiving engine
/// refuses that archive, the whole one is sent. `progress` is called with
/// the bytes sent so far and the bytes to send.
pub async fn transfer_images(
    from: &DockerHost,
    to: &DockerHost,
    references: &[String],
    progress: impl Fn(u64, u64) + Send + Sync + Clone + 'static,
) -> Result<Delivered> {
    use tokio::io::AsyncWriteExt;
    let refs: Vec<&str> = references.iter().map(String::as_str).collect();
    let what = || {
        format!(
            "{} from {} into {}",
            references.join(", "),
            from.name,
            to.name
        )
    };
    // The host's layers are asked while the archive is written here.
    let present = to.layer_chains();
    let saved = async {
        let file = crate::engine::scratch::archive_file()?;
        let mut out = tokio::fs::File::from_std(file.reopen()?);
        let mut stream = from.docker.export_images(&refs);
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?).await?;
        }
        out.flush().await?;
        Ok::<_, anyhow::Error>(file)
    };
    let (present, full) = tokio::join!(present, saved);
    let full = full.with_context(|| format!("cannot save {}", what()))?;
    let full_size = full.as_file().metadata()?.len();
    let slim = match present {
        Ok(present) => {
            let path = full.path().to_path_buf();
            tokio::task::spawn_blocking(move || -> Result<Option<tempfile::NamedTempFile>> {
                let leave_out =
                    crate::engine::layers::Layers::of_archive(&path)?.not_needed(&present);
                if leave_out.is_empty() {
                    return Ok(None);
                }
                let slim = crate::engine::scratch::archive_file()?;
                crate::engine::layers::write_without(&path, &leave_out, slim.reopen()?)?;
                Ok(Some(slim))
            })
            .await?
            .unwrap_or_else(|e| {
                // An archive this cannot read still goes, whole.
                eprintln!("{}: sending whole images: {e:#}", to.name);
                None
            })
        }
        Err(e) => {
            eprintln!("{}: sending whole images: {e:#}", to.name);
            None
        }
    };
    if let Some(slim) = slim {
        match load(to, slim.path(), progress.clone()).await {
            Ok(sent) => {
                return Ok(Delivered {
                    sent,
                    full: full_size,
                })
            }
            Err(e) => eprintln!(
                "{}: loading only the missing layers failed ({e:#}); sending whole images",
                to.name
            ),
        }
    }
    let sent = load(to, full.path(), progress)
        .await
        .with_context(|| format!("cannot load {}", what()))?;
    Ok(Delivered {
        sent,
        full: full_size,
    })
}

/// `docker load` of an archive file into `to`; the bytes sent.
async fn load(
    to: &DockerHost,
    archive: &std::path::Path,
    progress: impl Fn(u64, u64) + Send + Sync + 'static,
) -> Result<u64> {
    let file = tokio::fs::File::open(archive).await?;
    let total = file.metadata().await?.len();
    let mut sent = 0u64;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect_ok(
        move |chunk: &bytes::Bytes| {
            sent += chunk.len() as u64;
            progress(sent, total);
        },
    );
    let mut results = to.docker.import_image_stream(
        ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        stream,
        None,
    );
    while let Some(r) = results.next().await {
        let info = r?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            anyhow::bail!("{}: {err}", to.name);
        }
    }
    Ok(total)
}

/// A tar archive holding `files` (with their parent folders), for the
/// archive API.
fn tar_of(files: &[FileSpec]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs_done = std::collections::BTreeSet::new();
    for f in files {
        let rel = f.path.trim_start_matches('/');
        let mut parent = std::path::Path::new(rel).parent();
        let mut dirs = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.push(p.to_path_buf());
            parent = p.parent();
        }
        for d in dirs.into_iter().rev() {
            if dirs_done.insert(d.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                builder.append_data(&mut h, &d, io::empty())?;
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(f.mode);
        if let Some((uid, gid)) = f.owner {
            h.set_uid(uid);
            h.set_gid(gid);
        }
        h.set_size(f.content.len() as u64);
        builder.append_data(&mut h, rel, f.content.as_slice())?;
    }
    Ok(builder.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_holds_parents_and_modes() {
        let files = vec![
            FileSpec::new("/consul/config/encrypt.json", 0o600, b"{}".to_vec()),
            FileSpec::new("/consul/config/other.json", 0o644, b"[]".to_vec()),
        ];
        let bytes = tar_of(&files).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("consul".to_string(), 0o755),
                ("consul/config".to_string(), 0o755),
                ("consul/config/encrypt.json".to_string(), 0o600),
                ("consul/config/other.json".to_string(), 0o644),
            ]
        );
    }
}
