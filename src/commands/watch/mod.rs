//! `stagectl status --watch`: the cluster's nodes, the services and the
//! health of every instance, and what the load balancer last did, redrawn
//! in place as they change, until `q` or Ctrl-C.
//!
//! Driven by the blocking query the template agent follows (one tunnelled
//! connection to one host's Consul, see `ui`), not by asking every host
//! every second; only the LB's status file is read every two seconds, from
//! the LB host. Not on a terminal, each change is printed as a block of
//! plain lines under its time; with `-o json`, as one JSON object a line.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::sync::mpsc;

mod keys;
mod screen;

use crate::commands::status::clock;

use super::ui::ConsulTunnel;
use super::Ctx;
use crate::agent::template::LbStatus;
use crate::cli::OutputFormat;
use crate::cluster::http::{next_index, Cluster, ConsulClient, ReadMode};
use crate::engine::connect::Connector;
use crate::error::EXIT_OK;
use crate::pipeline::discovery;
use crate::topology::Role;
use keys::Keys;
use screen::{now, screen};

/// One screen's worth of facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct View {
    environment: String,
    cluster: Cluster,
    lb: Option<LbStatus>,
    /// Why Consul does not answer, while it does not: what is shown is
    /// then as of the last answer.
    consul_error: Option<String>,
}

enum Event {
    Cluster(Cluster),
    ConsulDown(String),
    Lb(Option<LbStatus>),
    Quit,
}

pub async fn run(ctx: &Ctx, output: OutputFormat) -> Result<u8> {
    let consul = ConsulTunnel::open(ctx, None, "127.0.0.1:0".parse()?).await?;
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(follow_cluster(
        ConsulClient::new(&consul.tunnel.local.to_string()),
        tx.clone(),
    ));
    tokio::spawn(follow_lb(ctx_lb(ctx).await, tx.clone()));
    let terminal = std::io::stdout().is_terminal() && output == OutputFormat::Table;
    let _keys = terminal.then(|| Keys::listen(tx.clone()));
    let mut view = View {
        environment: ctx.topology.name.clone(),
        ..Default::default()
    };
    let expected = discovery::expected_instances(&ctx.topology);
    let mut shown: Option<View> = None;
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = tokio::signal::ctrl_c() => Some(Event::Quit),
        };
        match event {
            Some(Event::Cluster(c)) => {
                view.cluster = c;
                view.consul_error = None;
            }
            Some(Event::ConsulDown(why)) => view.consul_error = Some(why),
            Some(Event::Lb(lb)) => view.lb = lb,
            Some(Event::Quit) | None => break,
        }
        if shown.as_ref() == Some(&view) {
            continue;
        }
        let mut out = std::io::stdout().lock();
        match (output, terminal) {
            (OutputFormat::Json, _) => writeln!(out, "{}", serde_json::to_string(&view)?)?,
            (_, true) => {
                // Home, draw, clear what an older, longer screen left below.
                write!(
                    out,
                    "\x1b[H{}\x1b[J",
                    screen(&view, &expected, &consul.via).replace('\n', "\x1b[K\r\n")
                )?;
            }
            (_, false) => writeln!(
                out,
                "--- {}\n{}",
                clock(now()),
                screen(&view, &expected, &consul.via)
            )?,
        }
        out.flush()?;
        shown = Some(view.clone());
    }
    Ok(EXIT_OK)
}

/// The blocking query, forever; an error is shown above the last answer
/// until Consul answers again.
async fn follow_cluster(consul: ConsulClient, tx: mpsc::Sender<Event>) {
    let mut index = 0;
    loop {
        match consul
            .cluster(index, Duration::from_secs(30), ReadMode::Stale)
            .await
        {
            Ok((idx, cluster)) => {
                index = next_index(index, idx);
                if tx.send(Event::Cluster(cluster)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                index = 0;
                if tx.send(Event::ConsulDown(format!("{e:#}"))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What reads the LB's status: a connection to the first LB host.
struct LbSource {
    host: crate::engine::docker::DockerHost,
    topology: crate::topology::Topology,
    _connection: crate::engine::connect::Connection,
    _connector: Connector,
}

async fn ctx_lb(ctx: &Ctx) -> Option<LbSource> {
    let t = &ctx.topology;
    let h = t.hosts.iter().find(|h| h.has_role(Role::Lb))?;
    let connector = ctx.connector().await.ok()?;
    let connection = connector.connect(h).await.ok()?;
    let topology = crate::pipeline::resolve_ports(t, &[&connection.host])
        .await
        .ok()?;
    Some(LbSource {
        host: connection.host.clone(),
        topology,
        _connection: connection,
        _connector: connector,
    })
}

async fn follow_lb(source: Option<LbSource>, tx: mpsc::Sender<Event>) {
    let Some(source) = source else { return };
    loop {
        let status = discovery::lb_status(&source.host, &source.topology)
            .await
            .ok()
            .flatten();
        if tx.send(Event::Lb(status)).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
