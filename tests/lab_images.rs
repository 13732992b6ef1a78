//! Image delivery by missing layers, on a real local lab: an app image with
//! a 40 MB layer goes to the hosts whole the first time; rebuilt with a
//! one-line change, only the changed layer travels (at most 5 % of the
//! archive), the hosts load it, and the service is replaced and routed.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use common::*;

const IMAGE: &str = "stagectl-test/layers:latest";

/// Build IMAGE on the local engine: the demo app, a large random layer,
/// and a small file holding `version` on top.
fn build(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM stagectl/demo:latest\nRUN head -c 40000000 /dev/urandom > /big.bin\nCOPY version.txt /version.txt\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("version.txt"), version).unwrap();
    sh(
        "docker",
        &["build", "-q", "-t", IMAGE, dir.path().to_str().unwrap()],
    )
    .expect_ok("docker build");
}

/// `(sent, archive)` in MB from `up`'s line for `host`:
/// `host-1  ✔ images (12.5 kB sent, image archive 128.0 MB)`.
fn delivered(up: &Run, host: &str) -> (f64, f64) {
    let out = format!("{}{}", up.stdout, up.stderr);
    let line = out
        .lines()
        .find(|l| l.contains(host) && l.contains("images ("))
        .unwrap_or_else(|| panic!("no image line for {host}:\n{out}"));
    let inner = line.split("images (").nth(1).unwrap().trim_end_matches(')');
    let (sent, archive) = inner.split_once(" sent, image archive ").unwrap();
    let mb = |size: &str| -> f64 {
        let (n, unit) = size.trim().split_once(' ').unwrap();
        let n: f64 = n.parse().unwrap();
        match unit {
            "kB" => n / 1000.0,
            "MB" => n,
            other => panic!("unit {other} in {line}"),
        }
    };
    (mb(sent), mb(archive))
}

#[test]
fn a_rebuilt_image_sends_only_its_changed_layer() {
    build("1");
    let services =
        format!("services:\n  layers: {{ image: {IMAGE}, port: 8080, hosts: [host-1] }}\n");
    let env = LabEnv::new("itimg", 58, &services);
    let first = env.run(&["up"]).expect_ok("first up");
    let (sent, archive) = delivered(&first, "host-1");
    assert!(
        sent > 40.0 && sent == archive,
        "whole at first: {sent} of {archive} MB"
    );

    build("2");
    let local_id = sh("docker", &["image", "inspect", "-f", "{{.Id}}", IMAGE])
        .expect_ok("inspect")
        .stdout;
    let second = env.run(&["up"]).expect_ok("up after the rebuild");
    let (sent, archive) = delivered(&second, "host-1");
    println!(
        "rebuilt image: {:.1} kB sent of a {archive} MB archive",
        sent * 1000.0
    );
    assert!(
        sent <= archive * 0.05,
        "only the changed layer: {sent} of {archive} MB"
    );
    let remote_id = env
        .ssh(1, &format!("docker image inspect -f '{{{{.Id}}}}' {IMAGE}"))
        .expect_ok("inspect on host-1")
        .stdout;
    assert_eq!(
        remote_id.trim(),
        local_id.trim(),
        "the host has the new image"
    );
    let lb = format!("{}:80", env.ip(3));
    let (code, body) = http_get(&lb, "/layers/", "x").unwrap();
    assert_eq!(code, 200, "{body}");
    let version = env
        .ssh(1, "docker exec itimg-layers-1 cat /version.txt")
        .expect_ok("version");
    assert_eq!(version.stdout, "2", "the instance runs the rebuilt image");

    env.run(&["down"]).expect_ok("down");
    let _ = sh("docker", &["rmi", IMAGE]);
}
