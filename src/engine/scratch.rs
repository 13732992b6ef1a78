//! What a stagectl process keeps under the temporary folder while it runs:
//! a private folder (ssh control sockets, forwarded Docker sockets) and
//! the image archives being sent. Both are named `stagectl-<pid>-…`, so a
//! later run can tell the ones whose process was killed (SIGKILL leaves
//! them, and leaves that process's ssh masters running) and clear them:
//! each master is told to exit, then the files go.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The name prefix of this process's files.
fn prefix() -> String {
    format!("stagectl-{}-", std::process::id())
}

/// Where the private folder goes: short, because unix socket paths are
/// limited to 108 bytes.
const SOCKETS_PARENT: &str = "/tmp";

/// This process's private folder, removed when dropped.
pub fn private_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&prefix())
        .tempdir_in(SOCKETS_PARENT)
        .context("cannot create a private folder for sockets")
}

/// A file for an image archive, removed when dropped.
pub fn archive_file() -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&format!("{}images-", prefix()))
        .tempfile()
        .context("cannot create a file for an image archive")
}

/// Clear what killed stagectl processes of this user left behind. Best
/// effort: what cannot be cleared now is tried again next time.
pub fn clear_orphans() {
    let parents: std::collections::BTreeSet<PathBuf> =
        [PathBuf::from(SOCKETS_PARENT), std::env::temp_dir()].into();
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if orphan_pid(&path).is_some() {
                clear(&path);
            }
        }
    }
}

/// The PID in a `stagectl-<pid>-…` name, if that process is gone and the
/// file is this user's.
fn orphan_pid(path: &Path) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let name = path.file_name()?.to_str()?;
    let pid: i32 = name
        .strip_prefix("stagectl-")?
        .split('-')
        .next()?
        .parse()
        .ok()?;
    // SAFETY: getuid has no preconditions.
    let mine = std::fs::symlink_metadata(path).ok()?.uid() == unsafe { libc::getuid() };
    (mine && pid > 0 && !alive(pid)).then_some(pid)
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let answered = unsafe { libc::kill(pid, 0) } == 0;
    // EPERM: it exists, as another user's.
    answered || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn clear(path: &Path) {
    if path.is_dir() {
        for master in control_sockets(path) {
            tell_to_exit(&master);
        }
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// Ask the ssh master listening on `socket` to exit; given up on after a
/// few seconds (a master that hangs is left to its fate, its files go).
fn tell_to_exit(socket: &Path) {
    let child = std::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-S"])
        .arg(socket)
        .args(["-O", "exit", "--", "stagectl-orphan"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The ssh masters' control sockets in `dir` and its subfolders: named
/// `master` (by the ssh library). The forwarded Docker sockets beside them
/// lead to remote engines, not to ssh, and are left alone.
fn control_sockets(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            found.extend(control_sockets(&entry.path()));
        } else if kind.is_socket() && entry.file_name() == "master" {
            found.push(entry.path());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_of_gone_processes_are_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join(format!("{}x", prefix()));
        // PIDs are below 2^22 on Linux: this one never runs.
        let gone = dir.path().join("stagectl-99999999-x");
        let unrelated = dir.path().join("stagectl-abc");
        for p in [&ours, &gone, &unrelated] {
            std::fs::write(p, b"").unwrap();
        }
        assert_eq!(orphan_pid(&ours), None, "this process runs");
        assert_eq!(orphan_pid(&gone), Some(99_999_999));
        assert_eq!(orphan_pid(&unrelated), None, "no PID in the name");
        clear(&gone);
        assert!(!gone.exists());
    }
}
