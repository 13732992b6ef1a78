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
# The shape of every preview; `--env` names each one.
lab: { name: itprev, subnet: 10.77.70.0/24 }
hosts:
  host-1: { driver: local, address: 10.77.70.11, roles: [app] }
  host-2: { driver: local, address: 10.77.70.12, roles: [app] }
  host-3: { driver: local, address: 10.77.70.13, roles: [lb] }
services:
  demo: { image: stagectl/demo:latest, port: 8080 }
";

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
fn previews_from_one_file_expire_and_are_collected() {
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
            for env in ["feature-login-fix", "pr-2"] {
                let _ = (self.0)(&["--env", env, "down"]);
            }
            let _ = sh("docker", &["rmi", "stagectl/demo:pr-2"]);
        }
    }
    let _down = Down(&run);

    // A second reference to the demo image: what CI's build would push.
    sh(
        "docker",
        &["tag", "stagectl/demo:latest", "stagectl/demo:pr-2"],
    )
    .expect_ok("docker tag");

    // Without --env the file names no environment.
    let unnamed = run(&["up"]);
    assert_eq!(unnamed.code, 2, "{}", unnamed.stderr);
    // A branch name is normalized; --ttl records the expiry.
    let first = run(&["--env", "feature/Login_Fix", "up", "--ttl", "2s"]).expect_ok("up feature");
    assert!(
        first.stdout.contains("feature-login-fix is up"),
        "{}",
        first.stdout
    );
    run(&[
        "--env",
        "pr-2",
        "--image",
        "demo=stagectl/demo:pr-2",
        "--set",
        "services.demo.env.PREVIEW=pr-2",
        "up",
        "--ttl",
        "3d",
    ])
    .expect_ok("up pr-2");
    let image = lab_ssh(
        &state,
        "itprev",
        "10.77.70.11",
        "docker inspect -f '{{.Config.Image}} {{.Config.Env}}' pr-2-demo-1",
    );
    assert!(image.stdout.contains("PREVIEW=pr-2"), "{}", image.stdout);
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

    // ls: both, with who ran their last up and when they expire.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let list = ls_json(&run(&["ls", "-o", "json"]).expect_ok("ls"));
    assert_eq!(names(&list), ["feature-login-fix", "pr-2"]);
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

    // gc: exactly the expired one; --dry-run changes nothing.
    let dry = run(&["gc", "--dry-run"]).expect_ok("gc --dry-run");
    assert!(
        dry.stdout.contains("feature-login-fix: expired"),
        "{}",
        dry.stdout
    );
    assert!(!dry.stdout.contains("pr-2"), "{}", dry.stdout);
    let lb2 = "10.77.70.13:21004";
    let client = Client::start(lb2);
    let gc = run(&["gc"]).expect_ok("gc");
    client.finish("pr-2 while gc removes feature-login-fix", 10);
    assert!(
        gc.stdout.contains("feature-login-fix: expired") && gc.stdout.contains("removed"),
        "{}",
        gc.stdout
    );
    let list = ls_json(&run(&["ls", "-o", "json"]).expect_ok("ls after gc"));
    assert_eq!(names(&list), ["pr-2"]);

    // down --env: the last one, and the lab with it.
    run(&["--env", "pr-2", "down"]).expect_ok("down pr-2");
    assert!(local_objects("container", "label=io.stagectl.lab=itprev").is_empty());
}
