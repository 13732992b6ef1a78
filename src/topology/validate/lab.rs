//! The `lab:` section: the local lab's name and subnet, which `driver: local`
//! hosts need.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_saphyr::Spanned;

use super::hosts::is_local;
use super::Validator;
use crate::topology::model::{Ipv4Net, Lab};
use crate::topology::raw::{RawHost, RawLab};

impl Validator {
    /// The lab is named after the environment unless it says otherwise.
    pub(super) fn lab(&mut self, lab: &Spanned<RawLab>, env: &str) -> Lab {
        let name = match &lab.value.name {
            Some(n) => {
                self.name(n, "lab name");
                n.value.clone()
            }
            None => env.to_string(),
        };
        let subnet = match parse_ipv4_net(&lab.value.subnet.value) {
            Ok(net) if (8..=29).contains(&net.prefix_len()) => net,
            Ok(net) => {
                self.error(
                    &lab.value.subnet.referenced,
                    format!(
                        "lab subnet /{} is not usable; expected a prefix from /8 to /29",
                        net.prefix_len()
                    ),
                );
                net
            }
            Err(e) => {
                self.error(&lab.value.subnet.referenced, format!("lab subnet: {e}"));
                Ipv4Net::default()
            }
        };
        Lab { name, subnet }
    }

    /// For a file without `lab:`: the first `driver: local` host, if any, is
    /// reported.
    pub(super) fn local_hosts_need_lab(&mut self, hosts: &BTreeMap<String, Spanned<RawHost>>) {
        if let Some(h) = hosts.values().find(|h| is_local(h)) {
            self.error_hint(
                &h.referenced,
                "a host with `driver: local` needs a `lab:` section",
                "add `lab: { subnet: 10.77.0.0/24 }` at the top level",
            );
        }
    }
}

pub fn parse_ipv4_net(s: &str) -> Result<Ipv4Net, String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not in CIDR form; expected e.g. 10.77.0.0/24"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("`/{prefix}` is not a prefix length from 0 to 32"))?;
    Ok(Ipv4Net::new(addr, prefix)
        .map_err(|e| e.to_string())?
        .trunc())
}
