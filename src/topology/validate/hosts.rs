//! The `hosts:` section: each host's name, advertised IP and roles, then the
//! checks across hosts (at least one, no shared address, one `lb` host).
//! A host's `address` is checked in `address`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde_saphyr::Spanned;

use super::Validator;
use crate::topology::model::{Endpoint, Host, Lab, Role, SshTarget};
use crate::topology::raw::{RawDriver, RawHost, RawRole, RawSsh};

pub(super) fn is_local(h: &Spanned<RawHost>) -> bool {
    h.value
        .driver
        .as_ref()
        .is_some_and(|d| d.value == RawDriver::Local)
}

impl Validator {
    /// The hosts that passed their own checks, in name order. `default_ssh`
    /// is the top-level `ssh:`; `lab`, the lab `driver: local` hosts are in.
    pub(super) fn hosts(
        &mut self,
        raw_hosts: &Spanned<BTreeMap<String, Spanned<RawHost>>>,
        default_ssh: &RawSsh,
        lab: Option<&Lab>,
    ) -> Vec<Host> {
        let hosts_loc = raw_hosts.referenced;
        let mut hosts = Vec::new();
        for (name, host) in &raw_hosts.value {
            if let Some(h) = self.host(name, host, default_ssh, lab) {
                hosts.push(h);
            }
        }
        if raw_hosts.value.is_empty() {
            self.error(
                &hosts_loc,
                "`hosts` is empty; a topology needs at least one host",
            );
        }
        self.unique_addresses(&raw_hosts.value, &hosts);

        if !raw_hosts.value.is_empty()
            && !raw_hosts.value.values().any(|h| {
                h.value
                    .roles
                    .as_ref()
                    .is_some_and(|r| r.value.iter().any(|r| r.value == RawRole::Lb))
            })
        {
            self.error_hint(
                &hosts_loc,
                "no host has the `lb` role; one host must run the load balancer",
                "add `lb` to one host's `roles`, e.g. `roles: [lb]`",
            );
        }
        hosts
    }

    /// One host; `None` when its address or advertised IP is unusable, as
    /// the checks across hosts need both.
    fn host(
        &mut self,
        name: &str,
        host: &Spanned<RawHost>,
        default_ssh: &RawSsh,
        lab: Option<&Lab>,
    ) -> Option<Host> {
        let loc = host.referenced;
        self.name(
            &Spanned {
                value: name.to_string(),
                referenced: loc,
                defined: loc,
            },
            "host name",
        );
        let endpoint = self.endpoint(name, host, default_ssh, lab)?;
        let advertise = self.advertise(name, &host.value, &endpoint)?;
        let roles = self.roles(name, &host.value);
        Some(Host {
            name: name.to_string(),
            endpoint,
            advertise,
            roles,
            consul_server: false,
        })
    }

    /// The IP other hosts reach this one at: `advertise:`, else the IP in
    /// its address.
    fn advertise(&mut self, name: &str, raw: &RawHost, endpoint: &Endpoint) -> Option<IpAddr> {
        let addr = &raw.address;
        match (&raw.advertise, endpoint) {
            (Some(a), _) => match a.value.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.error(
                        &a.referenced,
                        format!("host {name}: advertise `{}` is not an IP address", a.value),
                    );
                    None
                }
            },
            (None, Endpoint::Lab { ip }) => Some(IpAddr::V4(*ip)),
            (None, Endpoint::Ssh(SshTarget { host: h, .. }))
            | (None, Endpoint::Tcp { host: h, .. }) => match h.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.error_hint(
                        &addr.referenced,
                        format!("host {name}: cannot tell the IP other hosts reach `{h}` at"),
                        "add `advertise: <IP>` to this host",
                    );
                    None
                }
            },
            (None, Endpoint::Unix { .. }) => {
                self.error_hint(
                    &addr.referenced,
                    format!("host {name}: a unix:// host needs `advertise:`, the IP other hosts reach it at"),
                    "add `advertise: <IP>` to this host",
                );
                None
            }
        }
    }

    fn roles(&mut self, name: &str, raw: &RawHost) -> BTreeSet<Role> {
        let mut roles = BTreeSet::new();
        if let Some(r) = &raw.roles {
            for role in &r.value {
                let role_v = match role.value {
                    RawRole::App => Role::App,
                    RawRole::Lb => Role::Lb,
                };
                if !roles.insert(role_v) {
                    self.error(
                        &role.referenced,
                        format!("host {name}: role `{role_v}` is listed twice"),
                    );
                }
            }
        }
        roles
    }

    fn unique_addresses(&mut self, raw: &BTreeMap<String, Spanned<RawHost>>, hosts: &[Host]) {
        let mut seen_ip: HashMap<IpAddr, &str> = HashMap::new();
        let mut seen_ep: HashMap<String, &str> = HashMap::new();
        for h in hosts {
            let loc = raw[&h.name].referenced;
            if let Some(other) = seen_ip.insert(h.advertise, &h.name) {
                self.error(
                    &loc,
                    format!(
                        "host {} has the same IP {} as host {other}",
                        h.name, h.advertise
                    ),
                );
            }
            let ep = match &h.endpoint {
                Endpoint::Ssh(t) => format!("ssh://{}:{}", t.host, t.port),
                other => other.to_string(),
            };
            if let Some(other) = seen_ep.insert(ep.clone(), &h.name) {
                self.error(
                    &loc,
                    format!("host {} has the same address {ep} as host {other}", h.name),
                );
            }
        }
    }
}
