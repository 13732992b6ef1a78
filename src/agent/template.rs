//! `stagectl agent template`: keeps nginx's configuration equal to the
//! healthy instances in Consul.
//!
//! One blocking query follows every service's healthy instances (in two
//! read modes, see `consul_http`). Changes are coalesced (a short quiet
//! period, a maximum wait), turned into routes (every value checked or
//! encoded, see `routes`), rendered, and only when the text differs from
//! what nginx runs: written atomically into the folder shared with the nginx
//! container, checked with `nginx -t` there, and loaded with SIGHUP.
//!
//! One service never holds up the others: when nginx rejects the config,
//! the services it cannot load are found by halving (see [`isolate`]) and
//! the rest is applied without them. What happened, and what was left out,
//! is written to `stagectl-status.json` beside the config for `stagectl
//! status`.

use crate::engine::Engine;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use bollard::query_parameters::KillContainerOptions;
use bollard::Docker;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::coalesce::Coalescer;
use super::log;
use super::render::{render, RenderContext, BUILTIN_TEMPLATE, STREAM_TEMPLATE};
use super::routes::{Exclusion, RouteTable, ServiceRoute};
use crate::cluster::http::{next_index, ConsulClient, Instance, ReadMode};
use crate::engine::docker::DockerHost;

pub const CONFIG_FILE: &str = "stagectl.conf";
/// The TCP listeners: not `*.conf`, which Debian's nginx includes in the
/// `http` context; stagectl's image includes `conf.d/*.stream` in `stream`.
pub const STREAM_FILE: &str = "stagectl.stream";
pub const STATUS_FILE: &str = "stagectl-status.json";

pub struct TemplateOptions {
    pub env: String,
    pub consul: String,
    /// The file of the ACL token it sends (see `cluster::acl::TOKEN_PATH`).
    pub token_file: Option<std::path::PathBuf>,
    pub nginx_container: String,
    pub conf_dir: PathBuf,
    pub template: Option<PathBuf>,
    pub domain: String,
    pub port: u16,
    /// The address clients reach the LB at: a new config counts as in
    /// effect only once nginx serves it there too, not only on loopback.
    pub advertise: Option<IpAddr>,
    pub quiet: Duration,
    pub max_wait: Duration,
    /// The services with a TCP listener, and its port (from the topology).
    pub tcp: BTreeMap<String, u16>,
}

/// What the template agent last did, for `stagectl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbStatus {
    pub env: String,
    /// Unix seconds of the last reload attempt.
    pub last_reload_at: Option<u64>,
    pub last_reload_ok: Option<bool>,
    pub last_error: Option<String>,
    /// Short hash of the config nginx runs.
    pub config: Option<String>,
    pub reloads: u64,
    /// [`template_id`] of the template this agent renders: tells `up`
    /// whether the status comes from the agent it just started or from the
    /// one it replaced (the file stays in the shared volume).
    #[serde(default)]
    pub template: Option<String>,
    pub routes: Vec<Route>,
    /// Services and instances left out of the config, and why.
    #[serde(default)]
    pub excluded: Vec<Exclusion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The service's name in Consul (encoded when it held unsafe bytes).
    pub service: String,
    pub server_name: String,
    pub path: String,
    /// For a TCP service, the load balancer's port for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    pub upstreams: Vec<String>,
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

type Services = BTreeMap<String, Vec<Instance>>;

pub async fn run(opts: TemplateOptions) -> Result<()> {
    let template = match &opts.template {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read template {}", p.display()))?,
        None => BUILTIN_TEMPLATE.to_string(),
    };
    let consul = ConsulClient::new(&opts.consul).with_token_file_opt(opts.token_file.as_deref())?;
    let docker =
        Docker::connect_with_unix("/var/run/docker.sock", 60, bollard::API_DEFAULT_VERSION)?;
    log(&format!(
        "rendering nginx config for {} from Consul at {} into {}",
        opts.env,
        opts.consul,
        opts.conf_dir.display()
    ));

    let (tx, mut rx) = mpsc::channel::<(At, Services)>(16);
    for mode in [ReadMode::Leader, ReadMode::Stale] {
        tokio::spawn(watch(consul.clone(), tx.clone(), mode));
    }
    let mut applied: Option<At> = None;
    let mut services = Services::new();
    let mut lb = Lb {
        status: LbStatus {
            env: opts.env.clone(),
            template: Some(template_id(&template)),
            ..Default::default()
        },
        // What nginx runs: the file already there (an agent restart reloads
        // nothing when nothing changed).
        current: Config::read(&opts.conf_dir),
        nginx: DockerHost::new("nginx", docker),
        rejected: HashMap::new(),
        checked_shape: None,
        template,
        opts,
    };
    // The status file outlives agents (it is in the config volume, which
    // `down --keep-data` keeps): what a previous agent routed must not pass
    // for what this one routes, so it starts empty.
    write_status(&lb.opts.conf_dir, &lb.status);
    let mut coalescer = Coalescer::new(lb.opts.quiet, lb.opts.max_wait);
    // A first nginx gets a valid config at once, even with no service; an
    // agent replaced or restarted keeps the running one until Consul has
    // answered (an empty config now would make every route 404 meanwhile).
    if lb.current.is_none() {
        coalescer.change(tokio::time::Instant::now());
    }

    loop {
        let deadline = coalescer.deadline();
        tokio::select! {
            update = rx.recv() => {
                let (at, answer) = update.context("the watchers stopped")?;
                if !is_newer(at, applied) { continue; }
                // The first answer always renders (see above).
                let first = applied.replace(at).is_none();
                if answer == services && !first { continue; }
                services = answer;
                coalescer.change(tokio::time::Instant::now());
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                coalescer.reset();
                if lb.apply(&services).await {
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

/// Follow every service's healthy instances: send what the blocking query
/// returns each time its index moves; on errors, log, wait a second and
/// start over from index 0.
async fn watch(consul: ConsulClient, tx: mpsc::Sender<(At, Services)>, mode: ReadMode) {
    let mut index = 0;
    loop {
        match consul.healthy_services(index, WAIT, mode).await {
            Ok((idx, services)) => {
                let changed = idx != index || index == 0;
                if changed && tx.send((At { index: idx, mode }, services)).await.is_err() {
                    return;
                }
                index = next_index(index, idx);
            }
            Err(e) => {
                log(&format!("watching services ({mode:?} reads): {e:#}"));
                index = 0;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The template agent's side of nginx: what it runs, and what it refused.
struct Lb {
    opts: TemplateOptions,
    template: String,
    nginx: DockerHost,
    /// The config nginx runs.
    current: Option<Config>,
    status: LbStatus,
    /// Services nginx refused, as they were then, and why: left out again
    /// without a new check until their routes change.
    rejected: HashMap<String, (ServiceRoute, String)>,
    /// The [`shape`] of the last config `nginx -t` passed.
    checked_shape: Option<String>,
}

/// nginx's processes, seen from the template agent when it runs in nginx's
/// process namespace (and none otherwise).
mod nginx_processes {
    /// The command line of a process, NULs as spaces.
    fn cmdline(pid: i32) -> String {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    }

    /// nginx's worker processes now.
    pub fn workers() -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| cmdline(*pid).starts_with("nginx: worker process"))
            .collect()
    }

    /// Send `signal` to nginx's master, if it is this namespace's process
    /// 1; false when it is not there.
    pub fn signal_master(signal: i32) -> bool {
        // SAFETY: kill(2) with a pid and a signal number; no memory involved.
        cmdline(1).starts_with("nginx: master") && unsafe { libc::kill(1, signal) } == 0
    }

    /// Ask these (old) workers to stop accepting and exit once their
    /// requests are done: SIGQUIT, as nginx's master itself does.
    pub fn quit(pids: &[i32]) {
        for pid in pids {
            // Still an nginx worker: the pid was not reused meanwhile.
            if cmdline(*pid).starts_with("nginx: worker process") {
                // SAFETY: as above.
                unsafe { libc::kill(*pid, libc::SIGQUIT) };
            }
        }
    }
}

/// What `nginx -t` could object to in a config of the built-in template:
/// the services' names, paths, upstreams and listeners, and which have no
/// instance. Which instances a service has is not part of it: they are
/// `server address:port;` lines from checked addresses (see
/// `routes::Upstream`), which nginx takes whatever they are. So when only
/// instances come and go (the common change: a replacement, a scale, a
/// failing check), the config is the same shape as one nginx passed, and
/// it is loaded without the `nginx -t` (a `docker exec`, 50-80 ms here)
/// that would otherwise be most of a route change's time. A user template
/// can do anything with an instance's fields: it is always checked.
fn shape(user_template: bool, services: &[&ServiceRoute]) -> Option<String> {
    if user_template {
        return None;
    }
    let mut out = String::new();
    for s in services {
        out.push_str(&format!(
            "{} {} {} {} {:?} {}\n",
            s.name,
            s.server_name,
            s.path,
            s.upstream,
            s.tcp_port,
            s.instances.is_empty()
        ));
    }
    Some(out)
}

impl Lb {
    /// Render; when the text changed, install it (checked, isolating what
    /// nginx refuses) and reload nginx. Returns true when it failed for a
    /// reason that may pass (nginx away).
    async fn apply(&mut self, services: &Services) -> bool {
        let table =
            RouteTable::build(&self.opts.env, &self.opts.domain, services).with_tcp(&self.opts.tcp);
        self.rejected.retain(|name, (route, _)| {
            table.services.iter().any(|s| &s.name == name && s == route)
        });
        // Services nginx refused as they are now are not checked again.
        let candidates: Vec<&ServiceRoute> = table
            .services
            .iter()
            .filter(|s| !self.rejected.contains_key(&s.name))
            .collect();
        let outcome = self.install_isolating(candidates).await;
        self.status.last_reload_at = Some(crate::clock::unix_now());
        let mut transient = false;
        let mut excluded = table.excluded.clone();
        match outcome {
            Ok(Installed { routed, reloaded }) => {
                for (route, why) in routed.refused {
                    self.rejected
                        .insert(route.name.clone(), (route.clone(), why));
                }
                // Refused now or before (and unchanged since): left out.
                for (route, why) in self.rejected.values() {
                    excluded.push(Exclusion {
                        service: route.service.clone(),
                        instance: None,
                        reason: format!("nginx refuses its part of the config: {why}"),
                    });
                }
                self.status.routes = routed.accepted.iter().map(|s| route(s)).collect();
                self.status.last_reload_ok = Some(true);
                self.status.last_error = None;
                if let Some(text) = reloaded {
                    self.status.reloads += 1;
                    self.status.config = Some(text.marker());
                    let n: usize = routed.accepted.iter().map(|s| s.instances.len()).sum();
                    log(&format!(
                        "nginx reloaded: {} services, {n} healthy instances, {} left out (config {})",
                        routed.accepted.len(),
                        excluded.len(),
                        text.marker()
                    ));
                }
            }
            Err(e) => {
                transient = e.downcast_ref::<NginxAway>().is_some();
                self.status.last_reload_ok = Some(false);
                self.status.last_error = Some(format!("{e:#}"));
                log(&format!(
                    "config not applied, nginx keeps the last good one: {e:#}"
                ));
            }
        }
        excluded.sort();
        for e in excluded
            .iter()
            .filter(|e| !self.status.excluded.contains(e))
        {
            log(&format!("left out of the config: {e}"));
        }
        self.status.excluded = excluded;
        write_status(&self.opts.conf_dir, &self.status);
        transient
    }

    /// Install the config for `candidates`, or for as many of them as
    /// nginx accepts.
    async fn install_isolating<'a>(
        &mut self,
        candidates: Vec<&'a ServiceRoute>,
    ) -> Result<Installed<'a>> {
        let text = self.render(&candidates)?;
        if self.current.as_ref() == Some(&text) {
            return Ok(Installed {
                routed: Isolated {
                    accepted: candidates,
                    refused: vec![],
                },
                reloaded: None,
            });
        }
        let t0 = std::time::Instant::now();
        let shape = shape(self.opts.template.is_some(), &candidates);
        if shape.is_some() && shape == self.checked_shape {
            text.write(&self.opts.conf_dir)?;
            return self.install_checked(candidates, vec![], text, t0).await;
        }
        self.checked_shape = None;
        let routed = match self.check(&text).await? {
            None => {
                self.checked_shape = shape;
                Isolated {
                    accepted: candidates,
                    refused: vec![],
                }
            }
            Some(why) => {
                // Is it the template itself? Then no subset helps.
                let empty = match self.render(&[]) {
                    Ok(text) => text,
                    Err(e) => {
                        self.restore()?;
                        return Err(e);
                    }
                };
                if let Some(why) = self.check(&empty).await? {
                    self.restore()?;
                    anyhow::bail!("nginx -t refuses the config even with no service: {why}");
                }
                log(&format!("nginx -t: {why}; finding the services it refuses"));
                let found = isolate(candidates, |subset| {
                    let text = self.render(&subset);
                    let lb = &*self;
                    async move { lb.check(&text?).await }
                })
                .await;
                let found = match found {
                    Ok(found) => found,
                    Err(e) => {
                        self.restore()?;
                        return Err(e);
                    }
                };
                log(&format!(
                    "isolated {} refused service(s) in {} ms",
                    found.refused.len(),
                    t0.elapsed().as_millis()
                ));
                found
            }
        };
        let text = self.render(&routed.accepted)?;
        text.write(&self.opts.conf_dir)?;
        self.install_checked(routed.accepted, routed.refused, text, t0)
            .await
    }

    /// Reload nginx with `text`, already written and known good; on
    /// failure, back to what ran before.
    async fn install_checked<'a>(
        &mut self,
        accepted: Vec<&'a ServiceRoute>,
        refused: Vec<(&'a ServiceRoute, String)>,
        text: Config,
        t0: std::time::Instant,
    ) -> Result<Installed<'a>> {
        let routed = Isolated { accepted, refused };
        if let Err(e) = self.reload(&text, t0).await {
            // Back to what ran before, in the file and, if nginx loaded the
            // new one, in nginx too; the next change is checked again.
            self.checked_shape = None;
            self.restore()?;
            let _ = self.signal_reload().await;
            return Err(e);
        }
        self.current = Some(text.clone());
        Ok(Installed {
            routed,
            reloaded: Some(text),
        })
    }

    fn render(&self, services: &[&ServiceRoute]) -> Result<Config> {
        let ctx = RenderContext::new(
            &self.opts.env,
            &self.opts.domain,
            self.opts.port,
            services.iter().copied(),
        );
        let http = render(&self.template, &ctx)?;
        let stream = render(STREAM_TEMPLATE, &ctx)?;
        Ok(Config::new(&http, stream))
    }

    /// Put back what nginx runs, so a restart of nginx still works.
    fn restore(&self) -> Result<()> {
        match &self.current {
            Some(c) => c.write(&self.opts.conf_dir),
            None => {
                for file in [CONFIG_FILE, STREAM_FILE] {
                    let _ = std::fs::remove_file(self.opts.conf_dir.join(file));
                }
                Ok(())
            }
        }
    }

    /// Write `text` where nginx reads it and ask `nginx -t`: `None` when it
    /// passes, nginx's complaint when not. The file is left as it is: the
    /// caller either goes on to reload or restores.
    async fn check(&self, text: &Config) -> Result<Option<String>> {
        text.write(&self.opts.conf_dir)?;
        match self
            .nginx
            .exec(&self.opts.nginx_container, &["nginx", "-t", "-q"], &[])
            .await
        {
            Ok(out) if out.code == 0 => Ok(None),
            Ok(out) => Ok(Some(format!("nginx -t: {}", out.stderr.trim()))),
            Err(e) => {
                self.restore()?;
                Err(anyhow::Error::new(NginxAway(format!(
                    "cannot run nginx -t: {e:#}"
                ))))
            }
        }
    }

    /// SIGHUP to nginx's master: directly when this agent runs in nginx's
    /// process namespace (see `desired::load_balancer`), otherwise through
    /// the engine's API.
    async fn signal_reload(&self) -> Result<()> {
        if nginx_processes::signal_master(libc::SIGHUP) {
            return Ok(());
        }
        self.nginx
            .docker
            .kill_container(
                &self.opts.nginx_container,
                Some(KillContainerOptions {
                    signal: "HUP".into(),
                }),
            )
            .await
            .map_err(|e| {
                anyhow::Error::new(NginxAway(format!("cannot signal nginx to reload: {e}")))
            })
    }

    /// Signal nginx to load the checked config, and wait until it serves it
    /// on loopback and on the address clients use.
    async fn reload(&self, text: &Config, t0: std::time::Instant) -> Result<()> {
        let checked = t0.elapsed();
        // Seen only in nginx's process namespace (none otherwise).
        let old_workers = nginx_processes::workers();
        self.signal_reload().await?;
        // SIGHUP only asks: nginx starts new workers a few milliseconds
        // later, and until then the old ones answer. Wait until an answer
        // carries the new config's marker, so "reloaded" means "in effect".
        let signalled = t0.elapsed();
        let marker = text.marker();
        let limit = Duration::from_secs(2);
        // nginx's master starts new workers only once the new config has
        // loaded. The moment one is there, the old ones can be told to
        // quit: a connection that arrives meanwhile waits in the listening
        // socket, which the new worker shares, instead of reaching a worker
        // with the old config. Watching /proc each millisecond sees that
        // sooner than asking nginx for the marker.
        if !old_workers.is_empty() {
            // Bounded well under `limit`: a reload nginx refuses starts none.
            let within = Duration::from_millis(500);
            let started = crate::poll::holds(within, Duration::from_millis(1), || async {
                nginx_processes::workers()
                    .iter()
                    .any(|pid| !old_workers.contains(pid))
            })
            .await;
            if started {
                nginx_processes::quit(&old_workers);
            }
        }
        let loopback = IpAddr::from([127, 0, 0, 1]);
        if !wait_for_marker(loopback, self.opts.port, &marker, limit).await {
            log(&format!(
                "nginx did not show config {marker} within 2 s (a template without the marker header?)"
            ));
        } else {
            // The new workers serve. nginx's master tells the old ones to
            // stop accepting only after a fixed 100 ms pause, during which
            // both answer: an instance just taken out would still get
            // requests. Tell them now, unless that was done above (they
            // finish what is in flight).
            nginx_processes::quit(&old_workers);
            // Loopback serves the new config; so must the address clients
            // use. If not, a `listen` on that address that stagectl did not
            // write answers there instead (a user template's, say).
            if let Some(addr) = self.opts.advertise {
                if !wait_for_marker(addr, self.opts.port, &marker, limit).await {
                    anyhow::bail!(
                        "nginx serves config {marker} on 127.0.0.1:{port} but not on {addr}:{port}: \
                         another server block answers there",
                        port = self.opts.port
                    );
                }
            }
        }
        log(&format!(
            "timing: written and checked {} ms, HUP {} ms, in effect after {} ms",
            checked.as_millis(),
            (signalled - checked).as_millis(),
            t0.elapsed().as_millis()
        ));
        Ok(())
    }
}

fn route(s: &ServiceRoute) -> Route {
    Route {
        service: s.service.clone(),
        server_name: s.server_name.clone(),
        path: s.path.clone(),
        tcp_port: s.tcp_port,
        upstreams: s.instances.iter().map(|i| i.endpoint.clone()).collect(),
    }
}

struct Installed<'a> {
    routed: Isolated<'a>,
    /// The config when nginx loaded a new one; `None` when it already ran
    /// it.
    reloaded: Option<Config>,
}

/// The services that went into the config, and those nginx refused (why).
#[derive(Debug, PartialEq)]
struct Isolated<'a> {
    accepted: Vec<&'a ServiceRoute>,
    refused: Vec<(&'a ServiceRoute, String)>,
}

/// Find the services nginx refuses, knowing it refuses all of `candidates`
/// together but accepts none of them. Groups are added to what was
/// accepted so far; a refused group is halved and its halves tried in turn,
/// down to single services, which are left out. `check` gives nginx's
/// complaint about a set, or `None`. With k bad services among n this costs
/// about 2·k·log2(n) checks, and each accepted set was checked as a whole.
async fn isolate<'a, F, Fut>(
    candidates: Vec<&'a ServiceRoute>,
    mut check: F,
) -> Result<Isolated<'a>>
where
    F: FnMut(Vec<&'a ServiceRoute>) -> Fut,
    Fut: Future<Output = Result<Option<String>>>,
{
    let mut found = Isolated {
        accepted: vec![],
        refused: vec![],
    };
    // Refused as a whole: start from its halves (a stack, first half on top).
    let (a, b) = candidates.split_at(candidates.len() / 2);
    let mut groups = vec![b.to_vec(), a.to_vec()];
    while let Some(group) = groups.pop() {
        if group.is_empty() {
            continue;
        }
        let trial: Vec<&ServiceRoute> = found.accepted.iter().chain(&group).copied().collect();
        match check(trial.clone()).await? {
            None => found.accepted = trial,
            Some(why) if group.len() == 1 => found.refused.push((group[0], why)),
            Some(_) => {
                let (a, b) = group.split_at(group.len() / 2);
                groups.push(b.to_vec());
                groups.push(a.to_vec());
            }
        }
    }
    Ok(found)
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

/// The header every response carries once nginx runs a given config.
const MARKER_HEADER: &str = "x-stagectl-config";

/// One rendered configuration: the `http` part (with its marker) and the
/// `stream` part, written and checked together.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    http: String,
    stream: String,
}

impl Config {
    /// The `http` text gets a directive naming the hash of both parts:
    /// appended at the `http` level (conf.d is included there), inherited
    /// by every server that sets no `add_header` of its own, so an answer
    /// tells which config (TCP listeners included) nginx runs.
    fn new(http: &str, stream: String) -> Config {
        let marker = short_hash(&format!("{http}\0{stream}"));
        Config {
            http: format!("{http}\nadd_header X-Stagectl-Config \"{marker}\" always;\n"),
            stream,
        }
    }

    fn marker(&self) -> String {
        self.http
            .rsplit("X-Stagectl-Config \"")
            .next()
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string()
    }

    /// What is in `dir` (an agent restarted keeps what nginx runs).
    fn read(dir: &Path) -> Option<Config> {
        Some(Config {
            http: std::fs::read_to_string(dir.join(CONFIG_FILE)).ok()?,
            stream: std::fs::read_to_string(dir.join(STREAM_FILE)).unwrap_or_default(),
        })
    }

    /// The stream part first: the `http` part names both in its marker.
    fn write(&self, dir: &Path) -> Result<()> {
        write_atomically(&dir.join(STREAM_FILE), &self.stream)?;
        write_atomically(&dir.join(CONFIG_FILE), &self.http)
    }
}

/// Ask nginx at `addr` until its health location answers with `marker`:
/// the marker header alone would also come from any other server block
/// (it is set at the `http` level), the body only from stagectl's.
async fn wait_for_marker(addr: IpAddr, port: u16, marker: &str, limit: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let want = format!("{MARKER_HEADER}: {marker}");
    crate::poll::holds(limit, Duration::from_millis(5), || async {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect((addr, port)).await?;
            s.write_all(b"GET /_stagectl/health HTTP/1.0\r\nHost: stagectl\r\n\r\n")
                .await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).to_ascii_lowercase())
        };
        let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_millis(500), attempt).await else {
            return false;
        };
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
        head.contains(&want) && body == "ok\n"
    })
    .await
}

/// Readers (nginx, `stagectl status`) see the old file or the new one,
/// never half of one. The temporary file's name does not end in `.conf`, so
/// nginx never includes it.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".stagectl-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn write_status(dir: &Path, status: &LbStatus) {
    if let Ok(json) = serde_json::to_string_pretty(status) {
        let _ = write_atomically(&dir.join(STATUS_FILE), &json);
    }
}

/// Names a template's text in the LB status.
pub fn template_id(text: &str) -> String {
    short_hash(text)
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

    fn route(name: &str, endpoints: &[&str]) -> ServiceRoute {
        ServiceRoute {
            service: name.into(),
            name: name.into(),
            server_name: format!("{name}.qa.stagectl.test"),
            path: format!("/{name}/"),
            upstream: format!("qa_{name}"),
            tcp_port: None,
            instances: endpoints
                .iter()
                .map(|e| crate::agent::routes::Upstream {
                    id: format!("{name}-{e}"),
                    node: "host-1".into(),
                    address: e.split(':').next().unwrap().into(),
                    port: 8080,
                    endpoint: e.to_string(),
                    tags: vec![],
                    meta: Default::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn only_instances_coming_and_going_keep_the_shape_nginx_passed() {
        let (web, api) = (
            route("web", &["10.0.0.1:8080"]),
            route("api", &["10.0.0.2:8080"]),
        );
        let before = shape(false, &[&web, &api]);
        let replaced = route("web", &["10.0.0.3:8080", "10.0.0.4:8080"]);
        assert_eq!(shape(false, &[&replaced, &api]), before);
        // A service more, or one left with no instance: checked again.
        let db = route("db", &["10.0.0.5:8080"]);
        assert_ne!(shape(false, &[&web, &api, &db]), before);
        assert_ne!(shape(false, &[&route("web", &[]), &api]), before);
        // A user template can use anything: always checked.
        assert_eq!(shape(true, &[&web, &api]), None);
    }

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

    fn routes(n: usize) -> Vec<ServiceRoute> {
        (0..n)
            .map(|i| ServiceRoute {
                service: format!("s{i}"),
                name: format!("s{i}"),
                server_name: format!("s{i}.qa.test"),
                path: format!("/s{i}/"),
                upstream: format!("qa__s{i}"),
                tcp_port: None,
                instances: vec![],
            })
            .collect()
    }

    /// nginx stand-in: refuses any set holding one of `bad`.
    fn isolate_with_bad(all: &[ServiceRoute], bad: &[&str]) -> (Vec<String>, Vec<String>, usize) {
        let mut checks = 0;
        let found = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(isolate(all.iter().collect(), |set| {
                checks += 1;
                let refused = set.iter().find(|s| bad.contains(&s.name.as_str()));
                let verdict = refused.map(|s| format!("unknown directive in {}", s.name));
                async move { Ok(verdict) }
            }))
            .unwrap();
        let names = |v: Vec<&ServiceRoute>| v.iter().map(|s| s.name.clone()).collect();
        let refused = found.refused.iter().map(|(s, _)| s.name.clone()).collect();
        (names(found.accepted), refused, checks)
    }

    #[test]
    fn isolation_leaves_out_exactly_the_refused_services() {
        let all = routes(300);
        let (accepted, refused, checks) = isolate_with_bad(&all, &["s17"]);
        assert_eq!(refused, ["s17"]);
        assert_eq!(accepted.len(), 299);
        assert!(!accepted.contains(&"s17".to_string()));
        // About 2·log2(300) ≈ 17 checks, not 300.
        assert!(checks <= 20, "{checks} checks");

        let (accepted, refused, _) = isolate_with_bad(&all, &["s0", "s150", "s299"]);
        assert_eq!(refused, ["s0", "s150", "s299"]);
        assert_eq!(accepted.len(), 297);

        let one = routes(1);
        let (accepted, refused, checks) = isolate_with_bad(&one, &["s0"]);
        assert!(accepted.is_empty());
        assert_eq!(refused, ["s0"]);
        assert_eq!(checks, 1);
    }

    #[test]
    fn the_marker_names_both_parts_and_is_stable() {
        let a = Config::new("server {}\n", String::new());
        assert_eq!(a, Config::new("server {}\n", String::new()));
        assert_ne!(
            a.marker(),
            Config::new("server { }\n", String::new()).marker()
        );
        let b = Config::new("server {}\n", "server { listen 6379; }".into());
        assert_ne!(a.marker(), b.marker(), "a new TCP listener is a new config");
        assert_eq!(a.marker(), short_hash("server {}\n\0"));
        assert!(a.http.ends_with(&format!(
            "add_header X-Stagectl-Config \"{}\" always;\n",
            a.marker()
        )));
    }
}
