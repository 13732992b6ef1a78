//! `stagectl agent template`: keeps nginx's configuration equal to the
//! healthy instances in Consul.
//!
//! Blocking queries follow the service list and each service's healthy
//! instances. Changes are coalesced (a short quiet period, a maximum wait),
//! rendered, and only when the text differs from what nginx runs: written
//! atomically into the folder shared with the nginx container, checked with
//! `nginx -t` there, and loaded with SIGHUP. A config that fails the check
//! is taken back; nginx keeps serving the last good one. What happened is
//! written to `stagectl-status.json` beside the config for `stagectl status`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bollard::query_parameters::KillContainerOptions;
use bollard::Docker;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::coalesce::Coalescer;
use super::log;
use super::render::{render, RenderContext, BUILTIN_TEMPLATE};
use crate::consul_http::{next_index, ConsulClient, Instance, ReadMode};
use crate::docker::DockerHost;

pub const CONFIG_FILE: &str = "stagectl.conf";
pub const STATUS_FILE: &str = "stagectl-status.json";

pub struct TemplateOptions {
    pub env: String,
    pub consul: String,
    pub nginx_container: String,
    pub conf_dir: PathBuf,
    pub template: Option<PathBuf>,
    pub domain: String,
    pub port: u16,
    pub quiet: Duration,
    pub max_wait: Duration,
}

/// What the template agent last did, for `stagectl status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LbStatus {
    pub env: String,
    /// Unix seconds of the last reload attempt.
    pub last_reload_at: Option<u64>,
    pub last_reload_ok: Option<bool>,
    pub last_error: Option<String>,
    /// Short hash of the config nginx runs.
    pub config: Option<String>,
    pub reloads: u64,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Route {
    pub service: String,
    pub server_name: String,
    pub path: String,
    pub upstreams: Vec<String>,
}

/// What a watcher saw, with the Consul index it saw it at: two watchers
/// (leader and stale reads) follow the same thing, and the newer wins.
enum Update {
    Services(At, Vec<String>),
    Instances(String, At, Vec<Instance>),
}

/// The Consul index an answer came at, and which watcher brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct At {
    index: u64,
    mode: ReadMode,
}

/// Whether an answer should replace the one applied. The newer index wins;
/// a lagging replica's older answer is ignored. A watcher only reports a
/// lower index than its own last one when Consul started over (data lost),
/// so a lower index from the watcher that brought the applied answer is
/// taken.
fn is_newer(at: At, applied: Option<At>) -> bool {
    match applied {
        None => true,
        Some(a) => at.index >= a.index || at.mode == a.mode,
    }
}

/// Blocking queries wait at most this long before answering unchanged.
const WAIT: Duration = Duration::from_secs(30);

pub async fn run(opts: TemplateOptions) -> Result<()> {
    let template = match &opts.template {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read template {}", p.display()))?,
        None => BUILTIN_TEMPLATE.to_string(),
    };
    let consul = ConsulClient::new(&opts.consul);
    let docker =
        Docker::connect_with_unix("/var/run/docker.sock", 60, bollard::API_DEFAULT_VERSION)?;
    let nginx = DockerHost::new("nginx", docker);
    log(&format!(
        "rendering nginx config for {} from Consul at {} into {}",
        opts.env,
        opts.consul,
        opts.conf_dir.display()
    ));

    let (tx, mut rx) = mpsc::channel::<Update>(256);
    for mode in [ReadMode::Leader, ReadMode::Stale] {
        tokio::spawn(watch_services(consul.clone(), tx.clone(), mode));
    }
    let mut watchers: HashMap<String, Vec<tokio::task::JoinHandle<()>>> = HashMap::new();
    let mut applied: HashMap<String, At> = HashMap::new();
    let mut services_applied: Option<At> = None;
    let mut services: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    let mut status = LbStatus {
        env: opts.env.clone(),
        ..Default::default()
    };
    // What nginx runs: the file already there (an agent restart reloads
    // nothing when nothing changed).
    let mut current = std::fs::read_to_string(opts.conf_dir.join(CONFIG_FILE)).ok();
    let mut coalescer = Coalescer::new(opts.quiet, opts.max_wait);
    // Render once at start: even with no service, nginx gets a valid config.
    coalescer.change(tokio::time::Instant::now());

    loop {
        let deadline = coalescer.deadline();
        tokio::select! {
            update = rx.recv() => {
                match update.context("the watchers stopped")? {
                    Update::Services(at, names) => {
                        if !is_newer(at, services_applied) { continue; }
                        services_applied = Some(at);
                        watchers.retain(|name, handles| {
                            let keep = names.contains(name);
                            if !keep { handles.iter().for_each(|h| h.abort()); }
                            keep
                        });
                        services.retain(|name, _| names.contains(name));
                        applied.retain(|name, _| names.contains(name));
                        for name in names {
                            watchers.entry(name.clone()).or_insert_with(|| {
                                [ReadMode::Leader, ReadMode::Stale]
                                    .into_iter()
                                    .map(|mode| tokio::spawn(watch_instances(consul.clone(), name.clone(), tx.clone(), mode)))
                                    .collect()
                            });
                        }
                    }
                    Update::Instances(name, at, instances) => {
                        if !watchers.contains_key(&name) { continue; }
                        let last = applied.get(&name).copied();
                        if !is_newer(at, last) || services.get(&name) == Some(&instances) {
                            continue;
                        }
                        applied.insert(name.clone(), at);
                        services.insert(name, instances);
                    }
                }
                coalescer.change(tokio::time::Instant::now());
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                coalescer.reset();
                let retry = apply(&opts, &template, &services, &nginx, &mut current, &mut status).await;
                if retry {
                    // nginx was not there to check or reload (restarting):
                    // try again shortly rather than wait for the next change.
                    coalescer.change(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Follow one blocking query: send what it returns each time its index
/// moves; on errors, log, wait a second and start over from index 0.
async fn follow<T, F, Fut>(
    what: String,
    tx: mpsc::Sender<Update>,
    mut query: F,
    wrap: impl Fn(u64, T) -> Update,
) where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, T)>>,
{
    let mut index = 0;
    loop {
        match query(index).await {
            Ok((idx, value)) => {
                let changed = idx != index || index == 0;
                if changed && tx.send(wrap(idx, value)).await.is_err() {
                    return;
                }
                index = next_index(index, idx);
            }
            Err(e) => {
                log(&format!("watching {what}: {e:#}"));
                index = 0;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn watch_services(consul: ConsulClient, tx: mpsc::Sender<Update>, mode: ReadMode) {
    let query = |index| {
        let consul = consul.clone();
        async move { consul.catalog_services(index, WAIT, mode).await }
    };
    follow(
        format!("services ({mode:?} reads)"),
        tx,
        query,
        |idx, names: Vec<String>| {
            Update::Services(
                At { index: idx, mode },
                names.into_iter().filter(|n| n != "consul").collect(),
            )
        },
    )
    .await
}

async fn watch_instances(
    consul: ConsulClient,
    service: String,
    tx: mpsc::Sender<Update>,
    mode: ReadMode,
) {
    let name = service.clone();
    let query = |index| {
        let (consul, service) = (consul.clone(), service.clone());
        async move { consul.healthy_instances(&service, index, WAIT, mode).await }
    };
    follow(
        format!("{name} ({mode:?} reads)"),
        tx,
        query,
        move |idx, instances| Update::Instances(name.clone(), At { index: idx, mode }, instances),
    )
    .await
}

/// Render; when the text changed, install it (checked) and reload nginx.
/// Returns true when it failed for a reason that may pass (nginx away).
async fn apply(
    opts: &TemplateOptions,
    template: &str,
    services: &BTreeMap<String, Vec<Instance>>,
    nginx: &DockerHost,
    current: &mut Option<String>,
    status: &mut LbStatus,
) -> bool {
    let ctx = RenderContext::new(&opts.env, &opts.domain, opts.port, services);
    status.routes = ctx
        .services
        .iter()
        .map(|s| Route {
            service: s.name.clone(),
            server_name: format!("{}.{}.{}", s.name, opts.env, opts.domain),
            path: format!("/{}/", s.name),
            upstreams: s
                .instances
                .iter()
                .map(|i| format!("{}:{}", i.address, i.port))
                .collect(),
        })
        .collect();
    let result = match render(template, &ctx).map(|t| with_marker(&t)) {
        Err(e) => Err(e),
        Ok(text) if current.as_deref() == Some(text.as_str()) => {
            write_status(&opts.conf_dir, status);
            return false;
        }
        Ok(text) => install(opts, nginx, &text, current.as_deref())
            .await
            .map(|()| text),
    };
    status.last_reload_at = Some(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    let transient = result
        .as_ref()
        .err()
        .is_some_and(|e| e.downcast_ref::<NginxAway>().is_some());
    match result {
        Ok(text) => {
            status.reloads += 1;
            status.last_reload_ok = Some(true);
            status.last_error = None;
            status.config = Some(marker_of(&text));
            let n: usize = services.values().map(Vec::len).sum();
            log(&format!(
                "nginx reloaded: {} services, {n} healthy instances (config {})",
                services.len(),
                marker_of(&text)
            ));
            *current = Some(text);
        }
        Err(e) => {
            status.last_reload_ok = Some(false);
            status.last_error = Some(format!("{e:#}"));
            log(&format!(
                "config not applied, nginx keeps the last good one: {e:#}"
            ));
        }
    }
    write_status(&opts.conf_dir, status);
    transient
}

/// nginx could not be asked (its container is not running): not the
/// config's fault.
#[derive(Debug)]
struct NginxAway(String);

impl std::fmt::Display for NginxAway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NginxAway {}

async fn install(
    opts: &TemplateOptions,
    nginx: &DockerHost,
    text: &str,
    previous: Option<&str>,
) -> Result<()> {
    let path = opts.conf_dir.join(CONFIG_FILE);
    let t0 = std::time::Instant::now();
    write_atomically(&path, text)?;
    let check = nginx
        .exec(&opts.nginx_container, &["nginx", "-t", "-q"], &[])
        .await;
    let failure = match check {
        Ok(out) if out.code == 0 => None,
        Ok(out) => Some(anyhow::anyhow!("nginx -t: {}", out.stderr.trim())),
        Err(e) => Some(anyhow::Error::new(NginxAway(format!(
            "cannot run nginx -t: {e:#}"
        )))),
    };
    if let Some(why) = failure {
        // Put back what nginx runs, so a restart of nginx still works.
        match previous {
            Some(p) => write_atomically(&path, p)?,
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        return Err(why);
    }
    let checked = t0.elapsed();
    nginx
        .docker
        .kill_container(
            &opts.nginx_container,
            Some(KillContainerOptions {
                signal: "HUP".into(),
            }),
        )
        .await
        .map_err(|e| {
            anyhow::Error::new(NginxAway(format!("cannot signal nginx to reload: {e}")))
        })?;
    // SIGHUP only asks: nginx starts new workers a few milliseconds later,
    // and until then the old ones answer. Wait until an answer carries the
    // new config's marker, so "reloaded" means "in effect".
    let signalled = t0.elapsed();
    let marker = marker_of(text);
    if !wait_for_marker(opts.port, &marker, Duration::from_secs(2)).await {
        log(&format!(
            "nginx did not show config {marker} within 2 s (a template without the marker header?)"
        ));
    }
    log(&format!(
        "timing: nginx -t {} ms, HUP {} ms, in effect after {} ms",
        checked.as_millis(),
        (signalled - checked).as_millis(),
        t0.elapsed().as_millis()
    ));
    Ok(())
}

/// The header every response carries once nginx runs a given config.
const MARKER_HEADER: &str = "x-stagectl-config";

/// The rendered text plus a directive naming its hash: appended at the
/// `http` level (conf.d is included there), inherited by every server that
/// sets no `add_header` of its own.
fn with_marker(text: &str) -> String {
    format!(
        "{text}\nadd_header X-Stagectl-Config \"{}\" always;\n",
        short_hash(text)
    )
}

fn marker_of(text_with_marker: &str) -> String {
    text_with_marker
        .rsplit("X-Stagectl-Config \"")
        .next()
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string()
}

/// Ask nginx on loopback until a response carries `marker`.
async fn wait_for_marker(port: u16, marker: &str, limit: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + limit;
    let want = format!("{MARKER_HEADER}: {marker}");
    while tokio::time::Instant::now() < deadline {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            s.write_all(b"HEAD /_stagectl/health HTTP/1.0\r\nHost: stagectl\r\n\r\n")
                .await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).to_ascii_lowercase())
        };
        if let Ok(Ok(head)) = tokio::time::timeout(Duration::from_millis(500), attempt).await {
            if head.contains(&want) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn write_status(dir: &Path, status: &LbStatus) {
    if let Ok(json) = serde_json::to_string_pretty(status) {
        let _ = write_atomically(&dir.join(STATUS_FILE), &json);
    }
}

fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_indexes_win_and_a_restart_starts_over() {
        let leader = |index| At {
            index,
            mode: ReadMode::Leader,
        };
        let stale = |index| At {
            index,
            mode: ReadMode::Stale,
        };
        assert!(is_newer(stale(3), None));
        assert!(is_newer(stale(11), Some(leader(10))));
        assert!(is_newer(leader(10), Some(leader(10))));
        // A lagging replica's answer, even far older, never replaces a newer
        // one: that is how a fresh cluster lost a whole service list.
        assert!(!is_newer(stale(9), Some(leader(10))));
        assert!(!is_newer(stale(3), Some(leader(1000))));
        // The same watcher going backwards: Consul started over.
        assert!(is_newer(leader(3), Some(leader(1000))));
    }

    #[test]
    fn the_marker_names_the_config_hash_and_is_stable() {
        let a = with_marker("server {}\n");
        assert_eq!(a, with_marker("server {}\n"));
        assert_ne!(a, with_marker("server { }\n"));
        assert_eq!(marker_of(&a), short_hash("server {}\n"));
        assert!(a.ends_with(&format!(
            "add_header X-Stagectl-Config \"{}\" always;\n",
            marker_of(&a)
        )));
    }
}
