//! The plan's waits (phases `cluster` and `routes`), carried out: asked
//! again until they hold or `consul.join_timeout` has passed, then
//! reported as done with what was found.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::discovery;
use super::events::Reporter;
use super::Hosts;
use crate::cluster::consul;
use crate::engine::docker::DockerHost;
use crate::plan::{Expect, MemberChange, Wait};
use crate::poll::Check;
use crate::topology::Topology;

/// Phase `cluster`: a leader, and every host an alive member.
pub async fn cluster(
    hosts: &Hosts<'_>,
    t: &Topology,
    wait: &Wait,
    reporter: &Reporter,
) -> Result<()> {
    let started = Instant::now();
    let server = hosts
        .engine(wait.host())
        .context("the server is connected")?;
    let Wait::Cluster {
        members: expected, ..
    } = wait
    else {
        anyhow::bail!("not a cluster wait: {wait:?}");
    };
    let view = consul::wait_for_cluster(
        server,
        &t.name,
        t.ports.consul_http,
        expected,
        Duration::from_secs(t.consul.join_timeout_secs),
    )
    .await?;
    reporter.met(
        &wait.reference("cluster"),
        started,
        &[(
            "cluster",
            format!(
                "leader {}, {}/{} members alive",
                view.leader().unwrap_or("?"),
                expected.iter().filter(|n| view.is_alive(n)).count(),
                expected.len(),
            ),
        )],
    );
    Ok(())
}

/// After one membership change (phase `members`): a leader, and the node
/// as the change left it, asked of the server `change.asked`; a node that
/// stays a member must also see the leader through its own agent (so it
/// has joined again, not merely not been noticed gone yet).
pub async fn membership(
    hosts: &Hosts<'_>,
    t: &Topology,
    change: &MemberChange,
    reporter: &Reporter,
) -> Result<()> {
    let started = Instant::now();
    let asked = hosts
        .engine(&change.asked)
        .context("the server asked is connected")?;
    let node = change.expect.node();
    let own = match change.expect {
        Expect::Voter(_) | Expect::Client(_) => hosts.engine(node),
        Expect::Gone(_) | Expect::Pruned(_) | Expect::NotFailed(_) => None,
    };
    let limit = Duration::from_secs(t.consul.join_timeout_secs);
    let leader = crate::poll::until(limit, Duration::from_millis(300), || async {
        let view = match consul::cluster_view(asked, &t.name, t.ports.consul_http).await {
            Ok(view) => view,
            Err(e) => return Ok(Check::Waiting(format!("{e:#}"))),
        };
        let Some(leader) = view.leader().map(str::to_string) else {
            return Ok(Check::Waiting("no leader".into()));
        };
        let holds = match &change.expect {
            Expect::Voter(n) => view.is_alive(n) && view.is_voter(n),
            Expect::Client(n) => view.is_alive(n) && !view.is_peer(n),
            Expect::Gone(n) => view.is_gone(n),
            Expect::Pruned(n) => !view.lists(n),
            Expect::NotFailed(n) => view.is_gone(n) || view.is_alive(n),
        };
        if !holds {
            return Ok(Check::Waiting(format!("{} not yet", change.expect.describe())));
        }
        if let Some(own) = own {
            let sees = consul::cluster_view(own, &t.name, t.ports.consul_http)
                .await
                .is_ok_and(|v| v.leader().is_some());
            if !sees {
                return Ok(Check::Waiting(format!("{node} does not see the leader yet")));
            }
        }
        Ok(Check::Ready(leader))
    })
    .await
    .map_err(|e| {
        e.context(format!(
            "the cluster did not settle with {} within {} s (asked {}); the membership changes after it were not made",
            change.expect.describe(),
            limit.as_secs(),
            change.asked
        ))
    })?;
    reporter.met(
        &change.wait_reference(),
        started,
        &[(
            "cluster",
            format!("{}, leader {leader}", change.expect.describe()),
        )],
    );
    Ok(())
}

/// A stage's dependencies: each of the services has a passing instance.
pub async fn passing(
    lb: &DockerHost,
    t: &Topology,
    wait: &Wait,
    reporter: &Reporter,
) -> Result<()> {
    let Wait::Passing { services, .. } = wait else {
        anyhow::bail!("not a wait for passing services");
    };
    let started = Instant::now();
    discovery::wait_for_passing(
        lb,
        t,
        services,
        Duration::from_secs(t.consul.join_timeout_secs),
    )
    .await?;
    reporter.met(
        &wait.reference("stage"),
        started,
        &[("depends", format!("{} passing", services.join(", ")))],
    );
    Ok(())
}

/// Phase `routes`: every service's instances passing and routed.
pub async fn routes(lb: &DockerHost, t: &Topology, wait: &Wait, reporter: &Reporter) -> Result<()> {
    let started = Instant::now();
    let routed =
        discovery::wait_for_routes(lb, t, Duration::from_secs(t.consul.join_timeout_secs)).await?;
    let lb_address = t
        .host(wait.host())
        .map(|h| h.advertise.to_string())
        .unwrap_or_default();
    let rows: Vec<(&str, String)> = routed
        .routes
        .iter()
        .map(|r| match r.tcp_port {
            Some(port) => format!(
                "{} → {} instance(s): tcp {lb_address}:{port}",
                r.service,
                r.upstreams.len(),
            ),
            None => format!(
                "{} → {} instance(s): http://{lb_address}:{}{}  or  Host: {}",
                r.service,
                r.upstreams.len(),
                t.ports.lb_http,
                r.path,
                r.server_name,
            ),
        })
        .map(|text| ("route", text))
        .collect();
    reporter.met(&wait.reference("routes"), started, &rows);
    Ok(())
}
