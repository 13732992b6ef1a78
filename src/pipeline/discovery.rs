//! What the agents on the load-balancer host know, asked from outside:
//! every service's instances and health (from Consul, through the template
//! agent's container, which has the stagectl binary and loopback access to
//! Consul), and what the template agent last did to nginx.

use crate::engine::Engine;
use crate::labels::Component;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::poll::Check;

use anyhow::{bail, Context, Result};

use crate::agent::render::BUILTIN_TEMPLATE;
use crate::agent::template::{template_id, LbStatus, STATUS_FILE};
use crate::cluster::http::InstanceHealth;
use crate::engine::docker::DockerHost;
use crate::topology::Topology;

pub type ServiceReport = BTreeMap<String, Vec<InstanceHealth>>;

pub async fn service_report(lb: &DockerHost, t: &Topology) -> Result<ServiceReport> {
    let consul = format!("--consul=127.0.0.1:{}", t.ports.consul_http);
    let token = format!("--token-file={}", crate::cluster::acl::TOKEN_PATH);
    let out = lb
        .exec(
            &Component::Template.container(&t.name),
            &["stagectl", "agent", "services", &consul, &token],
            &[],
        )
        .await?
        .ok_or_stderr("stagectl agent services")?;
    serde_json::from_str(&out).context("the service report is not JSON")
}

pub async fn lb_status(lb: &DockerHost, t: &Topology) -> Result<Option<LbStatus>> {
    // Read through the engine's archive API rather than `cat` in an exec:
    // one request, no process started in the container.
    let path = format!("/conf/{STATUS_FILE}");
    let Some(bytes) = lb
        .read_file(&Component::Template.container(&t.name), &path)
        .await?
    else {
        return Ok(None); // not written yet
    };
    Ok(Some(
        serde_json::from_slice(&bytes).context("the LB status is not JSON")?,
    ))
}

/// How many instances of each topology service should be up.
pub fn expected_instances(t: &Topology) -> BTreeMap<String, usize> {
    t.services
        .iter()
        .map(|s| (s.name.clone(), s.hosts.len() * s.per_host as usize))
        .collect()
}

/// Wait until each of `services` has at least one passing instance, and
/// the load balancer routes to one (its dependents reach it there), unless
/// it is not routed (`expose: none`).
pub async fn wait_for_passing(
    lb: &DockerHost,
    t: &Topology,
    services: &[String],
    timeout: Duration,
) -> Result<()> {
    let routed = |name: &str| {
        t.services
            .iter()
            .any(|s| s.name == name && s.expose != crate::topology::Expose::None)
    };
    let check = || async {
        // Two execs on the LB host, asked at once.
        let problem = match tokio::join!(service_report(lb, t), lb_status(lb, t)) {
            (Ok(report), Ok(status)) => {
                let missing: Vec<String> = services
                    .iter()
                    .filter_map(|name| {
                        let passing: Vec<String> = report
                            .get(name.as_str())
                            .into_iter()
                            .flatten()
                            .filter(|i| i.status == "passing")
                            .map(|i| endpoint(&i.instance))
                            .collect();
                        // Routed to a passing instance: a status file left
                        // from before (kept with the volume) names old ones.
                        let in_lb = !routed(name)
                            || status.as_ref().is_some_and(|st| {
                                st.routes.iter().any(|r| {
                                    &r.service == name
                                        && r.upstreams.iter().any(|u| passing.contains(u))
                                })
                            });
                        let passing = !passing.is_empty();
                        match (passing, in_lb) {
                            (true, true) => None,
                            (false, _) => Some(format!("no passing instance of {name}")),
                            (true, false) => Some(format!("{name} not routed by the LB yet")),
                        }
                    })
                    .collect();
                if missing.is_empty() {
                    return Ok(Check::Ready(()));
                }
                missing.join("; ")
            }
            (Err(e), _) | (_, Err(e)) => format!("{e:#}"),
        };
        Ok(Check::Waiting(problem))
    };
    crate::poll::until(timeout, Duration::from_millis(200), check)
        .await
        .map_err(|e| {
            e.context(format!(
                "dependencies not passing within {} s (asked {})",
                timeout.as_secs(),
                lb.name
            ))
        })
}

/// `address:port` as the LB's routes write it (IPv6 in brackets).
fn endpoint(i: &crate::cluster::http::Instance) -> String {
    match i.address.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, i.port).to_string(),
        Err(_) => format!("{}:{}", i.address, i.port),
    }
}

/// Wait until every topology service has its instances passing in Consul
/// and routed by nginx.
pub async fn wait_for_routes(lb: &DockerHost, t: &Topology, timeout: Duration) -> Result<LbStatus> {
    let expected = expected_instances(t);
    let not_routed: Vec<&String> = t
        .services
        .iter()
        .filter(|s| s.expose == crate::topology::Expose::None)
        .map(|s| &s.name)
        .collect();
    let check = || async {
        // Two execs on the LB host, asked at once.
        let problem = match tokio::join!(service_report(lb, t), lb_status(lb, t)) {
            (Ok(report), Ok(Some(status))) => {
                let missing: Vec<String> = expected
                    .iter()
                    .filter_map(|(name, want)| {
                        let passing = report
                            .get(name)
                            .map(|l| l.iter().filter(|i| i.status == "passing").count())
                            .unwrap_or(0);
                        let routed = status
                            .routes
                            .iter()
                            .find(|r| &r.service == name)
                            .map(|r| r.upstreams.len())
                            .unwrap_or(0);
                        let want_routed = if not_routed.contains(&name) { 0 } else { *want };
                        (passing < *want || routed < want_routed)
                            .then(|| format!("{name}: {passing}/{want} passing, {routed} routed"))
                    })
                    .collect();
                let template =
                    t.lb.template
                        .as_ref()
                        .map_or(BUILTIN_TEMPLATE, |(_, text)| text.as_str());
                if status.template.as_deref() != Some(template_id(template).as_str()) {
                    "the template agent has not rendered the current template yet".to_string()
                } else if status.last_reload_ok == Some(false) {
                    // Waiting will not help: the template renders a config
                    // nginx refuses (nginx keeps serving the previous one).
                    bail!(
                        "{}: nginx rejected the rendered config and keeps the previous one: {}",
                        lb.name,
                        status.last_error.unwrap_or_default()
                    );
                } else if missing.is_empty() {
                    return Ok(Check::Ready(status));
                } else {
                    missing.join("; ")
                }
            }
            (Err(e), _) | (_, Err(e)) => format!("{e:#}"),
            (_, Ok(None)) => "the template agent has not written its status yet".into(),
        };
        Ok(Check::Waiting(problem))
    };
    crate::poll::until(timeout, Duration::from_millis(200), check)
        .await
        .map_err(|e| {
            e.context(format!(
                "services not routed within {} s on {}",
                timeout.as_secs(),
                lb.name
            ))
        })
}
