//! The cluster's view of itself: its members and its raft peers, as one
//! agent reports them (through the HTTP API or the CLI), and the questions
//! `up` asks of them. Plain data, apart from the client that fetches it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: String,
    pub address: String,
    pub status: String,
    /// `server` or `client`.
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftPeer {
    pub node: String,
    pub address: String,
    /// `leader` or `follower`.
    pub state: String,
    pub voter: bool,
}

/// The cluster as one agent reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

    /// A voting member of the raft peers (a server that takes part in the
    /// quorum).
    pub fn is_voter(&self, node: &str) -> bool {
        self.peers.iter().any(|p| p.node == node && p.voter)
    }

    pub fn is_peer(&self, node: &str) -> bool {
        self.peers.iter().any(|p| p.node == node)
    }

    /// Left gracefully (or forced to), or never seen: not counted as failed.
    /// In the member list at all, even as left.
    pub fn lists(&self, node: &str) -> bool {
        self.members.iter().any(|m| m.node == node)
    }

    pub fn is_gone(&self, node: &str) -> bool {
        !self
            .members
            .iter()
            .any(|m| m.node == node && m.status != "left")
    }
}
