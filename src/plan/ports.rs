//! Host ports per environment, so several environments can share hosts.
//!
//! Every container of an environment records the environment's ports in a
//! label. Before planning, `up` reads the ports every other environment on
//! the same hosts recorded, and:
//! - ports the topology declares are checked against them (a clash is an
//!   input error naming the other environment);
//! - otherwise the environment keeps the ports it recorded before, or takes
//!   the first free block: block 0 is Consul's and HTTP's usual ports, block
//!   k ≥ 1 is 21000 + 10·(k-1) onwards.
//!
//! The load balancer's TCP listeners (`expose: tcp`) count too: they are
//! recorded in the same label (`tcp=<port>+<port>`) and take the block's
//! spare ports after `lb_http` unless declared (`Topology::tcp_ports`).
//!
//! Pure: the claims are read from the labels `DockerHost::port_labels`
//! gathers.

use std::collections::BTreeMap;

use crate::topology::Ports;

/// Ports some environment recorded on the hosts, or the ports of the
/// hosts' edge proxy (see [`Claim::edge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Empty for the edge proxy, which belongs to no environment.
    pub env: String,
    /// `None` for the edge proxy.
    pub ports: Option<Ports>,
    /// Its load balancer's TCP listeners (the edge's 80 and 443).
    pub tcp: Vec<u16>,
}

impl Claim {
    /// The edge proxy's ports, 80 and 443: held while it runs on one of
    /// the hosts, or when the environment being planned wants it.
    pub fn edge() -> Claim {
        Claim {
            env: String::new(),
            ports: None,
            tcp: crate::edge::PORTS.to_vec(),
        }
    }

    /// Every port it holds, named for messages.
    fn all(&self) -> Vec<(String, u16)> {
        match &self.ports {
            Some(p) => all_named(p, &self.tcp),
            None => self.tcp.iter().map(|v| ("port".to_string(), *v)).collect(),
        }
    }

    /// Who holds the ports, for messages.
    fn holder(&self) -> String {
        if self.env.is_empty() {
            "the edge proxy on these hosts (lb.edge answers on ports 80 and 443)".to_string()
        } else {
            format!("environment {} on these hosts", self.env)
        }
    }
}

fn all_named(p: &Ports, tcp: &[u16]) -> Vec<(String, u16)> {
    named(p)
        .into_iter()
        .map(|(n, v)| (format!("ports.{n}"), v))
        .chain(tcp.iter().map(|v| ("a TCP listener".to_string(), *v)))
        .collect()
}

fn named(p: &Ports) -> [(&'static str, u16); 5] {
    [
        ("lb_http", p.lb_http),
        ("consul_http", p.consul_http),
        ("consul_serf_lan", p.consul_serf_lan),
        ("consul_serf_wan", p.consul_serf_wan),
        ("consul_server", p.consul_server),
    ]
}

/// `lb_http=80,...` and, when there are TCP listeners, `tcp=81+82` (left
/// out otherwise, so environments without them keep the label, and the
/// spec hashes, they had).
pub fn to_label(p: &Ports, tcp: &[u16]) -> String {
    let mut out: Vec<String> = named(p).iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !tcp.is_empty() {
        let ports: Vec<String> = tcp.iter().map(u16::to_string).collect();
        out.push(format!("tcp={}", ports.join("+")));
    }
    out.join(",")
}

/// The claims of the environments whose ports labels a host shows, as
/// (environment, label) pairs: one per environment, in name order; a label
/// that does not read is no claim.
pub fn claims(labels: Vec<(String, String)>) -> Vec<Claim> {
    let mut claims: Vec<Claim> = labels
        .into_iter()
        .filter_map(|(env, label)| {
            Some(Claim {
                ports: Some(from_label(&label)?),
                tcp: tcp_from_label(&label),
                env,
            })
        })
        .collect();
    claims.sort_by(|a, b| a.env.cmp(&b.env));
    claims.dedup_by(|a, b| a.env == b.env);
    claims
}

/// The TCP listeners a label records.
pub fn tcp_from_label(s: &str) -> Vec<u16> {
    s.split(',')
        .filter_map(|kv| kv.strip_prefix("tcp="))
        .flat_map(|v| v.split('+'))
        .filter_map(|p| p.parse().ok())
        .collect()
}

pub fn from_label(s: &str) -> Option<Ports> {
    let map: BTreeMap<&str, u16> = s
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    Some(Ports {
        lb_http: *map.get("lb_http")?,
        consul_http: *map.get("consul_http")?,
        consul_serf_lan: *map.get("consul_serf_lan")?,
        consul_serf_wan: *map.get("consul_serf_wan")?,
        consul_server: *map.get("consul_server")?,
    })
}

/// Why the edge proxy cannot have ports 80 and 443 on these hosts: another
/// environment holds one of them.
pub fn edge_blocked(env: &str, claims: &[Claim]) -> Option<String> {
    claims
        .iter()
        .filter(|c| c.env != env && !c.env.is_empty())
        .find_map(|c| {
            let (name, port) = c
                .all()
                .into_iter()
                .find(|(_, p)| crate::edge::PORTS.contains(p))?;
            Some(format!(
                "lb.edge needs ports 80 and 443 of the load balancer hosts, and {} holds port {port} (its {name}); give that environment other `ports:`, or leave lb.edge out",
                c.holder()
            ))
        })
}

/// Port block `k`: 0 is the usual ports.
pub fn block(k: u16) -> Ports {
    if k == 0 {
        return Ports::default();
    }
    let base = 21000 + 10 * (k - 1);
    Ports {
        consul_server: base,
        consul_serf_lan: base + 1,
        consul_serf_wan: base + 2,
        consul_http: base + 3,
        lb_http: base + 4,
    }
}

/// The ports `env` uses: `declared` if the topology set them (checked),
/// else what it recorded before, else the first block nobody else uses.
/// `tcp(ports)` gives the TCP listeners the environment would have with
/// those ports; they must be free too.
pub fn resolve(
    env: &str,
    declared: Option<Ports>,
    claims: &[Claim],
    tcp: impl Fn(&Ports) -> Vec<u16>,
) -> Result<Ports, String> {
    let others: Vec<&Claim> = claims.iter().filter(|c| c.env != env).collect();
    let clash = |p: &Ports| -> Option<String> {
        let mine = all_named(p, &tcp(p));
        for (i, (name, port)) in mine.iter().enumerate() {
            if let Some((other_name, _)) = mine[..i].iter().find(|(_, q)| q == port) {
                return Some(format!("port {port} ({name}) is also {other_name}"));
            }
            for other in &others {
                if let Some((other_name, _)) = other.all().into_iter().find(|(_, q)| q == port) {
                    return Some(format!(
                        "port {port} ({name}) is already used by {} (its {other_name})",
                        other.holder()
                    ));
                }
            }
        }
        None
    };
    if let Some(p) = declared {
        return match clash(&p) {
            Some(why) => Err(format!(
                "{why}; pick other ports in `ports:`, or leave `ports:` out to get a free block"
            )),
            None => Ok(p),
        };
    }
    if let Some(own) = claims.iter().find(|c| c.env == env).and_then(|c| c.ports) {
        if clash(&own).is_none() {
            return Ok(own);
        }
    }
    (0..1000)
        .map(block)
        .find(|p| clash(p).is_none())
        // None free: a declared lb_port taken is the usual reason.
        .ok_or_else(|| match clash(&block(1)) {
            Some(why) => format!("{why}, and no port block avoids it"),
            None => "no free port block on these hosts".to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(env: &str, p: Ports) -> Claim {
        Claim {
            env: env.into(),
            ports: Some(p),
            tcp: vec![],
        }
    }

    fn resolve(env: &str, declared: Option<Ports>, claims: &[Claim]) -> Result<Ports, String> {
        super::resolve(env, declared, claims, |_| vec![])
    }

    #[test]
    fn claims_are_one_per_environment_and_unreadable_labels_claim_nothing() {
        let b1 = to_label(&block(1), &[6379]);
        let found = claims(vec![
            ("b".into(), "lb_http=garbage".into()),
            ("b".into(), b1.clone()),
            ("a".into(), to_label(&block(2), &[])),
            ("a".into(), to_label(&block(2), &[])),
            ("c".into(), "consul_http=8500".into()),
        ]);
        let seen: Vec<(&str, Option<Ports>, &[u16])> = found
            .iter()
            .map(|c| (c.env.as_str(), c.ports, c.tcp.as_slice()))
            .collect();
        assert_eq!(
            seen,
            [
                ("a", Some(block(2)), &[][..]),
                ("b", Some(block(1)), &[6379][..])
            ]
        );
    }

    #[test]
    fn tcp_listeners_are_recorded_and_must_be_free() {
        let label = to_label(&block(1), &[21005, 6379]);
        assert_eq!(from_label(&label), Some(block(1)));
        assert_eq!(tcp_from_label(&label), [21005, 6379]);
        assert_eq!(to_label(&block(1), &[]), "lb_http=21004,consul_http=21003,consul_serf_lan=21001,consul_serf_wan=21002,consul_server=21000");
        // Another environment holds 6379: a block whose listeners would
        // take it is refused, whichever block.
        let claims = vec![Claim {
            env: "a".into(),
            ports: Some(Ports::default()),
            tcp: vec![6379],
        }];
        let err = super::resolve("b", None, &claims, |_| vec![6379]).unwrap_err();
        assert!(err.contains("already used by environment a"), "{err}");
        assert!(err.contains("a TCP listener"), "{err}");
        // Listeners after lb_http: block 0's 81 is free, so b gets block 1.
        let p = super::resolve("b", None, &claims, |p| vec![p.lb_http + 1]).unwrap();
        assert_eq!(p, block(1));
        // A listener on one of its own ports.
        let err = super::resolve("c", Some(Ports::default()), &[], |_| vec![8500]).unwrap_err();
        assert!(
            err.contains("port 8500 (a TCP listener) is also ports.consul_http"),
            "{err}"
        );
    }

    #[test]
    fn labels_round_trip() {
        let p = block(3);
        assert_eq!(from_label(&to_label(&p, &[])), Some(p));
        assert_eq!(from_label("lb_http=80"), None);
    }

    #[test]
    fn the_first_environment_gets_the_usual_ports_the_next_a_free_block() {
        assert_eq!(resolve("a", None, &[]).unwrap(), Ports::default());
        let claims = vec![claim("a", Ports::default())];
        assert_eq!(resolve("b", None, &claims).unwrap(), block(1));
        let claims = vec![claim("a", Ports::default()), claim("b", block(1))];
        assert_eq!(resolve("c", None, &claims).unwrap(), block(2));
        // Gaps are reused.
        let claims = vec![claim("a", Ports::default()), claim("c", block(2))];
        assert_eq!(resolve("d", None, &claims).unwrap(), block(1));
    }

    #[test]
    fn recorded_ports_are_kept() {
        let claims = vec![claim("a", block(1)), claim("b", Ports::default())];
        assert_eq!(resolve("a", None, &claims).unwrap(), block(1));
    }

    #[test]
    fn a_declared_port_taken_by_another_environment_names_it() {
        let claims = vec![claim("qa", Ports::default())];
        let declared = Ports {
            lb_http: 8080,
            ..block(5)
        };
        assert_eq!(resolve("b", Some(declared), &claims).unwrap(), declared);
        let taken = Ports {
            lb_http: 80,
            ..block(5)
        };
        let err = resolve("b", Some(taken), &claims).unwrap_err();
        assert!(
            err.contains("port 80 (ports.lb_http) is already used by environment qa"),
            "{err}"
        );
        // Its own recorded ports never clash with themselves.
        assert!(resolve("qa", Some(Ports::default()), &claims).is_ok());
    }

    #[test]
    fn the_edge_proxy_keeps_environments_off_80_and_443() {
        // With the edge on the hosts, the first environment skips block 0.
        assert_eq!(resolve("a", None, &[Claim::edge()]).unwrap(), block(1));
        let taken = Ports::default();
        let err = resolve("b", Some(taken), &[Claim::edge()]).unwrap_err();
        assert!(
            err.contains("port 80 (ports.lb_http) is already used by the edge proxy"),
            "{err}"
        );
        let blocked = edge_blocked("pr-1", &[claim("staging", Ports::default())]).unwrap();
        assert!(
            blocked
                .contains("environment staging on these hosts holds port 80 (its ports.lb_http)"),
            "{blocked}"
        );
        assert_eq!(edge_blocked("pr-1", &[claim("qa", block(1))]), None);
        // A TCP listener on 443 clashes too.
        let err = super::resolve("c", None, &[Claim::edge()], |_| vec![443]).unwrap_err();
        assert!(err.contains("port 443 (a TCP listener)"), "{err}");
    }
}
