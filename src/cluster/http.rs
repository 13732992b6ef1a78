//! A small client for the Consul agent HTTP API (v1), used by the agents
//! that run next to Consul on each host (host network, 127.0.0.1).
//!
//! Only what stagectl needs: register and deregister services on the local
//! agent, list them, and blocking queries on the catalog and on healthy
//! instances. Plain types in and out; hyper stays inside.
//!
//! Reads come in two modes ([`ReadMode`]): from the leader (the freshest: it
//! answers as soon as a change commits) or `stale` (any server answers from
//! its own replica, up to a heartbeat behind, but keeps answering while a
//! new leader is elected, where a query parked on a leader that just died
//! hangs until its wait runs out). The template agent runs both.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::cluster::view::{ClusterView, Member, RaftPeer};

#[derive(Clone)]
pub struct ConsulClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The ACL token every request carries in `X-Consul-Token`; `None`
    /// sends none (Consul then answers as its anonymous token allows).
    token: Option<String>,
}

/// The header Consul reads a request's ACL token from. A header rather than
/// `?token=`, so the token never lands in a URL (nor in our error messages,
/// which name the path).
const TOKEN_HEADER: &str = "X-Consul-Token";

/// A service registration, as `PUT /v1/agent/service/register` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Registration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub check: Check,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Check {
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    pub interval: String,
    pub timeout: String,
    /// Failures in a row before the check turns critical (Consul 1.7+);
    /// left out for Consul's default of one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures_before_critical: Option<u32>,
    /// A service whose check stays critical this long is removed by Consul
    /// itself (a crashed host's agent cannot deregister anything).
    pub deregister_critical_service_after: String,
    /// Initial state: `passing` when the agent saw the port answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// A service as the local agent lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub address: String,
}

/// A healthy instance of a service, as registered: every field is whatever
/// the registration said (see `agent::routes` before writing it anywhere).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub node: String,
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// One node of `/v1/internal/ui/nodes`: its services and every check on it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeDump {
    node: String,
    address: String,
    #[serde(default)]
    services: Option<Vec<NodeService>>,
    #[serde(default)]
    checks: Option<Vec<NodeCheck>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    address: String,
    /// Whatever number was registered: Consul does not check the range,
    /// and one bad port must not make the whole answer unreadable.
    #[serde(default)]
    port: i64,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeCheck {
    #[serde(rename = "ServiceID", default)]
    service_id: String,
    status: String,
}

impl ConsulClient {
    /// `addr` is `host:port` of the agent's HTTP API.
    pub fn new(addr: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        ConsulClient {
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build(connector),
            token: None,
        }
    }

    /// The same client, sending `token` with every request.
    pub fn with_token(mut self, token: String) -> Self {
        self.token = Some(token);
        self
    }

    /// The same client, sending the token kept in the file at `path` (its
    /// surrounding whitespace dropped). The error names the file, never its
    /// content; an empty file is an error, since Consul would take an empty
    /// token as the anonymous one and fail later on a confusing 403.
    pub fn with_token_file(self, path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the Consul token file {}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            bail!("the Consul token file {} is empty", path.display());
        }
        Ok(self.with_token(token.to_string()))
    }

    /// [`Self::with_token_file`] when a file is given.
    pub fn with_token_file_opt(self, path: Option<&std::path::Path>) -> Result<Self> {
        match path {
            Some(path) => self.with_token_file(path),
            None => Ok(self),
        }
    }

    /// One request; returns the `X-Consul-Index` (0 when absent) and body.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u64, Bytes)> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.header(TOKEN_HEADER, token);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| {
                anyhow!(
                    "Consul did not answer {method} {path} within {} s",
                    timeout.as_secs()
                )
            })?
            .with_context(|| format!("cannot reach Consul at {}", self.base))?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bytes = tokio::time::timeout(timeout, resp.into_body().collect())
            .await
            .map_err(|_| anyhow!("Consul's answer to {method} {path} did not finish"))??
            .to_bytes();
        if !status.is_success() {
            bail!(
                "Consul answered {status} to {method} {path}: {}",
                String::from_utf8_lossy(&bytes).trim()
            );
        }
        Ok((index, bytes))
    }

    pub async fn register(&self, r: &Registration) -> Result<()> {
        self.call(
            Method::PUT,
            "/v1/agent/service/register",
            Some(serde_json::to_vec(r)?),
            Duration::from_secs(5),
        )
        .await?;
        Ok(())
    }

    pub async fn deregister(&self, id: &str) -> Result<()> {
        self.call(
            Method::PUT,
            &format!("/v1/agent/service/deregister/{}", encode(id)),
            None,
            Duration::from_secs(5),
        )
        .await?;
        Ok(())
    }

    /// Services registered on this agent.
    pub async fn agent_services(&self) -> Result<HashMap<String, AgentService>> {
        let (_, body) = self
            .call(
                Method::GET,
                "/v1/agent/services",
                None,
                Duration::from_secs(5),
            )
            .await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Service names in the catalog; blocks while the index is unchanged.
    pub async fn catalog_services(
        &self,
        index: u64,
        wait: Duration,
        mode: ReadMode,
    ) -> Result<(u64, Vec<String>)> {
        let path = format!(
            "/v1/catalog/services?{}index={index}&wait={}s",
            mode.param(),
            wait.as_secs().max(1)
        );
        let (idx, body) = self
            .call(Method::GET, &path, None, wait + Duration::from_secs(10))
            .await?;
        let map: BTreeMap<String, Vec<String>> = serde_json::from_slice(&body)?;
        Ok((idx, map.into_keys().collect()))
    }

    /// Every node and every service instance with its health, from one
    /// blocking query however many services there are.
    ///
    /// `/v1/internal/ui/nodes` (what Consul's own UI follows) returns every
    /// node with its services and checks in one answer, and blocks on all
    /// three tables; following `/v1/health/service/<name>` instead would
    /// hold a connection per service, and Consul allows 200 per client.
    pub async fn cluster(
        &self,
        index: u64,
        wait: Duration,
        mode: ReadMode,
    ) -> Result<(u64, Cluster)> {
        let path = format!(
            "/v1/internal/ui/nodes?{}index={index}&wait={}s",
            mode.param(),
            wait.as_secs().max(1)
        );
        let (idx, body) = self
            .call(Method::GET, &path, None, wait + Duration::from_secs(10))
            .await?;
        let nodes: Vec<NodeDump> = serde_json::from_slice(&body)
            .context("Consul's node list is not what stagectl reads")?;
        Ok((idx, Cluster::from(nodes)))
    }

    /// Every service's passing instances (see [`Self::cluster`]).
    pub async fn healthy_services(
        &self,
        index: u64,
        wait: Duration,
        mode: ReadMode,
    ) -> Result<(u64, BTreeMap<String, Vec<Instance>>)> {
        let (idx, cluster) = self.cluster(index, wait, mode).await?;
        Ok((idx, cluster.passing()))
    }
}

/// A member as `GET /v1/agent/members` lists it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentMember {
    name: String,
    addr: String,
    port: u16,
    #[serde(default)]
    tags: HashMap<String, String>,
    /// Serf's member status: 1 alive, 2 leaving, 3 left, 4 failed.
    status: u8,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RaftConfiguration {
    servers: Vec<RaftServer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RaftServer {
    node: String,
    address: String,
    leader: bool,
    voter: bool,
}

impl ConsulClient {
    /// Members and raft peers as this agent sees them, in the words of
    /// `consul members` and `consul operator raft list-peers`. No leader
    /// (the raft question fails) is no peers, not an error.
    pub async fn cluster_view(&self) -> Result<ClusterView> {
        let timeout = Duration::from_secs(5);
        let (members, raft) = tokio::join!(
            self.call(Method::GET, "/v1/agent/members", None, timeout),
            self.call(
                Method::GET,
                "/v1/operator/raft/configuration",
                None,
                timeout
            )
        );
        let members: Vec<AgentMember> = serde_json::from_slice(&members?.1)
            .context("Consul's member list is not what stagectl reads")?;
        let peers = match raft {
            Ok((_, body)) => {
                serde_json::from_slice::<RaftConfiguration>(&body)
                    .context("Consul's raft configuration is not what stagectl reads")?
                    .servers
            }
            Err(_) => vec![],
        };
        Ok(view_of(members, peers))
    }
}

fn view_of(members: Vec<AgentMember>, peers: Vec<RaftServer>) -> ClusterView {
    ClusterView {
        members: members
            .into_iter()
            .map(|m| Member {
                kind: if m.tags.get("role").map(String::as_str) == Some("consul") {
                    "server".into()
                } else {
                    "client".into()
                },
                status: match m.status {
                    1 => "alive",
                    2 => "leaving",
                    3 => "left",
                    4 => "failed",
                    _ => "none",
                }
                .into(),
                address: format!("{}:{}", m.addr, m.port),
                node: m.name,
            })
            .collect(),
        peers: peers
            .into_iter()
            .map(|p| RaftPeer {
                state: if p.leader { "leader" } else { "follower" }.into(),
                node: p.node,
                address: p.address,
                voter: p.voter,
            })
            .collect(),
    }
}

/// An instance with its aggregated health (`passing`, `warning`, `critical`:
/// the worst of its own checks and its node's, as `?passing` counts them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceHealth {
    #[serde(flatten)]
    pub instance: Instance,
    pub status: String,
}

/// A Consul node and its health (its `serfHealth` check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub node: String,
    pub address: String,
    pub status: String,
}

/// The cluster as Consul knows it at one index: every node, and every
/// service (Consul itself left out) with every instance and its health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub nodes: Vec<NodeHealth>,
    pub services: BTreeMap<String, Vec<InstanceHealth>>,
}

impl Cluster {
    /// Passing instances by service; a service with none keeps its entry.
    pub fn passing(self) -> BTreeMap<String, Vec<Instance>> {
        self.services
            .into_iter()
            .map(|(name, list)| {
                let passing = list
                    .into_iter()
                    .filter(|i| i.status == "passing")
                    .map(|i| i.instance)
                    .collect();
                (name, passing)
            })
            .collect()
    }
}

impl From<Vec<NodeDump>> for Cluster {
    fn from(dump: Vec<NodeDump>) -> Self {
        let mut cluster = Cluster::default();
        for node in dump {
            let checks = node.checks.unwrap_or_default();
            let worst = |service_id: &str| {
                worst_status(
                    checks
                        .iter()
                        .filter(|c| c.service_id.is_empty() || c.service_id == service_id)
                        .map(|c| c.status.as_str()),
                )
            };
            cluster.nodes.push(NodeHealth {
                node: node.node.clone(),
                address: node.address.clone(),
                status: worst("").to_string(),
            });
            for s in node.services.unwrap_or_default() {
                if s.service == "consul" {
                    continue;
                }
                let status = worst(&s.id).to_string();
                let list = cluster.services.entry(s.service.clone()).or_default();
                list.push(InstanceHealth {
                    instance: Instance {
                        // An empty service address means "the node's".
                        address: if s.address.is_empty() {
                            node.address.clone()
                        } else {
                            s.address
                        },
                        id: s.id,
                        node: node.node.clone(),
                        // Out of range: 0, which the LB leaves out.
                        port: u16::try_from(s.port).unwrap_or(0),
                        tags: s.tags.unwrap_or_default(),
                        meta: s.meta.unwrap_or_default(),
                    },
                    status,
                });
            }
        }
        cluster.nodes.sort_by(|a, b| a.node.cmp(&b.node));
        for list in cluster.services.values_mut() {
            list.sort_by(|a, b| a.instance.cmp(&b.instance));
        }
        cluster
    }
}

fn worst_status<'a>(statuses: impl Iterator<Item = &'a str>) -> &'static str {
    let mut worst = "passing";
    for s in statuses {
        match s {
            "critical" => return "critical",
            "warning" => worst = "warning",
            _ => {}
        }
    }
    worst
}

impl ConsulClient {
    /// Every service (but Consul itself) with every instance and its health.
    pub async fn service_report(&self) -> Result<BTreeMap<String, Vec<InstanceHealth>>> {
        let (_, cluster) = self
            .cluster(0, Duration::from_secs(1), ReadMode::Stale)
            .await?;
        Ok(cluster.services)
    }
}

/// Where a read is answered (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    Leader,
    Stale,
}

impl ReadMode {
    fn param(self) -> &'static str {
        match self {
            ReadMode::Leader => "",
            ReadMode::Stale => "stale&",
        }
    }
}

/// Percent-encode a path segment (service names and IDs may hold `:`, `/`
/// or anything else).
pub(crate) fn encode(s: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The index to use for the next blocking query (Consul's rules: reset when
/// it goes backwards, never 0 after a first answer).
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serve one request on a loopback port with `{}` and hand back the
    /// request's head as received.
    async fn one_request_head(client: impl FnOnce(String) -> ConsulClient) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its request ended");
                head.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await
                .unwrap();
            String::from_utf8(head).unwrap().to_ascii_lowercase()
        });
        client(addr).agent_services().await.unwrap();
        server.await.unwrap()
    }

    #[tokio::test]
    async fn a_token_goes_in_the_header_and_only_when_given() {
        let anonymous = one_request_head(|addr| ConsulClient::new(&addr)).await;
        assert!(anonymous.starts_with("get /v1/agent/services "));
        assert!(!anonymous.contains("x-consul-token"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "0b9c5e1e-token-for-tests\n").unwrap();
        let with_token =
            one_request_head(|addr| ConsulClient::new(&addr).with_token_file(&file).unwrap()).await;
        assert!(with_token.contains("\r\nx-consul-token: 0b9c5e1e-token-for-tests\r\n"));
        assert!(!with_token.contains("token-for-tests "), "not in the URL");
    }

    #[test]
    fn a_missing_or_empty_token_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = ConsulClient::new("127.0.0.1:1")
            .with_token_file(&missing)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains(&missing.display().to_string()));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let err = ConsulClient::new("127.0.0.1:1")
            .with_token_file(&empty)
            .err()
            .unwrap();
        assert!(err.to_string().contains("is empty"));
    }

    #[test]
    fn the_http_view_reads_as_the_cli_tables_do() {
        let members: Vec<AgentMember> = serde_json::from_str(
            r#"[{"Name":"host-1","Addr":"10.77.0.11","Port":8301,"Tags":{"role":"consul"},"Status":1},
                {"Name":"host-2","Addr":"10.77.0.12","Port":8301,"Tags":{"role":"consul"},"Status":4},
                {"Name":"host-3","Addr":"10.77.0.13","Port":8301,"Tags":{"role":"node"},"Status":3}]"#,
        )
        .unwrap();
        let peers: RaftConfiguration = serde_json::from_str(
            r#"{"Servers":[{"ID":"a","Node":"host-1","Address":"10.77.0.11:8300","Leader":true,"Voter":true},
                           {"ID":"b","Node":"host-2","Address":"10.77.0.12:8300","Leader":false,"Voter":false}],"Index":7}"#,
        )
        .unwrap();
        let view = view_of(members, peers.servers);
        assert_eq!(view.leader(), Some("host-1"));
        assert!(view.is_alive("host-1") && !view.is_alive("host-2"));
        assert!(view.is_voter("host-1") && !view.is_voter("host-2"));
        assert!(view.is_gone("host-3"), "left counts as gone");
        assert_eq!(view.members[0].address, "10.77.0.11:8301");
        assert_eq!(view.members[0].kind, "server");
        assert_eq!(view.members[2].kind, "client");
        assert_eq!(view.members[1].status, "failed");
    }

    #[test]
    fn registration_serializes_as_consul_expects() {
        let r = Registration {
            id: "host-1:web:8080".into(),
            name: "web".into(),
            tags: vec!["v1".into()],
            address: "10.0.0.1".into(),
            port: 32768,
            meta: BTreeMap::from([("stagectl-env".into(), "qa".into())]),
            check: Check {
                tcp: Some("10.0.0.1:32768".into()),
                http: None,
                interval: "1s".into(),
                timeout: "1s".into(),
                failures_before_critical: None,
                deregister_critical_service_after: "1m".into(),
                status: Some("passing".into()),
            },
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ID"], "host-1:web:8080");
        assert_eq!(json["Check"]["TCP"], "10.0.0.1:32768");
        assert!(json["Check"].get("HTTP").is_none());
        assert_eq!(json["Check"]["DeregisterCriticalServiceAfter"], "1m");
    }

    #[test]
    fn the_node_dump_gives_each_instance_its_worst_check() {
        // The shape Consul 1.8.7 answers `/v1/internal/ui/nodes` with (trimmed).
        let dump = r#"[
          {"Node": "host-1", "Address": "10.0.0.1",
           "Services": [
             {"ID": "consul", "Service": "consul", "Tags": null, "Address": "", "Port": 8300},
             {"ID": "h1:web-1:8080", "Service": "web", "Tags": null, "Address": "",
              "Meta": {"stagectl-origin": "declared"}, "Port": 32768},
             {"ID": "h1:api-1:9000", "Service": "api", "Tags": ["v1"], "Address": "10.0.0.9",
              "Meta": null, "Port": 32769},
             {"ID": "odd", "Service": "odd", "Address": "10.0.0.9", "Port": 70000}],
           "Checks": [
             {"CheckID": "serfHealth", "ServiceID": "", "Status": "passing"},
             {"CheckID": "service:h1:web-1:8080", "ServiceID": "h1:web-1:8080", "Status": "passing"},
             {"CheckID": "service:h1:api-1:9000", "ServiceID": "h1:api-1:9000", "Status": "critical"}]},
          {"Node": "host-2", "Address": "10.0.0.2",
           "Services": [{"ID": "h2:web-1:8080", "Service": "web", "Address": "", "Port": 32768}],
           "Checks": [{"CheckID": "serfHealth", "ServiceID": "", "Status": "critical"}]}
        ]"#;
        let nodes: Vec<NodeDump> = serde_json::from_str(dump).unwrap();
        let cluster = Cluster::from(nodes);
        assert_eq!(cluster.nodes[0].status, "passing");
        assert_eq!(cluster.nodes[1].status, "critical");
        assert!(!cluster.services.contains_key("consul"));
        let web = &cluster.services["web"];
        assert_eq!(web[0].instance.address, "10.0.0.1");
        assert_eq!(web[0].status, "passing");
        assert_eq!(web[0].instance.meta["stagectl-origin"], "declared");
        // A failed node fails its instances, as `?passing` counts them.
        assert_eq!(web[1].status, "critical");
        assert_eq!(cluster.services["api"][0].instance.address, "10.0.0.9");
        // A port out of range reads as 0 (left out by the LB), not as an
        // unreadable answer.
        assert_eq!(cluster.services["odd"][0].instance.port, 0);
        let passing = cluster.passing();
        assert_eq!(passing["web"].len(), 1);
        assert!(passing["api"].is_empty());
    }

    #[test]
    fn path_segments_are_encoded_and_indexes_reset() {
        assert_eq!(encode("host-1:web:8080"), "host-1%3Aweb%3A8080");
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(10, 3), 0);
        assert_eq!(next_index(0, 0), 1);
    }
}
