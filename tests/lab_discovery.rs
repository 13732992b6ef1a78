//! Discovery and load balancing end to end on a real local lab: two demo
//! instances on host-1 and host-2 answer through nginx on host-3 in turn; an
//! instance stopped by hand leaves the pool with no failed request, and comes
//! back when started; a container started by hand with `docker run -p` is
//! routed to with no stagectl command; another environment's container is
//! not; a template that renders a config nginx refuses never replaces the
//! working one, and `status` says so.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use std::collections::HashMap;

use common::*;

const SERVICES: &str = "services:\n  demo:\n    image: stagectl/demo:latest\n    port: 8080\n";

#[test]
fn instances_are_registered_balanced_and_follow_their_containers() {
    let env = LabEnv::new("itdisc", 53, SERVICES);
    let up = env.run(&["up"]).expect_ok("up");
    assert!(up.stderr.contains("demo → 2 instance(s)"), "{}", up.stderr);
    let lb = format!("{}:80", env.ip(3));
    let by_path = |n: usize| -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for _ in 0..n {
            let (code, body) = http_get(&lb, "/demo/", "x").expect("the LB answers");
            assert_eq!(code, 200, "{body}");
            *seen
                .entry(identity(&body).expect("a demo answer"))
                .or_default() += 1;
        }
        seen
    };

    // Both instances answer, in turn (nginx balances round-robin per worker).
    let seen = by_path(40);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| *n >= 10), "balanced: {seen:?}");
    // Name-based routing too.
    let (code, body) = http_get(&lb, "/", "demo.itdisc.stagectl.test").unwrap();
    assert_eq!(code, 200);
    assert!(identity(&body).is_some(), "{body}");
    // An unknown service is a clear 404, not a random backend.
    assert_eq!(http_get(&lb, "/nope/", "x").unwrap().0, 404);

    let status = env.status_json();
    assert_eq!(status["healthy"], true, "{status:#}");
    assert_eq!(status["services"]["demo"]["passing"], 2);
    assert_eq!(
        status["lb"]["routes"][0]["upstreams"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Stopped by hand: leaves the pool; no request fails from then on.
    let stopped = env
        .ssh(1, "docker inspect -f '{{.Config.Hostname}}' itdisc-demo-1")
        .expect_ok("inspect");
    let stopped = stopped.stdout.trim().to_string();
    assert!(seen.contains_key(&stopped), "{stopped} among {seen:?}");
    env.ssh(1, "docker stop -t 5 itdisc-demo-1")
        .expect_ok("docker stop");
    for _ in 0..60 {
        let (code, body) = http_get(&lb, "/demo/", "x").expect("the LB answers");
        assert_eq!(
            code, 200,
            "a request failed after an instance was stopped: {body}"
        );
        assert_ne!(identity(&body).as_deref(), Some(stopped.as_str()));
    }
    assert!(
        eventually(5, || env.status_json()["services"]["demo"]["passing"] == 1),
        "the stopped instance must leave Consul's passing set"
    );

    // Started again: back in the pool.
    env.ssh(1, "docker start itdisc-demo-1")
        .expect_ok("docker start");
    assert!(
        eventually(5, || by_path(6).contains_key(&stopped)),
        "the restarted instance must be routed to again"
    );

    // The agents' logs are one command away.
    let logs = env.run(&["logs", "host-1", "register"]).expect_ok("logs");
    assert!(
        logs.stdout.contains("registered itdisc-demo-1 as demo"),
        "{}",
        logs.stdout
    );
    let bad = env.run(&["logs", "host-1", "nosuch"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);

    // Consul restarted on an app host: its instance is back in the pool.
    env.ssh(1, "docker restart itdisc-consul")
        .expect_ok("restarting consul");
    assert!(
        eventually(30, || {
            let s = env.status_json();
            s["services"]["demo"]["passing"] == 2 && s["healthy"] == true
        }),
        "after a Consul restart every instance is registered again"
    );
    assert!(eventually(5, || by_path(6).contains_key(&stopped)));

    // Started by hand, with no stagectl command: routed to.
    env.ssh(
        2,
        "docker run -d --name handmade -p 8080 stagectl/demo:latest",
    )
    .expect_ok("docker run");
    let handmade = env
        .ssh(2, "docker inspect -f '{{.Config.Hostname}}' handmade")
        .expect_ok("inspect")
        .stdout
        .trim()
        .to_string();
    assert!(
        eventually(5, || by_path(9).contains_key(&handmade)),
        "a container started by hand must be routed to"
    );

    // Another environment's container on the same host: never registered.
    env.ssh(
        2,
        "docker run -d --name foreign -l io.stagectl.env=someone-else -p 8080 stagectl/demo:latest",
    )
    .expect_ok("docker run");
    let foreign = env
        .ssh(2, "docker inspect -f '{{.Config.Hostname}}' foreign")
        .expect_ok("inspect")
        .stdout
        .trim()
        .to_string();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        !by_path(30).contains_key(&foreign),
        "another environment's container must not be routed to"
    );
    env.ssh(2, "docker rm -f handmade foreign")
        .expect_ok("cleanup");

    // A changed service spec replaces the instances one host at a time,
    // drained first: a client hammering the LB sees no failed request, and
    // no answer from an old instance once its drain has begun, although the
    // drain outlasts the registration agent's 10 s resync.
    let yaml = std::fs::read_to_string(&env.topology).unwrap();
    std::fs::write(
        &env.topology,
        format!("{yaml}    env: {{ RELEASE: \"2\" }}\n    drain_seconds: 12\n"),
    )
    .unwrap();
    let plan = env.run(&["plan"]).expect_ok("plan");
    assert!(
        plan.stdout.contains("replace, drained, one host at a time"),
        "{}",
        plan.stdout
    );
    let old: Vec<(String, String)> = [1, 2]
        .iter()
        .map(|h| {
            let who = env
                .ssh(*h, "docker inspect -f '{{.Config.Hostname}}' itdisc-demo-1")
                .expect_ok("inspect")
                .stdout
                .trim()
                .to_string();
            (format!("host-{h}"), who)
        })
        .collect();
    let client = Client::start(&lb);
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_stagectl"))
        .args(["-f", env.topology.to_str().unwrap(), "up"])
        .env("STAGECTL_STATE_DIR", env.state())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // When each host's drain began, as `up` says it.
    let stderr = up.stderr.take().unwrap();
    let progress = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut drains = Vec::new();
        let mut text = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("(rolling): draining") {
                let host = line.split_whitespace().next().unwrap_or("").to_string();
                drains.push((host, std::time::Instant::now()));
            }
            text.push_str(&line);
            text.push('\n');
        }
        (drains, text)
    });
    let status = up.wait().unwrap();
    let (drains, text) = progress.join().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut up.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "rolling up:\n{stdout}\n{text}");
    let answers = client.finish_with_answers("rollout", 50);
    assert!(stdout.contains("2 to replace"), "{stdout}");
    assert_eq!(drains.len(), 2, "{text}");
    for (host, began) in &drains {
        let (_, who) = old.iter().find(|(h, _)| h == host).unwrap();
        // The drain step is printed just before maintenance mode is set;
        // Consul and the template agent take well under a second to act.
        let grace = *began + std::time::Duration::from_secs(1);
        let late: Vec<_> = answers
            .iter()
            .filter(|(at, id)| id == who && *at > grace)
            .collect();
        assert!(
            late.is_empty(),
            "{host}'s old instance answered {} time(s) after its drain began",
            late.len()
        );
    }
    assert_eq!(env.status_json()["services"]["demo"]["passing"], 2);

    // A template nginx refuses: the working config stays, status says so.
    let broken = env.dir.path().join("broken.j2");
    std::fs::write(
        &broken,
        "server { listen {{ port }}; this_is_not_a_directive on; }\n",
    )
    .unwrap();
    let yaml = std::fs::read_to_string(&env.topology).unwrap();
    std::fs::write(
        &env.topology,
        format!("{yaml}lb:\n  template: {}\n", broken.display()),
    )
    .unwrap();
    let refused = env.run(&["up"]);
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("rejected"), "{}", refused.stderr);
    let status = env.run(&["status", "-o", "json"]);
    assert_eq!(status.code, 1, "a rejected config is a degraded LB");
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["lb"]["last_reload_ok"], false, "{json:#}");
    assert!(
        json["lb"]["last_error"]
            .as_str()
            .unwrap()
            .contains("this_is_not_a_directive"),
        "{json:#}"
    );
    let seen = by_path(10);
    assert!(!seen.is_empty(), "nginx keeps serving the last good config");

    env.run(&["down"]).expect_ok("down");
}
