//! Membership changes on a real five-host lab: the Consul server set grown
//! from 3 to 5 and shrunk back to 3 while a client requests the load
//! balancer and a sampler asks for the leader; then hosts taken out of the
//! topology, one reachable and one not.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const ENV: &str = "itmem";
const NET: u8 = 65;

/// The topology: `hosts` of the five (host-1 and host-2 run the demo
/// service, host-3 is the load balancer), `servers` among them.
fn topology(hosts: &[u8], servers: &[u8]) -> String {
    let mut yaml = format!("name: {ENV}\nlab:\n  subnet: 10.77.{NET}.0/24\nhosts:\n");
    for h in hosts {
        let roles = if *h == 3 { "lb" } else { "app" };
        yaml.push_str(&format!(
            "  host-{h}: {{ driver: local, address: 10.77.{NET}.{}, roles: [{roles}] }}\n",
            10 + h
        ));
    }
    let servers: Vec<String> = servers.iter().map(|s| format!("host-{s}")).collect();
    yaml.push_str(&format!("consul:\n  servers: [{}]\n", servers.join(", ")));
    yaml.push_str("services:\n  demo:\n    image: stagectl/demo:latest\n    port: 8080\n    hosts: [host-1, host-2]\n");
    yaml
}

fn consul(env: &LabEnv, host: u8, args: &str) -> String {
    env.ssh(
        host,
        &format!("docker exec -e CONSUL_HTTP_TOKEN_FILE=/run/stagectl/consul-token {ENV}-consul consul {args} 2>&1"),
    )
    .stdout
}

/// `node → (state, voter)` of the raft peers, asked on `host`.
fn peers(env: &LabEnv, host: u8) -> Vec<(String, bool)> {
    consul(env, host, "operator raft list-peers")
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.first()?.to_string(), *cols.get(4)? == "true"))
        })
        .collect()
}

/// `node → status` of the members, asked on `host`.
fn members(env: &LabEnv, host: u8) -> Vec<(String, String)> {
    consul(env, host, "members")
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.first()?.to_string(), cols.get(2)?.to_string()))
        })
        .collect()
}

fn consul_id(env: &LabEnv, host: u8) -> String {
    env.ssh(
        host,
        &format!("docker inspect -f '{{{{.Id}}}}' {ENV}-consul"),
    )
    .stdout
    .trim()
    .to_string()
}

fn of_env_on(env: &LabEnv, host: u8) -> String {
    env.ssh(
        host,
        &format!(
            "docker ps -aq --filter label=io.stagectl.env={ENV}; docker volume ls -q --filter label=io.stagectl.env={ENV}"
        ),
    )
    .stdout
    .trim()
    .to_string()
}

/// Asks host-3's agent (a server throughout) for the leader every 200 ms.
struct LeaderSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(usize, usize)>,
}

impl LeaderSampler {
    fn start(env: &LabEnv) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (state, ip, flag) = (env.state(), env.ip(3), stop.clone());
        let handle = std::thread::spawn(move || {
            let (mut samples, mut without) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let r = lab_ssh(
                    &state,
                    ENV,
                    &ip,
                    &format!("docker exec -e CONSUL_HTTP_TOKEN_FILE=/run/stagectl/consul-token {ENV}-consul consul operator raft list-peers"),
                );
                samples += 1;
                if r.code != 0 || !r.stdout.contains("leader") {
                    without += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (samples, without)
        });
        LeaderSampler { stop, handle }
    }

    fn finish(self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, without) = self.handle.join().unwrap();
        println!("{what}: {samples} leader samples, {without} without a leader");
        assert!(samples > 10, "{what}: the sampler kept asking ({samples})");
        assert_eq!(without, 0, "{what}: samples without a leader");
    }
}

#[test]
fn servers_grow_and_shrink_one_at_a_time_and_hosts_leave_cleanly() {
    let env = LabEnv::new(ENV, NET, "");
    let write = |hosts: &[u8], servers: &[u8]| {
        std::fs::write(&env.topology, topology(hosts, servers)).unwrap()
    };
    write(&[1, 2, 3, 4, 5], &[1, 2, 3]);
    env.run(&["up"]).expect_ok("up with 3 servers of 5 hosts");
    consul(&env, 1, "kv put stagectl/itmem/kept before-the-changes");
    let lb = format!("{}:80", env.ip(3));
    let before: Vec<String> = (1..=3).map(|h| consul_id(&env, h)).collect();

    // 3 → 5: the two new servers join one at a time; no other agent is
    // replaced.
    let client = Client::start(&lb);
    let sampler = LeaderSampler::start(&env);
    write(&[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5]);
    let plan = env.run(&["plan"]).expect_ok("plan 3 → 5");
    assert!(
        plan.stdout
            .contains("Consul membership, one change at a time")
            && plan.stdout.contains("host-4 a voting server"),
        "{}",
        plan.stdout
    );
    env.run(&["up"]).expect_ok("up 3 → 5");
    let voters = peers(&env, 1);
    assert_eq!(
        voters.iter().filter(|(_, voter)| *voter).count(),
        5,
        "{voters:?}"
    );
    let after: Vec<String> = (1..=3).map(|h| consul_id(&env, h)).collect();
    assert_eq!(before, after, "the servers that stay were not replaced");

    // 5 → 3: host-4 and host-5 leave the raft peers, one at a time, and
    // stay members as clients.
    write(&[1, 2, 3, 4, 5], &[1, 2, 3]);
    env.run(&["up"]).expect_ok("up 5 → 3");
    let mut servers: Vec<String> = peers(&env, 1).into_iter().map(|(n, _)| n).collect();
    servers.sort();
    assert_eq!(servers, ["host-1", "host-2", "host-3"]);
    assert!(
        members(&env, 1).iter().all(|(_, status)| status == "alive"),
        "{:?}",
        members(&env, 1)
    );
    sampler.finish("servers 3 → 5 → 3");
    client.finish("servers 3 → 5 → 3, load balancer", 50);
    assert_eq!(
        consul(&env, 2, "kv get stagectl/itmem/kept").trim(),
        "before-the-changes",
        "the KV data is kept"
    );
    assert_eq!(env.status_json()["healthy"], true);

    // host-5 out of the topology: its agent leaves, nothing of the
    // environment stays there.
    write(&[1, 2, 3, 4], &[1, 2, 3]);
    env.run(&["up"]).expect_ok("up without host-5");
    assert_eq!(of_env_on(&env, 5), "", "nothing of {ENV} left on host-5");
    let seen = members(&env, 1);
    assert!(
        seen.iter()
            .all(|(n, s)| s == "alive" || (n == "host-5" && s == "left")),
        "{seen:?}"
    );

    // host-4 out of the topology while it cannot be reached: `up` goes
    // on, marks it as left and keeps it in its record; `down --host`
    // clears it once it is back.
    sh("docker", &["stop", &format!("{ENV}-host-4")]).expect_ok("stopping host-4");
    write(&[1, 2, 3], &[1, 2, 3]);
    let plan = env
        .run(&["plan"])
        .expect_ok("plan without an unreachable host-4");
    assert!(
        plan.stdout.contains("down --host host-4"),
        "{}",
        plan.stdout
    );
    env.run(&["up"])
        .expect_ok("up without an unreachable host-4");
    let seen = members(&env, 1);
    assert!(
        seen.iter()
            .all(|(n, s)| s == "alive" || (n.as_str() >= "host-4" && s == "left")),
        "{seen:?}"
    );
    assert_eq!(env.status_json()["healthy"], true);
    sh("docker", &["start", &format!("{ENV}-host-4")]).expect_ok("starting host-4");
    assert!(
        eventually(30, || env.ssh(4, "docker ps -q").code == 0),
        "host-4 answers again"
    );
    env.run(&["down", "--host", "host-4"])
        .expect_ok("down --host host-4");
    assert_eq!(of_env_on(&env, 4), "", "nothing of {ENV} left on host-4");
    let seen = members(&env, 1);
    assert!(
        seen.iter()
            .all(|(n, s)| s == "alive" || (n.as_str() >= "host-4" && s == "left")),
        "host-4 did not come back as a member: {seen:?}"
    );
    let unknown = env.run(&["down", "--host", "host-9"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("host-9"), "{}", unknown.stderr);

    env.run(&["down"]).expect_ok("down");
}
