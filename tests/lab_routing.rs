//! Routing that no registration can break or hijack, on a real local lab:
//! service names of 31 and 63 characters in an environment named with 32
//! route by path and by Host; a registration made through Consul's API with
//! an ID written to inject a `server` block changes nothing a client sees
//! and is reported by `status`; an IPv6-addressed instance does not block
//! the LB; with `registration.adopt: labeled` an unlabelled container is not
//! registered, and a reserved name cannot be claimed by a stranger; a user
//! template whose part for one service nginx refuses leaves that service out
//! and keeps routing (and adding) the others; a template that would answer
//! on the LB's address with a server of its own is rolled back.
//!
//! Needs a Docker engine and the images of scripts/build-images.sh.

mod common;

use base64::Engine;
use common::*;
use serde_json::Value;

/// 32 characters, the longest environment name.
const ENV: &str = "itroute-environment-name-32chars";
const S31: &str = "payments-reconciliation-service";
const S63: &str = "payments-reconciliation-service-with-a-name-of-63-characters-xy";

fn services() -> String {
    format!(
        "registration: {{ adopt: labeled }}\nservices:\n  {S31}: {{ image: stagectl/demo:latest, port: 8080, reserved: true }}\n  {S63}: {{ image: stagectl/demo:latest, port: 8080 }}\n"
    )
}

/// Register (or deregister) a service definition with the Consul agent of
/// lab host `host` through its HTTP API, as any process holding the host's
/// registration token could (with ACLs, nothing without one can).
fn consul_api(env: &LabEnv, host: u8, verb: &str, definition: &Value) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(definition.to_string());
    env.ssh(
        host,
        &format!(
            "docker exec -e CONSUL_HTTP_TOKEN=$(docker exec {ENV}-register cat /run/stagectl/consul-token) {ENV}-consul sh -c 'echo {b64} | base64 -d > /tmp/def.json && consul services {verb} -http-addr=127.0.0.1:8500 /tmp/def.json'"
        ),
    )
    .expect_ok(&format!("consul services {verb}"));
}

fn routes_to_demo(lb: &str, path: &str, host: &str) -> bool {
    matches!(http_get(lb, path, host), Ok((200, body)) if identity(&body).is_some())
}

fn excluded(status: &Value) -> Vec<Value> {
    status["lb"]["excluded"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn has_route(status: &Value, service: &str) -> bool {
    status["lb"]["routes"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["service"] == service))
}

#[test]
fn no_registration_breaks_or_hijacks_routing() {
    assert_eq!(ENV.len(), 32);
    assert_eq!(S63.len(), 63);
    let env = LabEnv::new(ENV, 56, &services());
    env.run(&["up"]).expect_ok("up");
    let lb = format!("{}:80", env.ip(3));

    // Long names route by path and by Host.
    for name in [S31, S63] {
        assert!(
            routes_to_demo(&lb, &format!("/{name}/"), "x"),
            "{name} by path"
        );
        let host = format!("{name}.{ENV}.stagectl.test");
        assert!(routes_to_demo(&lb, "/", &host), "{host} by Host");
    }
    assert_eq!(env.status_json()["healthy"], true);

    // A registration through Consul's API whose ID would close the upstream
    // and open a default server on the LB's address.
    let demo_port = env
        .ssh(1, &format!("docker port {ENV}-{S31}-1 8080"))
        .expect_ok("docker port")
        .stdout
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .unwrap()
        .trim()
        .to_string();
    let injection = serde_json::json!({ "Service": {
        "ID": format!("x\n}}\nserver {{ listen {}:80 default_server; location / {{ return 200 \"hijacked\\n\"; }} }}", env.ip(3)),
        "Name": S31,
        "Address": env.ip(1),
        "Port": demo_port.parse::<u16>().unwrap(),
        // Consul 1.8 answers 400 to deregistering (or failing) an ID with a
        // newline, so the registration goes critical by itself instead.
        "Check": { "TTL": "20s", "Status": "passing" },
    }});
    consul_api(&env, 1, "register", &injection);
    assert!(
        eventually(10, || excluded(&env.status_json()).iter().any(|e| e
            ["reason"]
            .as_str()
            .unwrap_or("")
            .contains("syntax"))),
        "status reports the injected ID: {:#}",
        env.status_json()
    );
    let status = env.run(&["status"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    assert!(status.stdout.contains("LEFT OUT"), "{}", status.stdout);
    for host in ["anything.example", "x"] {
        let (code, body) = http_get(&lb, "/", host).unwrap();
        assert_eq!(code, 404, "{body}");
        assert!(!body.contains("hijacked"), "{body}");
    }
    assert!(routes_to_demo(&lb, &format!("/{S31}/"), "x"));
    assert!(
        eventually(40, || env.status_json()["healthy"] == true),
        "{}",
        env.run(&["status"]).stdout
    );

    // An IPv6 instance: rendered in brackets, nothing blocked.
    let v6 = serde_json::json!({ "Service": {
        "ID": "v6-instance", "Name": "v6svc", "Address": "fd00::1", "Port": 8080,
        "Check": { "TTL": "10m", "Status": "passing" },
    }});
    consul_api(&env, 2, "register", &v6);
    assert!(
        eventually(10, || {
            let s = env.status_json();
            s["lb"]["last_reload_ok"] == true
                && s["lb"]["routes"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|r| r["service"] == "v6svc" && r["upstreams"][0] == "[fd00::1]:8080")
                })
        }),
        "{:#}",
        env.status_json()
    );

    // adopt: labeled: an unlabelled container is not registered; a stranger
    // cannot claim the reserved name; a labelled ad-hoc one is, and shows so.
    env.ssh(
        2,
        &format!(
            "docker run -d --name stray -p 8080 -e SERVICE_NAME=stray stagectl/demo:latest && \
             docker run -d --name claimer -l io.stagectl.env={ENV} -p 8080 -e SERVICE_NAME={S31} stagectl/demo:latest && \
             docker run -d --name adhoc -l io.stagectl.env={ENV} -p 8080 -e SERVICE_NAME=adhoc stagectl/demo:latest"
        ),
    )
    .expect_ok("docker run");
    assert!(
        eventually(10, || routes_to_demo(&lb, "/adhoc/", "x")),
        "a labelled container is routed"
    );
    let status = env.status_json();
    assert!(status["services"].get("stray").is_none(), "{status:#}");
    assert!(
        !status["services"][S31]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"].as_str().unwrap_or("").contains("claimer")),
        "the reserved name is not claimed by a stranger: {status:#}"
    );
    assert_eq!(
        status["services"]["adhoc"]["instances"][0]["meta"]["stagectl-origin"],
        "adhoc"
    );
    assert_eq!(
        status["services"][S31]["instances"][0]["meta"]["stagectl-origin"],
        "declared"
    );

    // A user template whose part for one service nginx refuses.
    let fragment = stagectl::agent::render::BUILTIN_TEMPLATE.replace(
        "    server_name {{ s.server_name }};",
        "    server_name {{ s.server_name }};{% if s.name == \"broken\" %} this_is_not_a_directive on;{% endif %}",
    );
    assert_ne!(fragment, stagectl::agent::render::BUILTIN_TEMPLATE);
    let template = env.dir.path().join("fragment.j2");
    std::fs::write(&template, fragment).unwrap();
    let yaml = std::fs::read_to_string(&env.topology).unwrap();
    std::fs::write(
        &env.topology,
        format!("{yaml}lb:\n  template: {}\n", template.display()),
    )
    .unwrap();
    env.run(&["up"]).expect_ok("up with the user template");
    // The user's labelled containers survived that `up`, and status shows
    // them as not stagectl's.
    assert!(
        eventually(10, || routes_to_demo(&lb, "/adhoc/", "x")),
        "the user's labelled container survives up"
    );
    let status = env.status_json();
    let host2 = status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "host-2")
        .unwrap();
    let not_managed: Vec<&str> = host2["not_managed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        not_managed.contains(&"adhoc") && not_managed.contains(&"claimer"),
        "{host2:#}"
    );
    env.ssh(
        1,
        &format!("docker run -d --name broken -l io.stagectl.env={ENV} -p 8080 -e SERVICE_NAME=broken stagectl/demo:latest"),
    )
    .expect_ok("docker run broken");
    assert!(
        eventually(15, || excluded(&env.status_json()).iter().any(|e| {
            e["service"] == "broken"
                && e["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("this_is_not_a_directive")
        })),
        "status names the refused service and why: {:#}",
        env.status_json()
    );
    // The others keep routing, and a new one is added.
    env.ssh(
        2,
        &format!("docker run -d --name late -l io.stagectl.env={ENV} -p 8080 -e SERVICE_NAME=late stagectl/demo:latest"),
    )
    .expect_ok("docker run late");
    assert!(
        eventually(10, || routes_to_demo(&lb, "/late/", "x")),
        "a service added while another is refused is routed: {:#}",
        env.status_json()
    );
    let status = env.status_json();
    assert_eq!(status["lb"]["last_reload_ok"], true, "{status:#}");
    assert!(!has_route(&status, "broken"), "{status:#}");
    assert!(routes_to_demo(&lb, &format!("/{S63}/"), "x"));
    assert_eq!(http_get(&lb, "/broken/", "x").unwrap().0, 404);

    // A template with a server of its own on the LB's address: nginx takes
    // it, but the agent sees its health answer is not stagectl's there, and
    // puts the previous config back.
    let hijack = format!(
        "{}\nserver {{ listen {}:{{{{ port }}}} default_server; location / {{ return 200 \"hijacked\\n\"; }} }}\n",
        stagectl::agent::render::BUILTIN_TEMPLATE,
        env.ip(3)
    );
    std::fs::write(&template, hijack).unwrap();
    let refused = env.run(&["up"]);
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    let status = env.status_json();
    assert_eq!(status["lb"]["last_reload_ok"], false, "{status:#}");
    assert!(
        status["lb"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("not on {}:80", env.ip(3))),
        "{status:#}"
    );
    assert!(routes_to_demo(&lb, &format!("/{S31}/"), "x"));
    assert!(routes_to_demo(&lb, "/late/", "x"));
    let (code, body) = http_get(&lb, "/", "anything.example").unwrap();
    assert_eq!(code, 404, "the previous config is back: {body}");

    consul_api(&env, 2, "deregister", &v6);
    env.run(&["down"]).expect_ok("down");
    assert!(local_objects("container", &format!("label=io.stagectl.lab={ENV}")).is_empty());
}
