//! Opening connections to the hosts' Docker engines.
//!
//! Three transports, one result: a [`DockerHost`] the rest of the program
//! talks to without knowing how it was reached.
//!
//! - `unix://`: the socket directly.
//! - `tcp://`: TLS with client certificates (plain only when the topology
//!   says `insecure: true` or the address is loopback; `validate` enforces).
//! - `ssh://` and lab hosts: the system ssh client, one ControlMaster per
//!   host, with the remote `/var/run/docker.sock` forwarded to a local
//!   socket in a private folder. Host keys are always checked strictly.
//!   Masters are kept between runs for a minute of idleness (`kept_ssh`),
//!   so back-to-back commands skip the handshakes.
//!
//! All hosts are connected in parallel, each under a timeout; a failure is a
//! per-host result carrying one line that names the host, its address and
//! ssh's or the engine's own reason.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bollard::{ClientVersion, Docker, API_DEFAULT_VERSION};
use openssh::{ForwardType, KnownHosts, Session, SessionBuilder};

use crate::engine::docker::DockerHost;
use crate::engine::kept_ssh::KeptMasters;
use crate::topology::{Endpoint, Host, SshTarget, TlsFiles};

/// Seconds bollard waits for one API call before giving up. Image transfers
/// are long single calls, hence generous.
const API_TIMEOUT_SECS: u64 = 600;

/// How long a kept master's engine may take to answer before the master
/// counts as gone and is replaced.
const KEPT_MASTER_PING: Duration = Duration::from_secs(2);

/// How long a lab host may take to boot before it counts as unreachable.
const LAB_BOOT_TIMEOUT: Duration = Duration::from_secs(40);

/// Keys for reaching the hosts of a local lab.
#[derive(Debug, Clone)]
pub struct LabAccess {
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
}

/// A live connection to one host's engine. Dropping it closes the SSH master.
pub struct Connection {
    pub host: DockerHost,
    pub engine_version: String,
    /// `ssh`, `tls`, `tcp`, `unix`: for the progress line.
    pub transport: &'static str,
    _ssh: Option<SshUse>,
}

/// What keeps a connection's SSH transport: a master of the run's own, or
/// its use of a kept one (see `kept_ssh::MasterUse`).
enum SshUse {
    Private(#[allow(dead_code)] Session),
    Kept(#[allow(dead_code)] crate::engine::kept_ssh::MasterUse),
}

/// Opens connections; owns the private folder holding forwarded sockets and
/// ssh control sockets, removed when it is dropped.
pub struct Connector {
    runtime_dir: tempfile::TempDir,
    timeout: Duration,
    lab: Option<LabAccess>,
    /// SSH masters shared with other runs; none: each run its own.
    kept: Option<KeptMasters>,
}

impl Connector {
    pub fn new(timeout: Duration, lab: Option<LabAccess>) -> Result<Self> {
        crate::engine::scratch::clear_orphans();
        Ok(Connector {
            runtime_dir: crate::engine::scratch::private_dir()?,
            timeout,
            lab,
            kept: None,
        })
    }

    /// Use SSH masters kept between runs (see `kept_ssh`).
    pub fn keep_masters(&mut self, kept: Option<KeptMasters>) {
        self.kept = kept;
    }

    /// Keys for lab hosts, once the lab exists.
    pub fn set_lab(&mut self, lab: LabAccess) {
        self.lab = Some(lab);
    }

    /// Connect to every host at once; one result per host, in order.
    pub async fn connect_all(&self, hosts: &[&Host]) -> Vec<Result<Connection>> {
        futures_util::future::join_all(hosts.iter().map(|h| self.connect(h))).await
    }

    /// Connect to one host within the timeout. Lab hosts that are still
    /// booting (sshd or dockerd not up yet) are retried until the deadline.
    pub async fn connect(&self, host: &Host) -> Result<Connection> {
        // A lab host just created needs a few seconds for sshd and dockerd.
        let timeout = if host.is_lab() {
            self.timeout.max(LAB_BOOT_TIMEOUT)
        } else {
            self.timeout
        };
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = tokio::time::timeout_at(deadline.into(), self.try_connect(host)).await;
            let err = match attempt {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => e,
                Err(_) => anyhow!("no answer within {} s", timeout.as_secs()),
            };
            let retry = host.is_lab() && Instant::now() + Duration::from_millis(300) < deadline;
            if !retry {
                return Err(err.context(format!("{} ({})", host.name, host.endpoint)));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn try_connect(&self, host: &Host) -> Result<Connection> {
        let ((docker, engine_version), transport, ssh) = match &host.endpoint {
            Endpoint::Unix { path } => (negotiate(&Dial::Unix(path.clone())).await?, "unix", None),
            Endpoint::Tcp {
                host: h,
                port,
                tls: Some(tls),
            } => {
                let dial = Dial::Tls {
                    addr: format!("{h}:{port}"),
                    tls: tls.clone(),
                };
                (negotiate(&dial).await?, "tls", None)
            }
            Endpoint::Tcp {
                host: h,
                port,
                tls: None,
            } => (
                negotiate(&Dial::Http(format!("{h}:{port}"))).await?,
                "tcp",
                None,
            ),
            Endpoint::Ssh(_) | Endpoint::Lab { .. } => {
                let (target, hermetic) = self.ssh_target(host)?;
                let (engine, session) = self.over_ssh(&host.name, &target, hermetic).await?;
                (engine, "ssh", session)
            }
        };
        Ok(Connection {
            host: DockerHost::new(host.name.clone(), docker),
            engine_version,
            transport,
            _ssh: ssh,
        })
    }

    /// How `host` is reached over SSH, and whether hermetically (the
    /// user's ssh config ignored: lab hosts are ours alone).
    fn ssh_target(&self, host: &Host) -> Result<(SshTarget, bool)> {
        match &host.endpoint {
            Endpoint::Ssh(target) => Ok((target.clone(), false)),
            Endpoint::Lab { ip } => {
                let lab = self
                    .lab
                    .as_ref()
                    .context("no lab keys: the lab has not been created (run `stagectl up`)")?;
                let target = SshTarget {
                    user: "root".into(),
                    host: ip.to_string(),
                    port: 22,
                    identity_file: Some(lab.identity.clone()),
                    known_hosts: Some(lab.known_hosts.clone()),
                };
                Ok((target, true))
            }
            _ => Err(anyhow!("{} is not reached over SSH", host.name)),
        }
    }

    /// Close the kept SSH master of `host`, if there is one: its lab host
    /// is gone, and a new one at the same address must get a new master.
    pub async fn close_kept(&self, host: &Host) {
        let (Some(kept), Ok((target, hermetic))) = (&self.kept, self.ssh_target(host)) else {
            return;
        };
        if let Ok(slot) = kept.slot(&target, hermetic).await {
            slot.forget().await;
        }
    }

    /// The engine of `t` over SSH: through a kept master when there is
    /// one that answers (opened now if there is none), else through a
    /// master of this run's own, closed when the connection is dropped.
    async fn over_ssh(
        &self,
        name: &str,
        t: &SshTarget,
        hermetic: bool,
    ) -> Result<((Docker, String), Option<SshUse>)> {
        let private = || async {
            let (session, socket) = self.ssh_forward(name, t, hermetic).await?;
            Ok::<_, anyhow::Error>((
                negotiate(&Dial::Unix(socket)).await?,
                Some(SshUse::Private(session)),
            ))
        };
        let Some(kept) = &self.kept else {
            return private().await;
        };
        let slot = kept.slot(t, hermetic).await?;
        let dial = Dial::Unix(slot.socket().to_path_buf());
        if slot.may_be_open() {
            // A master whose host went away, or whose engine stopped,
            // does not answer: it is replaced below.
            if let Ok(Ok(engine)) = tokio::time::timeout(KEPT_MASTER_PING, negotiate(&dial)).await {
                return Ok((engine, Some(SshUse::Kept(slot.share()?))));
            }
        }
        // Replacing it would end the connections of the runs using it (a
        // slow engine is not a dead one): only when none does; else this
        // run makes a master of its own.
        let Some(exclusive) = slot.claim()? else {
            drop(slot);
            return private().await;
        };
        kept.open(&slot, t, hermetic, self.timeout)
            .await
            .map_err(|e| ssh_error_text(e.to_string(), t))?;
        let engine = negotiate(&dial).await?;
        // Shared from here, the slot still held: nobody closes it between.
        drop(exclusive);
        Ok((engine, Some(SshUse::Kept(slot.share()?))))
    }

    /// Open an SSH master and forward the remote Docker socket to a local one.
    /// `hermetic` ignores the user's ssh config (lab hosts are ours alone).
    async fn ssh_forward(
        &self,
        name: &str,
        t: &SshTarget,
        hermetic: bool,
    ) -> Result<(Session, PathBuf)> {
        // The ssh library puts no `--` before the destination: a name
        // starting with `-` would be read as an option (validate refuses
        // them; this holds for any other way a target is made).
        if t.host.starts_with('-') || t.user.starts_with('-') {
            return Err(anyhow!(
                "{name}: SSH user `{}` or host `{}` starts with `-`",
                t.user,
                t.host
            ));
        }
        let mut b = SessionBuilder::default();
        b.user(t.user.clone())
            .port(t.port)
            .known_hosts_check(KnownHosts::Strict)
            .connect_timeout(self.timeout.min(Duration::from_secs(30)))
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(self.runtime_dir.path());
        if let Some(k) = &t.identity_file {
            b.keyfile(k);
        }
        if let Some(k) = &t.known_hosts {
            b.user_known_hosts_file(k);
        }
        if hermetic {
            b.config_file("/dev/null");
        }
        let session = b.connect(&t.host).await.map_err(|e| ssh_error(e, t))?;
        let socket = self.runtime_dir.path().join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        session
            .request_port_forward(
                ForwardType::Local,
                socket.clone(),
                PathBuf::from("/var/run/docker.sock"),
            )
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot forward the Docker socket over SSH: {}",
                    error_text(&e)
                )
            })?;
        Ok((session, socket))
    }
}

/// ssh's own words, not openssh's "failed to connect to the remote host".
fn ssh_error(e: openssh::Error, t: &SshTarget) -> anyhow::Error {
    let text = error_text(&e);
    ssh_error_text(if text.is_empty() { e.to_string() } else { text }, t)
}

/// ssh's reason, with what to do about the usual ones.
fn ssh_error_text(mut msg: String, t: &SshTarget) -> anyhow::Error {
    if msg.contains("Host key verification failed")
        || msg.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        let file = t
            .known_hosts
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.ssh/known_hosts".into());
        msg.push_str(&format!(
            "\n  the host's key is not the one in {file}; check it, then add it (ssh-keyscan -p {} {} >> {file})",
            t.port, t.host
        ));
    } else if msg.contains("Permission denied") {
        msg.push_str(&format!(
            "\n  the key was refused; check `ssh.user` ({}) and `ssh.identity_file`",
            t.user
        ));
    }
    anyhow!(msg)
}

/// The deepest message in an error chain, trimmed and folded to one line
/// per cause (ssh writes its reason into the source error).
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        deepest = s.to_string();
        cur = s.source();
    }
    deepest
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn engine_error(e: bollard::errors::Error) -> anyhow::Error {
    anyhow!("the Docker engine did not answer: {}", error_text(&e))
}

/// How to make a client for one host's engine (at an API version).
enum Dial {
    Unix(PathBuf),
    Tls { addr: String, tls: TlsFiles },
    Http(String),
}

impl Dial {
    fn client(&self, version: &ClientVersion) -> Result<Docker, bollard::errors::Error> {
        match self {
            Dial::Unix(path) => {
                Docker::connect_with_unix(&path.to_string_lossy(), API_TIMEOUT_SECS, version)
            }
            Dial::Tls { addr, tls } => Docker::connect_with_ssl(
                addr,
                &tls.key,
                &tls.cert,
                &tls.ca,
                API_TIMEOUT_SECS,
                version,
            ),
            Dial::Http(addr) => Docker::connect_with_http(addr, API_TIMEOUT_SECS, version),
        }
    }
}

/// A client speaking the API version both sides know, and the engine's
/// version: both from one `/version` call (bollard's own negotiation makes
/// its own call, and every host is asked on every run).
async fn negotiate(dial: &Dial) -> Result<(Docker, String)> {
    let first = dial.client(API_DEFAULT_VERSION)?;
    let v = first.version().await.map_err(engine_error)?;
    let engine_version = v.version.unwrap_or_else(|| "unknown".into());
    let server = v.api_version.as_deref().and_then(parse_api_version);
    let docker = match server {
        Some(server) if server < *API_DEFAULT_VERSION => dial.client(&server)?,
        _ => first,
    };
    Ok((docker, engine_version))
}

/// `1.41` as a client version.
fn parse_api_version(text: &str) -> Option<ClientVersion> {
    let (major, minor) = text.split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

/// The engine on this machine (for the lab and as an image source).
pub async fn local_engine() -> Result<DockerHost> {
    let docker = Docker::connect_with_defaults()
        .context("cannot reach the local Docker engine")?
        .negotiate_version()
        .await
        .map_err(|e| anyhow!("cannot reach the local Docker engine: {}", error_text(&e)))?;
    Ok(DockerHost::new("local", docker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_engine_is_spoken_to_in_its_own_api_version() {
        let v = parse_api_version("1.41").unwrap();
        assert_eq!((v.major_version, v.minor_version), (1, 41));
        assert!(v < *API_DEFAULT_VERSION);
        assert!(parse_api_version("1").is_none());
        assert!(parse_api_version("x.41").is_none());
    }
}
