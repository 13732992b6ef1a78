//! Consul, as stagectl sees it: the gossip key, and the cluster's view of
//! itself (members and leader).
//!
//! The HTTP API listens on each host's loopback only, so stagectl asks
//! through `docker exec` on the host (its own agent's `stagectl agent
//! cluster`, or the `consul` CLI in Consul's container): that works the
//! same over SSH, TLS or a local socket and opens no port.
//! The CLI's table output is parsed by pure functions tested below.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::engine::docker::DockerHost;
use crate::engine::Engine;
use crate::labels::Component;
use crate::poll::Check;
use crate::spec::HostState;
use crate::topology::Endpoint;

use super::view::{ClusterView, Member, RaftPeer};

/// The environment the `consul` CLI needs inside an agent's container: the
/// agent's loopback HTTP address.
pub fn cli_env(http_port: u16) -> Vec<String> {
    vec![
        format!("CONSUL_HTTP_ADDR=127.0.0.1:{http_port}"),
        // The container's own token (see `cluster::acl::TOKEN_PATH`): a
        // file the CLI reads, so the token is in no exec's arguments.
        format!("CONSUL_HTTP_TOKEN_FILE={}", crate::cluster::acl::TOKEN_PATH),
    ]
}

/// The `consul` CLI's environment for service writes on `host` (a drain's
/// maintenance mode and deregistration): with the token of the host's
/// registration agent, read from its container, passed in the exec's
/// environment and never its arguments. (Not with `CONSUL_HTTP_TOKEN_FILE`:
/// the CLI would take the file's token over this one.)
pub async fn register_cli_env(host: &DockerHost, env: &str, http_port: u16) -> Result<Vec<String>> {
    let container = Component::Register.container(env);
    let token = host
        .read_file(&container, crate::cluster::acl::TOKEN_PATH)
        .await?
        .with_context(|| format!("{}: {container} holds no Consul token", host.name))?;
    let token = String::from_utf8(token).context("the registration agent's token")?;
    Ok(vec![
        format!("CONSUL_HTTP_ADDR=127.0.0.1:{http_port}"),
        format!("CONSUL_HTTP_TOKEN={}", token.trim()),
    ])
}

/// Rows of a whitespace-aligned CLI table, as maps from header to cell.
fn table_rows(text: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return vec![];
    };
    let headers: Vec<String> = header.split_whitespace().map(str::to_string).collect();
    lines
        .map(|l| {
            headers
                .iter()
                .cloned()
                .zip(l.split_whitespace().map(str::to_string))
                .collect()
        })
        .collect()
}

/// Parse `consul members`.
pub fn parse_members(text: &str) -> Vec<Member> {
    table_rows(text)
        .into_iter()
        .filter_map(|r| {
            Some(Member {
                node: r.get("Node")?.clone(),
                address: r.get("Address")?.clone(),
                status: r.get("Status")?.clone(),
                kind: r.get("Type")?.clone(),
            })
        })
        .collect()
}

/// Parse `consul operator raft list-peers`.
pub fn parse_raft_peers(text: &str) -> Vec<RaftPeer> {
    table_rows(text)
        .into_iter()
        .filter_map(|r| {
            Some(RaftPeer {
                node: r.get("Node")?.clone(),
                address: r.get("Address")?.clone(),
                state: r.get("State")?.clone(),
                voter: r.get("Voter")? == "true",
            })
        })
        .collect()
}

/// Ask the agents of `env` on `host` for members and raft peers.
///
/// stagectl's own agent (registration or template, whichever the host
/// runs; both see Consul on the host's loopback) asks the HTTP API: one
/// exec of a small binary. The `consul` CLI in Consul's container, which
/// takes two execs of a large one, answers where neither runs, or where
/// it predates `stagectl agent cluster`.
pub async fn cluster_view(host: &DockerHost, env: &str, http_port: u16) -> Result<ClusterView> {
    let consul = format!("--consul=127.0.0.1:{http_port}");
    let token = format!("--token-file={}", crate::cluster::acl::TOKEN_PATH);
    for agent in [Component::Register, Component::Template] {
        let asked = host
            .exec(
                &agent.container(env),
                &["stagectl", "agent", "cluster", &consul, &token],
                &[],
            )
            .await;
        match asked {
            // Not there, or not running.
            Err(_) => continue,
            // clap's usage error: an agent image from before the command.
            Ok(out) if out.code == 2 => continue,
            Ok(out) => {
                let json = out.ok_or_stderr("stagectl agent cluster")?;
                return serde_json::from_str(&json).context("the cluster view is not JSON");
            }
        }
    }
    cli_cluster_view(host, &Component::Consul.container(env), http_port).await
}

/// [`cluster_view`] through the `consul` CLI in Consul's own container.
async fn cli_cluster_view(
    host: &DockerHost,
    container: &str,
    http_port: u16,
) -> Result<ClusterView> {
    let env = cli_env(http_port);
    // Both asked at once: each exec costs a round of the engine's API and a
    // process start in the container, and `up` and `status` wait on them.
    let (members, peers) = tokio::join!(
        host.exec(container, &["consul", "members"], &env),
        host.exec(
            container,
            &["consul", "operator", "raft", "list-peers"],
            &env,
        )
    );
    let members = members?.ok_or_stderr("consul members")?;
    // A client agent, or a server before election, has no raft answer: that
    // is "no leader yet", not an error.
    let peers = peers?;
    Ok(ClusterView {
        members: parse_members(&members),
        peers: if peers.code == 0 {
            parse_raft_peers(&peers.stdout)
        } else {
            vec![]
        },
    })
}

/// Make every policy and token of `plan` so (see `cluster::acl_sync`),
/// asking the Consul server on `server` over HTTP, carried through a
/// tunnel to its loopback (busybox's `nc` in its Consul container), with
/// the management token in each request's header: never in an exec's
/// arguments or environment. A server, because a client's agent starts
/// only once its agent token exists (it asks the servers for its TLS
/// certificate with it, see `cluster::tls`). Retried until a leader has
/// bootstrapped the management token, which a new cluster does shortly
/// after it elects one.
pub async fn ensure_acl(
    server: &DockerHost,
    env: &str,
    http_port: u16,
    plan: &crate::cluster::acl::AclPlan,
    timeout: Duration,
) -> Result<crate::cluster::acl_sync::Changes> {
    use crate::engine::tunnel::{Relay, Tunnel};
    let relay = Relay::Netcat {
        host: "127.0.0.1".into(),
        port: http_port,
    };
    let tunnel = Tunnel::open(
        server.clone(),
        Component::Consul.container(env),
        relay,
        "127.0.0.1:0".parse()?,
        None,
    )
    .await?;
    let client = crate::cluster::http::ConsulClient::new(&tunnel.local.to_string())
        .with_token(plan.master.clone());
    crate::poll::until(timeout, Duration::from_millis(300), || async {
        match crate::cluster::acl_sync::ensure(&client, env, plan).await {
            Ok(changes) => Ok(Check::Ready(changes)),
            Err(e) => Ok(Check::Waiting(format!("{e:#}"))),
        }
    })
    .await
    .map_err(|e| {
        e.context(format!(
            "the Consul ACL tokens were not in place within {} s (asked {})",
            timeout.as_secs(),
            server.name
        ))
    })
}

/// Wait until a leader is elected and every expected node is an alive
/// member, asking the agent on `host`. On timeout the error names the nodes
/// still missing.
pub async fn wait_for_cluster(
    host: &DockerHost,
    env: &str,
    http_port: u16,
    expected: &[String],
    timeout: Duration,
) -> Result<ClusterView> {
    crate::poll::until(timeout, Duration::from_millis(300), || async {
        let view = match cluster_view(host, env, http_port).await {
            Ok(view) => view,
            Err(e) => return Ok(Check::Waiting(format!("{e:#}"))),
        };
        let missing: Vec<&str> = expected
            .iter()
            .filter(|n| !view.is_alive(n))
            .map(String::as_str)
            .collect();
        Ok(match (view.leader(), missing.is_empty()) {
            (Some(_), true) => Check::Ready(view),
            (None, true) => Check::Waiting("all members alive but no leader elected".into()),
            (_, false) => Check::Waiting(format!("not an alive member: {}", missing.join(", "))),
        })
    })
    .await
    .map_err(|e| {
        e.context(format!(
            "the Consul cluster did not form within {} s (asked {})",
            timeout.as_secs(),
            host.name
        ))
    })
}

/// What the last `up` applied, and who ran it: kept in the cluster's own
/// key/value store, on the hosts, so every machine that reaches them sees
/// it (`status` shows it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastUp {
    /// `user@machine (pid N)`.
    pub by: String,
    /// Unix seconds, when it finished.
    pub at: u64,
    /// The stagectl version that ran it.
    pub stagectl: String,
    /// sha256 over every container's spec hash: two runs that applied the
    /// same environment have the same.
    pub desired: String,
    /// The hosts and the Consul servers it applied.
    pub hosts: Vec<String>,
    pub servers: Vec<String>,
    /// How each of those hosts is reached: a host later taken out of the
    /// topology is still found (its containers removed, its agent made to
    /// leave) by the next `up`, or by `down --host`.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Hosts taken out of the topology that could not be reached to clear:
    /// kept until a later run clears them.
    #[serde(default)]
    pub departed: BTreeMap<String, Endpoint>,
    /// Unix seconds after which `stagectl gc` removes the environment
    /// (`up --ttl`); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Each applied host's Docker engine ID: a host out of the topology is
    /// only cleared when the engine found at its address is the one this
    /// run applied, and is none of the topology's hosts (a host renamed at
    /// the same address keeps its data).
    #[serde(default)]
    pub engines: BTreeMap<String, String>,
}

impl LastUp {
    /// The record of an `up` by this process that applied `desired`;
    /// `departed`: hosts out of the topology still to clear.
    pub fn of_this_run(
        t: &crate::topology::Topology,
        desired: &[HostState],
        departed: BTreeMap<String, Endpoint>,
        expires_at: Option<u64>,
        engines: BTreeMap<String, String>,
    ) -> LastUp {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        for spec in desired.iter().flat_map(|h| &h.containers) {
            digest.update(spec.hash());
        }
        LastUp {
            by: crate::lock::this_holder(),
            at: crate::clock::unix_now(),
            stagectl: env!("CARGO_PKG_VERSION").to_string(),
            desired: format!("{:x}", digest.finalize()),
            hosts: t.hosts.iter().map(|h| h.name.clone()).collect(),
            servers: t.consul_servers().map(|h| h.name.clone()).collect(),
            endpoints: t
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.endpoint.clone()))
                .collect(),
            departed,
            expires_at,
            engines,
        }
    }

    /// Every host this record knows how to reach: those applied and those
    /// still to clear.
    pub fn known_hosts(&self) -> BTreeMap<String, Endpoint> {
        let mut all = self.endpoints.clone();
        all.extend(self.departed.clone());
        all
    }
}

/// Make the agent in `container` leave the cluster gracefully and stop: a
/// server leaves the raft peers too (the quorum shrinks with it, so the
/// others keep a leader). The engine must not restart the container
/// afterwards, or the agent would join again. With `identity`, it is
/// written into the agent's data directory first: the running agent read
/// its node ID at its start, so the files change nothing until the next
/// agent starts there.
pub async fn leave<E: Engine>(
    host: &E,
    container: &str,
    http_port: u16,
    identity: Option<&NewIdentity<'_>>,
) -> Result<()> {
    let Some(identity) = identity else {
        host.exec(container, &["consul", "leave"], &cli_env(http_port))
            .await?
            .ok_or_stderr("consul leave")?;
        return Ok(());
    };
    let peers = identity
        .sole_server
        .map(|address| {
            serde_json::json!([{ "id": identity.node_id, "address": address, "non_voter": false }])
                .to_string()
        })
        .unwrap_or_default();
    // The values go in as arguments, never into the script's text.
    let script = r#"umask 077 && printf %s "$2" > "$1/node-id" && { [ -z "$3" ] || printf %s "$3" > "$1/raft/peers.json"; } && exec consul leave"#;
    host.exec(
        container,
        &[
            "sh",
            "-c",
            script,
            "sh",
            identity.data_dir,
            identity.node_id,
            &peers,
        ],
        &cli_env(http_port),
    )
    .await?
    .ok_or_stderr("a new node ID and consul leave")?;
    Ok(())
}

/// The identity an agent's data directory gives the next agent started on
/// it: a node ID, and for a sole server the raft configuration recovered to
/// that ID at its address (see `plan::reconcile::Rejoin` for why).
pub struct NewIdentity<'a> {
    pub data_dir: &'a str,
    pub node_id: &'a str,
    pub sole_server: Option<&'a str>,
}

/// Mark `node`, which cannot be reached to leave by itself, as left (asked
/// of the agent in `container` on `host`), so it is not reported failed;
/// with `prune`, take a node that has left out of the member list (one the
/// agent does not list is out of it already: the step is done).
pub async fn force_leave<E: Engine>(
    host: &E,
    container: &str,
    http_port: u16,
    node: &str,
    prune: bool,
) -> Result<()> {
    let mut cmd = vec!["consul", "force-leave"];
    if prune {
        cmd.push("-prune");
    }
    cmd.extend(["--", node]);
    let out = host.exec(container, &cmd, &cli_env(http_port)).await?;
    if prune && out.code != 0 && out.stderr.contains("No node found with name") {
        return Ok(());
    }
    out.ok_or_stderr("consul force-leave")?;
    Ok(())
}

fn last_up_key(env: &str) -> String {
    format!("stagectl/{env}/last-up")
}

/// Record `up`'s result in Consul's KV store (through the agent on `host`),
/// sealed with the environment's record key (see `cluster::record`).
pub async fn put_last_up(
    host: &DockerHost,
    container: &str,
    http_port: u16,
    env: &str,
    key: &[u8],
    record: &LastUp,
) -> Result<()> {
    let consul = cli_env(http_port);
    let path = last_up_key(env);
    let value = super::record::seal(key, env, &path, record);
    host.exec(container, &["consul", "kv", "put", &path, &value], &consul)
        .await?
        .ok_or_stderr("consul kv put")?;
    Ok(())
}

/// The last `up`'s record as read back from Consul.
#[derive(Debug, Clone)]
pub enum LastUpRead {
    /// None kept (a new environment), or no agent could be asked.
    Missing,
    /// Sealed with the environment's key: believed.
    Sealed(Box<LastUp>),
    /// Something is kept there that was not sealed with the environment's
    /// key: never acted on.
    Rejected(super::record::Rejected),
}

impl LastUpRead {
    /// The record, when it can be believed.
    pub fn believed(self) -> Option<LastUp> {
        match self {
            LastUpRead::Sealed(record) => Some(*record),
            _ => None,
        }
    }

    /// The warning to show about a record that is not believed.
    pub fn warning(&self, env: &str) -> Option<String> {
        match self {
            LastUpRead::Rejected(why) => Some(format!(
                "the last up's record of {env} in Consul ({}) is ignored: {why}; \
                 nothing is decided from it (the next up writes a sealed one)",
                last_up_key(env)
            )),
            _ => None,
        }
    }
}

/// The last `up`'s record, checked against `key` (none: the environment
/// has no record key yet, so nothing kept can be believed).
pub async fn get_last_up(
    host: &DockerHost,
    container: &str,
    http_port: u16,
    env: &str,
    key: Option<&[u8]>,
) -> Result<LastUpRead> {
    let consul = cli_env(http_port);
    let path = last_up_key(env);
    let out = host
        .exec(container, &["consul", "kv", "get", &path], &consul)
        .await?;
    if out.code != 0 {
        return Ok(LastUpRead::Missing); // no such key (or no leader to ask)
    }
    let Some(key) = key else {
        return Ok(LastUpRead::Rejected(super::record::Rejected::NoKey));
    };
    Ok(
        match super::record::open(key, env, &path, out.stdout.trim()) {
            Ok(record) => LastUpRead::Sealed(Box::new(record)),
            Err(why) => LastUpRead::Rejected(why),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBERS: &str = "Node    Address          Status  Type    Build  Protocol  DC   Segment
host-1  10.77.0.11:8301  alive   server  1.8.7  2         dc1  <all>
host-2  10.77.0.12:8301  failed  server  1.8.7  2         dc1  <all>
host-3  10.77.0.13:8301  alive   client  1.8.7  2         dc1  <default>
";
    const PEERS: &str = "Node    ID                                    Address          State     Voter  RaftProtocol
host-1  3c5b9c9e-2a4f-8f0e-6d55-5f3b0c6c1a11  10.77.0.11:8300  follower  true   3
host-2  9a0e2f55-7c1c-1b7e-4a43-2b1d8f1e0d22  10.77.0.12:8300  leader    true   3
";

    #[test]
    fn members_and_leader_are_parsed() {
        let view = ClusterView {
            members: parse_members(MEMBERS),
            peers: parse_raft_peers(PEERS),
        };
        assert_eq!(view.members.len(), 3);
        assert_eq!(view.members[2].kind, "client");
        assert!(view.is_alive("host-1"));
        assert!(!view.is_alive("host-2"));
        assert!(!view.is_alive("host-9"));
        assert_eq!(view.leader(), Some("host-2"));
    }

    #[test]
    fn empty_or_garbage_output_gives_nothing() {
        assert!(parse_members("").is_empty());
        assert!(
            parse_raft_peers("Error retrieving peers: Unexpected response code: 500").is_empty()
        );
        let view = ClusterView::default();
        assert_eq!(view.leader(), None);
    }
}
