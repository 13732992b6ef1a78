//! Consul, as stagectl sees it: the gossip key, and the cluster's view of
//! itself (members and leader).
//!
//! The HTTP API listens on each host's loopback only, so stagectl asks the
//! agent through `docker exec` of the `consul` CLI in the agent's container:
//! that works the same over SSH, TLS or a local socket and opens no port.
//! The CLI's table output is parsed by pure functions tested below.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::Serialize;

use crate::docker::DockerHost;

/// 32 random bytes, base64: what `consul keygen` produces.
pub fn generate_gossip_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the gossip key: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub node: String,
    pub address: String,
    pub status: String,
    /// `server` or `client`.
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaftPeer {
    pub node: String,
    pub address: String,
    /// `leader` or `follower`.
    pub state: String,
    pub voter: bool,
}

/// The cluster as one agent reports it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    pub members: Vec<Member>,
    pub peers: Vec<RaftPeer>,
}

impl ClusterView {
    pub fn leader(&self) -> Option<&str> {
        self.peers
            .iter()
            .find(|p| p.state == "leader")
            .map(|p| p.node.as_str())
    }

    pub fn is_alive(&self, node: &str) -> bool {
        self.members
            .iter()
            .any(|m| m.node == node && m.status == "alive")
    }
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

/// Ask the agent on `host` for members and raft peers.
pub async fn cluster_view(
    host: &DockerHost,
    container: &str,
    http_port: u16,
) -> Result<ClusterView> {
    let env = vec![format!("CONSUL_HTTP_ADDR=127.0.0.1:{http_port}")];
    let members = host
        .exec(container, &["consul", "members"], &env)
        .await?
        .ok_or_stderr("consul members")?;
    // A client agent, or a server before election, has no raft answer: that
    // is "no leader yet", not an error.
    let peers = host
        .exec(
            container,
            &["consul", "operator", "raft", "list-peers"],
            &env,
        )
        .await?;
    Ok(ClusterView {
        members: parse_members(&members),
        peers: if peers.code == 0 {
            parse_raft_peers(&peers.stdout)
        } else {
            vec![]
        },
    })
}

/// Wait until a leader is elected and every expected node is an alive
/// member, asking the agent on `host`. On timeout the error names the nodes
/// still missing.
pub async fn wait_for_cluster(
    host: &DockerHost,
    container: &str,
    http_port: u16,
    expected: &[String],
    timeout: Duration,
) -> Result<ClusterView> {
    let start = Instant::now();
    loop {
        let last_problem;
        match cluster_view(host, container, http_port).await {
            Ok(view) => {
                let missing: Vec<&str> = expected
                    .iter()
                    .filter(|n| !view.is_alive(n))
                    .map(String::as_str)
                    .collect();
                match (view.leader(), missing.is_empty()) {
                    (Some(_), true) => return Ok(view),
                    (None, true) => last_problem = "all members alive but no leader elected".into(),
                    (_, false) => {
                        last_problem = format!("not an alive member: {}", missing.join(", "))
                    }
                }
            }
            Err(e) => last_problem = format!("{e:#}"),
        }
        if start.elapsed() >= timeout {
            bail!(
                "the Consul cluster did not form within {} s (asked {}): {last_problem}",
                timeout.as_secs(),
                host.name
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Output of a command run in a container.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    /// stdout when the command succeeded, else an error carrying stderr.
    pub fn ok_or_stderr(self, what: &str) -> Result<String> {
        if self.code == 0 {
            Ok(self.stdout)
        } else {
            Err(anyhow::anyhow!("{}", self.stderr.trim()))
                .with_context(|| format!("`{what}` exited with {}", self.code))
        }
    }
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

    #[test]
    fn gossip_keys_are_32_random_bytes() {
        let a = generate_gossip_key().unwrap();
        let b = generate_gossip_key().unwrap();
        assert_ne!(a, b);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap();
        assert_eq!(raw.len(), 32);
    }
}
