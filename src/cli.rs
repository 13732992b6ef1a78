//! The command line as the user types it (clap derive). No behaviour here:
//! `main` hands the parsed [`Cli`] to `commands`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::style::ColorChoice;

#[derive(Debug, Parser)]
#[command(
    name = "stagectl",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("STAGECTL_COMMIT"), ")"),
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

    /// Colour marks and verdicts: auto (terminals, unless NO_COLOR is set), always, never
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    /// Seconds `up` and `down` wait for another run's lock on the environment
    #[arg(long, global = true, default_value_t = 600, value_name = "SECS")]
    pub lock_timeout: u64,

    /// The environment's name, instead of the file's `name` (a preview per
    /// branch from one file: `--env pr-1234`); normalized to a-z 0-9 -
    #[arg(long, global = true, value_name = "NAME")]
    pub env: Option<String>,

    /// A service's image, instead of the file's (repeated): `--image web=team/web:3f2c1a`
    #[arg(long, global = true, value_name = "SERVICE=REF", value_parser = parse_image_override)]
    pub image: Vec<(String, String)>,

    /// A service's key, instead of the file's (repeated), checked like the
    /// file: `--set services.web.per_host=2`, `--set services.web.env.MODE=preview`
    #[arg(long, global = true, value_name = "PATH=VALUE", value_parser = parse_set)]
    pub set: Vec<(String, String)>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the topology file and print what it describes; touches nothing
    Validate {
        /// `json`: the environment, its hosts and services as understood
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print the certificate of the hosts' CA, which signs the edge proxy's HTTPS
    /// certificates (`lb.edge`), to trust it (`curl --cacert`, a browser); never its key
    Ca,
    /// Remove the environments whose `--ttl` has passed, on the hosts of the file
    Gc {
        /// Only say which would be removed, and list what of each would go
        #[arg(long)]
        dry_run: bool,
    },
    /// Show what `up` would create, replace, start or remove on each host; changes nothing
    Plan {
        /// `json`: one object per planned step (the fields `up -o json` reports)
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Create or converge the environment, then wait for the Consul cluster
    Up {
        /// `json`: one event object per line on stdout (see the README)
        #[arg(short = 'o', long, value_enum, default_value_t = EventFormat::Text)]
        output: EventFormat,
        /// Expire the environment this long from now (`90m`, `12h`, `3d`, `2w`; `0`:
        /// never); `stagectl gc` removes expired ones [default: as it was]
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// Make a new record key, and with it every Consul ACL token anew
        /// (the old ones stop working; every agent is replaced, data kept)
        #[arg(long)]
        rotate_keys: bool,
    },
    /// Remove everything of this environment (and its lab, once unused); nothing else
    Down {
        /// Also remove the services' data volumes (kept by default, as
        /// `docker compose down` keeps them)
        #[arg(short = 'v', long, conflicts_with = "keep_data")]
        volumes: bool,
        /// Keep every volume, Consul's data too, and the gossip key
        #[arg(long)]
        keep_data: bool,
        /// Only list what would be removed; changes nothing
        #[arg(long, conflicts_with = "host")]
        dry_run: bool,
        /// Clear only this host: one of the topology (the next `up` puts
        /// it back), or one taken out of it that `up` could not reach
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// `json`: one event object per line on stdout (see the README)
        #[arg(short = 'o', long, value_enum, default_value_t = EventFormat::Text)]
        output: EventFormat,
    },
    /// Show hosts, Docker versions, containers and the Consul cluster
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// Keep watching: redraw as nodes, instances and their health, and LB reloads change (q quits)
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// List the environments found on the topology's hosts, with state, ports and load balancer
    Ls {
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show a component's logs on a host (consul, register, nginx, template, or a service instance such as web-1), or every agent's with --all
    Logs {
        #[arg(required_unless_present = "all")]
        host: Option<String>,
        #[arg(required_unless_present = "all")]
        component: Option<String>,
        /// Every host's registration and template agents, merged in time order
        #[arg(long, conflicts_with_all = ["host", "component"])]
        all: bool,
        /// Keep following the log (-f is the topology file, as everywhere)
        #[arg(short = 'F', long)]
        follow: bool,
        /// Lines from the end to start with
        #[arg(long, default_value = "200")]
        tail: String,
    },
    /// Run a command in a running service instance (such as web-1) and exit with its exit code
    Exec {
        /// `<service>-<i>`, as `status` lists them
        instance: String,
        /// The host to run it on [default: the first that runs the instance]
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        attach: AttachArgs,
        /// The command and its arguments, after `--`
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Run a one-off container of a service (its image, env and secrets) and exit with its exit code
    Run {
        /// The service whose spec the container gets
        service: String,
        /// The host to run it on [default: the service's first host]
        #[arg(long)]
        host: Option<String>,
        /// Mount the service's volumes (those of its instance 1 on that host)
        #[arg(long)]
        volumes: bool,
        #[command(flatten)]
        attach: AttachArgs,
        /// The command and its arguments, after `--` [default: the service's command]
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Show who holds the environment's lock (taken by `up` and `down`)
    #[command(subcommand)]
    Lock(LockCommand),
    /// Free the environment's lock (when its holder is known to be gone): shows the holder and asks first
    Unlock {
        /// Remove the lock only if it is this one (its ID, as `lock status -o json` shows)
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// Do not ask (scripts): remove the lock shown
        #[arg(short, long)]
        yes: bool,
    },
    /// Print a shell completion script: `stagectl completions bash > /etc/bash_completion.d/stagectl`
    Completions { shell: clap_complete::Shell },
    /// Serve the environment's Consul web UI on a local address, tunnelled to a host's Consul (until Ctrl-C)
    Ui {
        /// The host whose Consul to ask [default: the first Consul server]
        host: Option<String>,
        /// Local address to listen on (port 0: a free one)
        #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Open the URL in a browser (xdg-open)
        #[arg(long)]
        open: bool,
        /// Allow a `--listen` address other than loopback: Consul's API
        /// (catalog, keys, the UI) is then reachable from the network
        #[arg(long)]
        expose: bool,
    },
    /// The agents that run in containers on the hosts (started by `up`)
    #[command(subcommand, hide = true)]
    Agent(AgentCommand),
    /// A tiny HTTP server answering with its instance identity (demo image)
    #[command(hide = true)]
    DemoHttp {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Also count worker ticks in the database (needs REDIS_ADDR)
        #[arg(long)]
        worker: bool,
    },
    /// Write the demo app's schema version to its database (demo image)
    #[command(hide = true)]
    DemoMigrate {
        #[arg(long)]
        version: u32,
    },
}

/// `-i`/`-t` of `run` and `exec`, as `docker run -it` has them.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct AttachArgs {
    /// Keep stdin open: what is typed or piped in goes to the command
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal (a console: `-it`)
    #[arg(short = 't', long)]
    pub tty: bool,
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds it, running what, since when; exit 1 when it is held
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
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
        /// The ACL token this agent sends, read from this file
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Seconds between full resyncs
        #[arg(long, default_value_t = 10)]
        resync: u64,
        /// Leave containers without an environment label alone
        #[arg(long)]
        only_labeled: bool,
        /// Service names only this environment's own instances of that
        /// service may register under (repeatable, or comma-separated)
        #[arg(long, value_delimiter = ',', value_name = "SERVICE")]
        reserved: Vec<String>,
    },
    /// Render the nginx config from Consul and reload nginx when it changes
    Template {
        #[arg(long)]
        env: String,
        #[arg(long, default_value = "127.0.0.1:8500")]
        consul: String,
        /// The ACL token this agent sends, read from this file
        #[arg(long)]
        token_file: Option<PathBuf>,
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
        /// The LB's address for clients: a reload counts once nginx serves
        /// the new config there too
        #[arg(long)]
        advertise: Option<std::net::IpAddr>,
        #[arg(long, default_value_t = 3)]
        quiet_ms: u64,
        #[arg(long, default_value_t = 250)]
        max_wait_ms: u64,
        /// A service with a TCP listener on the LB: NAME=PORT (repeated)
        #[arg(long, value_parser = parse_tcp_listener)]
        tcp: Vec<(String, u16)>,
    },
    /// Wait until stdin closes (the process of an environment's lock)
    Hold,
    /// Copy stdin to a TCP connection to ADDR and its answers to stdout (`stagectl ui`'s tunnel)
    Pipe { addr: String },
    /// Print the Consul members and raft peers this host's agent sees, as JSON
    Cluster {
        #[arg(long, default_value = "127.0.0.1:8500")]
        consul: String,
        /// The ACL token this agent sends, read from this file
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Print every service's instances and their health as JSON
    Services {
        #[arg(long, default_value = "127.0.0.1:8500")]
        consul: String,
        /// The ACL token this agent sends, read from this file
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// How a run reports its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventFormat {
    /// A line per host on a terminal, a line per event otherwise (stderr)
    Text,
    /// One JSON object per event (stdout)
    Json,
}

/// `SERVICE=REF` for `--image`.
fn parse_image_override(s: &str) -> Result<(String, String), String> {
    let (service, image) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected SERVICE=IMAGE, like web=team/web:3f2c1a"))?;
    Ok((service.to_string(), image.to_string()))
}

/// `PATH=VALUE` for `--set` (the value is YAML, checked later).
fn parse_set(s: &str) -> Result<(String, String), String> {
    let (path, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected PATH=VALUE, like services.web.per_host=2"))?;
    Ok((path.to_string(), value.to_string()))
}

/// A duration for `--ttl` in seconds: `90m`, `12h`, `3d`, `2w` (or `30s`);
/// `0` for none.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    if s == "0" {
        return Ok(0);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}`: give a unit, like 90m, 12h, 3d or 2w"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 3d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(format!("`{s}`: the unit is one of s, m, h, d, w")),
    };
    n.checked_mul(seconds)
        .filter(|s| (1..=MAX_TTL_SECONDS).contains(s))
        .ok_or_else(|| format!("`{s}` is out of range: from 1s to 365d"))
}

/// The longest `--ttl`: a year. Beyond it an expiry is a typo, and added to
/// the clock it could wrap around.
pub const MAX_TTL_SECONDS: u64 = 365 * 86400;

/// `NAME=PORT` for `agent template --tcp`.
fn parse_tcp_listener(s: &str) -> Result<(String, u16), String> {
    let (name, port) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=PORT"))?;
    let port = port
        .parse()
        .map_err(|_| format!("`{s}`: `{port}` is not a port"))?;
    Ok((name.to_string(), port))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn ttls_and_image_overrides_parse_or_say_why_not() {
        use super::{parse_image_override, parse_ttl};
        assert_eq!(parse_ttl("3d"), Ok(3 * 86400));
        assert_eq!(parse_ttl("90m"), Ok(5400));
        assert_eq!(parse_ttl("0"), Ok(0));
        assert!(parse_ttl("3").unwrap_err().contains("give a unit"));
        assert!(parse_ttl("3y")
            .unwrap_err()
            .contains("one of s, m, h, d, w"));
        assert!(parse_ttl("0d").is_err());
        assert_eq!(parse_ttl("365d"), Ok(super::MAX_TTL_SECONDS));
        assert!(parse_ttl("366d").unwrap_err().contains("out of range"));
        assert!(parse_ttl("18446744073709551000s")
            .unwrap_err()
            .contains("out of range"));
        assert_eq!(
            parse_image_override("web=team/web:3f2c1a"),
            Ok(("web".into(), "team/web:3f2c1a".into()))
        );
        assert!(parse_image_override("team/web")
            .unwrap_err()
            .contains("SERVICE=IMAGE"));
    }
}
