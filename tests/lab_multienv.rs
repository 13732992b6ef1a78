//! Several environments on the same hosts: two environments, each a short
//! file extending one shared base, share one lab's three hosts, each with its own Consul cluster, ports, registration agents
//! and load balancer routing only its own instances; `ls` shows both; a
//! declared port another environment holds is refused naming it; and taking
//! one environment down leaves the other answering every request.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use std::collections::HashSet;

use common::*;

const NET: &str = "10.77.55";

/// The shared base: the lab and its three hosts, as a team keeps its
/// servers in one file.
fn base() -> String {
    format!(
        "lab: {{ name: itmulti, subnet: {NET}.0/24 }}\nhosts:\n  host-1: {{ driver: local, address: {NET}.11, roles: [app] }}\n  host-2: {{ driver: local, address: {NET}.12, roles: [app] }}\n  host-3: {{ driver: local, address: {NET}.13, roles: [lb] }}\n"
    )
}

/// One environment: a short file extending the base.
fn topology(name: &str, extra: &str) -> String {
    format!("extends: servers.yaml\nname: {name}\nservices:\n  demo: {{ image: stagectl/demo:latest, port: 8080 }}\n{extra}")
}

/// Identities answering through an LB in `n` requests, every one of which
/// must be answered with an identity: a failed request is an error, never
/// "not routed".
fn identities(lb: &str, n: usize) -> Result<HashSet<String>, String> {
    (0..n)
        .map(|i| match http_get(lb, "/demo/", "x") {
            Ok((200, body)) => identity(&body)
                .ok_or_else(|| format!("request {i} to {lb}: no identity in {body:?}")),
            Ok((code, body)) => Err(format!("request {i} to {lb}: {code} {body:?}")),
            Err(e) => Err(format!("request {i} to {lb}: {e}")),
        })
        .collect()
}

#[test]
fn two_environments_share_hosts_and_leave_each_other_alone() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (a, b, c) = (
        dir.path().join("a.yaml"),
        dir.path().join("b.yaml"),
        dir.path().join("c.yaml"),
    );
    std::fs::write(dir.path().join("servers.yaml"), base()).unwrap();
    std::fs::write(&a, topology("ita", "")).unwrap();
    std::fs::write(&b, topology("itb", "")).unwrap();
    std::fs::write(&c, topology("itc", "ports: { lb_http: 80 }\n")).unwrap();
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
    let _cleanup = Down(Box::new(|| {
        let _ = run(&b, &["down"]);
        let _ = run(&a, &["down"]);
    }));

    run(&a, &["up"]).expect_ok("up ita");
    let up_b = run(&b, &["up"]).expect_ok("up itb");
    // itb got the first free port block: its LB is on 21004.
    assert!(
        up_b.stdout.contains(&format!("http://{NET}.13:21004/")),
        "{}",
        up_b.stdout
    );
    let (lb_a, lb_b) = (format!("{NET}.13:80"), format!("{NET}.13:21004"));

    // Each LB routes its own two instances, and only those.
    let ids_a = identities(&lb_a, 20).unwrap();
    let ids_b = identities(&lb_b, 20).unwrap();
    assert_eq!(ids_a.len(), 2, "{ids_a:?}");
    assert_eq!(ids_b.len(), 2, "{ids_b:?}");
    assert!(ids_a.is_disjoint(&ids_b), "{ids_a:?} {ids_b:?}");
    // Separate Consul clusters of three members each.
    for f in [&a, &b] {
        let s: serde_json::Value =
            serde_json::from_str(&run(f, &["status", "-o", "json"]).expect_ok("status").stdout)
                .unwrap();
        assert_eq!(s["healthy"], true, "{s:#}");
        assert_eq!(s["consul"]["members"].as_array().unwrap().len(), 3);
        assert_eq!(s["services"].as_object().unwrap().len(), 1);
    }

    // `ls` from either file, or from the shared hosts file, shows both,
    // with their ports and LBs.
    let hosts_file = dir.path().join("servers.yaml");
    let from_base = run(&hosts_file, &["ls", "-o", "json"]).expect_ok("ls from the hosts file");
    let ls = run(&a, &["ls", "-o", "json"]).expect_ok("ls");
    assert_eq!(ls.stdout, from_base.stdout);
    let list: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["ita", "itb"]);
    assert!(list.as_array().unwrap().iter().all(|e| e["state"] == "up"));
    assert_eq!(list[1]["lb"], format!("http://{NET}.13:21004/"));

    // A declared port another environment holds: refused, naming it.
    let clash = run(&c, &["up"]);
    assert_eq!(clash.code, 2, "{}", clash.stderr);
    assert!(
        clash.stderr.contains("already used by environment ita"),
        "{}",
        clash.stderr
    );

    // An unlabeled container on a shared host belongs to nobody: neither
    // environment routes it; labelled for itb, only itb does.
    let ssh =
        |host: u8, cmd: &str| lab_ssh(&state, "itmulti", &format!("{NET}.{}", 10 + host), cmd);
    ssh(1, "docker run -d --name stray -p 8080 stagectl/demo:latest").expect_ok("stray");
    ssh(
        2,
        "docker run -d --name for-b -l io.stagectl.env=itb -p 8080 stagectl/demo:latest",
    )
    .expect_ok("for-b");
    let stray = ssh(1, "docker inspect -f '{{.Config.Hostname}}' stray")
        .stdout
        .trim()
        .to_string();
    let for_b = ssh(2, "docker inspect -f '{{.Config.Hostname}}' for-b")
        .stdout
        .trim()
        .to_string();
    assert!(
        eventually(5, || identities(&lb_b, 9).is_ok_and(|i| i.contains(&for_b))),
        "labelled for itb: routed by itb"
    );
    assert!(
        !identities(&lb_a, 20).unwrap().contains(&for_b),
        "labelled for itb: never routed by ita"
    );
    let all: HashSet<String> = identities(&lb_a, 20)
        .unwrap()
        .union(&identities(&lb_b, 20).unwrap())
        .cloned()
        .collect();
    assert!(
        !all.contains(&stray),
        "an unlabeled container on shared hosts is routed by nobody"
    );
    ssh(1, "docker rm -f stray").expect_ok("rm");
    ssh(2, "docker rm -f for-b").expect_ok("rm");

    // itb goes down while a client keeps asking ita's LB: every request answered.
    let client = Client::start(&lb_a);
    let down_b = run(&b, &["down"]).expect_ok("down itb");
    client.finish("ita while itb goes down", 20);
    assert!(
        down_b.stderr.contains("kept: still used by ita"),
        "{}",
        down_b.stderr
    );
    let ls = run(&a, &["ls", "-o", "json"]).expect_ok("ls");
    let list: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(identities(&lb_a, 10).unwrap().len(), 2);

    run(&a, &["down"]).expect_ok("down ita");
    assert!(local_objects("container", "label=io.stagectl.lab=itmulti").is_empty());
}
