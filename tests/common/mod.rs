//! Helpers for tests that run the real binary against the real Docker engine
//! and a real local lab (Docker-in-Docker hosts reached over SSH).
//!
//! Each test environment gets its own state directory and its own lab subnet,
//! and is taken down when the fixture is dropped, even if the test panicked.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn expect_ok(self, what: &str) -> Self {
        assert_eq!(
            self.code, 0,
            "{what} failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Run stagectl with a private state directory.
pub fn stagectl(state: &Path, args: &[&str]) -> Run {
    stagectl_with_env(state, &[], args)
}

/// Run stagectl with a private state directory and these variables set.
pub fn stagectl_with_env(state: &Path, vars: &[(&str, &str)], args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_stagectl"))
        .args(args)
        .env("STAGECTL_STATE_DIR", state)
        .envs(vars.iter().copied())
        .output()
        .expect("the stagectl binary runs");
    Run::from(out)
}

/// Run a command on this machine (docker CLI, ssh) and return its output.
pub fn sh(program: &str, args: &[&str]) -> Run {
    Run::from(
        Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}")),
    )
}

/// Run a command on a lab host over SSH with the lab's own keys (from the
/// state directory), host key checked strictly.
pub fn lab_ssh(state: &Path, lab: &str, ip: &str, command: &str) -> Run {
    let lab = state.join("labs").join(lab);
    let known = format!("UserKnownHostsFile={}", lab.join("known_hosts").display());
    let dest = format!("root@{ip}");
    sh(
        "ssh",
        &[
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &known,
            "-i",
            lab.join("id_ed25519").to_str().unwrap(),
            "--",
            &dest,
            command,
        ],
    )
}

/// An environment on its own lab, taken down on drop.
pub struct LabEnv {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub topology: PathBuf,
    pub subnet_prefix: String,
}

impl LabEnv {
    /// `name` is the environment (and lab) name; `net` the third octet of
    /// its 10.77.<net>.0/24 lab subnet, unique per test.
    pub fn new(name: &str, net: u8, extra_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("10.77.{net}");
        let yaml = format!(
            "name: {name}\nlab:\n  subnet: {prefix}.0/24\nhosts:\n  host-1: {{ driver: local, address: {prefix}.11, roles: [app] }}\n  host-2: {{ driver: local, address: {prefix}.12, roles: [app] }}\n  host-3: {{ driver: local, address: {prefix}.13, roles: [lb] }}\n{extra_yaml}"
        );
        let topology = dir.path().join("topology.yaml");
        std::fs::write(&topology, yaml).unwrap();
        LabEnv {
            name: name.into(),
            dir,
            topology,
            subnet_prefix: prefix,
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_env(&[], args)
    }

    /// `run` with these variables set (a secret's, say).
    pub fn run_with_env(&self, vars: &[(&str, &str)], args: &[&str]) -> Run {
        let mut full = vec!["-f", self.topology.to_str().unwrap()];
        full.extend_from_slice(args);
        stagectl_with_env(&self.state(), vars, &full)
    }

    pub fn ip(&self, host: u8) -> String {
        format!("{}.{}", self.subnet_prefix, 10 + host)
    }

    /// Run a command on a lab host over SSH with the lab's own keys, host
    /// key checked strictly.
    pub fn ssh(&self, host: u8, command: &str) -> Run {
        lab_ssh(&self.state(), &self.name, &self.ip(host), command)
    }

    pub fn status_json(&self) -> serde_json::Value {
        let r = self.run(&["status", "-o", "json"]);
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("status -o json is JSON ({e}):\n{}\n{}", r.stdout, r.stderr))
    }
}

/// Planned or carried-out steps: (phase, host, action, subject).
/// A step as `plan -o json` lists it and `up -o json` reports it done:
/// (phase, host, action, subject).
pub type StepKey = (String, String, String, String);

/// Steps in the order they were listed or reported. Two lists agree when
/// each phase of each host has the same steps in the same order: hosts run
/// at once, so steps of different hosts (and the checks `up` makes at once)
/// interleave differently from run to run, but one host's steps in one
/// phase run one after the other, in the order the plan gives.
#[derive(Debug, Clone, Default)]
pub struct Steps(pub Vec<StepKey>);

impl Steps {
    pub fn iter(&self) -> std::slice::Iter<'_, StepKey> {
        self.0.iter()
    }

    pub fn contains(&self, step: &StepKey) -> bool {
        self.0.contains(step)
    }

    fn per_phase_and_host(&self) -> std::collections::BTreeMap<(&str, &str), Vec<&StepKey>> {
        let mut by = std::collections::BTreeMap::new();
        for step in &self.0 {
            by.entry((step.0.as_str(), step.1.as_str()))
                .or_insert_with(Vec::new)
                .push(step);
        }
        by
    }
}

impl PartialEq for Steps {
    fn eq(&self, other: &Steps) -> bool {
        self.0.len() == other.0.len() && self.per_phase_and_host() == other.per_phase_and_host()
    }
}

impl FromIterator<StepKey> for Steps {
    fn from_iter<I: IntoIterator<Item = StepKey>>(iter: I) -> Self {
        Steps(iter.into_iter().collect())
    }
}

fn step_key(v: &serde_json::Value) -> StepKey {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (s("phase"), s("host"), s("action"), s("subject"))
}

/// One JSON object per line.
pub fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

impl LabEnv {
    /// The steps `plan -o json` lists.
    pub fn planned(&self, vars: &[(&str, &str)]) -> Steps {
        let r = self
            .run_with_env(vars, &["plan", "-o", "json"])
            .expect_ok("plan -o json");
        json_lines(&r.stdout).iter().map(step_key).collect()
    }

    /// The steps `up -o json` reports done; every event is checked to be
    /// one JSON object with an `event` field, and none a failure.
    pub fn carried_out(&self, vars: &[(&str, &str)]) -> Steps {
        let r = self
            .run_with_env(vars, &["up", "-o", "json"])
            .expect_ok("up -o json");
        let events = json_lines(&r.stdout);
        assert!(
            events.iter().all(|e| e["event"].is_string()),
            "{}",
            r.stdout
        );
        assert_eq!(events.last().unwrap()["event"], "up", "{}", r.stdout);
        assert!(
            !events.iter().any(|e| e["event"] == "failed"),
            "{}",
            r.stdout
        );
        events
            .iter()
            .filter(|e| e["event"] == "done")
            .map(step_key)
            .collect()
    }
}

impl Drop for LabEnv {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v"]);
    }
}

/// Names of local-engine objects carrying `label`.
pub fn local_objects(kind: &str, label: &str) -> Vec<String> {
    let args: Vec<&str> = match kind {
        "container" => vec!["ps", "-a", "--filter", label, "--format", "{{.Names}}"],
        "network" => vec!["network", "ls", "--filter", label, "--format", "{{.Name}}"],
        "volume" => vec!["volume", "ls", "--filter", label, "--format", "{{.Name}}"],
        other => panic!("unknown kind {other}"),
    };
    let r = sh("docker", &args);
    r.stdout
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// One HTTP/1.0 GET; returns the status code and body, or why it failed.
pub fn http_get(addr: &str, path: &str, host: &str) -> Result<(u16, String), String> {
    http_get_full(addr, path, host).map(|(code, _, body)| (code, body))
}

/// One HTTP/1.0 GET; returns the status code, the header block (lowercase)
/// and the body, or why it failed.
pub fn http_get_full(addr: &str, path: &str, host: &str) -> Result<(u16, String, String), String> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .map_err(|e| format!("read: {e}"))?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {buf:?}"))?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((buf.as_str(), ""));
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

/// The instance identity the demo app answered with, if it was one.
pub fn identity(body: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix("instance="))
        .map(str::to_string)
}

/// Poll `check` every 50 ms until it returns true or `secs` pass.
pub fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// Which instance answered, when.
pub type Answers = Vec<(std::time::Instant, String)>;

/// Requests `GET /demo/` (or another path) from an LB in the background,
/// every 10 ms, until finished; every answer that is not a 200 is a
/// failure. Keeps which instance answered when.
pub struct Client {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Requests made, failures, answers.
    handle: std::thread::JoinHandle<(usize, Vec<String>, Answers)>,
}

impl Client {
    pub fn start(lb: &str) -> Self {
        Self::start_at(lb, "/demo/")
    }

    pub fn start_at(lb: &str, path: &str) -> Self {
        Self::start_by_name(lb, path, "x")
    }

    /// Requests with `host` as the Host (a name the LB or edge routes by).
    pub fn start_by_name(lb: &str, path: &str, host: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = {
            let (stop, lb, path, host) = (
                stop.clone(),
                lb.to_string(),
                path.to_string(),
                host.to_string(),
            );
            std::thread::spawn(move || {
                let (mut total, mut failed, mut answers) = (0, Vec::new(), Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    total += 1;
                    match http_get(&lb, &path, &host) {
                        Ok((200, body)) => {
                            if let Some(who) = identity(&body) {
                                answers.push((std::time::Instant::now(), who));
                            }
                        }
                        other => failed.push(format!("{other:?}")),
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                (total, failed, answers)
            })
        };
        Client { stop, handle }
    }

    /// Stop; assert at least `min` requests were made and none failed.
    pub fn finish(self, what: &str, min: usize) {
        self.finish_with_answers(what, min);
    }

    /// As `finish`, and return when each instance answered.
    pub fn finish_with_answers(self, what: &str, min: usize) -> Vec<(std::time::Instant, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (total, failed, answers) = self.handle.join().unwrap();
        assert!(total > min, "{what}: the client kept asking ({total})");
        assert!(
            failed.is_empty(),
            "{what}: {} of {total} requests failed: {failed:?}",
            failed.len()
        );
        println!("{what}: {total} requests, none failed");
        answers
    }
}
