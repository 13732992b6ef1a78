//! The executor: carries out a host's planned steps, in order, reporting
//! each on the host's progress line. It makes no decisions; those were made
//! in `reconcile`.

use std::collections::BTreeSet;

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

/// Apply `plan` on `host`. Images the steps need are made present first.
pub async fn apply_host(
    host: &DockerHost,
    plan: &HostPlan,
    env: &str,
    line: &HostLine,
    images_from: ImageSource<'_>,
) -> Result<()> {
    let images: BTreeSet<String> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Create { spec, .. } | Step::Replace { spec, .. } => Some(spec.image.clone()),
            _ => None,
        })
        .collect();
    if !images.is_empty() {
        line.step("images");
        if let Err(e) = ensure_images(
            host,
            &images.into_iter().collect::<Vec<_>>(),
            images_from.local,
            images_from.allow_pull,
            line,
        )
        .await
        {
            line.fail("images", &format!("{e:#}"));
            return Err(e);
        }
        line.ok("images");
    }
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

/// Make `images` present on `host`: already there; else streamed from the
/// local engine when it has them (no registry needed, and no traffic beyond
/// the operator's machine and the host); else pulled by the host, unless
/// `allow_pull` is false (lab hosts: their images are always built here, and
/// a pull would reach out to a public registry).
pub async fn ensure_images(
    host: &DockerHost,
    images: &[String],
    source: Option<&DockerHost>,
    allow_pull: bool,
    line: &HostLine,
) -> Result<()> {
    let mut missing = Vec::new();
    for image in images {
        if !host.has_image(image).await? {
            missing.push(image.clone());
        }
    }
    let mut from_local = Vec::new();
    let mut to_pull = Vec::new();
    for image in missing {
        match source {
            Some(src) if src.has_image(&image).await.unwrap_or(false) => from_local.push(image),
            _ => to_pull.push(image),
        }
    }
    if let Some(src) = source.filter(|_| !from_local.is_empty()) {
        let mut total = 0;
        for image in &from_local {
            total += src.image_size(image).await.unwrap_or(0);
        }
        let progress_line = line.clone();
        let what = format!("image {}", from_local.join(", "));
        transfer_images(src, host, &from_local, move |sent| {
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
