//! What every command that touches hosts goes through, one way:
//!
//! 1. [`open`]: connect to every host once (the local lab's running hosts
//!    included), bounded by `--parallel`, with one failure policy: abort
//!    before any change (`up`, `plan`), or report and go on (`status`,
//!    `ls`, `logs`, `down`);
//! 2. [`Hosts::snapshot`]: what runs there for the environment, and the
//!    local engine's images;
//! 3. `plan::Plan`: topology + snapshot → one list of phases (pure);
//! 4. [`conduct`]: the phases walked in order, each carried out by
//!    [`execute`] (steps) or [`waits`] (the cluster formed, every instance
//!    routed, as [`discovery`] reads it from the load-balancer host's
//!    agents), reported as [`events`].
//!
//! The local lab is the one thing made before the snapshot: its hosts can
//! only be looked into once they run (`up` creates them, then connects).

pub mod conduct;
pub mod discovery;
pub mod edge;
pub mod events;
pub mod execute;
pub mod waits;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Result};
use futures_util::StreamExt;

use crate::cluster::consul::{get_last_up, LastUp, LastUpRead};
use crate::cluster::record;
use crate::engine::connect::{local_engine, Connection, Connector};
use crate::engine::docker::DockerHost;
use crate::engine::kept_ssh::KeptMasters;
use crate::engine::lab;
use crate::engine::Engine;
use crate::labels::Component;
use crate::plan::desired::{desired_state, Secrets, CONSUL_CONFIG_DIR};
use crate::plan::{HostSnapshot, Snapshot};
use crate::spec::LabObserved;
use crate::state::StateDir;
use crate::topology::{Endpoint, Host, Topology};
use events::{HostLine, Reporter};

/// What every command that touches hosts needs.
pub struct Ctx {
    pub topology: Topology,
    pub state: StateDir,
    pub connect_timeout: Duration,
    pub lock_timeout: Duration,
    pub parallel: usize,
}

impl Ctx {
    pub fn reporter(&self) -> Reporter {
        Reporter::new(self.host_width())
    }

    /// The reporter for a command's `-o text|json` of events.
    pub fn event_reporter(&self, format: crate::cli::EventFormat) -> Reporter {
        match format {
            crate::cli::EventFormat::Text => self.reporter(),
            crate::cli::EventFormat::Json => Reporter::json(),
        }
    }

    /// A connector for this topology's hosts; with a lab, this state
    /// directory's access to it is made sure of first (see
    /// `lab::ensure_access`).
    pub async fn connector(&self) -> Result<Connector> {
        if let Some(l) = &self.topology.lab {
            let local = local_engine().await?;
            let seen = lab::observe(&local, &l.name).await?;
            lab::ensure_access(&local, &self.topology, &self.state, &seen).await?;
        }
        self.connector_with_lab_keys()
    }

    /// A connector with this topology's lab keys, if it has a lab.
    fn connector_with_lab_keys(&self) -> Result<Connector> {
        let mut connector = Connector::new(self.connect_timeout, None)?;
        connector.keep_masters(KeptMasters::from_env(self.state.root().join("ssh"))?);
        if let Some(lab) = &self.topology.lab {
            connector.set_lab(lab::access(&self.state, &lab.name));
        }
        Ok(connector)
    }

    /// The longest host name: lines about hosts line up at it.
    pub fn host_width(&self) -> usize {
        self.topology
            .hosts
            .iter()
            .map(|h| h.name.len())
            .max()
            .unwrap_or(0)
    }
}

/// What to do when a host does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Stop before anything changes anywhere, naming the hosts left alone.
    Abort,
    /// Go on with the hosts that answered; the failures are in the attempts.
    Report,
}

/// A host's connection attempt, with its progress line.
pub struct Attempt<'a> {
    pub host: &'a Host,
    pub line: HostLine,
    pub result: Result<Connection>,
}

/// A host the last `up` applied (or left to clear) that is out of the
/// topology now, found through that run's record in Consul.
pub struct Departed {
    pub host: Host,
    /// The engine ID the record keeps for it (carried into the next record
    /// while it cannot be reached).
    pub engine_id: Option<String>,
    pub line: HostLine,
    pub result: Result<Connection>,
}

/// The hosts of a run, connected once.
pub struct Hosts<'a> {
    /// In topology order; lab hosts that do not run are not tried.
    pub attempts: Vec<Attempt<'a>>,
    /// Out of the topology, still to clear (see [`Hosts::find_departed`]).
    pub departed: Vec<Departed>,
    /// The local engine: the lab's home, and where images come from.
    pub local: Option<DockerHost>,
    /// The local lab as found, when the topology has one.
    pub lab: Option<LabObserved>,
    connector: Connector,
    parallel: usize,
}

/// Step 1: connect to every remote host and every running lab host.
pub async fn open<'a>(ctx: &'a Ctx, reporter: &Reporter, policy: Unreachable) -> Result<Hosts<'a>> {
    let t = &ctx.topology;
    let (local, lab) = match &t.lab {
        Some(l) => {
            let local = local_engine().await?;
            let seen = lab::observe(&local, &l.name).await?;
            lab::ensure_access(&local, t, &ctx.state, &seen).await?;
            (Some(local), Some(seen))
        }
        // Without a lab the local engine is only a source of images.
        None => (local_engine().await.ok(), None),
    };
    let mut hosts = Hosts {
        attempts: Vec::new(),
        departed: Vec::new(),
        local,
        lab,
        connector: ctx.connector_with_lab_keys()?,
        parallel: ctx.parallel,
    };
    let running: Vec<&Host> = t.hosts.iter().filter(|h| hosts.lab_runs(h)).collect();
    hosts.connect(&running, reporter).await;
    if policy == Unreachable::Abort {
        hosts.fail_if_unreachable(t)?;
    }
    Ok(hosts)
}

impl<'a> Hosts<'a> {
    /// Remote hosts always count as running; lab hosts when their
    /// container runs.
    fn lab_runs(&self, h: &Host) -> bool {
        !h.is_lab()
            || self
                .lab
                .as_ref()
                .and_then(|l| l.hosts.get(&h.name))
                .is_some_and(|(_, running)| *running)
    }

    async fn connect(&mut self, hosts: &[&'a Host], reporter: &Reporter) {
        let lines: Vec<HostLine> = hosts.iter().map(|h| reporter.host(&h.name)).collect();
        for l in &lines {
            l.step("connecting");
        }
        let connector = &self.connector;
        let results: Vec<Result<Connection>> = futures_util::stream::iter(hosts)
            .map(|h| connector.connect(h))
            .buffered(self.parallel.max(1))
            .collect()
            .await;
        for ((host, line), result) in hosts.iter().zip(lines).zip(results) {
            match &result {
                Ok(c) => line.connected(c.transport, &c.engine_version),
                Err(e) => line.connect_failed(&format!("{e:#}")),
            }
            self.attempts.push(Attempt { host, line, result });
        }
    }

    /// Look at the lab again (and make sure of its access): after taking
    /// the lock, another run may have changed it since `open`.
    pub async fn refresh_lab(&mut self, ctx: &Ctx) -> Result<()> {
        let (Some(l), Some(local)) = (&ctx.topology.lab, &self.local) else {
            return Ok(());
        };
        let seen = lab::observe(local, &l.name).await?;
        lab::ensure_access(local, &ctx.topology, &ctx.state, &seen).await?;
        self.lab = Some(seen);
        Ok(())
    }

    /// After the lab's steps: connect the lab hosts now running, then put
    /// every attempt back in topology order.
    pub async fn connect_lab(&mut self, ctx: &'a Ctx, reporter: &Reporter) -> Result<()> {
        let t = &ctx.topology;
        self.refresh_lab(ctx).await?;
        let tried: Vec<String> = self.attempts.iter().map(|a| a.host.name.clone()).collect();
        let new: Vec<&Host> = t
            .hosts
            .iter()
            .filter(|h| !tried.contains(&h.name) && self.lab_runs(h))
            .collect();
        self.connect(&new, reporter).await;
        self.attempts
            .sort_by_key(|a| t.hosts.iter().position(|h| h.name == a.host.name));
        self.fail_if_unreachable(t)
    }

    /// Stop before changing anything when a host cannot be reached.
    pub fn fail_if_unreachable(&self, t: &Topology) -> Result<()> {
        let failed: Vec<String> = self
            .attempts
            .iter()
            .filter_map(|a| a.result.as_ref().err().map(|e| format!("{e:#}")))
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        let bad: Vec<&str> = self
            .attempts
            .iter()
            .filter(|a| a.result.is_err())
            .map(|a| a.host.name.as_str())
            .collect();
        let others: Vec<&str> = t
            .hosts
            .iter()
            .map(|h| h.name.as_str())
            .filter(|n| !bad.contains(n))
            .collect();
        let mut msg = failed.join("\n");
        if !others.is_empty() {
            msg.push_str(&format!("\nnothing was changed on {}", join_or(&others)));
        }
        Err(anyhow!(msg))
    }

    /// The engines of the hosts that answered.
    pub fn reachable(&self) -> Vec<&DockerHost> {
        self.attempts
            .iter()
            .filter_map(|a| a.result.as_ref().ok().map(|c| &c.host))
            .collect()
    }

    /// The connection to `host` (of the topology or departed), if it
    /// answered.
    pub fn engine(&self, host: &str) -> Option<&DockerHost> {
        let found = self
            .attempts
            .iter()
            .find(|a| a.host.name == host)
            .map(|a| &a.result);
        let found = found.or_else(|| {
            self.departed
                .iter()
                .find(|d| d.host.name == host)
                .map(|d| &d.result)
        });
        found.and_then(|r| r.as_ref().ok().map(|c| &c.host))
    }

    pub fn line(&self, host: &str) -> Option<&HostLine> {
        let found = self.attempts.iter().find(|a| a.host.name == host);
        found.map(|a| &a.line).or_else(|| {
            self.departed
                .iter()
                .find(|d| d.host.name == host)
                .map(|d| &d.line)
        })
    }

    /// The last `up`'s record, asked of the first agent that runs (in
    /// `snapshot`; a client's forwards to the servers) and checked against
    /// the environment's record key. `Missing` for a new environment or a
    /// cluster without a leader; a record that fails its check against
    /// `key` (the record key as read, see [`Self::record_key`]) is
    /// `Rejected` (see `cluster::record`), never acted on.
    pub async fn last_up(
        &self,
        t: &Topology,
        snapshot: &Snapshot,
        key: Option<&[u8]>,
    ) -> LastUpRead {
        let consul = Component::Consul.container(&t.name);
        // Servers first: only they hold stagectl's token, which reads it.
        let mut seen_hosts: Vec<_> = snapshot.hosts.iter().collect();
        seen_hosts.sort_by_key(|h| !t.host(&h.host).is_some_and(|h| h.consul_server));
        for seen in seen_hosts {
            let runs = seen
                .observed
                .as_ref()
                .is_some_and(|o| o.containers.iter().any(|c| c.name == consul && c.running));
            let Some(engine) = self.engine(&seen.host).filter(|_| runs) else {
                continue;
            };
            match get_last_up(engine, &consul, t.ports.consul_http, &t.name, key).await {
                Ok(LastUpRead::Missing) | Err(_) => continue,
                Ok(read) => return read,
            }
        }
        LastUpRead::Missing
    }

    /// The last `up`'s record when it can be believed; a warning on
    /// stderr when one is kept that cannot.
    pub async fn believed_last_up(
        &self,
        t: &Topology,
        snapshot: &Snapshot,
        key: Option<&[u8]>,
    ) -> Option<LastUp> {
        let read = self.last_up(t, snapshot, key).await;
        if let Some(warning) = read.warning(&t.name) {
            eprintln!("warning: {warning}");
        }
        read.believed()
    }

    /// The environment's record key, read from the Consul containers of
    /// the hosts in `snapshot` (servers first: only they are given it).
    pub async fn record_key(&self, t: &Topology, snapshot: &Snapshot) -> Result<Option<Vec<u8>>> {
        let holders = key_holders(t, snapshot);
        self.record_key_among(&t.name, &holders).await
    }

    /// The record key of environment `env` as the first of `hosts` that
    /// holds it keeps it (a host without one, or unreachable, is skipped).
    pub async fn record_key_among(&self, env: &str, hosts: &[&str]) -> Result<Option<Vec<u8>>> {
        self.key_among(env, hosts, record::KEY_PATH).await
    }

    /// The environment's TLS seed (see `cluster::tls`), read as the record
    /// key is.
    pub async fn tls_seed(&self, t: &Topology, snapshot: &Snapshot) -> Result<Option<Vec<u8>>> {
        let holders = key_holders(t, snapshot);
        self.key_among(&t.name, &holders, crate::cluster::tls::SEED_PATH)
            .await
    }

    /// The 32-byte key at `path` in the Consul container of the first of
    /// `hosts` that holds one.
    async fn key_among(&self, env: &str, hosts: &[&str], path: &str) -> Result<Option<Vec<u8>>> {
        let consul = Component::Consul.container(env);
        for host in hosts {
            let Some(engine) = self.engine(host) else {
                continue;
            };
            if let Some(key) = engine.read_file(&consul, path).await? {
                if key.len() == 32 {
                    return Ok(Some(key));
                }
            }
        }
        Ok(None)
    }

    /// The Docker engine ID of every topology host that answered.
    pub async fn engine_ids(&self) -> Result<BTreeMap<String, String>> {
        let asks =
            self.attempts.iter().filter_map(|a| {
                let c = a.result.as_ref().ok()?;
                Some(async move {
                    Ok::<_, anyhow::Error>((a.host.name.clone(), c.host.engine_id().await?))
                })
            });
        futures_util::future::try_join_all(asks)
            .await
            .map(|ids| ids.into_iter().collect())
    }

    /// Connect to the hosts `record` knows that are out of the topology, and
    /// add what of the environment runs there to `snapshot` (with the
    /// servers the record applied): the plan clears them. One that does not
    /// answer is reported and planned as unreachable; it stops nothing.
    ///
    /// A host is only cleared when the engine that answers at its address
    /// is the one the record says was applied there, and is none of the
    /// topology's hosts (a host renamed at the same address is the same
    /// engine: it keeps its containers' data and converges under its new
    /// name), and only through a way of connecting the topology itself
    /// uses (see `Topology::allows_endpoint`).
    pub async fn find_departed(
        &mut self,
        t: &Topology,
        record: &LastUp,
        snapshot: &mut Snapshot,
        reporter: &Reporter,
    ) -> Result<()> {
        snapshot.last_servers = Some(record.servers.clone());
        let candidates: Vec<(String, Endpoint)> = record
            .known_hosts()
            .into_iter()
            .filter(|(name, _)| t.host(name).is_none())
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let current = self.engine_ids().await?;
        for (name, endpoint) in candidates {
            let host = Host {
                advertise: std::net::Ipv4Addr::UNSPECIFIED.into(),
                roles: Default::default(),
                consul_server: record.servers.contains(&name),
                name,
                endpoint,
            };
            let line = reporter.host(&format!("{} (out of the topology)", host.name));
            if let Err(why) = t.allows_endpoint(&host.endpoint) {
                line.ok(&format!("left alone: {why}"));
                line.finish();
                continue;
            }
            line.step("connecting");
            // A stopped lab host would be waited for as if booting.
            let result = if self.lab_runs(&host) {
                self.connector.connect(&host).await
            } else {
                Err(anyhow!("{}: lab host not running", host.name))
            };
            if let Ok(c) = &result {
                let found = c.host.engine_id().await?;
                let renamed = current.iter().find(|(_, id)| **id == found).map(|(n, _)| n);
                let why = match (renamed, record.engines.get(&host.name)) {
                    (Some(now), _) => Some(format!(
                        "its engine is {now}'s now (renamed?): nothing of it is removed"
                    )),
                    (None, Some(applied)) if *applied == found => None,
                    (None, Some(_)) => Some(format!(
                        "the engine at {} is not the one the last up applied there: left alone",
                        host.endpoint
                    )),
                    (None, None) => Some(format!(
                        "the last up did not record its engine: left alone (clear it with down --host {} once sure)",
                        host.name
                    )),
                };
                if let Some(why) = why {
                    line.ok(&why);
                    line.finish();
                    continue;
                }
            }
            match &result {
                Ok(c) => line.connected(c.transport, &c.engine_version),
                Err(e) => line.connect_failed(&format!("{e:#}")),
            }
            let engine_id = record.engines.get(&host.name).cloned();
            self.departed.push(Departed {
                host,
                engine_id,
                line,
                result,
            });
        }
        for d in &self.departed {
            let mut seen = HostSnapshot {
                host: d.host.name.clone(),
                unreachable: d.result.is_err(),
                ..Default::default()
            };
            if let Ok(c) = &d.result {
                seen.observed = Some(c.host.observe(&t.name, &[]).await?);
                seen.edge = c.host.edge_seen().await?;
            }
            snapshot.departed.push(seen);
        }
        Ok(())
    }

    /// Step 2: what runs on every host that answered for `env`, the IDs
    /// of `images` there and on the local engine. Hosts that were not
    /// reached have no observation (planned as empty, or left alone).
    pub async fn snapshot(&self, t: &Topology, images: &[String]) -> Result<Snapshot> {
        self.look(t, images, false).await
    }

    /// The snapshot `down` needs: also which other environments each host
    /// has (the lab goes only when none is left).
    pub async fn snapshot_with_others(&self, t: &Topology) -> Result<Snapshot> {
        self.look(t, &[], true).await
    }

    async fn look(&self, t: &Topology, images: &[String], others: bool) -> Result<Snapshot> {
        let seen: Vec<Result<HostSnapshot>> = futures_util::stream::iter(&t.hosts)
            .map(|h| async move {
                let mut seen = HostSnapshot {
                    host: h.name.clone(),
                    unreachable: self
                        .attempts
                        .iter()
                        .any(|a| a.host.name == h.name && a.result.is_err()),
                    ..Default::default()
                };
                if let Some(engine) = self.engine(&h.name) {
                    let (observed, edge) =
                        tokio::join!(engine.observe(&t.name, images), engine.edge_seen());
                    seen.observed = Some(observed?);
                    seen.edge = edge?;
                    if others {
                        seen.environments = engine.environments().await?;
                    }
                }
                Ok(seen)
            })
            .buffered(self.parallel.max(1))
            .collect()
            .await;
        let mut snapshot = Snapshot {
            hosts: seen.into_iter().collect::<Result<_>>()?,
            lab: self.lab.clone(),
            ..Default::default()
        };
        if let Some(local) = &self.local {
            snapshot.local_images = local.image_ids(images).await?;
        }
        Ok(snapshot)
    }

    /// The gossip key to plan with. The hosts are the source of truth: the
    /// state directory's key when the Consul agents found run with it (their
    /// spec hash, which covers their config file, says so), else the key
    /// their config holds (read back: another machine made the cluster),
    /// else the state directory's, if any (a new environment).
    pub async fn gossip_key(
        &self,
        t: &Topology,
        stored: Option<String>,
        keys: &Secrets,
        snapshot: &Snapshot,
    ) -> Result<Option<String>> {
        let consul = Component::Consul.container(&t.name);
        let found: Vec<(&str, Option<&str>)> = snapshot
            .hosts
            .iter()
            .filter_map(|h| {
                let c = h
                    .observed
                    .as_ref()?
                    .containers
                    .iter()
                    .find(|c| c.name == consul)?;
                Some((h.host.as_str(), c.spec_hash.as_deref()))
            })
            .collect();
        if found.is_empty() {
            return Ok(stored);
        }
        if let Some(key) = &stored {
            let desired = desired_state(
                t,
                &Secrets {
                    gossip_key: key.clone(),
                    record_key: keys.record_key.clone(),
                    tls_seed: keys.tls_seed.clone(),
                    ..Default::default()
                },
            );
            let agrees = found.iter().all(|(host, hash)| {
                desired.iter().any(|d| {
                    d.host == *host
                        && d.containers
                            .iter()
                            .any(|c| c.name == consul && Some(c.hash().as_str()) == *hash)
                })
            });
            if agrees {
                return Ok(stored);
            }
        }
        let path = format!("{CONSUL_CONFIG_DIR}/stagectl.json");
        for (host, _) in &found {
            let Some(engine) = self.engine(host) else {
                continue;
            };
            let Some(config) = engine.read_file(&consul, &path).await? else {
                continue;
            };
            let key = serde_json::from_slice::<serde_json::Value>(&config)
                .ok()
                .and_then(|v| v["encrypt"].as_str().map(str::to_string));
            if key.is_some() {
                return Ok(key);
            }
        }
        Ok(stored)
    }

    /// Close the SSH masters kept for `gone` (hosts removed with their lab).
    pub async fn close_kept_masters(&self, gone: impl Iterator<Item = &Host>) {
        for host in gone {
            self.connector.close_kept(host).await;
        }
    }

    /// Finish every host's line (the spinners stop).
    pub fn finish(&self) {
        for a in &self.attempts {
            a.line.finish();
        }
        for d in &self.departed {
            d.line.finish();
        }
    }
}

/// The topology with its ports in effect: declared ones checked against the
/// other environments on these hosts, or a free block chosen (see
/// `plan::ports`).
pub async fn resolve_ports(t: &Topology, hosts: &[&DockerHost]) -> Result<Topology> {
    let mut claims = Vec::new();
    let looks = hosts
        .iter()
        .map(|h| async move { tokio::try_join!(h.port_labels(), h.edge_running()) });
    let mut edge = t.lb.edge;
    for found in futures_util::future::join_all(looks).await {
        let (found, edge_here) = found?;
        claims.extend(crate::plan::ports::claims(found));
        edge |= edge_here.is_some();
    }
    let in_file = |why: String| {
        crate::error::input(format!(
            "{}: {why}; nothing was changed",
            t.source.display()
        ))
    };
    if t.lb.edge {
        if let Some(why) = crate::plan::ports::edge_blocked(&t.name, &claims) {
            return Err(in_file(why));
        }
    }
    if edge {
        claims.push(crate::plan::ports::Claim::edge());
    }
    let declared = t.ports_declared.then_some(t.ports);
    let tcp = |p: &crate::topology::Ports| -> Vec<u16> {
        crate::topology::tcp_ports_for(&t.services, p)
            .into_iter()
            .map(|(_, port)| port)
            .collect()
    };
    let ports = crate::plan::ports::resolve(&t.name, declared, &claims, tcp).map_err(in_file)?;
    Ok(Topology { ports, ..t.clone() })
}

/// The topology with the ports its environment runs with on these hosts
/// (the port block its containers record), for the commands that only talk
/// to what runs (`down`, `gc`): the file's ports when nothing of it runs.
/// Without this, a preview on block k would be asked about on block 0,
/// which is another environment's.
pub async fn own_ports(t: &Topology, hosts: &[&DockerHost]) -> Result<Topology> {
    let looks = hosts.iter().map(|h| h.port_labels());
    for found in futures_util::future::join_all(looks).await {
        let own = crate::plan::ports::claims(found?)
            .into_iter()
            .find(|c| c.env == t.name)
            .and_then(|c| c.ports);
        if let Some(ports) = own {
            return Ok(Topology { ports, ..t.clone() });
        }
    }
    Ok(t.clone())
}

/// "host-1, host-2 or host-3" for messages.
pub fn join_or(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// The hosts of `snapshot` whose Consul container runs or exists, servers
/// first: only they are given the environment's keys.
pub fn key_holders<'a>(t: &Topology, snapshot: &'a Snapshot) -> Vec<&'a str> {
    let consul = Component::Consul.container(&t.name);
    let mut holders: Vec<&str> = snapshot
        .hosts
        .iter()
        .filter(|h| {
            h.observed
                .as_ref()
                .is_some_and(|o| o.containers.iter().any(|c| c.name == consul))
        })
        .map(|h| h.host.as_str())
        .collect();
    holders.sort_by_key(|h| !t.host(h).is_some_and(|h| h.consul_server));
    holders
}
