//! The `ports:` section: each port in range, no two the same; and the port
//! check other sections share.

use std::collections::HashMap;

use serde_saphyr::{Location, Spanned};

use super::Validator;
use crate::topology::model::Ports;
use crate::topology::raw::RawPorts;

impl Validator {
    pub(super) fn ports(&mut self, raw: RawPorts) -> Ports {
        let d = Ports::default();
        let get = |v: &Option<Spanned<i64>>, what: &str, default: u16, me: &mut Self| {
            v.as_ref()
                .map(|p| me.port_value(p, what))
                .unwrap_or(default)
        };
        let ports = Ports {
            lb_http: get(&raw.lb_http, "ports.lb_http", d.lb_http, self),
            consul_http: get(&raw.consul_http, "ports.consul_http", d.consul_http, self),
            consul_serf_lan: get(
                &raw.consul_serf_lan,
                "ports.consul_serf_lan",
                d.consul_serf_lan,
                self,
            ),
            consul_serf_wan: get(
                &raw.consul_serf_wan,
                "ports.consul_serf_wan",
                d.consul_serf_wan,
                self,
            ),
            consul_server: get(
                &raw.consul_server,
                "ports.consul_server",
                d.consul_server,
                self,
            ),
        };
        let named = [
            ("lb_http", &raw.lb_http, ports.lb_http),
            ("consul_http", &raw.consul_http, ports.consul_http),
            (
                "consul_serf_lan",
                &raw.consul_serf_lan,
                ports.consul_serf_lan,
            ),
            (
                "consul_serf_wan",
                &raw.consul_serf_wan,
                ports.consul_serf_wan,
            ),
            ("consul_server", &raw.consul_server, ports.consul_server),
        ];
        let mut seen: HashMap<u16, &str> = HashMap::new();
        for (name, spanned, value) in named {
            if let Some(other) = seen.insert(value, name) {
                let loc = spanned
                    .as_ref()
                    .map(|s| s.referenced)
                    .unwrap_or(Location::UNKNOWN);
                self.error(
                    &loc,
                    format!("ports.{name} {value} is also ports.{other}; every port must differ"),
                );
            }
        }
        ports
    }

    /// A TCP port, 1 to 65535; `what` names it in the message.
    pub(super) fn port_value(&mut self, p: &Spanned<i64>, what: &str) -> u16 {
        if (1..=65535).contains(&p.value) {
            p.value as u16
        } else {
            self.error(
                &p.referenced,
                format!("{what} {} is out of range; expected 1 to 65535", p.value),
            );
            1
        }
    }
}
