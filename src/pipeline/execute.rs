//! The executor: carries out the steps of one phase (see `conduct`, which
//! walks the phases), in order, reporting each as events on its host's
//! line. Host steps go through the [`Engine`] trait, so they run the same
//! on a Docker engine and on the in-memory one of the unit tests.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cluster::consul;
use crate::engine::docker::DockerHost;
use crate::engine::Engine;
use crate::labels::Component;
use crate::pipeline::events::HostLine;
use crate::plan::reconcile::{HostPlan, Step};
use crate::plan::{LabStep, MemberChange, StepRef};
use crate::poll::Check;
use crate::spec::ContainerSpec;
use crate::topology::Topology;

/// Carry out one host's steps, in order, as part of `phase` (`host` or
/// `members`). `local` is the engine images are delivered from.
pub async fn host_steps<E: Engine>(
    host: &E,
    local: Option<&E>,
    steps: &[Step],
    env: &str,
    line: &HostLine,
    phase: &'static str,
) -> Result<()> {
    for step in steps {
        let reference = step.reference(phase, host.name());
        let label = step_label(step);
        let started = Instant::now();
        line.started(&reference, &label);
        let result = match step {
            Step::DeliverImages { images } => {
                deliver(host, local, images, &reference, &label, line, started).await
            }
            Step::PullImage { image } => host.pull(image).await.map(|()| None),
            Step::CreateVolume { volume } => host.create_volume(env, volume).await.map(|()| None),
            Step::Create { spec, .. } => host.create_and_start(spec).await.map(|_| None),
            Step::Replace { spec, old_id, .. } => {
                // Agents bind host ports and fixed names: the old one must go
                // before the new one can start.
                host.remove_container(old_id).await?;
                host.create_and_start(spec).await.map(|_| None)
            }
            Step::Start { id, .. } => host.start(id).await.map(|()| None),
            Step::Remove { id, .. } => host.remove_container(id).await.map(|()| None),
            Step::RemoveVolume { name } => host.remove_volume(name).await.map(|()| None),
            Step::Leave {
                name,
                id,
                consul_http,
                rejoin,
                ..
            } => {
                host.no_restart(id).await?;
                let identity = rejoin.as_ref().map(|r| consul::NewIdentity {
                    data_dir: &r.data_dir,
                    node_id: &r.node_id,
                    sole_server: r.sole_server.as_deref(),
                });
                consul::leave(host, name, *consul_http, identity.as_ref())
                    .await
                    .map(|()| None)
            }
            Step::ForceLeave {
                container,
                node,
                consul_http,
                prune,
                ..
            } => consul::force_leave(host, container, *consul_http, node, *prune)
                .await
                .map(|()| None),
            Step::RunOnce { spec, cause } => run_once(host, spec, cause).await,
        };
        match result {
            Ok(note) => line.finished(&reference, &label, started, note.as_deref()),
            Err(e) => {
                line.failed(&reference, &label, started, &format!("{e:#}"));
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Stream images from the local engine; the note says how much travelled.
async fn deliver<E: Engine>(
    host: &E,
    local: Option<&E>,
    images: &[String],
    reference: &StepRef,
    label: &str,
    line: &HostLine,
    started: Instant,
) -> Result<Option<String>> {
    let local = local.context("images to deliver, but no local engine")?;
    let (progress_line, reference, label) = (line.clone(), reference.clone(), label.to_string());
    let delivered = host
        .receive_images(local, images, move |sent, total| {
            progress_line.progress(&reference, &label, started, sent, total)
        })
        .await?;
    // Only the layers the host lacked travel (see `engine::layers`).
    Ok(Some(format!(
        "{} sent, image archive {}",
        human_size(delivered.sent),
        human_size(delivered.full)
    )))
}

fn step_label(step: &Step) -> String {
    match step {
        Step::DeliverImages { .. } => "images".into(),
        Step::PullImage { image } => format!("pull {image}"),
        Step::CreateVolume { volume } => format!("volume {}", volume.name),
        Step::Create { spec, .. } => spec.component.clone(),
        Step::Replace { spec, .. } => format!("{} (replaced)", spec.component),
        Step::Start { name, .. } => format!("{name} (started)"),
        Step::Remove { name, .. } => format!("{name} (removed)"),
        Step::RemoveVolume { name } => format!("volume {name} (removed)"),
        Step::Leave { .. } => "consul (leaving the cluster)".into(),
        Step::ForceLeave { node, .. } => format!("{node} (marked as left)"),
        Step::RunOnce { spec, .. } => format!("{} (run once)", spec.cmd.join(" ")),
    }
}

/// A one-off to its end: its last line of output as the step's note; a
/// non-zero exit is an error carrying the end of its output.
async fn run_once<E: Engine>(
    host: &E,
    spec: &ContainerSpec,
    cause: &str,
) -> Result<Option<String>> {
    let (code, output) = host.run_once(spec).await?;
    let output = output.trim_end();
    if code != 0 {
        anyhow::bail!(
            "{cause} exited with {code}; nothing of the service was created or replaced, \
             its instances keep running as they were{}",
            if output.is_empty() {
                String::new()
            } else {
                format!(". Its output ended with:\n{output}")
            }
        );
    }
    Ok(output.lines().last().map(str::to_string))
}

/// Make `images` present on `host` outside a plan's host phase (the lock's
/// image, needed before the snapshot): planned and carried out like a
/// plan's image steps.
pub async fn provide_images(
    host: &DockerHost,
    local: Option<&DockerHost>,
    images: &[String],
    may_pull: bool,
    line: &HostLine,
) -> Result<()> {
    let on_host = host.image_ids(images).await?;
    let on_local = match local {
        Some(l) => l.image_ids(images).await?,
        None => Default::default(),
    };
    let delivery = crate::plan::images::plan(&host.name, images, &on_host, &on_local, may_pull)
        .map_err(|e| anyhow::anyhow!(e))?;
    host_steps(host, local, &delivery.steps, "", line, "host").await
}

/// `12.3 kB`, `171.3 MB`: decimal units, as Docker shows sizes.
fn human_size(bytes: u64) -> String {
    if bytes < 1_000_000 {
        format!("{:.1} kB", bytes as f64 / 1e3)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// Replace one app service instance without failing a request (phase
/// `rolling`): put it in Consul maintenance (so the load balancer stops
/// sending to it), give in-flight requests the drain time, replace the
/// container, and wait until the new one passes its check and the load
/// balancer routes to it.
pub async fn rolling_replace(
    host: &DockerHost,
    lb: &DockerHost,
    t: &Topology,
    step: &Step,
    line: &HostLine,
    phase: &'static str,
) -> Result<()> {
    let Step::Replace { spec, old_id, .. } = step else {
        anyhow::bail!("a rolling step is a replacement");
    };
    let reference = step.reference(phase, &host.name);
    let label = format!("{} (rolling)", spec.component);
    let started = Instant::now();
    line.started(&reference, &format!("{label}: draining"));
    let result = drain_and_replace(host, lb, t, spec, old_id, line, &label).await;
    match &result {
        Ok(()) => line.finished(&reference, &label, started, None),
        Err(e) => line.failed(&reference, &label, started, &format!("{e:#}")),
    }
    result
}

async fn drain_and_replace(
    host: &DockerHost,
    lb: &DockerHost,
    t: &Topology,
    spec: &ContainerSpec,
    old_id: &str,
    line: &HostLine,
    label: &str,
) -> Result<()> {
    let drain = spec
        .drain
        .as_ref()
        .context("a rolling replacement has drain settings")?;
    // Service writes: made with the host's registration agent's token, the
    // one that may make them (see `cluster::acl`).
    let env = &consul::register_cli_env(host, &t.name, t.ports.consul_http).await?;
    let consul = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = host
            .exec(&Component::Consul.container(&t.name), &args, env)
            .await?;
        // An instance already gone is fine: the goal is "not routed".
        if out.code != 0 && !out.stderr.contains("Unknown service") {
            anyhow::bail!(
                "{}: `{}` failed: {}",
                host.name,
                args[..2].join(" "),
                out.stderr.trim()
            );
        }
        Ok::<_, anyhow::Error>(())
    };
    // Maintenance mode, not deregistration: the instance leaves the healthy
    // set (the LB stops sending to it) but stays registered, so the
    // registration agent's resync, which re-registers any running container
    // it finds missing, leaves it out for the whole drain.
    consul(vec![
        "consul".into(),
        "maint".into(),
        "-enable".into(),
        format!("-service={}", drain.service_id),
        "-reason=stagectl: draining before replacement".into(),
    ])
    .await?;
    tokio::time::sleep(Duration::from_secs(drain.seconds)).await;
    line.step(&format!("{label}: replacing"));
    host.remove_container(old_id).await?;
    // The agent deregisters it on the container's removal; this makes sure
    // (with its maintenance check) before the successor takes the same ID.
    consul(vec![
        "consul".into(),
        "services".into(),
        "deregister".into(),
        format!("-id={}", drain.service_id),
    ])
    .await?;
    host.create_and_start(spec).await?;
    line.step(&format!("{label}: waiting until healthy and routed"));
    let advertise = t
        .host(&host.name)
        .map(|h| format!("{}:", h.advertise))
        .unwrap_or_default();
    let limit = Duration::from_secs(t.consul.join_timeout_secs);
    crate::poll::until(limit, Duration::from_millis(200), || async {
        let report = crate::pipeline::discovery::service_report(lb, t)
            .await
            .unwrap_or_default();
        let passing = report.get(&drain.service).is_some_and(|l| {
            l.iter()
                .any(|i| i.instance.id == drain.service_id && i.status == "passing")
        });
        let routed = crate::pipeline::discovery::lb_status(lb, t)
            .await
            .ok()
            .flatten()
            .is_some_and(|s| {
                s.routes.iter().any(|r| {
                    r.service == drain.service
                        && r.upstreams.iter().any(|u| u.starts_with(&advertise))
                })
            });
        Ok(match (passing, routed) {
            (true, true) => Check::Ready(()),
            (false, _) => Check::Waiting("not passing its check".into()),
            (true, false) => Check::Waiting("passing, not routed yet".into()),
        })
    })
    .await
    .map_err(|e| {
        e.context(format!(
            "{}: {} did not become healthy and routed within {} s",
            host.name,
            spec.name,
            limit.as_secs()
        ))
    })
}

/// The membership changes (phase `members`), one at a time: each one's
/// steps, then its wait, before the next.
pub async fn member_changes(
    hosts: &crate::pipeline::Hosts<'_>,
    t: &Topology,
    changes: &[MemberChange],
    reporter: &crate::pipeline::events::Reporter,
) -> Result<()> {
    for change in changes {
        let (Some(engine), Some(line)) = (hosts.engine(&change.host), hosts.line(&change.host))
        else {
            anyhow::bail!("{}: not connected, for a membership change", change.host);
        };
        host_steps(
            engine,
            hosts.local.as_ref(),
            &change.steps,
            &t.name,
            line,
            "members",
        )
        .await?;
        crate::pipeline::waits::membership(hosts, t, change, reporter).await?;
    }
    Ok(())
}

/// Carry out the local lab's steps (phase `lab`) on the local engine.
pub async fn lab_steps(
    local: &DockerHost,
    t: &Topology,
    state: &crate::state::StateDir,
    steps: &[LabStep],
    line: &HostLine,
) -> Result<()> {
    let Some(lab) = &t.lab else {
        return Ok(());
    };
    if steps
        .iter()
        .any(|s| !matches!(s, LabStep::RemoveLab { .. }))
    {
        crate::engine::lab::prepare(local, t).await?;
    }
    for step in steps {
        let reference = StepRef {
            phase: "lab",
            host: "lab".into(),
            action: step.action(),
            subject: step.subject().to_string(),
        };
        let label = match step {
            LabStep::CreateNetwork { name, .. } => format!("bridge {name}"),
            LabStep::RemoveHalfMade { .. } => "half-made host (removed)".into(),
            LabStep::CreateHost { host, .. } => host.clone(),
            LabStep::StartHost { host, .. } => format!("{host} (started)"),
            LabStep::RemoveLab { .. } => "hosts, bridge and keys (removed)".into(),
        };
        let started = Instant::now();
        line.started(&reference, &label);
        let result = match step {
            LabStep::CreateNetwork { .. } => crate::engine::lab::create_network(local, lab)
                .await
                .map(|_| ()),
            LabStep::RemoveHalfMade { id } => local.remove_container(id).await,
            LabStep::CreateHost { host, .. } => {
                crate::engine::lab::create_host(local, t, state, host).await
            }
            LabStep::StartHost { host, id } => local
                .start(id)
                .await
                .with_context(|| format!("cannot start lab host {host}")),
            LabStep::RemoveLab { name } => crate::engine::lab::remove(local, name, state)
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => line.finished(&reference, &label, started, None),
            Err(e) => {
                line.failed(&reference, &label, started, &format!("{e:#}"));
                return Err(e);
            }
        }
    }
    Ok(())
}

/// One service's stage (see `plan::stages`): its dependencies passing,
/// its `before_rollout`, its instances' creations (hosts in parallel),
/// then its drained replacements one at a time.
pub async fn stage(
    hosts: &crate::pipeline::Hosts<'_>,
    t: &Topology,
    stage: &crate::plan::Stage,
    lb: &DockerHost,
    reporter: &crate::pipeline::events::Reporter,
    parallel: usize,
) -> Result<()> {
    if let Some(wait) = &stage.after {
        crate::pipeline::waits::passing(lb, t, wait, reporter).await?;
    }
    if let Some((host, step)) = &stage.before_rollout {
        let (Some(engine), Some(line)) = (hosts.engine(host), hosts.line(host)) else {
            anyhow::bail!("{host} is not connected");
        };
        host_steps(
            engine,
            None,
            std::slice::from_ref(step),
            &t.name,
            line,
            "stage",
        )
        .await?;
    }
    hosts_in_parallel(hosts, &stage.hosts, &t.name, parallel, "stage").await?;
    for (host, step) in &stage.rolling {
        let (Some(engine), Some(line)) = (hosts.engine(host), hosts.line(host)) else {
            continue;
        };
        rolling_replace(engine, lb, t, step, line, "stage").await?;
    }
    Ok(())
}

/// Carry out every host's steps, hosts in parallel (at most `parallel` at
/// once), as part of `phase` (`host`, or a service's `stage`). Every host
/// goes as far as it can; the failures are reported together.
pub async fn hosts_in_parallel(
    hosts: &crate::pipeline::Hosts<'_>,
    plans: &[HostPlan],
    env: &str,
    parallel: usize,
    phase: &'static str,
) -> Result<()> {
    use futures_util::StreamExt;
    let results: Vec<(String, Result<()>)> = futures_util::stream::iter(plans)
        .map(|p| async move {
            let (Some(engine), Some(line)) = (hosts.engine(&p.host), hosts.line(&p.host)) else {
                return (p.host.clone(), Ok(())); // not reached: nothing planned there
            };
            let done = host_steps(engine, hosts.local.as_ref(), &p.steps, env, line, phase).await;
            (p.host.clone(), done)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|(host, r)| r.err().map(|e| format!("{host}: {e:#}")))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{}", failed.join("\n")))
    }
}
