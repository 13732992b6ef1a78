//! `stagectl ui [HOST]`: the environment's Consul web UI on a local address,
//! carried to Consul's HTTP API on a host's loopback (see `tunnel`), until
//! Ctrl-C. Nothing is opened on the hosts.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use super::Ctx;
use crate::cluster::http::{ConsulClient, ReadMode};
use crate::cluster::{acl, record};
use crate::engine::connect::{Connection, Connector};
use crate::engine::docker::DockerHost;
use crate::engine::tunnel::Tunnel;
use crate::error::{input, EXIT_OK};
use crate::labels::Component;
use crate::topology::{Host, Role, Topology};

pub async fn run(
    ctx: &Ctx,
    host: Option<&str>,
    listen: SocketAddr,
    open: bool,
    expose: bool,
) -> Result<u8> {
    // The tunnel acts with the UI's read-only token, for whoever reaches
    // it: off this machine only when asked in so many words.
    if !listen.ip().is_loopback() && !expose {
        return Err(input(format!(
            "--listen {listen} is not a loopback address: it would give Consul's API to the network; add --expose if that is what you want"
        )));
    }
    let consul = ConsulTunnel::open(ctx, host, listen).await?;
    let url = format!("http://{}/ui/", consul.tunnel.local);
    // The URL alone on stdout (scripts read it); the rest on stderr.
    println!("{url}");
    eprintln!(
        "Consul UI of {} through {}; Ctrl-C to stop",
        ctx.topology.name, consul.via
    );
    if !listen.ip().is_loopback() {
        eprintln!(
            "exposed: Consul's HTTP API of {} (catalog, keys, UI; read-only, through the UI's token) to anyone who reaches {}",
            ctx.topology.name, consul.tunnel.local
        );
    }
    if open {
        if let Err(e) = std::process::Command::new("xdg-open").arg(&url).spawn() {
            eprintln!("cannot open a browser ({e}); open {url} yourself");
        }
    }
    let mut term = super::terminate_signal()?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; Ok(EXIT_OK) }
        _ = term.recv() => Ok(super::EXIT_TERMINATED),
    }
}

/// A tunnel to the environment's Consul HTTP API on one host, with the
/// connection it runs over (dropped after the tunnel: fields drop in order).
pub struct ConsulTunnel {
    pub tunnel: Tunnel,
    /// `host-1 (127.0.0.1:8500)`, for messages.
    pub via: String,
    _connection: Connection,
    _connector: Connector,
}

impl ConsulTunnel {
    /// Open it to `host` (default: the first Consul server) and check it
    /// with one request.
    pub async fn open(ctx: &Ctx, host: Option<&str>, listen: SocketAddr) -> Result<Self> {
        let t = &ctx.topology;
        let h = pick_host(t, host)?;
        let connector = ctx.connector().await?;
        let connection = connector.connect(h).await?;
        let t = crate::pipeline::resolve_ports(t, &[&connection.host]).await?;
        // An agent container has the stagectl binary and the host's network.
        let agent = if h.has_role(Role::App) {
            Component::Register
        } else {
            Component::Template
        };
        let container = agent.container(&t.name);
        let target = format!("127.0.0.1:{}", t.ports.consul_http);
        let token = ui_token(&t, h, &connection.host, &connector).await?;
        let tunnel = Tunnel::open(
            connection.host.clone(),
            container.clone(),
            crate::engine::tunnel::Relay::Agent(target.clone()),
            listen,
            Some(token),
        )
        .await?;
        ConsulClient::new(&tunnel.local.to_string())
            .catalog_services(0, Duration::from_secs(1), ReadMode::Stale)
            .await
            .with_context(|| {
                format!(
                    "{}: Consul does not answer at {target} through {container} (is {} up?)",
                    h.name, t.name
                )
            })?;
        Ok(ConsulTunnel {
            tunnel,
            via: format!("{} ({target})", h.name),
            _connection: connection,
            _connector: connector,
        })
    }
}

/// The UI's read-only token (see `cluster::acl`), derived from the record
/// key the environment's Consul servers hold: `h`'s own when it is one
/// (`host` is connected to it), else the first server's.
async fn ui_token(
    t: &Topology,
    h: &Host,
    host: &DockerHost,
    connector: &Connector,
) -> Result<String> {
    let consul = Component::Consul.container(&t.name);
    let key = if h.consul_server {
        host.read_file(&consul, record::KEY_PATH).await?
    } else {
        let server = t.consul_servers().next().context("no Consul server")?;
        let connection = connector.connect(server).await?;
        connection.host.read_file(&consul, record::KEY_PATH).await?
    };
    let key = key.filter(|k| k.len() == 32).with_context(|| {
        format!(
            "{}: no Consul server holds the record key (is it up?)",
            t.name
        )
    })?;
    Ok(acl::token(&key, &t.name, &acl::Role::Ui).secret)
}

fn pick_host<'a>(t: &'a Topology, name: Option<&str>) -> Result<&'a Host> {
    match name {
        Some(n) => t.host(n).ok_or_else(|| {
            let names: Vec<&str> = t.hosts.iter().map(|h| h.name.as_str()).collect();
            input(format!(
                "no host `{n}` in {}; hosts: {}",
                t.source.display(),
                names.join(", ")
            ))
        }),
        // The tunnel runs in an agent container: a host with a role has
        // one. A Consul server among them answers from its own replica.
        None => t
            .consul_servers()
            .find(|h| h.has_role(Role::App) || h.has_role(Role::Lb))
            .or_else(|| {
                t.hosts
                    .iter()
                    .find(|h| h.has_role(Role::App) || h.has_role(Role::Lb))
            })
            .ok_or_else(|| anyhow::anyhow!("{} has no host with an agent", t.source.display())),
    }
}
