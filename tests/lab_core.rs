//! End to end on the real engine: a three-host local lab comes up over SSH,
//! Consul elects a leader, a second `up` changes nothing, a container removed
//! by hand comes back, strict host key checking refuses an unknown key, and
//! `down` leaves nothing of the environment (and everything else) behind.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use common::*;

#[test]
fn lab_up_converges_idempotently_and_down_leaves_nothing() {
    let env = LabEnv::new("itcore", 51, "");
    let mut outputs = String::new();

    // Something that is not this environment's, on the same engine, with a
    // name that starts like ours: it must survive `down`.
    let _ = sh("docker", &["rm", "-f", "itcore-bystander"]);
    sh(
        "docker",
        &[
            "run",
            "-d",
            "--name",
            "itcore-bystander",
            "--label",
            "io.stagectl.env=itcore-other",
            "stagectl/base:bookworm",
            "sleep",
            "infinity",
        ],
    )
    .expect_ok("starting the bystander container");

    let up = env.run(&["up"]).expect_ok("first up");
    assert!(up.stdout.contains("itcore is up"), "{}", up.stdout);
    assert!(up.stderr.contains("leader"), "{}", up.stderr);
    outputs += &(up.stdout + &up.stderr);

    let status = env.status_json();
    assert_eq!(status["healthy"], true, "{status:#}");
    assert!(status["consul"]["leader"].is_string(), "{status:#}");
    let members = status["consul"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["status"] == "alive"), "{status:#}");
    assert_eq!(status["consul"]["servers"], 3);

    // The Consul HTTP API listens on the host's loopback only.
    let listening = env.ssh(1, "docker exec -e CONSUL_HTTP_TOKEN_FILE=/run/stagectl/consul-token itcore-consul consul members -http-addr=http://127.0.0.1:8500 >/dev/null && echo ok");
    assert!(listening.stdout.contains("ok"), "{}", listening.stderr);
    // Proven against a port of the same host that must answer from
    // outside (Consul's gossip, TCP 8301), so an unreachable host cannot
    // pass for a closed port.
    let tcp = |port: u16| {
        sh(
            "bash",
            &[
                "-c",
                &format!(
                    "timeout 5 bash -c 'exec 3<>/dev/tcp/{}/{port}' 2>/dev/null && echo open || echo closed",
                    env.ip(1)
                ),
            ],
        )
        .stdout
    };
    assert!(
        tcp(8301).contains("open"),
        "host-1's Consul gossip port does not answer from outside: the check of 8500 would prove nothing"
    );
    assert!(
        tcp(8500).contains("closed"),
        "Consul's HTTP API must not be reachable from outside the host"
    );

    let ids_before = env
        .ssh(
            1,
            "docker ps -q --no-trunc --filter label=io.stagectl.env=itcore",
        )
        .expect_ok("ssh");
    let again = env.run(&["up"]).expect_ok("second up");
    assert!(
        again
            .stdout
            .contains("0 to create, 0 to replace, 0 to start, 0 to remove, 7 unchanged"),
        "second up must change nothing: {}",
        again.stdout
    );
    let ids_after = env
        .ssh(
            1,
            "docker ps -q --no-trunc --filter label=io.stagectl.env=itcore",
        )
        .expect_ok("ssh");
    assert_eq!(ids_before.stdout, ids_after.stdout);
    assert!(!ids_before.stdout.trim().is_empty());
    outputs += &(again.stdout + &again.stderr);

    // A container removed by hand is recreated, and only that one.
    env.ssh(2, "docker rm -f itcore-consul")
        .expect_ok("removing consul by hand");
    let plan = env.run(&["plan"]).expect_ok("plan");
    assert!(
        plan.stdout
            .contains("1 to create, 0 to replace, 0 to start, 0 to remove, 6 unchanged"),
        "{}",
        plan.stdout
    );
    let repaired = env.run(&["up"]).expect_ok("up after removal");
    assert!(
        repaired.stdout.contains("1 to create"),
        "{}",
        repaired.stdout
    );
    assert_eq!(env.status_json()["healthy"], true);
    outputs += &(plan.stdout + &repaired.stdout + &repaired.stderr);

    // Strict host key checking: the same host as a plain ssh:// server with
    // an empty known_hosts is refused, and nothing is created on it.
    let lab = env.state().join("labs/itcore");
    let empty_known = env.dir.path().join("empty_known_hosts");
    std::fs::write(&empty_known, "").unwrap();
    let strict = env.dir.path().join("strict.yaml");
    std::fs::write(
        &strict,
        format!(
            "name: itkey\nhosts:\n  far: {{ address: ssh://root@{}, roles: [app, lb], ssh: {{ identity_file: {}, known_hosts: {} }} }}\n",
            env.ip(1),
            lab.join("id_ed25519").display(),
            empty_known.display()
        ),
    )
    .unwrap();
    let refused = stagectl(&env.state(), &["-f", strict.to_str().unwrap(), "up"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains(&format!("far (ssh://root@{}:22)", env.ip(1))),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("Host key verification failed"),
        "{}",
        refused.stderr
    );
    let untouched = env
        .ssh(1, "docker ps -aq --filter label=io.stagectl.env=itkey")
        .expect_ok("ssh");
    assert!(
        untouched.stdout.trim().is_empty(),
        "nothing may be created on a refused host"
    );

    // The gossip key is never printed.
    let key = std::fs::read_to_string(env.state().join("envs/itcore/gossip.key")).unwrap();
    assert!(key.trim().len() >= 40);
    assert!(
        !outputs.contains(key.trim()),
        "the gossip key must not appear in any output"
    );

    // SSH masters outlive a run: one per lab host, used again by the next
    // command; one that died is replaced; none is kept when asked not to;
    // `down` closes those of the lab hosts it removes.
    let kept = env.state().join("ssh");
    let masters = || -> Vec<String> {
        let found = sh(
            "pgrep",
            &["-f", &format!("{}/[0-9a-f]+[.]ctl", kept.display())],
        );
        let mut pids: Vec<String> = found.stdout.lines().map(str::to_string).collect();
        pids.sort();
        pids
    };
    let before = masters();
    assert_eq!(before.len(), 3, "one kept master per lab host: {before:?}");
    env.run(&["status"]).expect_ok("status");
    assert_eq!(masters(), before, "status reuses the kept masters");
    sh("kill", &[&before[0]]).expect_ok("killing a master");
    env.run(&["status"]).expect_ok("status after a master died");
    let replaced = masters();
    assert_eq!(replaced.len(), 3, "{replaced:?}");
    assert!(
        !replaced.contains(&before[0]),
        "the dead master is replaced"
    );
    env.run_with_env(&[("STAGECTL_SSH_PERSIST", "0")], &["status"])
        .expect_ok("status keeping nothing");
    assert_eq!(masters(), replaced, "no master kept, none replaced");

    let down = env.run(&["down"]).expect_ok("down");
    assert!(down.stdout.contains("itcore is down"), "{}", down.stdout);
    assert!(
        masters().is_empty(),
        "down closes the removed hosts' masters"
    );
    assert!(local_objects("container", "label=io.stagectl.lab=itcore").is_empty());
    assert!(local_objects("network", "label=io.stagectl.lab=itcore").is_empty());
    assert!(local_objects("container", "label=io.stagectl.env=itcore").is_empty());
    assert!(local_objects("volume", "label=io.stagectl.env=itcore").is_empty());
    assert!(
        !env.state().join("envs/itcore").exists(),
        "the gossip key must be gone"
    );
    assert!(
        !env.state().join("labs/itcore").exists(),
        "the lab keys must be gone"
    );
    assert_eq!(
        local_objects("container", "name=itcore-bystander"),
        vec!["itcore-bystander".to_string()]
    );

    // `down` again, with nothing left anywhere: no error.
    env.run(&["down"]).expect_ok("second down");
    sh("docker", &["rm", "-f", "itcore-bystander"]).expect_ok("removing the bystander");
}

#[test]
fn unreachable_host_fails_up_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("t.yaml");
    // Port 1 on loopback: nothing listens there, so ssh is refused at once.
    std::fs::write(
        &topo,
        "name: itunreach\nlab: { subnet: 10.77.52.0/24 }\nhosts:\n  far: { address: ssh://root@127.0.0.1:1, roles: [app] }\n  near-1: { driver: local, address: 10.77.52.11, roles: [lb] }\n  near-2: { driver: local, address: 10.77.52.12 }\n",
    )
    .unwrap();
    let r = stagectl(
        &dir.path().join("state"),
        &["-f", topo.to_str().unwrap(), "up"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("far (ssh://root@127.0.0.1:1)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    assert!(
        r.stderr.contains("nothing was changed on near-1 or near-2"),
        "{}",
        r.stderr
    );
    assert!(local_objects("network", "label=io.stagectl.lab=itunreach").is_empty());
    assert!(local_objects("container", "label=io.stagectl.lab=itunreach").is_empty());
    assert!(
        !dir.path().join("state/envs/itunreach").exists(),
        "no key is generated"
    );
    // And `down` where the environment never existed is not an error, as
    // long as the hosts answer; here the remote one does not.
    let down = stagectl(
        &dir.path().join("state"),
        &["-f", topo.to_str().unwrap(), "down"],
    );
    assert_eq!(
        down.code, 1,
        "an unreachable host makes down fail: {}",
        down.stderr
    );
    assert!(
        down.stderr.contains("far (ssh://root@127.0.0.1:1)"),
        "{}",
        down.stderr
    );
}
