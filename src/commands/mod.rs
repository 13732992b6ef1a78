//! The commands: each wires topology, planning and the Docker edges together
//! for one verb, and reports through `progress`.
//!
//! Shared here: loading the topology, connecting to a set of hosts with one
//! progress line each, and the options every command takes.

mod agent;
mod ca;
mod demo;
mod down;
mod exec;
mod gc;
mod lock;
mod logs;
mod ls;
mod plan;
mod run;
mod status;
mod ui;
mod up;
mod validate;
mod watch;

use crate::plan::reconcile::Keep;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{Cli, Command};
pub use crate::pipeline::Ctx;
use crate::state::StateDir;
use crate::topology;

/// Read the topology and the options every command takes.
fn load(cli: &Cli) -> Result<Ctx> {
    let path = match &cli.file {
        Some(p) => p.clone(),
        None => topology::default_path()?,
    };
    // `ls` looks at hosts, not at one environment: a shared hosts file
    // without `name` will do.
    let overrides = topology::Overrides {
        env: cli.env.clone(),
        images: cli.image.clone(),
        sets: cli.set.clone(),
    };
    let topology = match cli.command {
        Command::Ls { .. } | Command::Gc { .. } | Command::Ca => topology::load_hosts(&path)?,
        _ => topology::load_with(&path, &overrides)?,
    };
    Ok(Ctx {
        topology,
        state: StateDir::from_env()?,
        connect_timeout: Duration::from_secs(cli.connect_timeout),
        lock_timeout: Duration::from_secs(cli.lock_timeout),
        parallel: cli.parallel as usize,
    })
}

/// Run the parsed command; the value is the exit code on success.
pub async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::DemoHttp { port, worker } => return demo::serve(port, worker).await,
        Command::DemoMigrate { version } => return demo::migrate(version).await,
        Command::Agent(agent) => return agent::run(agent).await,
        _ => {}
    }
    let ctx = load(&cli)?;
    // Ctrl-C is how `ui` and `status --watch` end, not an interruption.
    match &cli.command {
        Command::Ui {
            host,
            listen,
            open,
            expose,
        } => return ui::run(&ctx, host.as_deref(), *listen, *open, *expose).await,
        Command::Status {
            output,
            watch: true,
        } => return watch::run(&ctx, *output).await,
        _ => {}
    }
    // Ctrl-C drops the command's future: connections close (their SSH
    // masters exit) and the private socket folder is removed. What was
    // applied stays applied; the next `up` converges from there.
    // SIGTERM (a CI job cancelled, `timeout`, systemd) ends a run the same
    // way, so its masters and lock are released rather than left behind.
    let mut term = terminate_signal()?;
    tokio::select! {
        result = run_command(&ctx, cli.command) => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; nothing half-made is left running: run the command again to converge");
            Ok(EXIT_INTERRUPTED)
        }
        _ = term.recv() => {
            eprintln!("terminated; nothing half-made is left running: run the command again to converge");
            Ok(EXIT_TERMINATED)
        }
    }
}

/// 128 + SIGINT, as shells report it.
const EXIT_INTERRUPTED: u8 = 130;
/// 128 + SIGTERM.
pub const EXIT_TERMINATED: u8 = 143;

/// SIGTERM as a stream; listening replaces its default (exit at once).
pub fn terminate_signal() -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")
}

async fn run_command(ctx: &Ctx, command: Command) -> Result<u8> {
    match command {
        Command::Validate { output } => validate::run(ctx, output),
        Command::Plan { output } => plan::run(ctx, output).await,
        Command::Up {
            output,
            ttl,
            rotate_keys,
        } => up::run(ctx, output, ttl, rotate_keys).await,
        Command::Gc { dry_run } => gc::run(ctx, dry_run).await,
        Command::Ca => ca::run(ctx).await,
        Command::Down {
            volumes,
            keep_data,
            host,
            dry_run,
            output,
        } => {
            let keep = match (volumes, keep_data) {
                (true, _) => Keep::Nothing,
                (_, true) => Keep::Everything,
                _ => Keep::ServiceData,
            };
            match host {
                Some(host) => down::one_host(ctx, &host, keep, output).await,
                None => {
                    let options = down::Options {
                        keep,
                        dry_run,
                        only_if_expired: false,
                        output,
                    };
                    down::run(ctx, options).await
                }
            }
        }
        Command::Status { output, .. } => status::run(ctx, output).await,
        Command::Ls { output } => ls::run(ctx, output).await,
        Command::Logs {
            host: Some(host),
            component: Some(component),
            all: false,
            follow,
            tail,
        } => logs::run(ctx, &host, &component, follow, &tail).await,
        Command::Logs { follow, tail, .. } => logs::all(ctx, follow, &tail).await,
        Command::Exec {
            instance,
            host,
            attach,
            cmd,
        } => exec::run(ctx, &instance, host.as_deref(), attach, &cmd).await,
        Command::Run {
            service,
            host,
            volumes,
            attach,
            cmd,
        } => run::run(ctx, &service, host.as_deref(), volumes, attach, &cmd).await,
        Command::Lock(crate::cli::LockCommand::Status { output }) => {
            lock::status(ctx, output).await
        }
        Command::Unlock { id, yes } => lock::unlock(ctx, id.as_deref(), yes).await,
        Command::DemoHttp { .. }
        | Command::DemoMigrate { .. }
        | Command::Agent(_)
        | Command::Ui { .. }
        | Command::Completions { .. } => {
            unreachable!("handled above")
        }
    }
}

/// Text from outside (a Consul registration, a node name) made safe for a
/// terminal: control characters (escape sequences among them) are shown
/// as `?`.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
