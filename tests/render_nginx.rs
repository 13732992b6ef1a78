//! The built-in template, rendered from arbitrary registrations (any text in
//! every field a registration has: service name, ID, node, address, tags,
//! meta, and any port), is checked by the real `nginx -t` of the nginx image
//! stagectl runs, and declares no `listen` or `server` beyond the ones
//! stagectl writes: one default server and one per route. Every third
//! service is a TCP one (`expose: tcp`): its listener, in the `stream`
//! part, is checked the same way.
//!
//! The cases come from proptest's generator; nginx checks them all in one
//! container, so a few hundred cases take seconds. Needs a Docker engine and
//! the images of scripts/build-images.sh.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use stagectl::agent::render::{render, RenderContext, BUILTIN_TEMPLATE, STREAM_TEMPLATE};
use stagectl::agent::routes::RouteTable;
use stagectl::cluster::http::Instance;

const CASES: usize = 300;

/// Text of every kind: any Unicode (control characters, quotes, braces,
/// newlines included), or names of the shapes that matter (DNS labels up to
/// 63, long names).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "(?s).{0,40}",
        "[a-z][a-z0-9-]{0,62}",
        "[a-zA-Z0-9_.;{}# \n-]{0,120}",
        Just("x\n}\nserver { listen 10.0.0.1:80 default_server; return 200 hijack; }\n#".into()),
    ]
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::from(Ipv4Addr::from(a)).to_string()),
        any::<u128>().prop_map(|a| IpAddr::from(Ipv6Addr::from(a)).to_string()),
        text(),
    ]
}

fn instance() -> impl Strategy<Value = Instance> {
    (
        text(),
        text(),
        address(),
        any::<u16>(),
        prop::collection::vec(text(), 0..3),
        prop::collection::btree_map(text(), text(), 0..3),
    )
        .prop_map(|(id, node, address, port, tags, meta)| Instance {
            id,
            node,
            address,
            port,
            tags,
            meta,
        })
}

fn registrations() -> impl Strategy<Value = BTreeMap<String, Vec<Instance>>> {
    prop::collection::btree_map(text(), prop::collection::vec(instance(), 0..4), 0..8)
}

/// Directives outside comments and quoted strings: stagectl's values never
/// hold `#` or quotes (they are encoded), so cutting at `#` is exact here.
fn count_directives(config: &str, word: &str) -> usize {
    config
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == ';' || c == '{'))
        .filter(|t| *t == word)
        .count()
}

#[test]
fn nginx_accepts_every_rendered_config_and_nothing_adds_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut runner = TestRunner::new(Config::default());
    let strategy = registrations();
    // And one of the size the benchmark runs: 300 services, long names.
    let many: BTreeMap<String, Vec<Instance>> = (0..300)
        .map(|i| {
            let name = format!("{i:03}-{}", "long-service-name-".repeat(4))[..63].to_string();
            let instance = Instance {
                id: format!("host-1:{name}:8080"),
                node: "host-1".into(),
                address: "10.0.0.1".into(),
                port: 20000 + i,
                ..Default::default()
            };
            (name, vec![instance])
        })
        .collect();
    for case in 0..=CASES {
        let registrations = if case == CASES {
            many.clone()
        } else {
            strategy.new_tree(&mut runner).unwrap().current()
        };
        let domain = "stagectl.test";
        let env = "an-environment-name-of-32-chars-x";
        let table = RouteTable::build(env, domain, &registrations);
        // Which services have a TCP listener comes from the topology: here,
        // every third route.
        let tcp: BTreeMap<String, u16> = table
            .services
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 2)
            .map(|(i, s)| (s.name.clone(), 30000 + i as u16))
            .collect();
        let table = table.with_tcp(&tcp);
        let ctx = RenderContext::new(env, domain, 80, &table.services);
        let config = render(BUILTIN_TEMPLATE, &ctx).unwrap();
        let stream = render(STREAM_TEMPLATE, &ctx).unwrap();
        let (tcp_routes, http_routes): (Vec<_>, Vec<_>) =
            table.services.iter().partition(|s| s.tcp_port.is_some());
        assert_eq!(
            count_directives(&config, "listen"),
            1 + http_routes.len(),
            "case {case}: only stagectl's listens\n{config}"
        );
        assert_eq!(
            count_directives(&config, "server"),
            1 + http_routes.len() + http_routes.iter().map(|s| s.instances.len()).sum::<usize>(),
            "case {case}: only stagectl's server blocks and upstream servers\n{config}"
        );
        assert_eq!(
            count_directives(&config, "default_server"),
            1,
            "case {case}"
        );
        assert_eq!(
            count_directives(&stream, "listen"),
            tcp_routes.len(),
            "case {case}: one listener per TCP service\n{stream}"
        );
        assert_eq!(
            count_directives(&stream, "server"),
            tcp_routes.len()
                + tcp_routes
                    .iter()
                    .map(|s| s.instances.len().max(1))
                    .sum::<usize>(),
            "case {case}: only stagectl's servers\n{stream}"
        );
        let case_dir = dir.path().join(format!("{case:03}"));
        std::fs::create_dir(&case_dir).unwrap();
        std::fs::write(case_dir.join("stagectl.conf"), &config).unwrap();
        std::fs::write(case_dir.join("stagectl.stream"), &stream).unwrap();
        std::fs::write(
            case_dir.join("nginx.conf"),
            format!(
                "include /etc/nginx/modules-enabled/*.conf;\nworker_processes 1;\npid /tmp/{case}.pid;\nevents {{}}\nhttp {{\n    include /cases/{case:03}/stagectl.conf;\n}}\nstream {{\n    include /cases/{case:03}/stagectl.stream;\n}}\n"
            ),
        )
        .unwrap();
    }

    // Every case through the real nginx, in one container.
    let mount = format!("{}:/cases:ro", dir.path().display());
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &mount,
            "stagectl/nginx:1.22",
            "sh",
            "-c",
            "n=0; for c in /cases/*/; do nginx -t -q -c ${c}nginx.conf || { echo \"REFUSED $c\"; n=$((n+1)); }; done; echo \"refused: $n\"",
        ])
        .output()
        .expect("docker runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("refused: 0"),
        "nginx refused rendered configs:\n{stdout}\n{stderr}"
    );
    println!("nginx -t accepted all {} rendered configs", CASES + 1);
}
