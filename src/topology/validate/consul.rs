//! The `consul:` section: which hosts are servers (an odd number of them),
//! the datacenter's name and the join timeout.

use std::collections::{BTreeMap, BTreeSet};

use serde_saphyr::{Location, Spanned};

use super::Validator;
use crate::topology::model::{ConsulSettings, Host};
use crate::topology::raw::{RawConsul, RawHost};

impl Validator {
    /// Also marks the servers among `hosts`.
    pub(super) fn consul(
        &mut self,
        raw: &RawConsul,
        raw_hosts: &Spanned<BTreeMap<String, Spanned<RawHost>>>,
        hosts: &mut [Host],
    ) -> ConsulSettings {
        let servers = self.consul_servers(raw, raw_hosts);
        for h in hosts.iter_mut() {
            h.consul_server = servers.contains(&h.name);
        }
        ConsulSettings {
            datacenter: raw
                .datacenter
                .as_ref()
                .map(|d| {
                    self.name(d, "datacenter");
                    d.value.clone()
                })
                .unwrap_or_else(|| "dc1".into()),
            bootstrap_expect: servers.len(),
            join_timeout_secs: raw
                .join_timeout
                .as_ref()
                .map(|t| {
                    if !(1..=3600).contains(&t.value) {
                        self.error(
                            &t.referenced,
                            format!(
                                "join_timeout {} is out of range; expected 1 to 3600 seconds",
                                t.value
                            ),
                        );
                    }
                    t.value.clamp(1, 3600) as u64
                })
                .unwrap_or(60),
        }
    }

    fn consul_servers(
        &mut self,
        consul: &RawConsul,
        hosts: &Spanned<BTreeMap<String, Spanned<RawHost>>>,
    ) -> BTreeSet<String> {
        let (servers, loc): (BTreeSet<String>, Location) = match &consul.servers {
            None => (hosts.value.keys().cloned().collect(), hosts.referenced),
            Some(list) => {
                let mut set = BTreeSet::new();
                let mut bad = false;
                for s in &list.value {
                    if !hosts.value.contains_key(&s.value) {
                        self.error(
                            &s.referenced,
                            format!("consul server `{}` is not a host of this topology", s.value),
                        );
                        bad = true;
                    } else if !set.insert(s.value.clone()) {
                        self.error(
                            &s.referenced,
                            format!("consul server `{}` is listed twice", s.value),
                        );
                        bad = true;
                    }
                }
                if bad {
                    // The count is meaningless until the names are fixed.
                    return set;
                }
                (set, list.referenced)
            }
        };
        if hosts.value.is_empty() {
            return servers;
        }
        if servers.is_empty() {
            self.error(
                &loc,
                "no Consul server; the cluster needs 1, 3 or 5 servers",
            );
        } else if servers.len() % 2 == 0 {
            let hint = if consul.servers.is_none() {
                "every host is a server by default; list an odd number in `consul: { servers: [...] }`"
            } else {
                "list an odd number of servers (1, 3 or 5) so a majority can always be formed"
            };
            self.error_hint(
                &loc,
                format!("{} Consul servers is an even number; a cluster with an even server count tolerates no more failures than one with one fewer", servers.len()),
                hint,
            );
        }
        servers
    }
}
