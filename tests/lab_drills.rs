//! Failure drills on a real local lab, each with a bound on time that it
//! asserts and prints (`cargo test --test lab_drills -- --nocapture` shows
//! the measured figures). One lab serves every drill, in order; each drill
//! leaves the environment healthy for the next.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const SERVICES: &str = "services:\n  demo:\n    image: stagectl/demo:latest\n    port: 8080\n";

/// Host IPs in the LB's pool, as the template agent on host-3 last wrote
/// them (read over SSH from host-3, which stays up in every drill).
fn pool(env: &LabEnv) -> Result<Vec<String>, String> {
    let r = env.ssh(
        3,
        "docker exec itdrill-template cat /conf/stagectl-status.json",
    );
    if r.code != 0 {
        return Err(format!(
            "the LB status file cannot be read: {}",
            r.stderr.trim()
        ));
    }
    let json: serde_json::Value = serde_json::from_str(&r.stdout)
        .map_err(|e| format!("the LB status file is not JSON ({e}): {}", r.stdout))?;
    let routes = json["routes"]
        .as_array()
        .ok_or_else(|| format!("the LB status has no routes: {json}"))?;
    Ok(routes
        .iter()
        .flat_map(|r| r["upstreams"].as_array().cloned().unwrap_or_default())
        .filter_map(|u| {
            u.as_str()
                .and_then(|u| u.split(':').next())
                .map(str::to_string)
        })
        .collect())
}

/// `host` is out of a pool that could be read and still routes another
/// host: a status file that cannot be read (or an empty pool) never counts
/// as "out of the pool".
fn out_of_pool(env: &LabEnv, host: &str) -> bool {
    matches!(pool(env), Ok(p) if !p.is_empty() && !p.iter().any(|h| h == host))
}

/// `host` is in a pool that could be read.
fn in_pool(env: &LabEnv, host: &str) -> bool {
    matches!(pool(env), Ok(p) if p.iter().any(|h| h == host))
}

/// Upstream addresses (host IPs) seen in ten answers.
fn upstream_hosts(lb: &str) -> Result<HashMap<String, usize>, String> {
    let mut seen = HashMap::new();
    for i in 0..10 {
        match http_get_headers(lb) {
            Ok((200, body)) => {
                for addr in body.split(',') {
                    let ip = addr.trim().split(':').next().unwrap_or("").to_string();
                    *seen.entry(ip).or_default() += 1;
                }
            }
            // A failed answer is no evidence of where requests go.
            Ok((code, _)) => return Err(format!("answer {i} from {lb}: {code}")),
            Err(e) => return Err(format!("answer {i} from {lb}: {e}")),
        }
    }
    Ok(seen)
}

/// Ten answers in a row, all served, and none by `host`.
fn served_without(lb: &str, host: &str) -> bool {
    matches!(upstream_hosts(lb), Ok(seen) if !seen.is_empty() && !seen.contains_key(host))
}

/// Ten answers in a row, all served, one of them by `host`.
fn served_by(lb: &str, host: &str) -> bool {
    upstream_hosts(lb).is_ok_and(|seen| seen.contains_key(host))
}

/// The containers status's problems name as not running on host-1, when
/// that is all they say: at least one, and besides them only the
/// shortfall of demo instances that one of them (an instance or the
/// registration agent) explains. Anything else is an error with the list.
fn stopped_on_host1(problems: &serde_json::Value) -> Result<Vec<String>, String> {
    let list: Vec<&str> = problems
        .as_array()
        .ok_or_else(|| format!("status has no problems list: {problems}"))?
        .iter()
        .map(|p| {
            p.as_str()
                .ok_or_else(|| format!("a problem that is not text: {p}"))
        })
        .collect::<Result<_, _>>()?;
    let stopped: Vec<String> = list
        .iter()
        .filter_map(|p| p.strip_prefix("host-1: ")?.strip_suffix(" is not running"))
        .map(str::to_string)
        .collect();
    if stopped.is_empty() {
        return Err(format!(
            "status names nothing host-1's engine left stopped: {problems}"
        ));
    }
    let explains_shortfall = stopped
        .iter()
        .any(|c| c.starts_with("itdrill-demo-") || c == "itdrill-register");
    let unexplained: Vec<&&str> = list
        .iter()
        .filter(|p| !(p.starts_with("host-1: ") && p.ends_with(" is not running")))
        .filter(|p| {
            !(explains_shortfall
                && p.starts_with("service demo: ")
                && p.ends_with(" instances passing"))
        })
        .collect();
    if unexplained.is_empty() {
        Ok(stopped)
    } else {
        Err(format!(
            "status says more than what host-1 left stopped: {unexplained:?}"
        ))
    }
}

/// Whether `container` runs on lab host `n`, as its engine says; None when
/// the engine cannot be asked or does not know it.
fn running_on(env: &LabEnv, n: u8, container: &str) -> Option<bool> {
    let out = env.ssh(
        n,
        &format!("docker inspect -f '{{{{.State.Running}}}}' {container}"),
    );
    if out.code != 0 {
        return None;
    }
    match out.stdout.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// GET /demo/ and return the X-Stagectl-Upstream header.
fn http_get_headers(lb: &str) -> Result<(u16, String), String> {
    let (code, head, _) = http_get_full(lb, "/demo/", "x")?;
    let upstream = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("x-stagectl-upstream:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((code, upstream))
}

/// Seconds until `check` holds, asserting it does within `bound`.
fn within(what: &str, bound: u64, mut check: impl FnMut() -> bool) -> f64 {
    let t0 = Instant::now();
    assert!(
        eventually(bound, &mut check),
        "{what}: not within {bound} s"
    );
    let secs = t0.elapsed().as_secs_f64();
    println!("drill {what}: {secs:.1} s (bound {bound} s)");
    secs
}

/// Seconds until `status` calls the environment healthy, asserting it does
/// within `bound`; if not, what status still finds wrong and how each
/// host's Consul agent sees the members are printed first.
fn within_healthy(env: &LabEnv, what: &str, bound: u64) -> f64 {
    let t0 = Instant::now();
    let mut last_problems = serde_json::Value::Null;
    if !eventually(bound, || {
        let status = env.status_json();
        last_problems = status["problems"].clone();
        status["healthy"] == true
    }) {
        println!("status problems, last seen within the bound: {last_problems}");
        println!("status problems now: {}", env.status_json()["problems"]);
        for h in 1..=3 {
            let cmd = "docker exec itdrill-consul consul members 2>&1";
            println!("host-{h}$ {cmd}\n{}", env.ssh(h, cmd).stdout);
        }
        panic!("{what}: not within {bound} s");
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("drill {what}: {secs:.1} s (bound {bound} s)");
    secs
}

/// What host-1's engine shows and complained of (its containers, the
/// registration agent's last words, its dockerd's errors and warnings).
fn print_engine_complaints(env: &LabEnv) {
    for cmd in [
        "docker ps -a --format '{{.Names}} {{.Status}}'",
        "docker logs --tail 20 itdrill-register 2>&1",
    ] {
        println!("host-1$ {cmd}\n{}", env.ssh(1, cmd).stdout);
    }
    let engine_log = sh("docker", &["logs", "itdrill-host-1"]);
    let complaints: Vec<&str> = engine_log
        .stderr
        .lines()
        .chain(engine_log.stdout.lines())
        .filter(|l| l.contains("level=error") || l.contains("level=warn"))
        .collect();
    println!(
        "host-1's dockerd, errors and warnings:\n{}",
        complaints[complaints.len().saturating_sub(30)..].join("\n")
    );
}

#[test]
fn failure_drills() {
    let env = LabEnv::new("itdrill", 54, SERVICES);
    env.run(&["up"]).expect_ok("up");
    let lb = format!("{}:80", env.ip(3));
    let host1 = env.ip(1);
    let healthy = |env: &LabEnv| env.status_json()["healthy"] == true;

    // 1. The Consul leader's container is killed: a leader remains, the LB
    //    keeps serving; `up` restores the killed agent.
    let status = env.status_json();
    let leader = status["consul"]["leader"].as_str().unwrap().to_string();
    let n: u8 = leader.trim_start_matches("host-").parse().unwrap();
    let client = Client::start(&lb);
    env.ssh(n, "docker kill itdrill-consul")
        .expect_ok("killing the leader's consul");
    within("consul leader killed → new leader", 15, || {
        let s = env.status_json();
        s["consul"]["leader"].as_str().is_some_and(|l| l != leader)
    });
    client.finish("drill consul leader killed", 10);
    let restored = env.run(&["up"]).expect_ok("up restores consul");
    assert!(
        restored.stdout.contains("1 to start"),
        "{}",
        restored.stdout
    );
    within_healthy(&env, "up after the kill → healthy", 15);

    // 2. A whole app host stopped (its lab container killed): its instance
    //    leaves the LB pool once Consul declares the node failed, the other
    //    keeps serving; started again, it comes back. (`docker pause` would
    //    not do: the inner containers' cgroups are not under the lab host's,
    //    so Consul there would keep running.) Requests already sent to the
    //    dead host wait for their timeout, so the client checks the requests
    //    made once the pool has changed.
    sh("docker", &["kill", "itdrill-host-1"]).expect_ok("stopping host-1");
    within("app host stopped → out of the pool", 10, || {
        out_of_pool(&env, &host1)
    });
    let client = Client::start(&lb);
    std::thread::sleep(Duration::from_secs(2));
    client.finish("drill app host stopped, other host serving", 10);
    sh("docker", &["start", "itdrill-host-1"]).expect_ok("starting host-1");
    // Seen on fresh CI machines, never here: the restarted inner dockerd
    // left one of the containers it should have restarted exited (the app
    // instance once, the registration agent once). stagectl is not a
    // supervisor; what it owes is that `status` says so and `up` brings
    // the container back. So: healthy within 30 s, or status names what
    // does not run on host-1, and after `up` it is healthy.
    if !eventually(30, || in_pool(&env, &host1) && healthy(&env)) {
        let problems = env.status_json()["problems"].clone();
        println!("drill app host started: status says {problems}");
        print_engine_complaints(&env);
        let left_stopped = stopped_on_host1(&problems).unwrap_or_else(|e| panic!("{e}"));
        // What status names must be what host-1's engine really left
        // stopped: read from that engine, not taken from status's word.
        for container in &left_stopped {
            assert_eq!(
                running_on(&env, 1, container),
                Some(false),
                "status says {container} on host-1 is not running; its engine disagrees"
            );
        }
        env.run(&["up"])
            .expect_ok("up after the engine left a container exited");
        for container in &left_stopped {
            assert_eq!(
                running_on(&env, 1, container),
                Some(true),
                "up did not start {container} on host-1 again"
            );
        }
        println!(
            "drill app host started: its engine left {left_stopped:?} exited; up started them"
        );
    }
    within("app host started → answering", 5, || {
        served_by(&lb, &host1)
    });
    within_healthy(&env, "app host started → healthy", 30);

    // 3. The app host cut off from the others, then reconnected: same. The
    //    way back is slower: Consul's gossip retries failed members every
    //    30 s (serf's reconnect interval, not configurable in Consul 1.8);
    //    measured from 8 to 53 s, hence the generous bound.
    sh(
        "docker",
        &["network", "disconnect", "itdrill-lab", "itdrill-host-1"],
    )
    .expect_ok("disconnecting host-1");
    within("app host disconnected → out of the pool", 10, || {
        out_of_pool(&env, &host1)
    });
    let client = Client::start(&lb);
    std::thread::sleep(Duration::from_secs(2));
    client.finish("drill app host disconnected, other host serving", 10);
    sh(
        "docker",
        &[
            "network",
            "connect",
            "--ip",
            &host1,
            "itdrill-lab",
            "itdrill-host-1",
        ],
    )
    .expect_ok("reconnecting host-1");
    within("app host reconnected → back in the pool", 120, || {
        in_pool(&env, &host1)
    });
    // The members come back alive through gossip, which retries failed
    // members every 30 s: on top of the time to be back in the pool, up to
    // two retries (a CI run saw it healthy just after 45 s).
    within_healthy(&env, "app host reconnected → healthy", 60);

    // 4. The template agent crashes (its process killed): nginx keeps
    //    serving the last good config; the agent restarts and catches up.
    let client = Client::start(&lb);
    env.ssh(
        3,
        "kill -9 $(docker inspect -f '{{.State.Pid}}' itdrill-template)",
    )
    .expect_ok("killing the template agent");
    within("template agent crashed → restarted", 15, || {
        env.ssh(
            3,
            "docker inspect -f '{{.State.Running}} {{.RestartCount}}' itdrill-template",
        )
        .stdout
        .trim()
            == "true 1"
    });
    client.finish("drill template agent crashed", 10);
    // The change is made on host-2: host-1's Consul agent was cut off in
    // drill 3 and may still be settling (its deregistration calls were
    // seen to block for over 5 s in CI), which is not what this measures.
    let host2 = env.ip(2);
    env.ssh(2, "docker stop itdrill-demo-1")
        .expect_ok("stopping an instance");
    let t0 = Instant::now();
    if !eventually(5, || served_without(&lb, &host2)) {
        for (host, cmd) in [
            (3, "docker logs -t --tail 30 itdrill-template 2>&1"),
            (2, "docker logs -t --tail 10 itdrill-register 2>&1"),
        ] {
            println!("host-{host}$ {cmd}\n{}", env.ssh(host, cmd).stdout);
        }
        panic!("restarted template agent → follows changes: not within 5 s");
    }
    println!(
        "drill restarted template agent → follows changes: {:.1} s (bound 5 s)",
        t0.elapsed().as_secs_f64()
    );
    env.ssh(2, "docker start itdrill-demo-1")
        .expect_ok("starting it again");
    within("restarted template agent → instance back", 5, || {
        served_by(&lb, &host2)
    });

    // 5. `up` interrupted in the middle: a second `up` converges, with no
    //    duplicate containers.
    // Each attempt changes the instance count, so `up` always has work; the
    // SIGINT comes sooner each time until it lands mid-way (exit 130).
    let yaml = std::fs::read_to_string(&env.topology).unwrap();
    let mut interrupted = false;
    for (attempt, delay_ms) in [800u64, 400, 200, 100, 50].into_iter().enumerate() {
        let per_host = if attempt % 2 == 0 { 3 } else { 2 };
        std::fs::write(&env.topology, format!("{yaml}    per_host: {per_host}\n")).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stagectl"))
            .args(["-f", env.topology.to_str().unwrap(), "up"])
            .env("STAGECTL_STATE_DIR", env.state())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: sending SIGINT to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let code = child.wait().unwrap();
        println!("drill up interrupted after {delay_ms} ms: {code}");
        if code.code() == Some(130) {
            interrupted = true;
            break;
        }
    }
    assert!(interrupted, "no attempt interrupted `up` mid-way");
    std::fs::write(&env.topology, format!("{yaml}    per_host: 2\n")).unwrap();
    env.run(&["up"]).expect_ok("up after an interrupted up");
    for h in 1..=2 {
        let names = env
            .ssh(
                h,
                "docker ps -a --format '{{.Names}}' --filter label=io.stagectl.env=itdrill",
            )
            .expect_ok("ps");
        let mut names: Vec<&str> = names.stdout.lines().collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                "itdrill-consul",
                "itdrill-demo-1",
                "itdrill-demo-2",
                "itdrill-register"
            ],
            "host-{h}"
        );
    }
    assert_eq!(env.status_json()["services"]["demo"]["passing"], 4);

    // 6. `down` of an environment that never existed on these hosts (same
    //    lab): no error, and nothing of the other environment is touched.
    let other = env.dir.path().join("other.yaml");
    std::fs::write(
        &other,
        format!(
            "name: itdrill-other\nlab: {{ name: itdrill, subnet: 10.77.54.0/24 }}\nhosts:\n  host-1: {{ driver: local, address: {}, roles: [app, lb] }}\n",
            env.ip(1)
        ),
    )
    .unwrap();
    let down = stagectl(&env.state(), &["-f", other.to_str().unwrap(), "down"]);
    assert_eq!(down.code, 0, "{}", down.stderr);
    assert!(
        down.stderr.contains("kept: still used by itdrill"),
        "{}",
        down.stderr
    );
    assert!(healthy(&env), "the other environment is untouched");

    env.run(&["down"]).expect_ok("down");
    env.run(&["down"]).expect_ok("down twice");
}

/// Drill 2's acceptance, on status answers it must take and refuse.
#[test]
fn drill_2_accepts_only_what_host_1_left_stopped() {
    let accept = |p: serde_json::Value| stopped_on_host1(&p);
    assert_eq!(
        accept(serde_json::json!([
            "host-1: itdrill-demo-1 is not running",
            "service demo: 1/2 instances passing"
        ])),
        Ok(vec!["itdrill-demo-1".to_string()])
    );
    assert_eq!(
        accept(serde_json::json!([
            "host-1: itdrill-register is not running"
        ])),
        Ok(vec!["itdrill-register".to_string()])
    );
    for refused in [
        serde_json::json!([]),
        serde_json::json!(["service demo: 1/2 instances passing"]),
        serde_json::json!([
            "host-1: itdrill-consul is not running",
            "service demo: 1/2 instances passing"
        ]),
        serde_json::json!([
            "host-1: itdrill-demo-1 is not running",
            "lb: no load-balancer host answered"
        ]),
        serde_json::json!(["host-2: itdrill-demo-2 is not running"]),
        serde_json::json!(null),
    ] {
        assert!(accept(refused.clone()).is_err(), "accepted {refused}");
    }
}
