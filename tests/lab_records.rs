//! What stagectl believes of the records it keeps on the hosts, and what
//! `down`, `down --host` and `gc` may touch, on one shared lab:
//!
//! - a process on an app host with no token reads and writes nothing in
//!   Consul (KV reads and writes and registrations answer 403, the catalog
//!   is empty), where stagectl's token reads;
//! - RPC only over TLS: a rogue agent on a host, with the gossip key, the
//!   CA's certificate and the host's agent token, joins the gossip but its
//!   plain RPC gets no answer, and the servers refuse it a certificate for
//!   a node its token may not write;
//! - an environment whose servers hold no TLS seed (made before TLS) is
//!   refused by `up` with exit 2 and nothing changed;
//! - a forged last-up record (written into Consul's KV with stagectl's own
//!   token, as root on a server could) naming a live host as departed and
//!   an expiry in the past changes nothing `plan`, `up` and `gc` do: the
//!   host keeps its containers and data, the environment is not expired;
//! - a preview on its own port block: its `down --host` makes only its own
//!   agent leave, and every member of the environment on block 0 stays
//!   alive; `gc` of it, once its `--ttl` has passed, removes it and nothing
//!   of the other;
//! - host-2 renamed web-2 at the same address (reached over SSH by its
//!   address): `up` converges with no failed request, web-2 is an alive
//!   member and a voter under a node ID of its own, host-2 is in no member
//!   list, the instance is registered once under the new name, its data is
//!   kept and the next `up` replaces nothing;
//! - `up --rotate-keys` with no failed request: the old token is refused,
//!   the new one reads, the record sealed under the new key is believed,
//!   the data stays, and the next `up` replaces nothing;
//! - `down` keeps a service's data volume, `down -v` removes it.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use std::time::Instant;

use common::*;

const NET: &str = "10.77.95";

fn base() -> String {
    format!(
        "lab: {{ name: itrec, subnet: {NET}.0/24 }}\nhosts:\n  host-1: {{ driver: local, address: {NET}.11, roles: [app] }}\n  host-2: {{ driver: local, address: {NET}.12, roles: [app] }}\n  host-3: {{ driver: local, address: {NET}.13, roles: [lb] }}\n"
    )
}

/// Each check's duration, printed as it ends.
fn timed(what: &str, check: impl FnOnce()) {
    let started = Instant::now();
    check();
    eprintln!(
        "[lab_records] {what}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn records_nobody_else_can_write_and_removals_that_stay_in_their_environment() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::write(dir.path().join("servers.yaml"), base()).unwrap();
    let (team, preview) = (
        dir.path().join("team.yaml"),
        dir.path().join("preview.yaml"),
    );
    std::fs::write(
        &team,
        "extends: servers.yaml\nname: itrec\nservices:\n  demo: { image: stagectl/demo:latest, port: 8080, volumes: { data: /data } }\n",
    )
    .unwrap();
    std::fs::write(
        &preview,
        "extends: servers.yaml\nservices:\n  demo: { image: stagectl/demo:latest, port: 8080 }\n",
    )
    .unwrap();
    let hosts_file = dir.path().join("servers.yaml");
    let run = |f: &std::path::Path, args: &[&str]| {
        let mut full = vec!["-f", f.to_str().unwrap()];
        full.extend_from_slice(args);
        stagectl(&state, &full)
    };
    struct Down<'a>(Box<dyn Fn() + 'a>);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _down = Down(Box::new(|| {
        let _ = run(&preview, &["--env", "pr-7", "down", "-v"]);
        let _ = run(&team, &["down", "-v"]);
    }));
    let lab_ssh_to =
        |host: u8, command: &str| lab_ssh(&state, "itrec", &format!("{NET}.1{host}"), command);
    // host-2's mark is still in the demo's data volume, and the next `up`
    // of `topology` replaces nothing.
    let data_kept_and_converged = |topology: &std::path::Path| {
        let read = lab_ssh_to(2, "docker exec itrec-demo-1 cat /data/mark");
        assert_eq!(
            read.stdout.trim(),
            "kept",
            "the data stays: {}",
            read.stderr
        );
        let again = run(topology, &["up"]).expect_ok("the next up");
        assert!(again.stdout.contains("0 to replace"), "{}", again.stdout);
    };
    let running_on = |host: u8| -> Vec<String> {
        let r = lab_ssh_to(host, "docker ps --format '{{.Names}}'");
        assert_eq!(r.code, 0, "host-{host} answers: {}", r.stderr);
        r.stdout.lines().map(str::to_string).collect()
    };
    let volumes_on = |host: u8| -> Vec<String> {
        let r = lab_ssh_to(host, "docker volume ls --format '{{.Name}}'");
        assert_eq!(r.code, 0, "host-{host} answers: {}", r.stderr);
        r.stdout.lines().map(str::to_string).collect()
    };
    let members_alive = |f: &std::path::Path, extra: &[&str]| -> Vec<String> {
        let mut args = extra.to_vec();
        args.extend(["status", "-o", "json"]);
        let r = run(f, &args);
        let status: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("status -o json ({e}): {}\n{}", r.stdout, r.stderr));
        status["consul"]["members"]
            .as_array()
            .unwrap_or_else(|| panic!("status shows the members: {status}"))
            .iter()
            .filter(|m| m["status"] == "alive")
            .map(|m| m["node"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };

    timed("team environment and a preview up", || {
        run(&team, &["up"]).expect_ok("up itrec");
        run(&preview, &["--env", "pr-7", "up", "--ttl", "1h"]).expect_ok("up pr-7");
    });
    assert!(running_on(2).contains(&"itrec-demo-1".to_string()));
    assert!(volumes_on(2).contains(&"itrec-demo-1-data".to_string()));
    assert_eq!(
        members_alive(&team, &[]).len(),
        3,
        "every member alive before anything"
    );

    timed(
        "a process with no token reads and writes nothing in Consul",
        || {
            // Any process on an app host, in a host-network container: it
            // reaches Consul's HTTP API on the host's loopback.
            let anonymous = |args: &str| {
                lab_ssh_to(
                2,
                &format!(
                    "docker run --rm --network host -e CONSUL_HTTP_ADDR=127.0.0.1:8500 --entrypoint consul stagectl/consul:1.8.7 {args}"
                ),
            )
            };
            // The same requests with stagectl's token first: what is refused
            // below is refused for want of a token, not for want of a Consul.
            let with_token = lab_ssh_to(
            2,
            "docker exec -e CONSUL_HTTP_ADDR=127.0.0.1:8500 -e CONSUL_HTTP_TOKEN_FILE=/run/stagectl/consul-token itrec-consul sh -c 'consul kv get stagectl/itrec/last-up >/dev/null && consul catalog services'",
        );
            assert_eq!(with_token.code, 0, "{}", with_token.stderr);
            assert!(with_token.stdout.contains("demo"), "{}", with_token.stdout);
            for (what, args) in [
                ("KV read", "kv get stagectl/itrec/last-up"),
                ("KV write", "kv put stagectl/itrec/last-up forged"),
                (
                    "service registration",
                    "services register -name=demo -address=10.0.0.1 -port=80",
                ),
            ] {
                let out = anonymous(args);
                assert_ne!(
                    out.code, 0,
                    "{what} without a token is taken: {}",
                    out.stdout
                );
                assert!(
                    out.stderr.contains("403"),
                    "{what} without a token is refused with 403: {}",
                    out.stderr
                );
            }
            // Reads Consul filters rather than refuses show nothing.
            let catalog = anonymous("catalog services");
            assert!(
                !catalog.stdout.contains("demo"),
                "the catalog without a token: {}",
                catalog.stdout
            );
        },
    );

    timed(
        "an agent without the environment's TLS gets no answer from its servers",
        || {
            // Root on host-2 has everything a host holds: the gossip key, the
            // CA's certificate, the host's agent token. With them, a rogue
            // agent of its own (its own ports) joins the gossip, but the
            // servers take its RPC only over TLS, and give a certificate
            // only for the node its token may write.
            let rogue = lab_ssh_to(
                2,
                &format!(
                    r#"set -e
mkdir -p /tmp/rogue && cd /tmp/rogue
docker exec itrec-consul cat /consul/config/stagectl.json > conf.json
docker exec itrec-consul cat {ca} > ca.pem
key=$(sed 's/.*"encrypt":"\([^"]*\)".*/\1/' conf.json)
agent=$(sed 's/.*"agent":"\([^"]*\)".*/\1/' conf.json)
common='"data_dir":"/tmp/d","bind_addr":"{NET}.12","ports":{{"http":18500,"serf_lan":18301,"serf_wan":-1,"server":8300,"dns":-1}},"retry_join":["{NET}.11:8301"],"encrypt":"'$key'"'
echo '{{"node_name":"rogue",'"$common"'}}' > plain.json
echo '{{"node_name":"rogue-tls",'"$common"',"ca_file":"/r/ca.pem","verify_outgoing":true,"verify_server_hostname":true,"auto_encrypt":{{"tls":true}},"acl":{{"enabled":true,"default_policy":"deny","tokens":{{"agent":"'$agent'"}}}}}}' > tls.json
docker rm -f itrec-rogue itrec-rogue-tls >/dev/null 2>&1 || true
docker run -d --name itrec-rogue --network host -v /tmp/rogue:/r stagectl/consul:1.8.7 agent -config-file=/r/plain.json >/dev/null
for i in $(seq 1 50); do docker exec itrec-rogue consul members -http-addr=127.0.0.1:18500 2>/dev/null | grep -q '^host-1 .*alive' && break; sleep 0.2; done
echo "== members"; docker exec itrec-rogue consul members -http-addr=127.0.0.1:18500 || true
token=$(docker exec itrec-consul cat /run/stagectl/consul-token)
echo "== catalog"; docker exec itrec-rogue consul catalog nodes -http-addr=127.0.0.1:18500 -token="$token" 2>&1 || echo "exit $?"
docker exec itrec-rogue consul leave -http-addr=127.0.0.1:18500 >/dev/null 2>&1 || true
docker rm -f itrec-rogue >/dev/null
docker run -d --name itrec-rogue-tls --network host -v /tmp/rogue:/r stagectl/consul:1.8.7 agent -config-file=/r/tls.json >/dev/null
for i in $(seq 1 50); do docker logs itrec-rogue-tls 2>&1 | grep -q 'auto-encrypt request' && break; sleep 0.2; done
echo "== auto-encrypt"; docker logs itrec-rogue-tls 2>&1 | grep -i 'AutoEncrypt.Sign' | head -3
docker rm -f itrec-rogue-tls >/dev/null; rm -rf /tmp/rogue"#,
                    ca = "/consul/tls/ca.pem",
                ),
            );
            assert_eq!(rogue.code, 0, "{}\n{}", rogue.stdout, rogue.stderr);
            let part = |name: &str| -> String {
                let after = rogue
                    .stdout
                    .split(&format!("== {name}\n"))
                    .nth(1)
                    .unwrap_or("");
                after.split("\n== ").next().unwrap_or("").to_string()
            };
            // It joined: what fails below fails for want of TLS alone.
            assert!(
                part("members")
                    .lines()
                    .any(|l| l.starts_with("host-1 ") && l.contains("alive")),
                "the rogue agent joins the gossip: {}",
                rogue.stdout
            );
            let catalog = part("catalog");
            assert!(
                catalog.contains("exit ") && !catalog.contains("host-1"),
                "a plain RPC is answered: {catalog}"
            );
            let signed = part("auto-encrypt");
            assert!(
                signed.contains("Permission denied"),
                "a certificate for another node is refused: {}",
                rogue.stdout
            );
        },
    );

    timed(
        "an environment whose Consul runs without TLS is refused, not half converted",
        || {
            // What an environment made before TLS looks like to `up`: the
            // servers hold a record key and no TLS seed.
            let seed = "/consul/data/stagectl-tls.key";
            for host in 1..=3 {
                let moved = lab_ssh_to(
                    host,
                    &format!("docker exec itrec-consul mv {seed} /tmp/seed"),
                );
                assert_eq!(moved.code, 0, "{}", moved.stderr);
            }
            let refused = run(&team, &["up"]);
            for host in 1..=3 {
                let back = lab_ssh_to(
                    host,
                    &format!("docker exec itrec-consul mv /tmp/seed {seed}"),
                );
                assert_eq!(back.code, 0, "{}", back.stderr);
            }
            assert_eq!(refused.code, 2, "{}\n{}", refused.stdout, refused.stderr);
            assert!(
                refused.stderr.contains("without TLS")
                    && refused.stderr.contains("down --keep-data"),
                "{}",
                refused.stderr
            );
            // Nothing was changed: the next up replaces nothing.
            let again = run(&team, &["up"]).expect_ok("up with the seed back");
            assert!(again.stdout.contains("0 to replace"), "{}", again.stdout);
        },
    );

    timed("a forged record changes nothing plan, up and gc do", || {
        // What a process holding stagectl's own token (on a server) could
        // still write to Consul's KV, where the seal alone protects: a
        // record that makes host-2's address a departed host and the
        // environment long expired.
        let forged = format!(
            r#"{{"by":"x","at":1,"stagectl":"0","desired":"x","hosts":["host-1","host-3","gone"],"servers":["host-1","host-3","gone"],"endpoints":{{"gone":{{"kind":"lab","ip":"{NET}.12"}}}},"departed":{{}},"expires_at":1,"engines":{{}}}}"#
        );
        let put = lab_ssh_to(
            1,
            &format!(
                "docker exec -e CONSUL_HTTP_ADDR=127.0.0.1:8500 -e CONSUL_HTTP_TOKEN_FILE=/run/stagectl/consul-token itrec-consul consul kv put stagectl/itrec/last-up '{forged}'"
            ),
        );
        assert_eq!(put.code, 0, "the KV write is taken: {}", put.stderr);
        let plan = run(&team, &["plan", "-o", "json"]).expect_ok("plan with a forged record");
        assert!(
            plan.stderr.contains("is ignored"),
            "the forged record is named: {}",
            plan.stderr
        );
        assert!(
            !plan.stdout.contains("\"action\":\"remove"),
            "nothing planned for removal: {}",
            plan.stdout
        );
        let gc = run(&hosts_file, &["gc", "--dry-run"]).expect_ok("gc --dry-run");
        assert!(
            !gc.stdout.contains("itrec:"),
            "the forged expiry counts for nothing: {}",
            gc.stdout
        );
        run(&team, &["up"]).expect_ok("up with a forged record");
        run(&hosts_file, &["gc"]).expect_ok("gc");
        assert!(
            running_on(2).contains(&"itrec-demo-1".to_string()),
            "host-2 keeps its instance"
        );
        assert!(
            volumes_on(2).contains(&"itrec-demo-1-data".to_string()),
            "and its data"
        );
        // The up wrote a sealed record again: believed, nothing to warn of.
        let status = run(&team, &["status"]);
        assert_eq!(status.code, 0, "{}\n{}", status.stdout, status.stderr);
        assert!(!status.stderr.contains("is ignored"), "{}", status.stderr);
    });

    timed(
        "a preview's down --host talks to its own agents only",
        || {
            // A leave sent to itrec's agent would stop it, and its restart
            // policy would bring it back: its start time tells.
            let started = || {
                let r = lab_ssh_to(
                    3,
                    "docker inspect -f '{{.State.StartedAt}} {{.RestartCount}}' itrec-consul",
                );
                assert_eq!(r.code, 0, "{}", r.stderr);
                r.stdout
            };
            let before = started();
            run(&preview, &["--env", "pr-7", "down", "--host", "host-3"])
                .expect_ok("down --host host-3");
            assert_eq!(
                started(),
                before,
                "itrec's agent on host-3 was never stopped"
            );
            let on_3 = running_on(3);
            assert!(
                on_3.contains(&"itrec-consul".to_string()),
                "itrec's agent on host-3 runs: {on_3:?}"
            );
            assert!(
                !on_3.contains(&"pr-7-consul".to_string()),
                "pr-7's agent on host-3 is gone: {on_3:?}"
            );
            assert_eq!(
                members_alive(&team, &[]),
                ["host-1", "host-2", "host-3"],
                "every member of itrec stays alive"
            );
            run(&preview, &["--env", "pr-7", "up"]).expect_ok("pr-7 up again");
        },
    );

    timed(
        "gc removes an expired preview, under its lock, and nothing else",
        || {
            run(&preview, &["--env", "pr-7", "up", "--ttl", "1s"]).expect_ok("pr-7 up --ttl 1s");
            std::thread::sleep(std::time::Duration::from_secs(2));
            let dry = run(&hosts_file, &["gc", "--dry-run"]).expect_ok("gc --dry-run");
            assert!(dry.stdout.contains("pr-7: expired"), "{}", dry.stdout);
            assert!(
                dry.stdout.contains("pr-7-consul"),
                "the dry run lists what would go: {}",
                dry.stdout
            );
            assert!(
                running_on(1).contains(&"pr-7-consul".to_string()),
                "the dry run removed nothing"
            );
            let gc = run(&hosts_file, &["gc"]).expect_ok("gc");
            assert!(gc.stdout.contains("pr-7: expired"), "{}", gc.stdout);
            for host in 1..=3 {
                assert!(
                    !running_on(host).iter().any(|c| c.starts_with("pr-7-")),
                    "nothing of pr-7 left on host-{host}"
                );
            }
            assert_eq!(
                members_alive(&team, &[]).len(),
                3,
                "itrec's members all alive"
            );
        },
    );

    timed(
        "a host renamed at the same address converges and keeps its data",
        || {
            // host-2 becomes web-2: the same engine, reached over SSH by its
            // address rather than as a lab host (the lab names its hosts).
            let lab = state.join("labs").join("itrec");
            let renamed = dir.path().join("renamed.yaml");
            std::fs::write(
            &renamed,
            format!(
                "name: itrec\nlab: {{ name: itrec, subnet: {NET}.0/24 }}\nhosts:\n  host-1: {{ driver: local, address: {NET}.11, roles: [app] }}\n  web-2:\n    address: ssh://root@{NET}.12\n    roles: [app]\n    ssh: {{ identity_file: {}, known_hosts: {} }}\n  host-3: {{ driver: local, address: {NET}.13, roles: [lb] }}\nservices:\n  demo: {{ image: stagectl/demo:latest, port: 8080, volumes: {{ data: /data }} }}\n",
                lab.join("id_ed25519").display(),
                lab.join("known_hosts").display()
            ),
        )
        .unwrap();
            let mark = lab_ssh_to(
                2,
                "docker exec itrec-demo-1 busybox sh -c 'echo kept > /data/mark'",
            );
            assert_eq!(mark.code, 0, "{}", mark.stderr);
            let node_id = || {
                let r = lab_ssh_to(2, "docker exec itrec-consul cat /consul/data/node-id");
                assert_eq!(r.code, 0, "host-2's node ID: {}", r.stderr);
                r.stdout.trim().to_string()
            };
            let old_id = node_id();
            let plan = run(&renamed, &["plan"]).expect_ok("plan of the rename");
            assert!(
                plan.stderr.contains("its engine is web-2's now"),
                "host-2's engine is known as web-2's: {}",
                plan.stderr
            );
            assert!(
                plan.stdout.contains("renamed from host-2") && !plan.stdout.contains("- itrec-"),
                "the agent rejoins under the new name, nothing is removed: {}",
                plan.stdout
            );
            let client = Client::start(&format!("{NET}.13:80"));
            run(&renamed, &["up"]).expect_ok("up after the rename");
            client.finish("requests during the rename", 50);
            assert_eq!(
                members_alive(&renamed, &[]),
                ["host-1", "host-3", "web-2"],
                "web-2 is an alive member, host-2 is not"
            );
            // Under its old node ID, the left host-2's reconciliation by the
            // leader would take web-2 out of the raft peers every minute.
            let new_id = node_id();
            assert!(
                !new_id.is_empty() && new_id != old_id,
                "web-2 has a node ID of its own: {old_id} then {new_id}"
            );
            let peers = lab_ssh_to(
                1,
                "docker exec -e CONSUL_HTTP_ADDR=127.0.0.1:8500 -e CONSUL_HTTP_TOKEN_FILE=/run/stagectl/consul-token itrec-consul consul operator raft list-peers",
            );
            assert_eq!(peers.code, 0, "{}", peers.stderr);
            assert!(
                peers.stdout.lines().any(|l| l.starts_with("web-2 ")
                    && l.contains(&new_id)
                    && l.contains(" true "))
                    && !peers.stdout.contains(&old_id),
                "web-2 a voter under its new ID, the old ID no peer: {}",
                peers.stdout
            );
            let status: serde_json::Value =
                serde_json::from_str(&run(&renamed, &["status", "-o", "json"]).stdout).unwrap();
            assert!(
                !serde_json::to_string(&status["consul"]["members"])
                    .unwrap()
                    .contains("\"host-2\""),
                "host-2 is out of the member list, not left beside web-2: {}",
                status["consul"]["members"]
            );
            let instances = serde_json::to_string(&status["services"]).unwrap();
            assert!(
                !instances.contains("host-2") && instances.contains("web-2"),
                "the instance is registered once, under the new name: {instances}"
            );
            data_kept_and_converged(&renamed);
        },
    );

    timed(
        "up --rotate-keys: new tokens, the old ones refused, data and record kept",
        || {
            // The topology as the rename left it.
            let renamed = dir.path().join("renamed.yaml");
            let token_on_1 = || {
                let r = lab_ssh_to(1, "docker exec itrec-consul cat /run/stagectl/consul-token");
                assert_eq!(r.code, 0, "stagectl's token on host-1: {}", r.stderr);
                r.stdout.trim().to_string()
            };
            let kv_get_with = |token: &str| {
                lab_ssh_to(
                1,
                &format!(
                    "docker exec -e CONSUL_HTTP_ADDR=127.0.0.1:8500 -e CONSUL_HTTP_TOKEN={token} itrec-consul consul kv get stagectl/itrec/last-up"
                ),
            )
            };
            let old = token_on_1();
            assert_eq!(
                kv_get_with(&old).code,
                0,
                "the token works before the rotation"
            );
            let client = Client::start(&format!("{NET}.13:80"));
            run(&renamed, &["up", "--rotate-keys"]).expect_ok("up --rotate-keys");
            client.finish("requests during the rotation", 50);
            let new = token_on_1();
            assert_ne!(new, old, "a new token");
            assert_eq!(kv_get_with(&new).code, 0, "the new token reads the record");
            let refused = kv_get_with(&old);
            assert!(
                refused.code != 0 && refused.stderr.contains("403"),
                "the old token is refused: {} {}",
                refused.stdout,
                refused.stderr
            );
            let status = run(&renamed, &["status"]);
            assert_eq!(status.code, 0, "{}\n{}", status.stdout, status.stderr);
            assert!(
                !status.stderr.contains("is ignored"),
                "the record sealed with the new key is believed: {}",
                status.stderr
            );
            data_kept_and_converged(&renamed);
        },
    );

    timed("down keeps the service's data, down -v removes it", || {
        let down = run(&team, &["down"]).expect_ok("down");
        assert!(down.stdout.contains("data volumes kept"), "{}", down.stdout);
        assert!(
            volumes_on(2).contains(&"itrec-demo-1-data".to_string()),
            "kept by down"
        );
        assert!(
            !volumes_on(2).contains(&"itrec-consul-data".to_string()),
            "Consul's data is not the user's"
        );
        run(&team, &["down", "-v"]).expect_ok("down -v");
        assert!(
            local_objects("container", "label=io.stagectl.lab=itrec").is_empty(),
            "the lab goes once no data is kept in it"
        );
    });
}
