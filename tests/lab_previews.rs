//! Environments from the command line, as CI makes a preview per branch:
//! one file without a name, `up --env BRANCH --image SERVICE=REF --set
//! services.S.KEY=VALUE --ttl`,
//! `ls` with each one's last `up` and expiry, `gc` removing exactly the
//! expired one, `down --env`. Real engines, real lab.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use common::*;

const PREVIEW: &str = "\
# The shape of every preview; `--env` names each one. Each answers on
# ports 80 and 443 of host-3 as <service>.<env>.preview.test.
lab: { name: itprev, subnet: 10.77.70.0/24 }
lb: { domain: preview.test, edge: true }
hosts:
  host-1: { driver: local, address: 10.77.70.11, roles: [app] }
  host-2: { driver: local, address: 10.77.70.12, roles: [app] }
  host-3: { driver: local, address: 10.77.70.13, roles: [lb] }
services:
  demo: { image: stagectl/demo:latest, port: 8080 }
";

const EDGE: &str = "10.77.70.13";

/// `GET /` through the edge on port 80 by name: the status and the
/// instance that answered.
fn by_name(env: &str) -> (u16, Option<String>) {
    match http_get(
        &format!("{EDGE}:80"),
        "/",
        &format!("demo.{env}.preview.test"),
    ) {
        Ok((code, body)) => (code, identity(&body)),
        Err(e) => panic!("edge on port 80 for {env}: {e}"),
    }
}

/// `GET /` over HTTPS through the edge, trusting only `ca`: curl's
/// `%{http_code} %{http_version}` and the body.
fn over_https(env: &str, ca: &std::path::Path) -> Run {
    let name = format!("demo.{env}.preview.test");
    sh(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--http2",
            "--tlsv1.2",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("{name}:443:{EDGE}"),
            "-w",
            "\n%{http_code} %{http_version}",
            &format!("https://{name}/"),
        ],
    )
}

fn ls_json(ls: &Run) -> serde_json::Value {
    serde_json::from_str(&ls.stdout).unwrap_or_else(|e| panic!("ls -o json ({e}): {}", ls.stdout))
}

fn names(list: &serde_json::Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect()
}

#[test]
fn previews_from_one_file_answer_by_name_expire_and_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("preview.yaml");
    std::fs::write(&file, PREVIEW).unwrap();
    let state = dir.path().join("state");
    let file_arg = file.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut full = vec!["-f", file_arg];
        full.extend_from_slice(args);
        stagectl(&state, &full)
    };
    // Taken down whatever happens (the lab goes with the last one).
    struct Down<'a>(&'a dyn Fn(&[&str]) -> Run);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            for env in ["feature-login-fix", "pr-2", "pr-3"] {
                let _ = (self.0)(&["--env", env, "down"]);
            }
            for tag in ["pr-2", "pr-3"] {
                let _ = sh("docker", &["rmi", &format!("stagectl/demo:{tag}")]);
            }
        }
    }
    let _down = Down(&run);

    // Other references to the demo image: what CI's builds would push.
    for tag in ["pr-2", "pr-3"] {
        sh(
            "docker",
            &[
                "tag",
                "stagectl/demo:latest",
                &format!("stagectl/demo:{tag}"),
            ],
        )
        .expect_ok("docker tag");
    }

    // Without --env the file names no environment.
    let unnamed = run(&["up"]);
    assert_eq!(unnamed.code, 2, "{}", unnamed.stderr);
    // A branch name is normalized; --ttl records the expiry.
    let first = run(&[
        "--env",
        "feature/Login_Fix",
        "--set",
        "services.demo.env.INSTANCE=feature-login-fix",
        "up",
        "--ttl",
        "2s",
    ])
    .expect_ok("up feature");
    assert!(
        first.stdout.contains("feature-login-fix is up")
            && first
                .stdout
                .contains("https://<service>.feature-login-fix.preview.test/"),
        "{}",
        first.stdout
    );
    // The same shape, with a certificate of its own for pr-3 (used below).
    let (own_cert, own_key) = self_signed(
        dir.path(),
        "own",
        Some("DNS:pr-3.preview.test,DNS:*.pr-3.preview.test"),
    );
    let own_file = dir.path().join("preview-own-cert.yaml");
    std::fs::write(
        &own_file,
        PREVIEW.replace(
            "edge: true }",
            &format!("edge: true, edge_tls: {{ cert: {own_cert}, key: {own_key} }} }}"),
        ),
    )
    .unwrap();
    let run_own = |args: &[&str]| {
        let mut full = vec!["-f", own_file.to_str().unwrap()];
        full.extend_from_slice(args);
        stagectl(&state, &full)
    };
    let up_preview = |run: &dyn Fn(&[&str]) -> Run, env: &str| {
        run(&[
            "--env",
            env,
            "--image",
            &format!("demo=stagectl/demo:{env}"),
            "--set",
            &format!("services.demo.env.INSTANCE={env}"),
            "up",
            "--ttl",
            "3d",
        ])
        .expect_ok(&format!("up {env}"))
    };
    for env in ["pr-2", "pr-3"] {
        up_preview(&run, env);
    }
    let image = lab_ssh(
        &state,
        "itprev",
        "10.77.70.11",
        "docker inspect -f '{{.Config.Image}} {{.Config.Env}}' pr-2-demo-1",
    );
    assert!(image.stdout.contains("INSTANCE=pr-2"), "{}", image.stdout);
    assert!(
        image.stdout.starts_with("stagectl/demo:pr-2 "),
        "{}",
        image.stdout
    );
    let bad = run(&["--env", "pr-2", "--image", "api=x:1", "plan"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("--image api=x:1: no service `api`"),
        "{}",
        bad.stderr
    );

    // One front door: each preview by name on port 80, and over HTTPS
    // (HTTP/2, TLS 1.2+) with only the CA `stagectl ca` prints trusted.
    let ca = run(&["ca"]).expect_ok("ca");
    assert!(
        ca.stdout.starts_with("-----BEGIN CERTIFICATE-----") && !ca.stdout.contains("PRIVATE"),
        "{}",
        ca.stdout
    );
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.stdout).unwrap();
    for env in ["feature-login-fix", "pr-2", "pr-3"] {
        assert_eq!(
            by_name(env),
            (200, Some(env.to_string())),
            "{env} on port 80"
        );
        let https = over_https(env, &ca_file).expect_ok(&format!("{env} over HTTPS"));
        assert!(
            https.stdout.contains(&format!("instance={env}")) && https.stdout.ends_with("200 2"),
            "{env}: {}",
            https.stdout
        );
    }
    assert_eq!(by_name("pr-404").0, 404, "a name no environment has");
    // A CA that is not the hosts' is not trusted.
    let (other, _) = self_signed(dir.path(), "other", None);
    // The right CA was just accepted for pr-2, so the refusal must be
    // curl's "certificate not trusted" (exit 60), not any other failure.
    let untrusted = over_https("pr-2", std::path::Path::new(&other));
    assert_eq!(
        untrusted.code, 60,
        "trusted without the CA, or failed for another reason: {}",
        untrusted.stderr
    );
    // pr-3 given a certificate of its own (lb.edge_tls): its route is
    // written again and serves that one instead.
    up_preview(&run_own, "pr-3");
    over_https("pr-3", std::path::Path::new(&own_cert)).expect_ok("pr-3 with its own certificate");
    let with_ca = over_https("pr-3", &ca_file);
    assert_eq!(with_ca.code, 60, "pr-3 with the CA's: {}", with_ca.stderr);

    // Per-environment ports keep working.
    let (code, body) = http_get("10.77.70.13:21014", "/demo/", "x").unwrap();
    assert_eq!((code, identity(&body).as_deref()), (200, Some("pr-2")));
    // The edge is nobody's container: no environment's plan touches it.
    let plan = run_own(&[
        "--env",
        "pr-3",
        "--image",
        "demo=stagectl/demo:pr-3",
        "--set",
        "services.demo.env.INSTANCE=pr-3",
        "plan",
    ])
    .expect_ok("plan pr-3");
    assert!(
        plan.stdout
            .contains("0 to create, 0 to replace, 0 to start, 0 to remove")
            && !plan.stdout.contains("edge"),
        "{}",
        plan.stdout
    );

    // ls: all three, with who ran their last up and when they expire.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let list = ls_json(&run(&["ls", "-o", "json"]).expect_ok("ls"));
    assert_eq!(names(&list), ["feature-login-fix", "pr-2", "pr-3"]);
    for e in list.as_array().unwrap() {
        assert!(
            e["last_up_by"].as_str().is_some_and(|b| b.contains('@')),
            "{e:#}"
        );
        assert!(e["expires_at"].as_u64().is_some(), "{e:#}");
        assert!(e["created_at"].as_u64().is_some(), "{e:#}");
    }
    let table = run(&["ls"]).expect_ok("ls");
    assert!(table.stdout.contains("expired"), "{}", table.stdout);

    // One preview taken down while a client asks another by name on the
    // edge: not one failed request; its name stops answering.
    let client = Client::start_by_name(&format!("{EDGE}:80"), "/", "demo.pr-2.preview.test");
    run(&["--env", "pr-3", "down"]).expect_ok("down pr-3");
    client.finish("pr-2 on the edge while pr-3 goes down", 10);
    assert_eq!(by_name("pr-3").0, 404, "pr-3 after its down");

    // gc: exactly the expired one; --dry-run changes nothing.
    let dry = run(&["gc", "--dry-run"]).expect_ok("gc --dry-run");
    assert!(
        dry.stdout.contains("feature-login-fix: expired"),
        "{}",
        dry.stdout
    );
    assert!(!dry.stdout.contains("pr-2"), "{}", dry.stdout);
    let client = Client::start_by_name(&format!("{EDGE}:80"), "/", "demo.pr-2.preview.test");
    let gc = run(&["gc"]).expect_ok("gc");
    client.finish("pr-2 on the edge while gc removes feature-login-fix", 10);
    assert!(
        gc.stdout.contains("feature-login-fix: expired") && gc.stdout.contains("removed"),
        "{}",
        gc.stdout
    );
    let list = ls_json(&run(&["ls", "-o", "json"]).expect_ok("ls after gc"));
    assert_eq!(names(&list), ["pr-2"]);
    assert_eq!(by_name("feature-login-fix").0, 404);
    assert_eq!(by_name("pr-2"), (200, Some("pr-2".into())));

    // down --env: the last one, and the edge and the lab with it.
    let down = run(&["--env", "pr-2", "down"]).expect_ok("down pr-2");
    assert!(
        down.stderr.contains("edge proxy removed") || down.stdout.contains("edge proxy removed"),
        "{}{}",
        down.stdout,
        down.stderr
    );
    assert!(local_objects("container", "label=io.stagectl.lab=itprev").is_empty());
}

/// A self-signed certificate (made with openssl) for `names` (`DNS:...`,
/// or none): its certificate and key files in `dir`.
fn self_signed(dir: &std::path::Path, stem: &str, names: Option<&str>) -> (String, String) {
    let key = dir
        .join(format!("{stem}.key"))
        .to_str()
        .unwrap()
        .to_string();
    let cert = dir
        .join(format!("{stem}.crt"))
        .to_str()
        .unwrap()
        .to_string();
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &cert,
        "-days",
        "1",
        "-subj",
        "/CN=not the hosts' CA",
    ];
    let san;
    if let Some(n) = names {
        san = format!("subjectAltName={n}");
        args.extend(["-addext", &san]);
    }
    sh("openssl", &args).expect_ok("openssl req");
    (cert, key)
}
