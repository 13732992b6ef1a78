//! Carry out the edge steps of a plan (`plan::edge`), host by host in
//! parallel, and nothing else: which routes to write or take away was
//! decided by the plan.
//!
//! The one thing read here is the hosts' CA for the environment's domain,
//! because it lives on the hosts (in a holder the edge never mounts, see
//! `crate::edge::ca_holder`): a host that has one keeps it, a host that has
//! none gets the one another host of the run has, or a new one. stagectl
//! issues the environment's certificate here and writes only that
//! certificate and its key into the edge.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bollard::models::RestartPolicyNameEnum;

use crate::edge::ca::{self, Ca, Issued};
use crate::edge::{self, conf, conf::EnvFiles};
use crate::engine::docker::{is_status, Attach, DockerHost};
use crate::engine::Engine;
use crate::pipeline::events::Reporter;
use crate::pipeline::{open, Ctx, Hosts, Unreachable};
use crate::plan::edge::EdgeStep;
use crate::spec::FileSpec;
use crate::topology::Topology;

pub async fn execute(
    hosts: &Hosts<'_>,
    t: &Topology,
    steps: &[EdgeStep],
    reporter: &Reporter,
) -> Result<()> {
    if steps.is_empty() {
        return Ok(());
    }
    let mut by_host: BTreeMap<&str, Vec<&EdgeStep>> = BTreeMap::new();
    for s in steps {
        by_host.entry(s.host()).or_default().push(s);
    }
    let engine = |host: &str| {
        hosts
            .engine(host)
            .ok_or_else(|| anyhow!("{host}: not connected, for the edge proxy"))
    };
    // Certificates to issue: unless the user gave one.
    let routed: Vec<&str> = by_host
        .iter()
        .filter(|(_, s)| s.iter().any(|s| matches!(s, EdgeStep::EdgeRoute { .. })))
        .filter(|_| t.lb.edge_tls.is_none())
        .map(|(h, _)| *h)
        .collect();
    let cas = hosts_cas(&routed, &t.lb.domain, &engine).await?;
    let runs = by_host.iter().map(|(host, steps)| {
        let cas = &cas;
        async move {
            let engine = engine(host)?;
            let lock = lock(engine).await?;
            let done = host_steps(engine, t, host, steps, cas, reporter).await;
            lock.release().await?;
            done
        }
    });
    futures_util::future::try_join_all(runs).await?;
    Ok(())
}

/// One host's steps, under its edge lock.
async fn host_steps(
    engine: &DockerHost,
    t: &Topology,
    host: &str,
    steps: &[&EdgeStep],
    cas: &BTreeMap<&str, Ca>,
    reporter: &Reporter,
) -> Result<()> {
    for step in steps {
        let started = Instant::now();
        let note = match step {
            EdgeStep::EdgeCreate { .. } => {
                create(engine).await?;
                format!("{host}: edge proxy on ports 80 and 443")
            }
            EdgeStep::EdgeRoute {
                names, to, text, ..
            } => {
                // Under the lock the edge is as it is now: another
                // environment's `down` may have removed it since
                // the snapshot.
                create(engine).await?;
                let certificate = match &t.lb.edge_tls {
                    Some(tls) => Issued {
                        cert_pem: tls.cert_pem.clone(),
                        key_pem: tls.key_pem.clone(),
                    },
                    None => cas.get(host).context("the host's CA")?.issue(names)?,
                };
                route(engine, &t.name, text, certificate).await?;
                format!("{host}: https://{} → {to} on ports 80 and 443", names[1])
            }
            EdgeStep::EdgeUnroute { .. } => {
                unroute(engine, &t.name).await?;
                format!("{host}: {}'s names taken off the edge proxy", t.name)
            }
            EdgeStep::EdgeRemove { .. } => match remove_if_unused(engine).await? {
                true => format!("{host}: edge proxy removed, no environment left on it"),
                false => {
                    format!("{host}: edge proxy kept, another environment is on it now")
                }
            },
        };
        reporter.done(&step.reference(), started, &note);
    }
    Ok(())
}

/// `gc`: on each load balancer host of the file, every certificate the
/// hosts' CA issued that is near its end (see [`ca::RENEW_WITHIN_SECS`])
/// is issued again, whichever environment it is for. Returns
/// `<host>: <env>` for each.
pub async fn renew_expiring(ctx: &Ctx) -> Result<Vec<String>> {
    let hosts = open(ctx, &Reporter::quiet(), Unreachable::Report).await?;
    let mut renewed = Vec::new();
    for h in ctx.topology.lb_hosts() {
        let Some(engine) = hosts.engine(&h.name) else {
            continue;
        };
        let seen = engine.edge_seen().await?;
        if seen.is_none_or(|e| e.expiring.is_empty()) {
            continue;
        }
        let lock = lock(engine).await?;
        let done = renew_on(engine).await;
        lock.release().await?;
        renewed.extend(done?.into_iter().map(|env| format!("{}: {env}", h.name)));
    }
    Ok(renewed)
}

/// Under the edge lock: the expiring certificates of the edge as it is
/// now, each issued again for the names its route has, by the CA of its
/// domain (constrained to that domain whatever the route file says).
async fn renew_on(engine: &DockerHost) -> Result<Vec<String>> {
    let Some(seen) = engine.edge_seen().await? else {
        return Ok(vec![]);
    };
    let mut renewed = Vec::new();
    for env in &seen.expiring {
        let text = &seen.routes[env];
        let Some(domain) = conf::routed_name(text)
            .and_then(|name| name.strip_prefix(env.as_str())?.strip_prefix('.'))
        else {
            continue;
        };
        let Some(ca) = read_ca(engine, domain).await? else {
            continue;
        };
        let issued = ca.issue(&conf::names(env, domain))?;
        route(engine, env, text, issued).await?;
        renewed.push(env.clone());
    }
    Ok(renewed)
}

/// The host's edge lock, held (see [`edge::LOCK`]).
struct EdgeLock<'a> {
    engine: &'a DockerHost,
}

impl EdgeLock<'_> {
    async fn release(self) -> Result<()> {
        self.engine
            .remove_container(edge::LOCK)
            .await
            .with_context(|| format!("{}: cannot give back the edge lock", self.engine.name()))
    }
}

/// How long a run waits for another to give back a host's edge lock: it
/// holds it for a route's write and reload, well under a second.
const LOCK_WAIT: Duration = Duration::from_secs(30);

async fn lock(engine: &DockerHost) -> Result<EdgeLock<'_>> {
    let spec = edge::lock_container();
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match engine
            .create(&spec, RestartPolicyNameEnum::NO, Attach::default())
            .await
        {
            Ok(_) => return Ok(EdgeLock { engine }),
            Err(e) if is_status(&e, 409) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) if is_status(&e, 409) => bail!(
                "{}: the edge lock ({}) was not given back in {} s; if no run is under way, \
                 remove it (`docker rm {}`) and run again",
                engine.name(),
                edge::LOCK,
                LOCK_WAIT.as_secs(),
                edge::LOCK
            ),
            Err(e) => return Err(e).context("cannot take the edge lock"),
        }
    }
}

/// Make and start the host's edge container (another run may have just
/// made it: then it is only started).
async fn create(engine: &DockerHost) -> Result<()> {
    let spec = edge::container();
    match engine
        .create(
            &spec,
            RestartPolicyNameEnum::UNLESS_STOPPED,
            Attach::default(),
        )
        .await
    {
        Ok(_) => {}
        Err(e) if is_status(&e, 409) => {}
        Err(e) => return Err(e),
    }
    match engine.start(edge::CONTAINER).await {
        Err(e) if !is_status(&e, 304) => Err(e).with_context(|| {
            format!(
                "{}: cannot start the edge proxy (are ports 80 and 443 free?)",
                engine.name()
            )
        }),
        _ => Ok(()),
    }
}

/// Each host's CA for `domain`: its own if it has one, else the first one
/// another host of the run has, else a new one, claimed on the hosts that
/// had none (where another run may claim it first: then theirs).
async fn hosts_cas<'a>(
    routed: &[&'a str],
    domain: &str,
    engine: &impl Fn(&str) -> Result<&'a DockerHost>,
) -> Result<BTreeMap<&'a str, Ca>> {
    let mut found = BTreeMap::new();
    for host in routed {
        if let Some(ca) = read_ca(engine(host)?, domain).await? {
            found.insert(*host, ca);
        }
    }
    let missing: Vec<&str> = routed
        .iter()
        .filter(|h| !found.contains_key(*h))
        .copied()
        .collect();
    if missing.is_empty() {
        return Ok(found);
    }
    let shared = match found.values().next() {
        Some(ca) => ca.clone(),
        None => Ca::generate(domain)?,
    };
    for host in missing {
        let ca = claim_ca(engine(host)?, domain, &shared).await?;
        found.insert(host, ca);
    }
    Ok(found)
}

/// Make the holder of the host's CA for `domain` and write `ca` into it;
/// when another run made the holder first (Docker reserves the name), its
/// CA, waited for until that run has written it.
async fn claim_ca(engine: &DockerHost, domain: &str, ca: &Ca) -> Result<Ca> {
    let holder = edge::ca_holder(domain).map_err(|e| anyhow!(e))?;
    engine.ensure_volume(&holder, edge::CA_COMPONENT).await?;
    let spec = edge::ca_holder_container(&holder);
    match engine
        .create(&spec, RestartPolicyNameEnum::NO, Attach::default())
        .await
    {
        Ok(_) => {
            engine
                .upload_files(
                    &holder,
                    &[
                        FileSpec::new(
                            &ca_path(ca::CERT_FILE),
                            0o644,
                            ca.cert_pem.clone().into_bytes(),
                        ),
                        FileSpec::new(
                            &ca_path(ca::KEY_FILE),
                            0o600,
                            ca.key_pem().as_bytes().to_vec(),
                        ),
                    ],
                )
                .await
                .with_context(|| format!("{}: cannot write the CA into {holder}", engine.name()))?;
            Ok(ca.clone())
        }
        Err(e) if is_status(&e, 409) => {
            let deadline = Instant::now() + CLAIM_WAIT;
            loop {
                if let Some(theirs) = read_ca(engine, domain).await? {
                    return Ok(theirs);
                }
                if Instant::now() > deadline {
                    bail!(
                        "{}: {holder} holds no CA {} s after another run made it; if no run is \
                         under way, remove that container (`docker rm {holder}`) and run again",
                        engine.name(),
                        CLAIM_WAIT.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(e) => Err(e).with_context(|| format!("{}: cannot make {holder}", engine.name())),
    }
}

/// How long a run that lost the race for a host's CA waits for the
/// winner to write it (it does so right after making the holder).
const CLAIM_WAIT: Duration = Duration::from_secs(15);

fn ca_path(file: &str) -> String {
    format!("{}/{file}", edge::CA_DIR)
}

/// The host's CA for `domain`, if it has one (read through the engine's
/// archive API from its holder, which never runs).
pub async fn read_ca(engine: &DockerHost, domain: &str) -> Result<Option<Ca>> {
    let holder = edge::ca_holder(domain).map_err(|e| anyhow!(e))?;
    let (cert_path, key_path) = (ca_path(ca::CERT_FILE), ca_path(ca::KEY_FILE));
    let (cert, key) = tokio::try_join!(
        engine.read_file(&holder, &cert_path),
        engine.read_file(&holder, &key_path),
    )?;
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap_or_default();
    Ca::from_pem(&text(cert), &text(key))
        .map(Some)
        .with_context(|| format!("{}: the edge's CA in {holder}", engine.name()))
}

/// Write the environment's route and certificate, check the whole config,
/// reload. A config nginx refuses is taken out again, so the edge keeps
/// serving the other environments as it was.
async fn route(engine: &DockerHost, env: &str, text: &str, issued: Issued) -> Result<()> {
    let files = EnvFiles::of(env).map_err(|e| anyhow!(e))?;
    engine
        .upload_files(
            edge::CONTAINER,
            &[
                FileSpec::new(&files.cert, 0o644, issued.cert_pem.into_bytes()),
                FileSpec::new(&files.key, 0o600, issued.key_pem.into_bytes()),
                FileSpec::new(&files.route, 0o644, text.as_bytes().to_vec()),
            ],
        )
        .await
        .with_context(|| format!("{}: cannot write the edge route", engine.name()))?;
    if let Err(refused) = reload(engine, true).await? {
        remove(engine, &files).await?;
        bail!(
            "{}: the edge proxy refused the route of {env}, which was taken out again: {}",
            engine.name(),
            refused.trim()
        );
    }
    Ok(())
}

/// Take the environment's route and certificate away, reload.
async fn unroute(engine: &DockerHost, env: &str) -> Result<()> {
    remove(engine, &EnvFiles::of(env).map_err(|e| anyhow!(e))?).await?;
    reload(engine, false).await?.map_err(|e| anyhow!(e))
}

async fn remove(engine: &DockerHost, files: &EnvFiles) -> Result<()> {
    let cmd: Vec<&str> = ["rm", "-f"].into_iter().chain(files.all()).collect();
    engine
        .exec(edge::CONTAINER, &cmd, &[])
        .await?
        .ok_or_stderr("removing the edge route")?;
    Ok(())
}

/// A graceful reload, waited for: new connections get the new config once
/// the old worker has stopped accepting (it finishes what is in flight),
/// so a route just added answers, and one just taken away no longer does,
/// when `up` or `down` says so. With `check`, `nginx -t` first, in the
/// same exec: `Err` with its complaint when it refuses the config. Right
/// after the container starts nginx may not have written its pid yet, so a
/// refused signal is retried.
async fn reload(engine: &DockerHost, check: bool) -> Result<Result<(), String>> {
    let script = match check {
        true => format!("nginx -t -q || exit 2\n{RELOAD_AND_WAIT}"),
        false => RELOAD_AND_WAIT.to_string(),
    };
    let mut last = String::new();
    for _ in 0..20 {
        let out = engine
            .exec(edge::CONTAINER, &["sh", "-c", &script], &[])
            .await?;
        match out.code {
            0 => return Ok(Ok(())),
            2 if check => return Ok(Err(out.stderr)),
            _ => last = out.stderr,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{}: the edge proxy did not reload: {}",
        engine.name(),
        last.trim()
    )
}

/// Signal nginx; once a new worker runs, tell the old ones to stop
/// accepting (nginx's master would only after a fixed 100 ms pause, during
/// which both answer), and wait (up to 3 s) until none of them is left.
const RELOAD_AND_WAIT: &str = r#"
workers() {
    for p in /proc/[0-9]*; do
        case "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" in
            "nginx: worker process"*) echo "${p#/proc/}" ;;
        esac
    done
}
before=$(workers | tr '\n' ' ')
nginx -s reload || exit 1
quit_sent=0
i=0
while [ $i -lt 300 ]; do
    old=0 new=0
    for w in $(workers); do
        case " $before " in *" $w "*) old=1 ;; *) new=1 ;; esac
    done
    [ $old = 0 ] && exit 0
    if [ $new = 1 ] && [ $quit_sent = 0 ]; then
        kill -QUIT $before 2>/dev/null
        quit_sent=1
    fi
    sleep 0.01
    i=$((i + 1))
done
"#;

/// Remove the edge container if no route is left in it (another run may
/// have added one since the snapshot). Under the host's edge lock, so a
/// route another run adds is either seen here or written after, onto an
/// edge that run makes again. The CA's holder stays.
async fn remove_if_unused(engine: &DockerHost) -> Result<bool> {
    let seen = engine.edge_seen().await?;
    if seen.is_some_and(|e| !e.routes.is_empty()) {
        return Ok(false);
    }
    engine.remove_container(edge::CONTAINER).await?;
    Ok(true)
}
