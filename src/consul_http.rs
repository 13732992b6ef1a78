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

#[derive(Clone)]
pub struct ConsulClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

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

/// A healthy instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Instance {
    pub id: String,
    pub node: String,
    pub address: String,
    pub port: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: HealthNode,
    service: HealthService,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    node: String,
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID")]
    id: String,
    address: String,
    port: u16,
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
        }
    }

    /// One request; returns the `X-Consul-Index` (0 when absent) and body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u64, Bytes)> {
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
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

    /// Instances of `service` whose checks all pass; blocks while unchanged.
    pub async fn healthy_instances(
        &self,
        service: &str,
        index: u64,
        wait: Duration,
        mode: ReadMode,
    ) -> Result<(u64, Vec<Instance>)> {
        let path = format!(
            "/v1/health/service/{}?passing&{}index={index}&wait={}s",
            encode(service),
            mode.param(),
            wait.as_secs().max(1)
        );
        let (idx, body) = self
            .call(Method::GET, &path, None, wait + Duration::from_secs(10))
            .await?;
        let entries: Vec<HealthEntry> = serde_json::from_slice(&body)?;
        let mut instances: Vec<Instance> = entries
            .into_iter()
            .map(|e| instance(e.node, e.service))
            .collect();
        instances.sort();
        Ok((idx, instances))
    }
}

/// An instance with its aggregated health (`passing`, `warning`, `critical`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceHealth {
    pub id: String,
    pub node: String,
    pub address: String,
    pub port: u16,
    pub status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntryFull {
    node: HealthNode,
    service: HealthService,
    checks: Vec<HealthCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    status: String,
}

impl ConsulClient {
    /// Every service (but Consul itself) with every instance and its health.
    pub async fn service_report(&self) -> Result<BTreeMap<String, Vec<InstanceHealth>>> {
        let (_, names) = self
            .catalog_services(0, Duration::from_secs(1), ReadMode::Stale)
            .await?;
        let mut report = BTreeMap::new();
        for name in names.into_iter().filter(|n| n != "consul") {
            let path = format!("/v1/health/service/{}?stale", encode(&name));
            let (_, body) = self
                .call(Method::GET, &path, None, Duration::from_secs(5))
                .await?;
            let entries: Vec<HealthEntryFull> = serde_json::from_slice(&body)?;
            let mut list: Vec<InstanceHealth> = entries
                .into_iter()
                .map(|e| {
                    let worst = if e.checks.iter().any(|c| c.status == "critical") {
                        "critical"
                    } else if e.checks.iter().any(|c| c.status == "warning") {
                        "warning"
                    } else {
                        "passing"
                    };
                    let i = instance(e.node, e.service);
                    InstanceHealth {
                        id: i.id,
                        node: i.node,
                        address: i.address,
                        port: i.port,
                        status: worst.into(),
                    }
                })
                .collect();
            list.sort_by(|a, b| a.id.cmp(&b.id));
            report.insert(name, list);
        }
        Ok(report)
    }
}

fn instance(node: HealthNode, service: HealthService) -> Instance {
    Instance {
        // An empty service address means "the node's address".
        address: if service.address.is_empty() {
            node.address
        } else {
            service.address
        },
        id: service.id,
        node: node.node,
        port: service.port,
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

/// Percent-encode a path segment (service names and IDs may hold `:`).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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
    fn path_segments_are_encoded_and_indexes_reset() {
        assert_eq!(encode("host-1:web:8080"), "host-1%3Aweb%3A8080");
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(10, 3), 0);
        assert_eq!(next_index(0, 0), 1);
    }
}
