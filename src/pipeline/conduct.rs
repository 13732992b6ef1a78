//! The conductor: walks a plan's phases in order and carries each out,
//! deciding nothing. `up`, `down` and the local lab's making all go through
//! it, so what runs is what `plan` (or `down --dry-run`) printed, phase for
//! phase.
//!
//! Before each phase that changes hosts it confirms the run still holds its
//! lock, so a run that lost it stops before its next change rather than
//! racing the run that took over.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::events::Reporter;
use super::{execute, waits, Hosts};
use crate::cluster::acl::AclPlan;
use crate::cluster::consul;
use crate::engine::docker::DockerHost;
use crate::lock::Lock;
use crate::plan::{Phase, Plan, Wait};
use crate::state::StateDir;
use crate::topology::Topology;

/// What a run's phases act on.
pub struct Run<'r, 'a> {
    pub hosts: &'r Hosts<'a>,
    pub t: &'r Topology,
    pub state: &'r StateDir,
    pub reporter: &'r Reporter,
    pub parallel: usize,
    /// `None` for a run without the lock (`down` when it could not be
    /// taken and the run goes on best-effort).
    pub lock: &'r mut Option<Lock>,
    /// Where the time went, phase by phase.
    pub timings: &'r mut Timings,
}

/// What `up`'s Consul phases need beyond the plan: the tokens to make sure
/// of, and the run's record to keep while the routes are waited for. Kept
/// out of the plan, which is printed: the tokens are secrets.
pub struct Tokens<'r> {
    /// The server they are made through: a client agent starts only once
    /// its token exists.
    pub server: Option<&'r DockerHost>,
    /// Made before the cluster wait, with the management token the running
    /// servers know.
    pub first: AclPlan,
    /// Made again after the membership changes, when servers replaced
    /// under a new record key know only its management token.
    pub then: Option<AclPlan>,
    pub timeout: Duration,
}

impl<'r, 'a> Run<'r, 'a> {
    /// `t`: the topology with the ports in effect (see `resolve_ports`,
    /// `own_ports`), never the file's as read: a preview on another port
    /// block must talk to its own agents.
    pub fn new(
        ctx: &'r super::Ctx,
        t: &'r Topology,
        hosts: &'r Hosts<'a>,
        lock: &'r mut Option<Lock>,
        reporter: &'r Reporter,
        timings: &'r mut Timings,
    ) -> Self {
        Run {
            hosts,
            t,
            state: &ctx.state,
            reporter,
            parallel: ctx.parallel,
            lock,
            timings,
        }
    }

    /// Carry out `plan`'s phases in order; the first that fails ends the
    /// run. `tokens` and `record` serve `up`'s cluster and routes phases.
    pub async fn phases(
        &mut self,
        plan: &Plan,
        tokens: Option<&Tokens<'_>>,
        record: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let mut record = Some(record);
        for phase in &plan.phases {
            if phase.changes() {
                if let Some(lock) = self.lock.as_mut() {
                    lock.confirm().await?;
                }
            }
            self.phase(phase, plan.routes(), tokens, &mut record)
                .await?;
            self.timings.mark(phase.name());
        }
        // A plan without a routes phase keeps the record at its end.
        if let Some(record) = record.take() {
            record.await;
        }
        Ok(())
    }

    async fn phase<F: std::future::Future<Output = ()>>(
        &mut self,
        phase: &Phase,
        lb: Option<&Wait>,
        tokens: Option<&Tokens<'_>>,
        record: &mut Option<F>,
    ) -> Result<()> {
        let (hosts, t, reporter) = (self.hosts, self.t, self.reporter);
        match phase {
            Phase::Lab(steps) => {
                if steps.is_empty() {
                    return Ok(());
                }
                let local = hosts
                    .local
                    .as_ref()
                    .context("lab steps, but no local engine")?;
                let line = reporter.host("lab");
                execute::lab_steps(local, t, self.state, steps, &line).await?;
                if steps
                    .iter()
                    .any(|s| matches!(s, crate::plan::LabStep::RemoveLab { .. }))
                {
                    hosts.close_kept_masters(t.lab_hosts()).await;
                }
                line.finish();
                Ok(())
            }
            Phase::Hosts(plans) => {
                execute::hosts_in_parallel(hosts, plans, &t.name, self.parallel, "host").await
            }
            Phase::Cluster(wait) => {
                ensure_tokens(tokens, t, false).await?;
                waits::cluster(hosts, t, wait, reporter).await
            }
            Phase::Members(changes) => {
                execute::member_changes(hosts, t, changes, reporter).await?;
                ensure_tokens(tokens, t, true).await
            }
            Phase::Rolling(steps) => {
                let lb = lb_engine(hosts, lb)?;
                for (host, step) in steps {
                    let (engine, line) = (hosts.engine(host), hosts.line(host));
                    let (Some(engine), Some(line)) = (engine, line) else {
                        anyhow::bail!("{host}: not connected, for a drained replacement");
                    };
                    execute::rolling_replace(engine, lb, t, step, line, "rolling").await?;
                }
                Ok(())
            }
            Phase::Stage(stage) => {
                let lb = lb_engine(hosts, lb)?;
                execute::stage(hosts, t, stage, lb, reporter, self.parallel).await
            }
            Phase::Routes(wait) => {
                hosts.finish();
                let kept = async {
                    if let Some(record) = record.take() {
                        record.await;
                    }
                };
                let (routed, ()) = tokio::join!(routes(hosts, t, wait, reporter), kept);
                routed
            }
            Phase::Check {
                cluster,
                routes: routes_wait,
            } => {
                // Nothing changed, so nothing waits on anything: both only
                // checked, at once.
                hosts.finish();
                let clustered = async {
                    if let Some(wait) = cluster {
                        ensure_tokens(tokens, t, false).await?;
                        waits::cluster(hosts, t, wait, reporter).await?;
                    }
                    Ok::<_, anyhow::Error>(())
                };
                let routed = async {
                    let kept = async {
                        if let Some(record) = record.take() {
                            record.await;
                        }
                    };
                    match routes_wait {
                        Some(wait) => tokio::join!(routes(hosts, t, wait, reporter), kept).0,
                        None => {
                            kept.await;
                            Ok(())
                        }
                    }
                };
                let (clustered, routed) = tokio::join!(clustered, routed);
                clustered?;
                routed
            }
            Phase::Edge(steps) => super::edge::execute(hosts, t, steps, reporter).await,
        }
    }
}

/// The environment's tokens made sure of through its server, when this
/// run makes tokens at all.
/// `then`: the second time, after the membership changes (see
/// [`Tokens::then`]); only when there is one.
async fn ensure_tokens(tokens: Option<&Tokens<'_>>, t: &Topology, then: bool) -> Result<()> {
    let Some(tokens) = tokens else {
        return Ok(());
    };
    let plan = match (then, &tokens.then) {
        (false, _) => &tokens.first,
        (true, Some(plan)) => plan,
        (true, None) => return Ok(()),
    };
    let server = tokens.server.context("no connected Consul server")?;
    consul::ensure_acl(server, &t.name, t.ports.consul_http, plan, tokens.timeout).await?;
    Ok(())
}

async fn routes(hosts: &Hosts<'_>, t: &Topology, wait: &Wait, reporter: &Reporter) -> Result<()> {
    let lb = hosts
        .engine(wait.host())
        .with_context(|| format!("{}: not connected, for the routes", wait.host()))?;
    waits::routes(lb, t, wait, reporter).await
}

/// The engine of the host the plan's routes are asked on: drained
/// replacements wait until it routes the new instance.
fn lb_engine<'h>(hosts: &'h Hosts<'_>, routes: Option<&Wait>) -> Result<&'h DockerHost> {
    let lb = routes.context("no lb host")?.host();
    hosts
        .engine(lb)
        .with_context(|| format!("{lb}: the lb host is not connected"))
}

/// Where a run's time went, phase by phase (seconds, to the millisecond):
/// in the `up` event of `-o json`, for benchmarks and slow runs.
pub struct Timings {
    pub started: Instant,
    last: Instant,
    pub phases: serde_json::Map<String, serde_json::Value>,
}

impl Timings {
    pub fn start() -> Timings {
        let now = Instant::now();
        Timings {
            started: now,
            last: now,
            phases: serde_json::Map::new(),
        }
    }

    /// The time since the last mark was spent in `phase` (added to what it
    /// had: stages are one phase each, reported together).
    pub fn mark(&mut self, phase: &str) {
        let now = Instant::now();
        let ms = (now - self.last).as_millis() as f64;
        let before = self
            .phases
            .get(phase)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0);
        let seconds = ((before * 1000.0 + ms).round()) / 1000.0;
        self.phases.insert(phase.to_string(), seconds.into());
        self.last = now;
    }
}
