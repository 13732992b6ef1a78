//! The example stack of `topologies/stack.yaml` on a real lab: a web app
//! whose answers come from Redis (reached through the load balancer's TCP
//! listener), a worker, a migration run before the web rollout, and a
//! secret. Checked: the web answers with data from the database; Redis
//! answers on the LB's TCP port from outside; the worker is registered and
//! not routed; the data survives a web replacement, a database restart and
//! `down --keep-data` + `up`; `stagectl run` passes exit codes through; a
//! failing `before_rollout` leaves the old web instances serving with no
//! failed request; the secret is in no output and not in `docker inspect`.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const PASSWORD: &str = "Stack-Secret-9f3a71";
const VARS: &[(&str, &str)] = &[("SHOP_REDIS_PASSWORD", PASSWORD)];
/// The web's "new release": the demo image under another reference.
const WEB_V2: &str = "stagectl/demo:itstack-v2";

/// The example's services, on this test's own lab.
fn stack_services() -> String {
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/topologies/stack.yaml"
    ))
    .unwrap();
    let at = file.find("\nservices:\n").expect("the stack has services");
    file[at + 1..].to_string()
}

/// `key=value` fields of the web app's answer.
fn field(body: &str, key: &str) -> Option<u64> {
    body.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

/// One answer of the web app through the load balancer: its visit count.
fn visits(lb: &str) -> u64 {
    let (code, body) = http_get(lb, "/web/", "x").unwrap();
    assert_eq!(code, 200, "{body}");
    field(&body, "visits").unwrap_or_else(|| panic!("no visit count in {body:?}"))
}

/// AUTH and PING over Redis's protocol at `addr`: the replies.
fn redis_ping(addr: &str, password: &str) -> Result<Vec<String>, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let cmd = |args: &[&str]| {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        out
    };
    s.write_all(format!("{}{}", cmd(&["AUTH", password]), cmd(&["PING"])).as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(s);
    let mut replies = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        replies.push(line.trim_end().to_string());
    }
    Ok(replies)
}

#[test]
fn the_example_stack_keeps_its_data_and_its_secret() {
    let env = LabEnv::new("itstack", 68, &stack_services());
    // Every command run with the secret set: its output must not hold it.
    let run = |args: &[&str]| {
        let r = env.run_with_env(VARS, args);
        assert!(
            !r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD),
            "stagectl {args:?} printed the secret:\n{}\n{}",
            r.stdout,
            r.stderr
        );
        r
    };

    // Without the secret's variable nothing starts, and the error says
    // where the secret is declared.
    let missing = env.run(&["up"]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("topology.yaml:") && missing.stderr.contains("SHOP_REDIS_PASSWORD"),
        "{}",
        missing.stderr
    );

    // The plan shows the order: the web and the worker after Redis passes,
    // the web's migration before its instances.
    let plan = run(&["plan"]).expect_ok("plan");
    let web_stage = plan
        .stdout
        .find("service web, in order:")
        .expect(&plan.stdout);
    let migrate = plan
        .stdout
        .find("then run once on host-1")
        .expect(&plan.stdout);
    assert!(web_stage < migrate, "{}", plan.stdout);
    assert!(plan
        .stdout
        .contains("first wait until redis has a passing instance"));

    // `up` carries out the plan as printed, stages included.
    let planned = env.planned(VARS);
    let stage: Vec<&str> = planned
        .iter()
        .filter(|k| k.0 == "stage")
        .map(|k| k.2.as_str())
        .collect();
    for action in ["wait_passing", "run_once", "create"] {
        assert!(
            stage.contains(&action),
            "{action} in the stages: {planned:#?}"
        );
    }
    assert_eq!(planned, env.carried_out(VARS), "plan and up differ");
    let lb = format!("{}:80", env.ip(3));
    let first = visits(&lb);
    let (_, body) = http_get(&lb, "/web/", "x").unwrap();
    assert_eq!(field(&body, "schema"), Some(2), "the migration ran: {body}");
    assert!(field(&body, "visits").unwrap() > first);

    // Redis answers on the LB's TCP port from outside, with the password.
    let status = env.status_json();
    let redis_port = status["lb"]["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["service"] == "redis"))
        .and_then(|r| r["tcp_port"].as_u64())
        .unwrap_or_else(|| panic!("no TCP route for redis: {status:#}"));
    let tcp = format!("{}:{redis_port}", env.ip(3));
    assert_eq!(redis_ping(&tcp, PASSWORD).unwrap(), ["+OK", "+PONG"]);
    let wrong = redis_ping(&tcp, "wrong").unwrap();
    assert!(wrong[0].starts_with("-WRONGPASS"), "{wrong:?}");

    // The worker: registered and passing, not routed; it writes to Redis.
    assert_eq!(status["services"]["worker"]["passing"], 1, "{status:#}");
    let (code, _) = http_get(&lb, "/worker/", "x").unwrap();
    assert_eq!(code, 404, "the worker is not routed");
    assert!(
        eventually(20, || {
            let (_, body) = http_get(&lb, "/web/", "x").unwrap();
            field(&body, "worker_ticks").unwrap_or(0) >= 2
        }),
        "the worker ticks in the database"
    );

    // stagectl run: the command's exit code, 0 and not.
    let migrate = run(&["run", "web", "--", "demo-migrate", "--version", "3"]);
    assert_eq!(migrate.code, 0, "{}", migrate.stderr);
    assert_eq!(migrate.stdout.trim(), "schema version 3");
    let (_, body) = http_get(&lb, "/web/", "x").unwrap();
    assert_eq!(field(&body, "schema"), Some(3), "{body}");
    let failed = run(&["run", "redis", "--", "sh", "-c", "echo no >&2; exit 7"]);
    assert_eq!((failed.code, failed.stderr.trim()), (7, "no"));
    assert!(
        env.ssh(1, "docker ps -aq --filter label=io.stagectl.component=run")
            .stdout
            .trim()
            .is_empty(),
        "one-off containers are removed"
    );

    // -i: piped input reaches the one-off; -it: a console on a terminal
    // (through tmux), whose exit code comes back.
    let bin = env!("CARGO_BIN_EXE_stagectl");
    let prefix = format!(
        "STAGECTL_STATE_DIR={} SHOP_REDIS_PASSWORD={PASSWORD} {bin} -f {}",
        env.state().display(),
        env.topology.display()
    );
    let piped = sh(
        "sh",
        &[
            "-c",
            &format!("printf 'from stdin\\n' | {prefix} run -i redis -- sh -c 'cat; exit 5'"),
        ],
    );
    assert_eq!(
        (piped.code, piped.stdout.as_str()),
        (5, "from stdin\n"),
        "{}",
        piped.stderr
    );
    let code_file = env.dir.path().join("console-exit");
    let session = "itstack-console";
    let _ = sh("tmux", &["kill-session", "-t", session]);
    sh(
        "tmux",
        &[
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "100",
            "-y",
            "30",
            &format!(
                "{prefix} run -it redis -- sh; echo $? > {}; sleep 60",
                code_file.display()
            ),
        ],
    )
    .expect_ok("tmux");
    let pane = || sh("tmux", &["capture-pane", "-p", "-t", session]).stdout;
    assert!(
        eventually(20, || pane().contains('#')),
        "no prompt: {}",
        pane()
    );
    sh(
        "tmux",
        &[
            "send-keys",
            "-t",
            session,
            "echo $((6*7)) $(stty size)",
            "Enter",
        ],
    );
    assert!(
        eventually(10, || pane().contains("42 30 100")),
        "{}",
        pane()
    );
    sh("tmux", &["send-keys", "-t", session, "exit 6", "Enter"]);
    assert!(
        eventually(10, || std::fs::read_to_string(&code_file)
            .is_ok_and(|c| c.trim() == "6")),
        "the console's exit code: {:?}\n{}",
        std::fs::read_to_string(&code_file),
        pane()
    );
    let _ = sh("tmux", &["kill-session", "-t", session]);

    // A new web image (another reference, as a release would have): the
    // instances are replaced, the data stays (it is in Redis).
    sh("docker", &["tag", "stagectl/demo:latest", WEB_V2]).expect_ok("docker tag");
    let before = visits(&lb);
    let yaml = std::fs::read_to_string(&env.topology).unwrap();
    let (head, tail) = yaml.split_once("\n  web:\n").unwrap();
    let changed = format!(
        "{head}\n  web:\n{}",
        tail.replacen(
            "image: stagectl/demo:latest",
            &format!("image: {WEB_V2}"),
            1
        )
    );
    assert_ne!(changed, yaml, "the web service's image was found");
    std::fs::write(&env.topology, &changed).unwrap();
    let client = Client::start_at(&lb, "/web/");
    run(&["up"]).expect_ok("up replacing the web image");
    client.finish("web replaced", 10);
    assert!(visits(&lb) > before);
    let image = env.ssh(1, "docker inspect -f '{{.Config.Image}}' itstack-web-1");
    assert_eq!(image.stdout.trim(), WEB_V2);

    // A failing migration stops the rollout: the old web keeps serving,
    // no request fails, nothing of the web is replaced.
    let ids = || {
        env.ssh(1, "docker inspect -f '{{.Id}}' itstack-web-1")
            .stdout
    };
    let web_id = ids();
    // A release whose database address is wrong: its migration fails.
    let (head, tail) = changed.split_once("\n  web:\n").unwrap();
    let failing = format!(
        "{head}\n  web:\n{}",
        tail.replacen(
            "${REDIS_SERVICE_HOST}:${REDIS_SERVICE_PORT}",
            "127.0.0.1:1",
            1
        )
    );
    assert_ne!(failing, changed);
    std::fs::write(&env.topology, &failing).unwrap();
    let client = Client::start_at(&lb, "/web/");
    let stopped = run(&["up"]);
    client.finish("failed migration", 10);
    assert_ne!(stopped.code, 0, "{}", stopped.stdout);
    assert!(
        format!("{}{}", stopped.stdout, stopped.stderr)
            .contains("before_rollout of web exited with 1"),
        "{}\n{}",
        stopped.stdout,
        stopped.stderr
    );
    assert_eq!(ids(), web_id, "the old web instance still runs");
    std::fs::write(&env.topology, &changed).unwrap();

    // The database restarted: the data is still there.
    let before = visits(&lb);
    env.ssh(1, "docker restart itstack-redis-1")
        .expect_ok("restart redis");
    assert!(
        eventually(30, || http_get(&lb, "/web/", "x")
            .map(|(c, b)| c == 200 && field(&b, "visits").unwrap_or(0) > before)
            .unwrap_or(false)),
        "visits survive a database restart"
    );

    // down --keep-data, then up: still there.
    let before = visits(&lb);
    run(&["down", "--keep-data"]).expect_ok("down --keep-data");
    run(&["up"]).expect_ok("up after down --keep-data");
    assert!(visits(&lb) > before, "visits survive down --keep-data");

    // The secret: a 0400 file where asked, and nowhere else.
    let file = env.ssh(
        1,
        "docker exec itstack-redis-1 stat -c %a /run/secrets/redis_password",
    );
    assert_eq!(file.stdout.trim(), "400");
    for host in 1..=3 {
        let inspect = env.ssh(host, "docker inspect $(docker ps -aq)");
        assert!(
            inspect.code == 0 && !inspect.stdout.contains(PASSWORD),
            "the secret is in docker inspect on host-{host}"
        );
        let ps = env.ssh(host, "ps -eo args");
        assert!(
            !ps.stdout.contains(PASSWORD),
            "the secret is on a command line on host-{host}"
        );
    }
    for args in [
        &["status"][..],
        &["status", "-o", "json"],
        &["plan", "-o", "json"],
        &["logs", "--all"],
        &["logs", "host-1", "redis-1"],
        &["logs", "host-1", "web-1"],
    ] {
        run(args);
    }

    let _ = sh("docker", &["rmi", WEB_V2]);

    // down -v: the data goes with everything else.
    run(&["down", "-v"]).expect_ok("down -v");
    assert!(
        local_objects("container", "label=io.stagectl.lab=itstack").is_empty(),
        "the lab hosts, and the volumes in them, are gone"
    );
}
