//! `up` killed with SIGKILL at five points of a first run (the lab's hosts
//! being made, images on their way, Consul, an agent, an app instance),
//! each time by the next `up` at the next point; then one more `up` must
//! leave a healthy environment, and the one after it nothing to do. The
//! points are found in `up -o json`'s events: the kill comes right after
//! the step has started.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

const SERVICES: &str = "services:\n  demo:\n    image: stagectl/demo:latest\n    port: 8080\n";

/// Start `up -o json`, and SIGKILL it as soon as the step `action` on
/// `subject` has started on `host`: the killed process's ID. `None` if the
/// run ended before that step (it was done already).
fn kill_up_at(env: &LabEnv, host: &str, action: &str, subject: &str) -> Option<u32> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stagectl"))
        .arg("-f")
        .arg(&env.topology)
        .args(["up", "-o", "json"])
        .env("STAGECTL_STATE_DIR", env.state())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        let Ok(line) = line else { break };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["event"] == "started"
            && event["host"] == host
            && event["action"] == action
            && event["subject"]
                .as_str()
                .is_some_and(|s| s.contains(subject))
        {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            println!("killed up at: {line}");
            return Some(child.id());
        }
    }
    child.wait().unwrap();
    None
}

/// What a process left under /tmp (`stagectl-<pid>-…`), and the processes
/// (its ssh masters) still naming such a path on their command line.
fn left_behind(pid: u32) -> Vec<String> {
    let prefix = format!("stagectl-{pid}-");
    let mut found: Vec<String> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    for proc_dir in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(proc_dir.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&format!("/tmp/{prefix}")) {
            found.push(format!("process {}", cmdline.trim()));
        }
    }
    found
}

#[test]
fn up_killed_at_any_point_is_finished_by_the_next_up() {
    let env = LabEnv::new("itkill", 63, SERVICES);
    // Hosts work in parallel: the points follow one host's steps, so each
    // run gets past the point the previous one was killed at, and no
    // further than the next.
    let points = [
        ("lab", "create_lab_host", "host-2"),
        ("host-1", "deliver_images", "images"),
        ("host-1", "create", "itkill-consul"),
        ("host-1", "create", "itkill-register"),
        ("host-1", "create", "itkill-demo-1"),
    ];
    let mut killed = Vec::new();
    for (host, action, subject) in points {
        let pid = kill_up_at(&env, host, action, subject);
        assert!(
            pid.is_some(),
            "up ended before {action} {subject} on {host}"
        );
        killed.extend(pid);
    }
    // Each killed run left its ssh masters and private folder; every run
    // clears what earlier killed ones left.
    let last = killed[killed.len() - 1];
    assert!(
        !left_behind(last).is_empty(),
        "a killed run leaves its ssh masters (else this test proves nothing)"
    );

    let up = env.run(&["up"]).expect_ok("up after five interrupted runs");
    assert!(
        eventually(30, || env.status_json()["healthy"] == true),
        "{:#}\n{}",
        env.status_json(),
        up.stderr
    );
    for pid in &killed {
        assert_eq!(left_behind(*pid), Vec::<String>::new(), "left by up {pid}");
    }
    let again = env.run(&["up"]).expect_ok("one more up");
    assert!(
        again
            .stdout
            .contains("0 to create, 0 to replace, 0 to start, 0 to remove"),
        "{}",
        again.stdout
    );
}
