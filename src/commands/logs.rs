//! `stagectl logs HOST COMPONENT [-f]`: a component's container logs.

use anyhow::{bail, Context, Result};
use bollard::query_parameters::LogsOptions;
use futures_util::StreamExt;
use std::io::Write;

use super::Ctx;
use crate::connect::Connector;
use crate::desired::object_name;
use crate::error::{input, EXIT_OK};
use crate::lab;

pub async fn run(ctx: &Ctx, host: &str, component: &str, follow: bool, tail: &str) -> Result<u8> {
    let t = &ctx.topology;
    let Some(h) = t.host(host) else {
        let names: Vec<&str> = t.hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(input(format!(
            "no host `{host}` in {}; hosts: {}",
            t.source.display(),
            names.join(", ")
        )));
    };
    let mut connector = Connector::new(ctx.connect_timeout, None)?;
    if let Some(l) = &t.lab {
        connector.set_lab(lab::access(&ctx.state, &l.name));
    }
    let conn = connector.connect(h).await?;
    let container = object_name(&t.name, component);
    let observed = conn.host.observe(&t.name, &[]).await?;
    if !observed.containers.iter().any(|c| c.name == container) {
        let names: Vec<String> = observed
            .containers
            .iter()
            .map(|c| {
                c.name
                    .trim_start_matches(&format!("{}-", t.name))
                    .to_string()
            })
            .collect();
        if names.is_empty() {
            bail!("{host}: nothing of {} runs there", t.name);
        }
        return Err(input(format!(
            "{host} has no component `{component}`; it has: {}",
            names.join(", ")
        )));
    }
    let mut stream = conn.host.docker.logs(
        &container,
        Some(LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        }),
    );
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.with_context(|| format!("{host}: cannot read the logs of {container}"))?;
        out.write_all(&chunk.into_bytes())?;
        out.flush()?;
    }
    Ok(EXIT_OK)
}
