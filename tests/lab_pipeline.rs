//! `plan` and `up` are one pipeline: the steps `plan -o json` lists are
//! exactly the steps `up -o json` then reports done, in the same order
//! within each phase of each host (see `common::Steps`), on a fresh lab (lab
//! steps, image deliveries, every container), after a topology change (a
//! drained replacement) and for a service with a volume, whose data then
//! outlives a replacement and `down` (not `down -v`). Real engines, real lab.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use std::collections::BTreeSet;

use common::*;

fn planned(env: &LabEnv) -> Steps {
    env.planned(&[])
}

fn carried_out(env: &LabEnv) -> Steps {
    env.carried_out(&[])
}

#[test]
fn up_carries_out_exactly_the_plan() {
    let env = LabEnv::new(
        "itpipe",
        62,
        "services:\n  demo:\n    image: stagectl/demo:latest\n    port: 8080\n    drain_seconds: 1\n",
    );

    // A fresh lab: the lab's bridge and hosts, images, every container.
    let plan = planned(&env);
    let actions: BTreeSet<&str> = plan.iter().map(|k| k.2.as_str()).collect();
    for a in [
        "create_network",
        "create_lab_host",
        "deliver_images",
        "create",
        "wait_cluster",
        "wait_routes",
    ] {
        assert!(actions.contains(a), "{a} missing from the plan: {plan:#?}");
    }
    let done = carried_out(&env);
    assert_eq!(
        plan, done,
        "plan -o json and up -o json differ on a fresh lab"
    );

    // Converged: only the waits are left, in plan and in up.
    let plan = planned(&env);
    assert!(
        plan.iter().all(|k| k.2.starts_with("wait_")),
        "a converged environment plans only waits: {plan:#?}"
    );
    assert_eq!(plan, carried_out(&env), "no-op plan and up differ");
    // What a wait found is data in JSON: the route's own text, without the
    // terminal's column padding, check marks or colour.
    let up = env.run(&["up", "-o", "json"]).expect_ok("up -o json");
    let routes = json_lines(&up.stdout)
        .into_iter()
        .find(|e| e["event"] == "done" && e["action"] == "wait_routes")
        .unwrap_or_else(|| panic!("no wait_routes done event: {}", up.stdout));
    let note = routes["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("demo → 2 instance(s): http://")
            && !note.contains('✔')
            && !note.contains('\u{1b}'),
        "{note:?}"
    );

    // A topology change: the service's environment changes, so its
    // instances are replaced one host at a time, drained.
    let yaml = std::fs::read_to_string(&env.topology).unwrap().replace(
        "    drain_seconds: 1\n",
        "    drain_seconds: 1\n    env:\n      GREETING: hello\n",
    );
    std::fs::write(&env.topology, yaml).unwrap();
    let plan = planned(&env);
    let rolling: Vec<_> = plan.iter().filter(|k| k.0 == "rolling").collect();
    assert_eq!(
        rolling.len(),
        2,
        "one drained replacement per app host: {plan:#?}"
    );
    assert_eq!(plan, carried_out(&env), "plan and up differ after a change");

    // A service with its own command, user and a volume: each instance's
    // data stays across a replacement and `down` (not `down -v`). And a worker
    // (`expose: none`): registered, not routed.
    let store = "  store:\n    image: stagectl/demo:latest\n    port: 8080\n    hosts: [host-1]\n    user: \"0:0\"\n    entrypoint: [sh, -c]\n    command: [\"echo boot >> /data/boots; exec stagectl demo-http --port 8080\"]\n    volumes:\n      data: /data\n    secrets:\n      token: { from_file: token.txt }\n  worker:\n    image: stagectl/demo:latest\n    port: 8080\n    hosts: [host-2]\n    expose: none\n";
    let with_store = format!("{}{store}", std::fs::read_to_string(&env.topology).unwrap());
    std::fs::write(&env.topology, &with_store).unwrap();
    // The secret's file is not there yet: plan and up refuse, naming where
    // it is declared, and change nothing.
    let missing = env.run(&["up"]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("topology.yaml:") && missing.stderr.contains("secret token"),
        "{}",
        missing.stderr
    );
    const SECRET: &str = "s3cret-Value-4242";
    std::fs::write(env.dir.path().join("token.txt"), SECRET).unwrap();
    let plan = planned(&env);
    assert!(
        plan.contains(&(
            "host".into(),
            "host-1".into(),
            "create_volume".into(),
            "itpipe-store-1-data".into()
        )),
        "{plan:#?}"
    );
    assert_eq!(plan, carried_out(&env), "plan and up differ with a volume");
    let boots = || {
        env.ssh(1, "docker exec itpipe-store-1 cat /data/boots")
            .expect_ok("reading the volume")
            .stdout
            .lines()
            .count()
    };
    assert_eq!(boots(), 1);
    // exec: output streamed, exit code passed through.
    let cat = env.run(&["exec", "store-1", "--", "cat", "/data/boots"]);
    assert_eq!(
        (cat.code, cat.stdout.as_str()),
        (0, "boot\n"),
        "{}",
        cat.stderr
    );
    let failed = env.run(&["exec", "store-1", "--", "sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!((failed.code, failed.stderr.trim()), (3, "oops"));
    let unknown = env.run(&["exec", "nope-1", "--", "true"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("store-1"), "{}", unknown.stderr);
    // The worker (`expose: none`) is registered and healthy, not routed.
    let status = env.status_json();
    assert_eq!(status["services"]["worker"]["passing"], 1, "{status:#}");
    assert_eq!(status["healthy"], true, "{status:#}");
    let lb = format!("{}:80", env.ip(3));
    let (code, _) = http_get(&lb, "/worker/", "x").unwrap();
    assert_eq!(code, 404, "the worker is not routed");
    let (code, _) = http_get(&lb, "/store/", "x").unwrap();
    assert_eq!(code, 200, "the store is");
    // Every instance is told where the routed services answer.
    let url = env.ssh(2, "docker exec itpipe-worker-1 printenv STORE_SERVICE_URL");
    assert_eq!(url.stdout.trim(), format!("http://{lb}/store/"));
    let user = env.ssh(1, "docker inspect -f '{{.Config.User}}' itpipe-store-1");
    assert_eq!(user.stdout.trim(), "0:0");
    // The secret: a 0400 file in the instance, in no output and not in
    // `docker inspect`.
    let file = env.ssh(
        1,
        "docker exec itpipe-store-1 sh -c 'stat -c %a /run/secrets/token; cat /run/secrets/token'",
    );
    assert_eq!(file.stdout, format!("400\n{SECRET}"));
    let inspect = env
        .ssh(1, "docker inspect itpipe-store-1")
        .expect_ok("inspect");
    assert!(
        !inspect.stdout.contains(SECRET),
        "the secret is in docker inspect"
    );
    for args in [
        &["plan"][..],
        &["plan", "-o", "json"],
        &["up"],
        &["status", "-o", "json"],
        &["logs", "host-1", "store-1"],
        &["logs", "--all"],
    ] {
        let out = env.run(args);
        assert!(
            !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
            "stagectl {args:?} printed the secret"
        );
    }
    std::fs::write(
        &env.topology,
        with_store.replace(
            "    user: \"0:0\"\n",
            "    user: \"0:0\"\n    env: { V: \"2\" }\n",
        ),
    )
    .unwrap();
    env.run(&["up"]).expect_ok("up replacing the instance");
    assert_eq!(boots(), 2, "the volume outlived the replaced instance");
    // `down` keeps a service's data unless asked (as `docker compose down`
    // does), and `--dry-run` lists exactly what `-v` would remove.
    let down = env.run(&["down", "-o", "json"]).expect_ok("down");
    assert!(
        !down
            .stdout
            .contains("remove_volume\",\"subject\":\"itpipe-store-1-data"),
        "{}",
        down.stdout
    );
    env.run(&["up"]).expect_ok("up after down");
    assert_eq!(boots(), 3, "the volume outlived down");
    let dry = env
        .run(&["down", "-v", "--dry-run", "-o", "json"])
        .expect_ok("down -v --dry-run");
    let dry: Vec<_> = json_lines(&dry.stdout);
    assert!(
        dry.iter()
            .any(|e| e["action"] == "remove_volume" && e["subject"] == "itpipe-store-1-data"),
        "{dry:?}"
    );
    assert!(
        dry.iter().all(|e| e.get("event").is_none()),
        "a dry run carries nothing out: {dry:?}"
    );
    assert_eq!(boots(), 3, "the dry run left the instance running");
    let down = env.run(&["down", "-v", "-o", "json"]).expect_ok("down -v");
    assert!(
        json_lines(&down.stdout).iter().any(|e| e["event"] == "done"
            && e["action"] == "remove_volume"
            && e["subject"] == "itpipe-store-1-data"),
        "{}",
        down.stdout
    );
}
