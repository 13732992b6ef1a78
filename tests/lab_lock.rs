//! The environment's lock, on a real local lab: two `up`s started together
//! take turns (the second says whom it waits for) and leave one healthy
//! cluster; an `up` that holds the lock makes another give up after
//! `--lock-timeout`, naming the holder; an `up` killed with SIGKILL while
//! holding it leaves a lock that the next `up` takes over, saying so; a
//! container left created but never started (an interrupted run) is
//! replaced by the next `up`, not started as it is; a kept SSH master whose
//! engine stalls while a `status` asks is not closed under the `up` holding
//! the lock through it (the lock stays held); a second state
//! directory, and a deleted one, find the same environment (no change).
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;

const SERVICES: &str = "services:\n  demo:\n    image: stagectl/demo:latest\n    port: 8080\n";

fn spawn(env: &LabEnv, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_stagectl"))
        .arg("-f")
        .arg(&env.topology)
        .args(args)
        .env("STAGECTL_STATE_DIR", env.state())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn signal(child: &Child, sig: &str) {
    sh("kill", &[sig, &child.id().to_string()]).expect_ok("kill");
}

#[test]
fn runs_take_turns_and_a_dead_holder_is_taken_over() {
    let env = LabEnv::new("itlock", 60, SERVICES);

    // Two first `up`s at once: one creates the lab and the environment,
    // the other waits, then finds it converged.
    let a = spawn(&env, &["up"]);
    let b = spawn(&env, &["up"]);
    let (a, b) = (finish(a), finish(b));
    let a = a.expect_ok("first up");
    let b = b.expect_ok("second up");
    let waited = format!("{}{}", a.stderr, b.stderr);
    assert!(
        waited.contains("waiting for the lock of itlock on local, held by"),
        "one waited for the other:\n{waited}"
    );
    let status = env.status_json();
    assert_eq!(status["healthy"], true, "{status:#}");
    assert_eq!(status["consul"]["members"].as_array().unwrap().len(), 3);
    let free = env.run(&["lock", "status"]).expect_ok("lock status");
    assert!(free.stdout.contains("not locked"), "{}", free.stdout);

    // An `up` holding the lock: a changed service drained for 30 s keeps
    // it busy (then it is stopped: its connection stays open).
    let yaml = std::fs::read_to_string(&env.topology).unwrap();
    std::fs::write(
        &env.topology,
        format!("{yaml}    env: {{ RELEASE: \"2\" }}\n    drain_seconds: 30\n"),
    )
    .unwrap();
    let holder = spawn(&env, &["up"]);
    assert!(
        eventually(30, || env.run(&["lock", "status"]).code == 1),
        "the up takes the lock"
    );
    signal(&holder, "-STOP");
    let locked = env.run(&["lock", "status"]);
    assert!(locked.stdout.contains("running `up`"), "{}", locked.stdout);
    let refused = env.run(&["--lock-timeout", "2", "up"]);
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("is locked on local by") && refused.stderr.contains("running `up`"),
        "{}",
        refused.stderr
    );

    // `unlock` removes only the lock it names: a wrong ID removes nothing,
    // and without a terminal it asks for --yes rather than guess.
    let shown: serde_json::Value =
        serde_json::from_str(&env.run(&["lock", "status", "-o", "json"]).stdout).unwrap();
    let held_id = shown["holder"]["id"].as_str().unwrap().to_string();
    assert_eq!(held_id.len(), 64, "{shown}");
    let wrong = env.run(&["unlock", "--id", "0123456789ab"]);
    assert_eq!(wrong.code, 1, "{}\n{}", wrong.stdout, wrong.stderr);
    assert!(wrong.stdout.contains("nothing removed"), "{}", wrong.stdout);
    let unasked = env.run(&["unlock"]);
    assert_eq!(unasked.code, 2, "{}", unasked.stderr);
    assert!(unasked.stderr.contains("--yes"), "{}", unasked.stderr);
    assert_eq!(env.run(&["lock", "status"]).code, 1, "still held");

    // Killed while holding it: the next `up` takes it over, and converges
    // (with a short drain this time).
    signal(&holder, "-KILL");
    let _ = finish(holder);
    std::fs::write(
        &env.topology,
        format!("{yaml}    env: {{ RELEASE: \"2\" }}\n    drain_seconds: 1\n"),
    )
    .unwrap();
    assert!(
        eventually(10, || env
            .run(&["lock", "status"])
            .stdout
            .contains("is gone")),
        "a dead holder's lock is seen as such"
    );
    let next = env.run(&["up"]).expect_ok("up after the holder died");
    assert!(
        next.stderr.contains("taking over the lock of itlock"),
        "{}",
        next.stderr
    );
    assert_eq!(env.status_json()["healthy"], true);
    // The lock shown before is gone (taken over, then released): unlocking
    // it by its ID is refused and removes nothing.
    let stale = env.run(&["unlock", "--id", &held_id]);
    assert_eq!(stale.code, 1, "{}\n{}", stale.stdout, stale.stderr);
    assert!(stale.stdout.contains("nothing removed"), "{}", stale.stdout);

    // Interrupted between create and start (no gossip key, no config in
    // it yet): the next run replaces it rather than starting it as it is.
    let labels = env
        .ssh(
            1,
            "docker inspect -f '{{range $k, $v := .Config.Labels}}--label {{$k}}={{$v}} {{end}}' itlock-consul",
        )
        .expect_ok("inspect")
        .stdout;
    env.ssh(
        1,
        &format!(
            "docker rm -f itlock-consul && docker create --name itlock-consul {} stagectl/consul:1.8.7",
            labels.trim()
        ),
    )
    .expect_ok("a half-made container");
    let plan = env.run(&["plan"]).expect_ok("plan");
    assert!(plan.stdout.contains("never started"), "{}", plan.stdout);
    env.run(&["up"]).expect_ok("up after an interrupted create");
    // Consul on host-1 was replaced: its agent's checks settle within seconds.
    assert!(
        eventually(20, || env.status_json()["healthy"] == true),
        "{:#}",
        env.status_json()
    );

    // Another state directory (another user, a CI job on this machine),
    // then the first one deleted: the hosts are the source of truth. The
    // lab's access is recovered from the local engine, the gossip key and
    // the ports from the hosts, so nothing changes.
    let other = tempfile::tempdir().unwrap();
    let topology = env.topology.to_str().unwrap();
    let noop = "0 to create, 0 to replace, 0 to start, 0 to remove";
    let plan = stagectl(other.path(), &["-f", topology, "plan"]).expect_ok("plan, second state");
    assert!(plan.stdout.contains(noop), "{}", plan.stdout);
    let up = stagectl(other.path(), &["-f", topology, "up"]).expect_ok("up, second state");
    assert!(up.stdout.contains(noop), "{}", up.stdout);
    let key = |state: &std::path::Path| {
        std::fs::read_to_string(state.join("envs/itlock/gossip.key")).unwrap()
    };
    assert_eq!(key(other.path()), key(&env.state()), "one gossip key");
    let status = env.status_json();
    let last = &status["last_up"];
    assert!(
        last["by"].as_str().is_some_and(|b| b.contains('@')),
        "{status:#}"
    );
    assert_eq!(
        last["hosts"].as_array().map(Vec::len),
        Some(3),
        "{status:#}"
    );
    std::fs::remove_dir_all(env.state()).unwrap();
    let up = env
        .run(&["up"])
        .expect_ok("up after the state directory was deleted");
    assert!(up.stdout.contains(noop), "{}", up.stdout);

    // A kept SSH master whose engine stops answering for a while, with a
    // `status` asking meanwhile: the master is not closed under the `up`
    // that holds the environment's lock through it, so the lock stays held
    // (a second `up` waits for it) and the holder finishes. Hosts reached
    // over SSH by address (no lab in the topology): the lock lives on
    // host-1, through the kept master.
    let lab = env.state().join("labs").join("itlock");
    let plain = env.dir.path().join("plain.yaml");
    let plain_yaml = |release: &str, drain: u32| {
        format!(
            "name: itlock-ssh\nhosts:\n  host-1:\n    address: ssh://root@{}\n    roles: [app, lb]\n    ssh: {{ identity_file: {}, known_hosts: {} }}\nservices:\n  demo: {{ image: stagectl/demo:latest, port: 8080, env: {{ RELEASE: \"{release}\" }}, drain_seconds: {drain} }}\n",
            env.ip(1),
            lab.join("id_ed25519").display(),
            lab.join("known_hosts").display()
        )
    };
    let over_ssh = |args: &[&str]| {
        let mut full = vec!["-f", plain.to_str().unwrap()];
        full.extend_from_slice(args);
        stagectl(&env.state(), &full)
    };
    struct DownOverSsh<'a>(&'a dyn Fn(&[&str]) -> Run);
    impl Drop for DownOverSsh<'_> {
        fn drop(&mut self) {
            // Else its containers would keep the lab from going with itlock.
            let _ = (self.0)(&["down", "-v"]);
        }
    }
    let down_over_ssh = DownOverSsh(&over_ssh);
    std::fs::write(&plain, plain_yaml("1", 1)).unwrap();
    over_ssh(&["up"]).expect_ok("up over SSH");
    std::fs::write(&plain, plain_yaml("2", 20)).unwrap();
    let holder = Command::new(env!("CARGO_BIN_EXE_stagectl"))
        .args(["-f", plain.to_str().unwrap(), "up"])
        .env("STAGECTL_STATE_DIR", env.state())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(30, || over_ssh(&["lock", "status"]).code == 1),
        "the up over SSH takes the lock"
    );
    let dockerd = |signal: &'static str| {
        move || {
            sh(
                "docker",
                &[
                    "exec",
                    "itlock-host-1",
                    "sh",
                    "-c",
                    &format!("kill -{signal} $(pidof dockerd)"),
                ],
            )
            .expect_ok("signal host-1's dockerd")
        }
    };
    dockerd("STOP")();
    // Resumed after 8 s, whatever the status does meanwhile.
    let resume = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(8));
        dockerd("CONT")()
    });
    let asked = over_ssh(&["--connect-timeout", "3", "status"]);
    resume.join().unwrap();
    assert_ne!(
        asked.code, 0,
        "status found host-1's engine not answering: {}\n{}",
        asked.stdout, asked.stderr
    );
    let waiting = over_ssh(&["--lock-timeout", "3", "up"]);
    assert_eq!(
        waiting.code, 1,
        "the lock is still held: {}\n{}",
        waiting.stdout, waiting.stderr
    );
    assert!(
        waiting.stderr.contains("is locked on host-1 by")
            && waiting.stderr.contains("running `up`"),
        "{}",
        waiting.stderr
    );
    finish(holder).expect_ok("the holder's up, its master kept through the stall");
    drop(down_over_ssh);

    env.run(&["down"]).expect_ok("down");
    assert!(local_objects("container", "label=io.stagectl.lock=itlock").is_empty());
    assert!(
        local_objects("container", "label=io.stagectl.lab=itlock").is_empty(),
        "no environment is left on the lab (itlock-ssh went too), so it goes"
    );
}
