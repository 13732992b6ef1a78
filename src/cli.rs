//! The command line as the user types it (clap derive). No behaviour here:
//! `main` hands the parsed [`Cli`] to `commands`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "stagectl",
    version,
    about = "Bring up a staging environment (Consul, service registration, nginx) on Docker hosts from one YAML file",
    after_help = "Exit codes: 0 ok, 1 an operation failed, 2 invalid input or usage."
)]
pub struct Cli {
    /// Topology file [default: ./stagectl.yaml, else ./topologies/local.yaml]
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Seconds to wait for each host's Docker engine to answer
    #[arg(long, global = true, default_value_t = 20, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub connect_timeout: u64,

    /// Hosts worked on at the same time
    #[arg(long, global = true, default_value_t = 8, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallel: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the topology file and print what it describes; touches nothing
    Validate,
    /// Show what `up` would create, replace, start or remove on each host; changes nothing
    Plan,
    /// Create or converge the environment, then wait for the Consul cluster
    Up,
    /// Remove everything of this environment (and its lab, once unused); nothing else
    Down {
        /// Keep Consul's data volumes and the gossip key
        #[arg(long)]
        keep_data: bool,
    },
    /// Show hosts, Docker versions, containers and the Consul cluster
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// List the environments found on the topology's hosts, with state, ports and load balancer
    Ls {
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show a component's logs on a host (consul, register, nginx, template, or a service instance such as web-1)
    Logs {
        host: String,
        component: String,
        /// Keep following the log (-f is the topology file, as everywhere)
        #[arg(short = 'F', long)]
        follow: bool,
        /// Lines from the end to start with
        #[arg(long, default_value = "200")]
        tail: String,
    },
    /// The agents that run in containers on the hosts (started by `up`)
    #[command(subcommand, hide = true)]
    Agent(AgentCommand),
    /// A tiny HTTP server answering with its instance identity (demo image)
    #[command(hide = true)]
    DemoHttp {
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register this host's containers with published ports in Consul
    Register {
        #[arg(long)]
        env: String,
        /// Topology name of this host (part of every service ID)
        #[arg(long)]
        host: String,
        /// The IP services are registered at
        #[arg(long)]
        advertise: String,
        /// The local Consul agent's HTTP address
        #[arg(long, default_value = "127.0.0.1:8500")]
        consul: String,
        /// Seconds between full resyncs
        #[arg(long, default_value_t = 10)]
        resync: u64,
        /// Leave containers without an environment label alone
        #[arg(long)]
        only_labeled: bool,
    },
    /// Render the nginx config from Consul and reload nginx when it changes
    Template {
        #[arg(long)]
        env: String,
        #[arg(long, default_value = "127.0.0.1:8500")]
        consul: String,
        #[arg(long)]
        nginx_container: String,
        #[arg(long)]
        conf_dir: PathBuf,
        #[arg(long)]
        template: Option<PathBuf>,
        #[arg(long, default_value = "stagectl.test")]
        domain: String,
        #[arg(long, default_value_t = 80)]
        port: u16,
        #[arg(long, default_value_t = 10)]
        quiet_ms: u64,
        #[arg(long, default_value_t = 250)]
        max_wait_ms: u64,
    },
    /// Print every service's instances and their health as JSON
    Services {
        #[arg(long, default_value = "127.0.0.1:8500")]
        consul: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
