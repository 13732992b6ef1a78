//! SSH connections kept open between runs, the way Ansible keeps its
//! ControlMasters: a run that finds a live master for a host uses the
//! Docker socket it forwards and opens no SSH connection of its own.
//!
//! A handshake costs a few hundred milliseconds per host (more over a WAN),
//! which is most of what a no-op `up` or a `status` would otherwise spend.
//! Each master runs `ssh -M -N -L <key>.sock:/var/run/docker.sock` with
//! `ControlPersist`: it ends by itself once no run has used its socket for
//! the idle time (60 s unless `STAGECTL_SSH_PERSIST` says otherwise; 0
//! keeps nothing: every run opens and closes its own).
//!
//! Where: `<state dir>/ssh/` (0700, like the keys beside it). A master is
//! found by a key hashed from everything that decides what it reaches and
//! how it was checked (user, address, port, identity, known_hosts file,
//! whether the user's ssh config applies), so a changed topology never
//! reuses a master made for another. Host keys were checked strictly when
//! the master was opened; a master whose host went away is noticed by the
//! engine not answering and replaced.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha256};

use crate::topology::SshTarget;

/// The idle time when `STAGECTL_SSH_PERSIST` is not set.
const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// Unix socket paths are limited to 108 bytes; `<key>.sock` adds 22.
const MAX_DIR_LEN: usize = 80;

/// Where kept masters live and how long they stay idle.
#[derive(Debug, Clone)]
pub struct KeptMasters {
    dir: PathBuf,
    idle: Duration,
}

/// One host's master files; holding it holds the host's lock file, so two
/// runs starting at once open one master, not two.
pub struct MasterSlot {
    sock: PathBuf,
    ctl: PathBuf,
    log: PathBuf,
    lock_path: PathBuf,
    users_path: PathBuf,
    _lock: std::fs::File,
}

/// A run's use of a kept master: a shared flock on its `users` file, held
/// while the run's connection lives. A master is closed or replaced only by
/// a run that gets the exclusive lock, so a master that answers slowly
/// (a busy or paused host) is never closed under another live run, whose
/// connection (and, for the environment's lock, its hold) would end with it.
pub struct MasterUse {
    _users: std::fs::File,
}

impl KeptMasters {
    /// Masters under `dir`, idle for `STAGECTL_SSH_PERSIST` seconds;
    /// `None` (every run keeps its own) when that is 0, or `dir`'s path is
    /// too long for a socket.
    pub fn from_env(dir: PathBuf) -> Result<Option<Self>> {
        let idle = match std::env::var("STAGECTL_SSH_PERSIST") {
            Err(_) => DEFAULT_IDLE,
            Ok(v) => Duration::from_secs(v.trim().parse().map_err(|_| {
                anyhow!("STAGECTL_SSH_PERSIST={v:?}: expected whole seconds (0: keep no SSH connection between runs)")
            })?),
        };
        if idle.is_zero() || dir.as_os_str().len() > MAX_DIR_LEN {
            return Ok(None);
        }
        Ok(Some(KeptMasters { dir, idle }))
    }

    /// The slot of the master for `t`, locked for this run until dropped.
    pub async fn slot(&self, t: &SshTarget, hermetic: bool) -> Result<MasterSlot> {
        crate::state::private_dir(&self.dir)?;
        let key = key(t, hermetic);
        let at = |ext: &str| self.dir.join(format!("{key}.{ext}"));
        let lock_path = at("lock");
        let locking = lock_path.clone();
        // Blocking: another run holds it only while it opens the master.
        let lock = tokio::task::spawn_blocking(move || -> Result<std::fs::File> {
            let lock_path = locking;
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .mode(0o600)
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .with_context(|| format!("cannot open {}", lock_path.display()))?;
            f.lock()
                .with_context(|| format!("cannot lock {}", lock_path.display()))?;
            Ok(f)
        })
        .await??;
        Ok(MasterSlot {
            sock: at("sock"),
            ctl: at("ctl"),
            log: at("log"),
            lock_path,
            users_path: at("users"),
            _lock: lock,
        })
    }

    /// Open a master for `t` whose forwarded Docker socket is
    /// [`MasterSlot::socket`], replacing whatever the slot held.
    pub async fn open(
        &self,
        slot: &MasterSlot,
        t: &SshTarget,
        hermetic: bool,
        connect_timeout: Duration,
    ) -> Result<()> {
        slot.close().await;
        let _ = std::fs::remove_file(&slot.log);
        let mut ssh = tokio::process::Command::new("ssh");
        ssh.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // ssh writes its reasons here: with -f its stderr would be
            // held open by the master in the background.
            .arg("-E")
            .arg(&slot.log)
            .arg("-S")
            .arg(&slot.ctl)
            .args(["-M", "-f", "-N"])
            .args(options(self.idle, connect_timeout))
            .arg("-L")
            .arg(format!("{}:/var/run/docker.sock", slot.sock.display()))
            .arg("-p")
            .arg(t.port.to_string())
            .arg("-l")
            .arg(&t.user);
        if let Some(k) = &t.identity_file {
            ssh.args(["-o", "IdentitiesOnly=yes", "-i"]).arg(k);
        }
        if let Some(k) = &t.known_hosts {
            ssh.arg("-o")
                .arg(format!("UserKnownHostsFile={}", k.display()));
        }
        if hermetic {
            ssh.args(["-F", "/dev/null"]);
        }
        // `--` so that an address can never be read as an option.
        ssh.arg("--").arg(&t.host);
        let status = ssh.status().await.context("cannot run ssh")?;
        if status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(&slot.log).unwrap_or_default();
        let _ = std::fs::remove_file(&slot.log);
        let reason: Vec<&str> = log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
            .collect();
        Err(anyhow!(if reason.is_empty() {
            format!("ssh exited with {status}")
        } else {
            reason.join("; ")
        }))
    }
}

impl MasterSlot {
    fn users_file(&self) -> Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .mode(0o600)
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.users_path)
            .with_context(|| format!("cannot open {}", self.users_path.display()))
    }

    /// Record this run as a user of the master (a shared lock). Called
    /// with the slot held, so no run replaces the master in between.
    pub fn share(&self) -> Result<MasterUse> {
        let users = self.users_file()?;
        users
            .lock_shared()
            .with_context(|| format!("cannot lock {}", self.users_path.display()))?;
        Ok(MasterUse { _users: users })
    }

    /// The exclusive lock that allows closing or replacing the master;
    /// `None` while another live run uses it.
    pub fn claim(&self) -> Result<Option<std::fs::File>> {
        let users = self.users_file()?;
        match users.try_lock() {
            Ok(()) => Ok(Some(users)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", self.users_path.display()))
            }
        }
    }

    /// The local end of the forwarded Docker socket.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// Whether a master may be there (its socket exists); whether it
    /// answers is for the caller to find out.
    pub fn may_be_open(&self) -> bool {
        self.sock.exists() && self.ctl.exists()
    }

    /// Tell the master to exit, if one runs; best effort.
    pub async fn close(&self) {
        if self.ctl.exists() {
            let _ = tokio::process::Command::new("ssh")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .arg("-S")
                .arg(&self.ctl)
                .args(["-O", "exit", "--", "stagectl-master"])
                .status()
                .await;
        }
        let _ = std::fs::remove_file(&self.ctl);
        let _ = std::fs::remove_file(&self.sock);
        let _ = std::fs::remove_file(&self.log);
    }

    /// Close the master and remove every file of it, the lock file too:
    /// its host is gone for good (a lab removed), and `down` leaves no
    /// trace in the state directory.
    pub async fn forget(self) {
        self.close().await;
        let _ = std::fs::remove_file(&self.lock_path);
        let _ = std::fs::remove_file(&self.users_path);
    }
}

/// ssh's options for a kept master. Strict host keys always; the forward
/// must be in place before ssh goes to the background, and a stale socket
/// file from a master that ended is replaced.
fn options(idle: Duration, connect_timeout: Duration) -> Vec<String> {
    [
        format!("ControlPersist={}", idle.as_secs()),
        "BatchMode=yes".into(),
        "StrictHostKeyChecking=yes".into(),
        "ExitOnForwardFailure=yes".into(),
        "StreamLocalBindUnlink=yes".into(),
        format!("ConnectTimeout={}", connect_timeout.as_secs().clamp(1, 30)),
        "ServerAliveInterval=15".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect()
}

/// 16 hex characters naming a master: short, for the socket path limit.
fn key(t: &SshTarget, hermetic: bool) -> String {
    let mut h = Sha256::new();
    for part in [
        t.user.as_str(),
        t.host.as_str(),
        &t.port.to_string(),
        &t.identity_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        &t.known_hosts
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        if hermetic { "hermetic" } else { "config" },
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, known_hosts: Option<&str>) -> SshTarget {
        SshTarget {
            user: "deploy".into(),
            host: host.into(),
            port: 22,
            identity_file: None,
            known_hosts: known_hosts.map(PathBuf::from),
        }
    }

    #[test]
    fn a_master_is_never_shared_by_targets_that_differ_in_how_they_are_reached_or_checked() {
        let base = key(&target("10.0.0.1", None), false);
        assert_eq!(base.len(), 16);
        assert_eq!(base, key(&target("10.0.0.1", None), false));
        assert_ne!(base, key(&target("10.0.0.2", None), false));
        assert_ne!(base, key(&target("10.0.0.1", Some("/k")), false));
        assert_ne!(base, key(&target("10.0.0.1", None), true));
        let mut other_port = target("10.0.0.1", None);
        other_port.port = 2222;
        assert_ne!(base, key(&other_port, false));
    }

    #[test]
    fn a_long_state_dir_keeps_no_master_rather_than_fail_on_the_socket_path() {
        let long = PathBuf::from("/".to_string() + &"d".repeat(MAX_DIR_LEN + 1));
        assert!(KeptMasters::from_env(long).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_master_in_use_by_a_live_run_cannot_be_claimed_for_closing() {
        let dir = tempfile::tempdir().unwrap();
        let kept = KeptMasters {
            dir: dir.path().join("ssh"),
            idle: DEFAULT_IDLE,
        };
        let t = target("10.0.0.1", None);
        let slot = kept.slot(&t, true).await.unwrap();
        assert!(slot.claim().unwrap().is_some(), "unused: claimable");
        let other_run = slot.share().unwrap();
        drop(slot);
        let slot = kept.slot(&t, true).await.unwrap();
        assert!(slot.claim().unwrap().is_none(), "in use: not claimable");
        drop(other_run);
        assert!(slot.claim().unwrap().is_some(), "released: claimable again");
    }

    #[test]
    fn a_kept_master_checks_host_keys_strictly_and_ends_when_idle() {
        let opts = options(Duration::from_secs(60), Duration::from_secs(20)).join(" ");
        assert!(opts.contains("StrictHostKeyChecking=yes"));
        assert!(opts.contains("ControlPersist=60"));
        assert!(opts.contains("ConnectTimeout=20"));
    }
}
