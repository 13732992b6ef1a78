//! `stagectl logs HOST COMPONENT [-F]`: a component's container logs; and
//! `stagectl logs --all [-F]`: what every host's agents did (registrations,
//! reloads, refusals), merged in time order: the environment's event log.

use crate::engine::Engine;
use anyhow::{bail, Context, Result};
use bollard::query_parameters::LogsOptions;
use futures_util::StreamExt;
use std::io::Write;

use super::Ctx;
use crate::error::{input, EXIT_OK};
use crate::plan::desired::object_name;

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
    let connector = ctx.connector().await?;
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

/// The agents whose logs `--all` merges.
const AGENTS: [&str; 2] = ["register", "template"];

/// Every agent's log on every host that answers, merged by Docker's
/// timestamps, each line prefixed with its time, host and agent. Following,
/// the backlog is printed sorted, then new lines in batches of 100 ms, each
/// sorted: streams from several hosts arrive a little out of order.
pub async fn all(ctx: &Ctx, follow: bool, tail: &str) -> Result<u8> {
    use tokio::sync::mpsc;
    let t = &ctx.topology;
    let hosts = crate::pipeline::open(
        ctx,
        &crate::pipeline::events::Reporter::quiet(),
        crate::pipeline::Unreachable::Report,
    )
    .await?;
    let attempts = &hosts.attempts;
    let (tx, mut rx) = mpsc::channel::<(String, String)>(1024);
    let mut streams = 0;
    for a in attempts {
        let conn = match &a.result {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: skipped: {e:#}", a.host.name);
                continue;
            }
        };
        let observed = conn.host.observe(&t.name, &[]).await?;
        for agent in AGENTS {
            let container = object_name(&t.name, agent);
            if !observed.containers.iter().any(|c| c.name == container) {
                continue;
            }
            streams += 1;
            let prefix = format!("{:<w$} {agent:<8}", a.host.name, w = ctx.host_width());
            let mut stream = conn.host.docker.logs(
                &container,
                Some(LogsOptions {
                    follow,
                    stdout: true,
                    stderr: true,
                    timestamps: true,
                    tail: tail.to_string(),
                    ..Default::default()
                }),
            );
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut partial = String::new();
                while let Some(Ok(chunk)) = stream.next().await {
                    partial.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                    while let Some(end) = partial.find('\n') {
                        let line: String = partial.drain(..=end).collect();
                        // `2026-11-25T18:09:12.123456789Z message`
                        let (time, message) = line
                            .trim_end()
                            .split_once(' ')
                            .unwrap_or(("", line.as_str()));
                        let entry = (time.to_string(), format!("{prefix} {message}"));
                        if tx.send(entry).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }
    drop(tx);
    if streams == 0 {
        bail!("no agent of {} runs on any host that answered", t.name);
    }
    let mut out = std::io::stdout();
    let mut batch: Vec<(String, String)> = Vec::new();
    let mut flush = |batch: &mut Vec<(String, String)>| -> Result<()> {
        batch.sort();
        for (time, line) in batch.drain(..) {
            // Seconds are enough to read; the sort used the rest.
            let shown = time.get(11..19).unwrap_or(&time);
            writeln!(out, "{shown} {line}")?;
        }
        out.flush()?;
        Ok(())
    };
    // Following, a batch is printed every 100 ms whatever keeps arriving.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            entry = rx.recv() => match entry {
                Some(entry) => batch.push(entry),
                None => {
                    flush(&mut batch)?;
                    return Ok(EXIT_OK);
                }
            },
            _ = tick.tick(), if follow => flush(&mut batch)?,
        }
    }
}
