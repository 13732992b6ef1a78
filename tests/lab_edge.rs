//! The shared edge belongs to no environment: two first `up`s at once end
//! with one CA, the CA's key is nowhere in the edge container, and an
//! environment whose names would capture another's is refused before
//! anything changes. Real engines, real lab.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;

/// Every environment of this test has this shape; `--env` names it.
const SHAPE: &str = "\
lab: { name: itedge, subnet: 10.77.85.0/24 }
lb: { domain: edge.test, edge: true }
hosts:
  host-1: { driver: local, address: 10.77.85.11, roles: [app, lb] }
services:
  demo: { image: stagectl/demo:latest, port: 8080 }
";

const EDGE: &str = "10.77.85.11";
const ENVS: [&str; 4] = ["itedge-a", "itedge-b", "itedge-web", "itedge-new"];

/// `GET /` over HTTPS through the edge for `name`, trusting only `ca`.
fn over_https(name: &str, ca: &Path) -> Run {
    sh(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--tlsv1.2",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("{name}:443:{EDGE}"),
            "-w",
            "\n%{http_code}",
            &format!("https://{name}/"),
        ],
    )
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    println!("check `{what}`: {:.1} s", started.elapsed().as_secs_f64());
    out
}

#[test]
fn the_edge_belongs_to_no_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shape.yaml");
    std::fs::write(&file, SHAPE).unwrap();
    let capturing = dir.path().join("capturing.yaml");
    std::fs::write(
        &capturing,
        SHAPE.replace(
            "lb: { domain: edge.test, edge: true }",
            "lb: { domain: itedge-a.edge.test, edge: true }\nports: { lb_http: 8085 }",
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let run_in = |file: &Path, args: &[&str]| {
        let mut full = vec!["-f", file.to_str().unwrap()];
        full.extend_from_slice(args);
        stagectl(&state, &full)
    };
    let run = |args: &[&str]| run_in(&file, args);
    // Taken down whatever happens (the lab goes with the last one).
    struct Down<'a>(&'a dyn Fn(&[&str]) -> Run);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            for env in ENVS {
                let _ = (self.0)(&["--env", env, "down"]);
            }
        }
    }
    let _down = Down(&run);
    let ssh = |command: &str| lab_ssh(&state, "itedge", EDGE, command);

    // The lab first, with an environment that has no edge (`itedge-web`
    // on its own domain), so the two `up`s below are both an edge's first
    // and do not race to make the lab.
    let no_edge = dir.path().join("no-edge.yaml");
    std::fs::write(
        &no_edge,
        SHAPE.replace(
            "lb: { domain: edge.test, edge: true }",
            "lb: { domain: itedge-a.edge.test }\nports: { lb_http: 8085 }",
        ),
    )
    .unwrap();
    timed("the lab and an environment without the edge", || {
        run_in(&no_edge, &["--env", "itedge-web", "up"]).expect_ok("up itedge-web");
    });
    let web_containers = || {
        ssh("docker ps -aq --no-trunc --filter label=io.stagectl.env=itedge-web")
            .expect_ok("containers of itedge-web")
            .stdout
    };
    let web_before = web_containers();
    assert!(!web_before.trim().is_empty());

    // Two first edge `up`s at once: one CA, which both verify with. Their
    // ports are given: two environments' first `up`s at once would both
    // pick the first free port block.
    let with_ports = |env: &str, base: u16| {
        let path = dir.path().join(format!("{env}.yaml"));
        let ports = format!(
            "ports: {{ consul_http: {base}, consul_serf_lan: {}, consul_serf_wan: {}, \
             consul_server: {}, lb_http: {} }}\n",
            base + 1,
            base + 2,
            base + 3,
            base + 4
        );
        std::fs::write(&path, format!("{SHAPE}{ports}")).unwrap();
        path
    };
    let files = [with_ports("itedge-a", 21100), with_ports("itedge-b", 21200)];
    timed("two first edge ups at once", || {
        std::thread::scope(|s| {
            let ups: Vec<_> = ["itedge-a", "itedge-b"]
                .into_iter()
                .zip(&files)
                .map(|(env, file)| {
                    let run_in = &run_in;
                    s.spawn(move || {
                        run_in(
                            file,
                            &[
                                "--env",
                                env,
                                "--set",
                                &format!("services.demo.env.INSTANCE={env}"),
                                "up",
                            ],
                        )
                    })
                })
                .collect();
            for (up, env) in ups.into_iter().zip(["itedge-a", "itedge-b"]) {
                up.join().unwrap().expect_ok(&format!("up {env}"));
            }
        });
    });
    let ca = run(&["ca"]).expect_ok("ca");
    assert_eq!(
        ca.stdout.matches("-----BEGIN CERTIFICATE-----").count(),
        1,
        "{}",
        ca.stdout
    );
    assert!(!ca.stdout.contains("PRIVATE"));
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.stdout).unwrap();
    timed("both verify with the one CA", || {
        for env in ["itedge-a", "itedge-b"] {
            let https = over_https(&format!("demo.{env}.edge.test"), &ca_file)
                .expect_ok(&format!("{env} over HTTPS"));
            assert!(
                https.stdout.contains(&format!("instance={env}")) && https.stdout.ends_with("200"),
                "{env}: {}",
                https.stdout
            );
        }
        // A CA that is not the hosts' is not trusted.
        let (other, _) = self_signed(dir.path(), "other", 1);
        assert_ne!(
            over_https("demo.itedge-a.edge.test", Path::new(&other)).code,
            0,
            "trusted without the CA"
        );
    });

    // The CA's key is nowhere in the edge: no mount of its volume, and no
    // file holds a line of it, while the same search finds an
    // environment's own key there.
    timed("no CA key in the edge", || {
        let mounts =
            ssh("docker inspect -f '{{json .Mounts}}' stagectl-edge").expect_ok("inspect the edge");
        assert_eq!(mounts.stdout.trim(), "[]", "{}", mounts.stdout);
        let line_of = |container: &str, path: &str| {
            let key = ssh(&format!("docker cp {container}:{path} - | tar -xO"))
                .expect_ok(&format!("read {path}"));
            assert!(key.stdout.contains("PRIVATE KEY"), "{}", key.stdout);
            key.stdout.lines().nth(1).unwrap().to_string()
        };
        let search = |line: &str| {
            ssh(&format!(
                "docker exec stagectl-edge grep -rlF -e '{line}' / \
                 --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev"
            ))
        };
        let env_key = line_of("stagectl-edge", "/etc/nginx/edge-tls/env-itedge-a.key");
        let found = search(&env_key);
        assert!(
            found.stdout.contains("env-itedge-a.key"),
            "the search finds the environment's key: {} {}",
            found.stdout,
            found.stderr
        );
        let ca_key = line_of(
            "stagectl-edge-ca-edge.test",
            "/var/lib/stagectl-edge-ca/ca.key",
        );
        let found = search(&ca_key);
        assert!(
            found.stdout.trim().is_empty(),
            "the CA key in the edge: {}",
            found.stdout
        );
    });

    // `itedge-web` on the edge with `itedge-a.edge.test` would answer to
    // *.itedge-web.itedge-a.edge.test, itedge-a's: refused, nothing
    // changed, and itedge-a keeps its names and its certificate.
    timed("a capturing domain is refused", || {
        let a_cert = || {
            ssh("docker exec stagectl-edge cat /etc/nginx/edge-tls/env-itedge-a.crt")
                .expect_ok("itedge-a's certificate")
                .stdout
        };
        let a_cert_before = a_cert();
        // A new environment: not even its key is kept.
        let capturing_new = dir.path().join("capturing-new.yaml");
        std::fs::write(
            &capturing_new,
            SHAPE.replace("domain: edge.test", "domain: itedge-a.edge.test"),
        )
        .unwrap();
        let new = run_in(&capturing_new, &["--env", "itedge-new", "up"]);
        assert_eq!(new.code, 2, "{}\n{}", new.stdout, new.stderr);
        assert!(
            new.stderr.contains("environment itedge-a's"),
            "{}",
            new.stderr
        );
        assert!(!state.join("envs").join("itedge-new").exists());
        let made = ssh("docker ps -aq --filter label=io.stagectl.env=itedge-new")
            .expect_ok("containers of itedge-new");
        assert_eq!(made.stdout.trim(), "");
        let refused = run_in(&capturing, &["--env", "itedge-web", "up"]);
        assert_eq!(refused.code, 2, "{}\n{}", refused.stdout, refused.stderr);
        assert!(
            refused.stderr.contains("environment itedge-a's"),
            "{}",
            refused.stderr
        );
        assert_eq!(web_containers(), web_before, "itedge-web changed");
        assert_eq!(a_cert(), a_cert_before, "itedge-a's certificate");
        let routes = ssh("docker exec stagectl-edge ls /etc/nginx/conf.d").expect_ok("routes");
        assert!(!routes.stdout.contains("itedge-web"), "{}", routes.stdout);
        let https = over_https("demo.itedge-a.edge.test", &ca_file)
            .expect_ok("itedge-a over HTTPS after the refusal");
        assert!(
            https.stdout.contains("instance=itedge-a"),
            "{}",
            https.stdout
        );
    });

    // A certificate near its end (one of a day planted in its place) is
    // issued again by the environment's `up`, and by `gc` for any.
    timed("certificates near their end renewed by up and gc", || {
        let (short, short_key) = self_signed(dir.path(), "short", 1);
        let cert_of = |env: &str| format!("/etc/nginx/edge-tls/env-{env}.crt");
        let lasts_30_days = |env: &str| {
            let pem = ssh(&format!("docker exec stagectl-edge cat {}", cert_of(env)))
                .expect_ok("read the certificate");
            let path = dir.path().join(format!("{env}-now.crt"));
            std::fs::write(&path, pem.stdout).unwrap();
            let check = sh(
                "openssl",
                &[
                    "x509",
                    "-noout",
                    "-checkend",
                    "2592000",
                    "-in",
                    path.to_str().unwrap(),
                ],
            );
            check.code == 0
        };
        use base64::Engine;
        let plant = |from: &str, to: &str| {
            let b64 =
                base64::engine::general_purpose::STANDARD.encode(std::fs::read(from).unwrap());
            ssh(&format!(
                "echo {b64} | base64 -d | docker exec -i stagectl-edge sh -c 'cat > {to}'"
            ))
            .expect_ok("plant a short certificate");
        };
        for env in ["itedge-a", "itedge-b"] {
            assert!(lasts_30_days(env), "{env}'s issued certificate");
            plant(&short, &cert_of(env));
            plant(&short_key, &cert_of(env).replace(".crt", ".key"));
            assert!(!lasts_30_days(env), "{env}'s planted certificate");
        }
        run_in(
            &files[0],
            &[
                "--env",
                "itedge-a",
                "--set",
                "services.demo.env.INSTANCE=itedge-a",
                "up",
            ],
        )
        .expect_ok("up itedge-a");
        assert!(lasts_30_days("itedge-a"), "renewed by up");
        assert!(!lasts_30_days("itedge-b"), "itedge-b's is its own");
        let gc = run(&["gc"]).expect_ok("gc");
        assert!(
            gc.stdout.contains("host-1: itedge-b: certificate"),
            "{}",
            gc.stdout
        );
        assert!(lasts_30_days("itedge-b"), "renewed by gc");
        let https = over_https("demo.itedge-b.edge.test", &ca_file).expect_ok("itedge-b renewed");
        assert!(
            https.stdout.contains("instance=itedge-b"),
            "{}",
            https.stdout
        );
    });

    // The last route's `down` and another environment's `up` at once:
    // the edge the `down` removes never takes the new route with it.
    run_in(&files[0], &["--env", "itedge-a", "down"]).expect_ok("down itedge-a");
    timed(
        "a down removing the edge beside an up adding a route",
        || {
            std::thread::scope(|s| {
                let up = s.spawn(|| {
                    run_in(
                        &files[0],
                        &[
                            "--env",
                            "itedge-a",
                            "--set",
                            "services.demo.env.INSTANCE=itedge-a",
                            "up",
                        ],
                    )
                });
                run_in(&files[1], &["--env", "itedge-b", "down"]).expect_ok("down itedge-b");
                up.join().unwrap().expect_ok("up itedge-a again");
            });
            let https = over_https("demo.itedge-a.edge.test", &ca_file)
                .expect_ok("itedge-a over HTTPS after the other's down");
            assert!(
                https.stdout.contains("instance=itedge-a"),
                "{}",
                https.stdout
            );
        },
    );

    timed("down", || {
        for env in ENVS {
            run(&["--env", env, "down"]).expect_ok(&format!("down {env}"));
        }
    });
}

/// A self-signed certificate valid for `days` and its key (openssl), as
/// paths.
fn self_signed(dir: &Path, name: &str, days: u32) -> (String, String) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    sh(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            &days.to_string(),
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    )
    .expect_ok("openssl");
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    )
}
