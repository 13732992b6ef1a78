//! What stagectl keeps on the operator's machine between runs.
//!
//! Layout under the state directory (`$STAGECTL_STATE_DIR`, else
//! `$XDG_STATE_HOME/stagectl`, else `~/.local/state/stagectl`):
//!
//! ```text
//! envs/<env>/gossip.key        Consul gossip key, generated once (0600)
//! envs/<env>/record.key        the record key, kept by `down --keep-data` (0600)
//! envs/<env>/tls.key           the TLS seed, kept by `down --keep-data` (0600)
//! labs/<lab>/id_ed25519[.pub]  client key for the lab's hosts
//! labs/<lab>/known_hosts       the lab hosts' keys, so checking stays strict
//! labs/<lab>/hosts/<host>/...  each lab host's own SSH host key
//! ```
//!
//! Secrets are written with mode 0600 in 0700 folders and never printed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine as _;

/// The keys `down --keep-data` keeps beside the gossip key.
#[derive(Debug, Clone, Copy)]
pub enum KeptKey {
    /// The record key (see `cluster::record`).
    Record,
    /// The seed of Consul's TLS (see `cluster::tls`).
    TlsSeed,
}

impl KeptKey {
    fn file(self) -> &'static str {
        match self {
            KeptKey::Record => "record.key",
            KeptKey::TlsSeed => "tls.key",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> Self {
        StateDir { root }
    }

    /// The directory from the environment, as documented above, refused
    /// when someone else could change what it holds (see [`check_private`]).
    pub fn from_env() -> Result<Self> {
        let root = if let Some(dir) = std::env::var_os("STAGECTL_STATE_DIR") {
            PathBuf::from(dir)
        } else if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
            PathBuf::from(dir).join("stagectl")
        } else {
            let home =
                std::env::var_os("HOME").context("neither STAGECTL_STATE_DIR nor HOME is set")?;
            PathBuf::from(home).join(".local/state/stagectl")
        };
        check_private(&root)?;
        Ok(Self::new(root))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn env_dir(&self, env: &str) -> PathBuf {
        self.root.join("envs").join(env)
    }

    pub fn lab_dir(&self, lab: &str) -> PathBuf {
        self.root.join("labs").join(lab)
    }

    /// The environment's gossip key, created on first use.
    pub fn gossip_key(&self, env: &str) -> Result<String> {
        let path = self.env_dir(env).join("gossip.key");
        if let Some(key) = read_secret(&path)? {
            return Ok(key);
        }
        let key = generate_gossip_key()?;
        write_secret(&path, key.as_bytes())?;
        Ok(key)
    }

    /// Keep `key` (found on the hosts) as this environment's gossip key.
    pub fn keep_gossip_key(&self, env: &str, key: &str) -> Result<()> {
        if self.existing_gossip_key(env)?.as_deref() == Some(key) {
            return Ok(());
        }
        private_dir(&self.env_dir(env))?;
        write_secret(&self.env_dir(env).join("gossip.key"), key.as_bytes())
    }

    /// The stored gossip key, if there is one (no creation).
    pub fn existing_gossip_key(&self, env: &str) -> Result<Option<String>> {
        read_secret(&self.env_dir(env).join("gossip.key"))
    }

    /// Keep a key of an environment whose Consul data `down --keep-data`
    /// kept: with no Consul container left, the hosts cannot give it back,
    /// and the kept data knows only the tokens and certificates derived
    /// from it (base64, 0600, beside the gossip key).
    pub fn keep_key(&self, env: &str, kept: KeptKey, key: &[u8]) -> Result<()> {
        use base64::Engine as _;
        private_dir(&self.env_dir(env))?;
        let text = base64::engine::general_purpose::STANDARD.encode(key);
        write_secret(&self.env_dir(env).join(kept.file()), text.as_bytes())
    }

    /// The key `keep_key` kept, if any.
    pub fn kept_key(&self, env: &str, kept: KeptKey) -> Result<Option<Vec<u8>>> {
        use base64::Engine as _;
        let Some(text) = read_secret(&self.env_dir(env).join(kept.file()))? else {
            return Ok(None);
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| anyhow::anyhow!("the kept {} of {env} is not base64: {e}", kept.file()))?;
        Ok(Some(key).filter(|k| k.len() == 32))
    }

    pub fn remove_env(&self, env: &str) -> Result<()> {
        remove_dir(&self.env_dir(env))
    }

    pub fn remove_lab(&self, lab: &str) -> Result<()> {
        remove_dir(&self.lab_dir(lab))
    }
}

/// The state directory holds keys, lock records and SSH control sockets:
/// one owned by another user, or writable by group or others, would let
/// them plant a socket or a key that a run then trusts. Such a directory is
/// refused (an input error: the operator fixes it); one not made yet is fine.
pub fn check_private(root: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
    };
    let shown = root.display();
    if !meta.is_dir() {
        return Err(crate::error::input(format!(
            "state directory {shown} is not a directory"
        )));
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(crate::error::input(format!(
            "state directory {shown} is owned by uid {}, not by you (uid {me}); use a directory of your own (STAGECTL_STATE_DIR)",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(crate::error::input(format!(
            "state directory {shown} is writable by group or others (mode {:o}); run `chmod go-w {shown}` (0700 is best)",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

fn read_secret(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Create a private directory (0700) and its parents.
pub fn private_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Write a file only the owner can read, atomically: a temp file (0600,
/// unique name, so two runs writing at once cannot mix) renamed over it.
pub fn write_secret(path: &Path, content: &[u8]) -> Result<()> {
    let dir = path.parent().context("a secret's path has a parent")?;
    private_dir(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".stagectl-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(content)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// 32 random bytes, base64: what `consul keygen` produces.
pub fn generate_gossip_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the gossip key: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn remove_dir(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn gossip_key_is_created_once_private_and_removed_with_env() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateDir::new(tmp.path().to_path_buf());
        let k1 = s.gossip_key("qa").unwrap();
        let k2 = s.gossip_key("qa").unwrap();
        assert_eq!(k1, k2);
        assert_ne!(k1, s.gossip_key("other").unwrap());
        let meta = fs::metadata(s.env_dir("qa").join("gossip.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        s.remove_env("qa").unwrap();
        assert!(s.existing_gossip_key("qa").unwrap().is_none());
        s.remove_env("qa").unwrap();
    }

    #[test]
    fn a_state_directory_others_can_write_is_refused_as_bad_input() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        check_private(&root).unwrap();
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        check_private(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o770)).unwrap();
        let err = check_private(&root).unwrap_err();
        assert!(crate::error::is_input_error(&err));
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
        fs::set_permissions(&root, fs::Permissions::from_mode(0o757)).unwrap();
        assert!(check_private(&root).is_err());
    }

    #[test]
    fn gossip_keys_are_32_random_bytes() {
        let a = generate_gossip_key().unwrap();
        let b = generate_gossip_key().unwrap();
        assert_ne!(a, b);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap();
        assert_eq!(raw.len(), 32);
    }
}
