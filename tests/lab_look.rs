//! Looking at an environment, on a real local lab: `stagectl ui` serves the
//! Consul UI on a local port through the tunnel, and a real headless
//! Chromium lists the environment's services and nodes on it, while no host
//! has Consul's HTTP port on anything but loopback; `status --watch` runs in
//! a real terminal (tmux) and shows an instance started on an app host
//! within a second, and `q` ends it; `logs --all` merges every agent's log.
//!
//! Needs a Docker engine, the images of scripts/build-images.sh, tmux and
//! Chromium (.ci/run installs both).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SERVICES: &str = "services:\n  demo:\n    image: stagectl/demo:latest\n    port: 8080\n";

/// A real headless Chromium, driven over the DevTools protocol: the
/// Consul UI is a script-built page that keeps long polls open, so neither
/// `--dump-dom` (too early) nor a virtual time budget (never idle) can tell
/// when it has drawn; asking the page itself can.
struct Browser {
    process: std::process::Child,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut process = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium runs (apt-get install chromium)");
        let mut stderr = BufReader::new(process.stderr.take().unwrap());
        let mut line = String::new();
        let ws_url = loop {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "chromium exited");
            if let Some(url) = line.trim().strip_prefix("DevTools listening on ") {
                break url.to_string();
            }
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let (ws, _) = tungstenite::connect(ws_url.as_str()).unwrap();
        let mut browser = Browser {
            process,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", serde_json::json!({ "url": url }));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = browser.call(
            "Target.attachToTarget",
            serde_json::json!({ "targetId": target, "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser
    }

    /// One DevTools command (on the page once attached); its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        loop {
            let answer = self.ws.read().unwrap();
            let Ok(text) = answer.to_text() else { continue };
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn goto(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({ "url": url }));
    }

    /// The page's visible text, once it holds every one of `want` (or what
    /// it holds after `secs`).
    fn text_with(&mut self, want: &[&str], secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.call(
                "Runtime.evaluate",
                serde_json::json!({ "expression": "document.body ? document.body.innerText : ''", "returnByValue": true }),
            );
            let text = r["result"]["value"].as_str().unwrap_or("").to_string();
            if want.iter().all(|w| text.contains(w)) || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine;
        let r = self.call(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png" }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn tmux(args: &[&str]) -> Run {
    sh("tmux", args)
}

#[test]
fn the_consul_ui_and_the_watch_view_show_the_environment() {
    let env = LabEnv::new("itlook", 57, SERVICES);
    env.run(&["up"]).expect_ok("up");

    // Consul's HTTP API listens on loopback only, on every host.
    for host in 1..=3 {
        let listeners = env.ssh(host, "ss -ltnH").expect_ok("ss").stdout;
        let on_8500: Vec<&str> = listeners
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter(|a| a.ends_with(":8500"))
            .collect();
        assert_eq!(on_8500, ["127.0.0.1:8500"], "host-{host}:\n{listeners}");
    }

    // `stagectl ui`: the URL on stdout, served until interrupted.
    let mut ui = Command::new(env!("CARGO_BIN_EXE_stagectl"))
        .args(["-f", env.topology.to_str().unwrap(), "ui", "host-2"])
        .env("STAGECTL_STATE_DIR", env.state())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(ui.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let url = url.trim().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/ui/")
        .to_string();
    let (code, body) = http_get(&addr, "/v1/catalog/services", &addr).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"demo\""), "{body}");
    // DNS rebinding: a page whose own name points at 127.0.0.1 sends that
    // name; the tunnel refuses it.
    let (code, _) = http_get(&addr, "/v1/catalog/services", "evil.example").unwrap();
    assert_eq!(code, 403, "a foreign Host is refused");

    let mut browser = Browser::open(&format!("{url}dc1/services"));
    let services = browser.text_with(&["demo"], 30);
    assert!(
        services.contains("demo"),
        "the UI lists the service:\n{services}"
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("consul-ui.png");
    browser.screenshot(&shot);
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot"
    );
    browser.goto(&format!("{url}dc1/nodes"));
    let nodes = browser.text_with(&["host-1", "host-2", "host-3"], 30);
    for host in ["host-1", "host-2", "host-3"] {
        assert!(nodes.contains(host), "the UI lists {host}:\n{nodes}");
    }
    drop(browser);

    // Ctrl-C ends it cleanly.
    sh("kill", &["-INT", &ui.id().to_string()]);
    let status = ui.wait().unwrap();
    assert_eq!(status.code(), Some(0));

    // status --watch in a real terminal.
    let session = "itlook-watch";
    let _ = tmux(&["kill-session", "-t", session]);
    let command = format!(
        "STAGECTL_STATE_DIR={} {} -f {} status --watch",
        env.state().display(),
        env!("CARGO_BIN_EXE_stagectl"),
        env.topology.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        "160",
        "-y",
        "40",
        &command,
    ])
    .expect_ok("tmux new-session");
    let screen = || tmux(&["capture-pane", "-p", "-t", session]).stdout;
    assert!(
        eventually(30, || {
            let s = screen();
            s.contains("demo") && s.contains("2/2") && s.contains("host-3 alive")
        }),
        "the watch view shows the environment:\n{}",
        screen()
    );
    env.ssh(
        2,
        "docker run -d --name watched -l io.stagectl.env=itlook -p 8080 -e SERVICE_NAME=watched stagectl/demo:latest",
    )
    .expect_ok("docker run");
    let started = Instant::now();
    assert!(
        eventually(5, || screen().contains("watched")),
        "the new instance appears:\n{}",
        screen()
    );
    let shown_after = started.elapsed();
    println!(
        "status --watch showed the new instance {} ms after docker run returned",
        shown_after.as_millis()
    );
    assert!(
        shown_after < Duration::from_secs(1),
        "shown after {shown_after:?}"
    );
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("watch.txt"),
        screen(),
    )
    .unwrap();
    tmux(&["send-keys", "-t", session, "q"]).expect_ok("send q");
    assert!(
        eventually(5, || tmux(&["has-session", "-t", session]).code != 0),
        "q ends the watch:\n{}",
        screen()
    );

    // Every agent's log, merged in time order, each line naming its host
    // and agent.
    let all = env.run(&["logs", "--all"]).expect_ok("logs --all");
    let lines: Vec<&str> = all.stdout.lines().collect();
    // Both app hosts run an `itlook-demo-1`: the line must name the host.
    for (agent, needle) in [
        ("host-2 register", "registered watched"),
        // host-1's registration may land through the resync (its first
        // attempt can time out while Consul starts): its agent's own start.
        (
            "host-1 register",
            "registering containers of itlook on host-1",
        ),
        ("host-2 register", "registered itlook-demo-1"),
        ("host-3 template", "nginx reloaded"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(agent) && l.contains(needle)),
            "logs --all has {needle:?} from {agent}:\n{}",
            all.stdout
        );
    }
    let mut times: Vec<&str> = lines.iter().filter_map(|l| l.get(..8)).collect();
    let sorted = {
        let mut t = times.clone();
        t.sort();
        t
    };
    assert_eq!(times, sorted, "in time order");
    times.dedup();
    assert!(times.len() > 1);

    env.run(&["down"]).expect_ok("down");
}
