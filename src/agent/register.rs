//! `stagectl agent register`: keeps the local Consul agent's services equal
//! to the containers of this environment that publish ports on this host.
//!
//! It follows Docker events and acts at once (a start registers as soon as
//! the port answers; a kill deregisters before the process is even gone), and
//! resyncs everything periodically, which also repairs what a Consul restart
//! or a missed event left behind. When the Docker event stream breaks, it
//! reconnects and resyncs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::Mutex;

use super::log;
use super::registration::{
    registrations, AgentContext, ContainerInfo, PublishedPort, Skip, META_CONTAINER, META_ENV,
    META_ORIGIN,
};
use crate::cluster::http::{ConsulClient, Registration};

pub struct RegisterOptions {
    pub context: AgentContext,
    pub consul: String,
    /// The file of the ACL token it sends (see `cluster::acl::TOKEN_PATH`).
    pub token_file: Option<std::path::PathBuf>,
    pub resync: Duration,
}

/// Per container, a counter bumped by every stop-like event, so that a slow
/// registration (waiting for the port) that lost the race with a stop does
/// not register a dead container.
type Generations = Arc<Mutex<HashMap<String, u64>>>;

pub async fn run(opts: RegisterOptions) -> Result<()> {
    let consul = ConsulClient::new(&opts.consul).with_token_file_opt(opts.token_file.as_deref())?;
    log(&format!(
        "registering containers of {} on {} ({}) with Consul at {}",
        opts.context.env, opts.context.host, opts.context.advertise, opts.consul
    ));
    loop {
        if let Err(e) = session(&opts, &consul).await {
            log(&format!("{e:#}; reconnecting to Docker in 1 s"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn session(opts: &RegisterOptions, consul: &ConsulClient) -> Result<()> {
    let docker =
        Docker::connect_with_unix("/var/run/docker.sock", 60, bollard::API_DEFAULT_VERSION)?
            .negotiate_version()
            .await
            .context("cannot reach the Docker engine")?;
    // Subscribe before the first resync, so nothing in between is missed.
    let mut events = docker.events(Some(EventsOptions {
        filters: Some(HashMap::from([(
            "type".to_string(),
            vec!["container".to_string()],
        )])),
        ..Default::default()
    }));
    let generations: Generations = Arc::default();
    // A registration fails in its own task (it waits for the port); it
    // says so here, and the resync comes sooner, as after a failed
    // deregistration.
    let failed = Arc::new(tokio::sync::Notify::new());
    if let Err(e) = resync(&docker, consul, &opts.context).await {
        log(&format!("resync failed: {e:#}"));
    }
    let mut tick = tokio::time::interval(opts.resync);
    tick.tick().await;
    loop {
        tokio::select! {
            ev = events.next() => {
                let ev = match ev {
                    None => bail!("the Docker event stream ended"),
                    Some(Err(e)) => return Err(e).context("the Docker event stream broke"),
                    Some(Ok(ev)) => ev,
                };
                let (Some(action), Some(id)) = (ev.action, ev.actor.and_then(|a| a.id)) else { continue };
                if !handle(&docker, consul, &opts.context, &generations, &failed, &action, id).await {
                    // A stopped instance left registered would get traffic
                    // until the next resync: that comes sooner.
                    tick.reset_after(RETRY_AFTER_FAILURE);
                }
            }
            () = failed.notified() => tick.reset_after(RETRY_AFTER_FAILURE),
            _ = tick.tick() => {
                if let Err(e) = resync(&docker, consul, &opts.context).await {
                    log(&format!("resync failed: {e:#}"));
                    tick.reset_after(RETRY_AFTER_FAILURE);
                }
            }
        }
    }
}

/// How soon the resync comes after a failed deregistration or resync (the
/// local Consul agent briefly not answering), instead of the full period.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What an event means for registrations.
fn classify(action: &str) -> Option<bool> {
    let verb = action.split(':').next().unwrap_or(action).trim();
    match verb {
        "start" | "unpause" | "restart" => Some(true),
        "health_status" => {
            Some(action.trim_end().ends_with("healthy") && !action.contains("unhealthy"))
        }
        "kill" | "die" | "stop" | "destroy" | "pause" | "oom" => Some(false),
        _ => None,
    }
}

/// Act on one container event; false when a deregistration failed.
async fn handle(
    docker: &Docker,
    consul: &ConsulClient,
    ctx: &AgentContext,
    gens: &Generations,
    failed: &Arc<tokio::sync::Notify>,
    action: &str,
    id: String,
) -> bool {
    match classify(action) {
        Some(false) => {
            *gens.lock().await.entry(id.clone()).or_default() += 1;
            if let Err(e) = deregister_container(consul, ctx, &id).await {
                log(&format!(
                    "{action} {}: deregistration failed: {e:#}",
                    short(&id)
                ));
                return false;
            }
        }
        Some(true) => {
            let generation = *gens.lock().await.entry(id.clone()).or_default();
            let (docker, consul, ctx, gens, failed) = (
                docker.clone(),
                consul.clone(),
                ctx.clone(),
                gens.clone(),
                failed.clone(),
            );
            let action = action.to_string();
            // Waiting for the port must not hold up other events.
            tokio::spawn(async move {
                if let Err(e) =
                    register_container(&docker, &consul, &ctx, &gens, &id, generation).await
                {
                    log(&format!(
                        "{action} {}: registration failed: {e:#}",
                        short(&id)
                    ));
                    failed.notify_one();
                }
            });
        }
        None => {}
    }
    true
}

async fn register_container(
    docker: &Docker,
    consul: &ConsulClient,
    ctx: &AgentContext,
    gens: &Generations,
    id: &str,
    generation: u64,
) -> Result<()> {
    let Some((info, direct)) = inspect(docker, id).await? else {
        return Ok(());
    };
    let ctx = &effective(docker, ctx).await;
    let regs = match registrations(&info, ctx) {
        Ok(r) => r,
        Err(Skip::NoPublishedPorts | Skip::Infrastructure | Skip::OtherEnvironment(_)) => {
            return Ok(())
        }
        Err(skip) => {
            log(&format!("{}: not registered: {skip}", info.name));
            return Ok(());
        }
    };
    for mut reg in regs {
        // Register only once the port answers: then the instance can start
        // out passing, and the LB never sends to a process still booting.
        let probe = direct
            .get(&reg.port)
            .cloned()
            .unwrap_or_else(|| format!("{}:{}", reg.address, reg.port));
        let ready = wait_for_port(&probe, Duration::from_secs(30)).await;
        if *gens.lock().await.get(id).unwrap_or(&0) != generation {
            return Ok(()); // stopped meanwhile
        }
        if ready {
            reg.check.status = Some("passing".into());
        }
        consul.register(&reg).await?;
        let not_ready = if ready {
            ""
        } else {
            ", port not answering yet"
        };
        log(&format!("{}{not_ready}", registered(&info.name, &reg)));
    }
    Ok(())
}

/// The log line of a registration made, on the event path and the resync.
fn registered(container: &str, reg: &Registration) -> String {
    format!(
        "registered {container} as {} ({}:{})",
        reg.name, reg.address, reg.port
    )
}

async fn deregister_container(consul: &ConsulClient, ctx: &AgentContext, id: &str) -> Result<()> {
    let short_id = short(id);
    for (sid, s) in consul.agent_services().await? {
        let meta = s.meta.unwrap_or_default();
        if ours(&meta, ctx) && meta.get(META_CONTAINER).map(String::as_str) == Some(short_id) {
            consul.deregister(&sid).await?;
            log(&format!("deregistered {sid}"));
        }
    }
    Ok(())
}

/// A registration this host's agents made. The Consul agent asked is the
/// environment's own on this host, so the environment's mark is enough: one
/// whose host is another name was made before the host was renamed in the
/// topology (the agent keeps its services across the rename) and is
/// resynced like any other.
fn ours(meta: &std::collections::BTreeMap<String, String>, ctx: &AgentContext) -> bool {
    meta.get(META_ENV) == Some(&ctx.env)
}

/// Make Consul's services of this agent equal to what runs.
/// Unlabeled containers belong to nobody in particular: they are adopted
/// only while this is the only environment with a registration agent on the
/// host. With two, neither adopts them (label them `io.stagectl.env=...`),
/// so no container is ever served by two environments' load balancers.
async fn effective(docker: &Docker, ctx: &AgentContext) -> AgentContext {
    if !ctx.adopt_unlabeled {
        return ctx.clone();
    }
    let filter = HashMap::from([(
        "label".to_string(),
        vec![format!("{}=register", crate::labels::COMPONENT)],
    )]);
    let agents = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            filters: Some(filter),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    let shared = agents.iter().any(|c| {
        c.labels
            .as_ref()
            .and_then(|l| l.get(crate::labels::ENV))
            .is_some_and(|e| *e != ctx.env)
    });
    AgentContext {
        adopt_unlabeled: !shared,
        ..ctx.clone()
    }
}

async fn resync(docker: &Docker, consul: &ConsulClient, ctx: &AgentContext) -> Result<()> {
    let ctx = &effective(docker, ctx).await;
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            ..Default::default()
        }))
        .await?;
    // Per service ID: the registration, where to probe it, its container.
    let mut want: HashMap<String, (Registration, String, String)> = HashMap::new();
    for c in containers {
        let Some(id) = c.id else { continue };
        let Some((info, direct)) = inspect(docker, &id).await? else {
            continue;
        };
        if let Ok(regs) = registrations(&info, ctx) {
            for r in regs {
                let probe = direct
                    .get(&r.port)
                    .cloned()
                    .unwrap_or_else(|| format!("{}:{}", r.address, r.port));
                want.insert(r.id.clone(), (r, probe, info.name.clone()));
            }
        }
    }
    let have = consul.agent_services().await?;
    let mut seen = HashSet::new();
    for (sid, s) in &have {
        if !ours(s.meta.as_ref().unwrap_or(&Default::default()), ctx) {
            continue;
        }
        match want.get(sid) {
            Some((r, ..)) if r.port == s.port && r.address == s.address && r.name == s.service => {
                // A registration made before the origin existed (or with
                // another) is registered again below: under the same ID,
                // Consul updates it in place, with no gap in the pool.
                let origin = s.meta.as_ref().and_then(|m| m.get(META_ORIGIN));
                if origin == r.meta.get(META_ORIGIN) {
                    seen.insert(sid.clone());
                }
            }
            _ => {
                consul.deregister(sid).await?;
                log(&format!("resync: deregistered {sid}"));
            }
        }
    }
    for (sid, (mut r, probe, container)) in want {
        if seen.contains(&sid) {
            continue;
        }
        if wait_for_port(&probe, Duration::from_millis(300)).await {
            r.check.status = Some("passing".into());
        }
        consul.register(&r).await?;
        // Worded as the event path words it, so a registration that
        // only the resync made (after a failed first attempt) reads the
        // same in the logs.
        log(&format!("resync: {}", registered(&container, &r)));
    }
    Ok(())
}

/// The container as the decision function sees it, plus, per published host
/// port, the container's own `ip:port` to probe readiness directly.
async fn inspect(
    docker: &Docker,
    id: &str,
) -> Result<Option<(ContainerInfo, HashMap<u16, String>)>> {
    let c = match docker.inspect_container(id, None).await {
        Ok(c) => c,
        Err(e) if crate::engine::docker::is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let config = c.config.unwrap_or_default();
    let state = c.state.unwrap_or_default();
    let net = c.network_settings.unwrap_or_default();
    let container_ip = net.networks.as_ref().and_then(|n| {
        n.values()
            .find_map(|e| e.ip_address.clone().filter(|ip| !ip.is_empty()))
    });
    let mut ports = Vec::new();
    let mut direct = HashMap::new();
    for (spec, bindings) in net.ports.unwrap_or_default() {
        let (port, proto) = spec.split_once('/').unwrap_or((spec.as_str(), "tcp"));
        let Ok(container_port) = port.parse::<u16>() else {
            continue;
        };
        let host_port = bindings
            .unwrap_or_default()
            .iter()
            .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()));
        if let Some(host_port) = host_port {
            ports.push(PublishedPort {
                container_port,
                host_port,
                tcp: proto == "tcp",
            });
            if let Some(ip) = &container_ip {
                direct.insert(host_port, format!("{ip}:{container_port}"));
            }
        }
    }
    ports.sort_by_key(|p| p.container_port);
    let info = ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.unwrap_or_default(),
        labels: config.labels.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
        ports,
        running: state.running.unwrap_or(false) && !state.paused.unwrap_or(false),
        health: state
            .health
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "none"),
    };
    Ok(Some((info, direct)))
}

/// Poll `addr` until it accepts a TCP connection, or give up.
async fn wait_for_port(addr: &str, limit: Duration) -> bool {
    crate::poll::holds(limit, Duration::from_millis(10), || async {
        let attempt = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        matches!(attempt, Ok(Ok(_)))
    })
    .await
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn events_that_register_and_deregister() {
        assert_eq!(classify("start"), Some(true));
        assert_eq!(classify("unpause"), Some(true));
        assert_eq!(classify("health_status: healthy"), Some(true));
        assert_eq!(classify("health_status: unhealthy"), Some(false));
        assert_eq!(classify("kill"), Some(false));
        assert_eq!(classify("die"), Some(false));
        assert_eq!(classify("destroy"), Some(false));
        assert_eq!(classify("exec_start: ls"), None);
        assert_eq!(classify("create"), None);
    }
}
