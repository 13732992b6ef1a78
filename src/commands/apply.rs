//! The executor: carries out a host's planned steps, in order, reporting
//! each on the host's progress line. It makes no decisions; those were made
//! in `reconcile`.

use anyhow::{Context, Result};
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;

use crate::docker::{transfer_images, DockerHost};
use crate::progress::HostLine;
use crate::reconcile::{HostPlan, Step};

/// Where the images a plan needs may come from.
#[derive(Clone, Copy)]
pub struct ImageSource<'a> {
    /// The local engine, streamed from when it has an image.
    pub local: Option<&'a DockerHost>,
    /// Whether the host may pull from a registry as a last resort.
    pub allow_pull: bool,
}

/// Apply `plan` on `host`, step by step.
pub async fn apply_host(
    host: &DockerHost,
    plan: &HostPlan,
    env: &str,
    line: &HostLine,
) -> Result<()> {
    for step in &plan.steps {
        let label = step_label(step);
        line.step(&label);
        let result = match step {
            Step::CreateVolume { volume } => host.create_volume(env, volume).await,
            Step::Create { spec, .. } => host.create_and_start(spec).await.map(|_| ()),
            Step::Replace { spec, old_id, .. } => {
                // Agents bind host ports and fixed names: the old one must go
                // before the new one can start.
                host.remove_container(old_id).await?;
                host.create_and_start(spec).await.map(|_| ())
            }
            Step::Start { id, .. } => host.start(id).await,
            Step::Remove { id, .. } => host.remove_container(id).await,
            Step::RemoveVolume { name } => host.remove_volume(name).await,
        };
        match result {
            Ok(()) => line.ok(&label),
            Err(e) => {
                line.fail(&label, &format!("{e:#}"));
                return Err(e);
            }
        }
    }
    Ok(())
}

fn step_label(step: &Step) -> String {
    match step {
        Step::CreateVolume { volume } => format!("volume {}", volume.name),
        Step::Create { spec, .. } => spec.component.clone(),
        Step::Replace { spec, .. } => format!("{} (replaced)", spec.component),
        Step::Start { name, .. } => format!("{name} (started)"),
        Step::Remove { name, .. } => format!("{name} (removed)"),
        Step::RemoveVolume { name } => format!("volume {name} (removed)"),
    }
}

/// Make `images` present and current on `host`, before planning (so a
/// rebuilt image is seen as a change): an image the local engine has is
/// streamed in when the host lacks it or has another version of it (no
/// registry needed, no traffic beyond this machine and the host); an image
/// the local engine lacks is pulled by the host if allowed (not lab hosts:
/// their images are built here, and a pull would go to a public registry).
/// Reports on `line` only when something moves.
pub async fn ensure_images(
    host: &DockerHost,
    images: &[String],
    from: ImageSource<'_>,
    line: &HostLine,
) -> Result<()> {
    let mut from_local = Vec::new();
    let mut to_pull = Vec::new();
    for image in images {
        let here = host.image_id(image).await?;
        let there = match from.local {
            Some(src) => src.image_id(image).await.unwrap_or(None),
            None => None,
        };
        match (here, there) {
            (Some(h), Some(l)) if h == l => {}
            (Some(_), None) => {}
            (_, Some(_)) => from_local.push(image.clone()),
            (None, None) => to_pull.push(image.clone()),
        }
    }
    if from_local.is_empty() && to_pull.is_empty() {
        return Ok(());
    }
    line.step("images");
    let result = deliver(host, &from_local, &to_pull, from, line).await;
    match &result {
        Ok(()) => line.ok("images"),
        Err(e) => line.fail("images", &format!("{e:#}")),
    }
    result
}

async fn deliver(
    host: &DockerHost,
    from_local: &[String],
    to_pull: &[String],
    from: ImageSource<'_>,
    line: &HostLine,
) -> Result<()> {
    let allow_pull = from.allow_pull;
    if let Some(src) = from.local.filter(|_| !from_local.is_empty()) {
        let mut total = 0;
        for image in from_local {
            total += src.image_size(image).await.unwrap_or(0);
        }
        let progress_line = line.clone();
        let what = format!("image {}", from_local.join(", "));
        transfer_images(src, host, from_local, move |sent| {
            progress_line.bytes(&what, sent, (total > 0).then_some(total))
        })
        .await?;
    }
    if !allow_pull && !to_pull.is_empty() {
        anyhow::bail!(
            "image {} is neither on {} nor on the local engine; build it with scripts/build-images.sh",
            to_pull.join(", "),
            host.name
        );
    }
    for image in to_pull {
        line.step(&format!("pull {image}"));
        let mut pull = host.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.clone()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(r) = pull.next().await {
            r.with_context(|| {
                format!(
                    "image {image} is neither on {} nor on the local engine, and pulling it failed",
                    host.name
                )
            })?;
        }
    }
    Ok(())
}

/// Replace one app service instance without failing a request: take it out
/// of Consul (so the load balancer stops sending to it), give in-flight
/// requests the drain time, replace the container, and wait until the new
/// one passes its check and the load balancer routes to it.
pub async fn rolling_replace(
    host: &DockerHost,
    lb: &DockerHost,
    t: &crate::topology::Topology,
    spec: &crate::desired::ContainerSpec,
    old_id: &str,
    line: &HostLine,
) -> Result<()> {
    let drain = spec
        .drain
        .as_ref()
        .context("a rolling replacement has drain settings")?;
    let label = format!("{} (rolling)", spec.component);
    line.step(&format!("{label}: draining"));
    let consul_env = vec![format!(
        "CONSUL_HTTP_ADDR=127.0.0.1:{}",
        t.ports.consul_http
    )];
    let id_arg = format!("-id={}", drain.service_id);
    // Deregistering something already gone is fine: the goal is "not routed".
    let _ = host
        .exec(
            &crate::desired::object_name(&t.name, "consul"),
            &["consul", "services", "deregister", &id_arg],
            &consul_env,
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(drain.seconds)).await;
    line.step(&format!("{label}: replacing"));
    host.remove_container(old_id).await?;
    host.create_and_start(spec).await?;
    line.step(&format!("{label}: waiting until healthy and routed"));
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(t.consul.join_timeout_secs);
    loop {
        let report = super::discovery::service_report(lb, t)
            .await
            .unwrap_or_default();
        let passing = report.get(&drain.service).is_some_and(|l| {
            l.iter()
                .any(|i| i.id == drain.service_id && i.status == "passing")
        });
        let routed = super::discovery::lb_status(lb, t)
            .await
            .ok()
            .flatten()
            .is_some_and(|s| {
                s.routes.iter().any(|r| {
                    r.service == drain.service
                        && r.upstreams
                            .iter()
                            .any(|u| u.starts_with(&format!("{}:", host_advertise(t, &host.name))))
                })
            });
        if passing && routed {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let e = anyhow::anyhow!(
                "{}: {} did not become healthy and routed in time",
                host.name,
                spec.name
            );
            line.fail(&label, &format!("{e:#}"));
            return Err(e);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    line.ok(&label);
    Ok(())
}

fn host_advertise(t: &crate::topology::Topology, host: &str) -> String {
    t.host(host)
        .map(|h| h.advertise.to_string())
        .unwrap_or_default()
}
