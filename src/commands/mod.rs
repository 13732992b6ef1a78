//! The commands: each wires topology, planning and the Docker edges together
//! for one verb, and reports through `progress`.
//!
//! Shared here: loading the topology, connecting to a set of hosts with one
//! progress line each, and the options every command takes.

mod agent;
mod apply;
mod demo;
mod discovery;
mod down;
mod logs;
mod ls;
mod plan;
mod status;
mod up;
mod validate;

use std::time::Duration;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::connect::{Connection, Connector};
use crate::progress::{HostLine, Reporter};
use crate::state::StateDir;
use crate::topology::{self, Host, Topology};

/// What every command that touches hosts needs.
pub struct Ctx {
    pub topology: Topology,
    pub state: StateDir,
    pub connect_timeout: Duration,
    pub parallel: usize,
}

impl Ctx {
    fn load(cli: &Cli) -> Result<Self> {
        let path = match &cli.file {
            Some(p) => p.clone(),
            None => topology::default_path()?,
        };
        // `ls` looks at hosts, not at one environment: a shared hosts file
        // without `name` will do.
        let topology = match cli.command {
            Command::Ls { .. } => topology::load_hosts(&path)?,
            _ => topology::load(&path)?,
        };
        Ok(Ctx {
            topology,
            state: StateDir::from_env()?,
            connect_timeout: Duration::from_secs(cli.connect_timeout),
            parallel: cli.parallel as usize,
        })
    }

    pub fn reporter(&self) -> Reporter {
        Reporter::new(
            self.topology
                .hosts
                .iter()
                .map(|h| h.name.len())
                .max()
                .unwrap_or(0),
        )
    }
}

/// Run the parsed command; the value is the exit code on success.
pub async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::DemoHttp { port } => return demo::serve(port).await,
        Command::Agent(agent) => return agent::run(agent).await,
        _ => {}
    }
    let ctx = Ctx::load(&cli)?;
    // Ctrl-C drops the command's future: connections close (their SSH
    // masters exit) and the private socket folder is removed. What was
    // applied stays applied; the next `up` converges from there.
    tokio::select! {
        result = run_command(&ctx, cli.command) => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; nothing half-made is left running: run the command again to converge");
            Ok(EXIT_INTERRUPTED)
        }
    }
}

/// 128 + SIGINT, as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

async fn run_command(ctx: &Ctx, command: Command) -> Result<u8> {
    match command {
        Command::Validate => validate::run(ctx),
        Command::Plan => plan::run(ctx).await,
        Command::Up => up::run(ctx).await,
        Command::Down { keep_data } => down::run(ctx, keep_data).await,
        Command::Status { output } => status::run(ctx, output).await,
        Command::Ls { output } => ls::run(ctx, output).await,
        Command::Logs {
            host,
            component,
            follow,
            tail,
        } => logs::run(ctx, &host, &component, follow, &tail).await,
        Command::DemoHttp { .. } | Command::Agent(_) => unreachable!("handled above"),
    }
}

/// A host's connection attempt, with its progress line.
pub struct Attempt<'a> {
    pub host: &'a Host,
    pub line: HostLine,
    pub result: Result<Connection>,
}

/// Connect to `hosts` in parallel, marking each line connected or failed.
pub async fn connect_hosts<'a>(
    connector: &Connector,
    hosts: &[&'a Host],
    reporter: &Reporter,
) -> Vec<Attempt<'a>> {
    let lines: Vec<HostLine> = hosts.iter().map(|h| reporter.host(&h.name)).collect();
    for l in &lines {
        l.step("connecting");
    }
    let results = connector.connect_all(hosts).await;
    hosts
        .iter()
        .zip(lines)
        .zip(results)
        .map(|((host, line), result)| {
            match &result {
                Ok(c) => line.ok(&format!(
                    "connected ({}, Docker {})",
                    c.transport, c.engine_version
                )),
                Err(e) => line.fail("connect", &format!("{e:#}")),
            }
            Attempt { host, line, result }
        })
        .collect()
}

/// The engines of the hosts that answered.
pub fn reachable<'a>(attempts: &'a [Attempt<'_>]) -> Vec<&'a crate::docker::DockerHost> {
    attempts
        .iter()
        .filter_map(|a| a.result.as_ref().ok().map(|c| &c.host))
        .collect()
}

/// The topology with its ports in effect: declared ones checked against the
/// other environments on these hosts, or a free block chosen (see `ports`).
pub async fn resolve_ports(t: &Topology, hosts: &[&crate::docker::DockerHost]) -> Result<Topology> {
    let mut claims = Vec::new();
    for h in hosts {
        claims.extend(h.port_claims().await?);
    }
    let declared = t.ports_declared.then_some(t.ports);
    let ports = crate::ports::resolve(&t.name, declared, &claims).map_err(|why| {
        crate::error::input(format!(
            "{}: {why}; nothing was changed",
            t.source.display()
        ))
    })?;
    Ok(Topology { ports, ..t.clone() })
}

/// "host-1, host-2 or host-3" for messages.
pub fn join_or(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}
