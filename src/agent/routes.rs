//! From what Consul says to what may be written into nginx's configuration.
//!
//! Everything in a Consul registration is untrusted: any process that can
//! reach a host's Consul API (a host-network container, say) can register
//! anything under any ID, name, address, tags and meta. nginx's config
//! language has no quoting that survives every byte, so nothing from Consul
//! is written as it came: each value here is either of a shape that cannot
//! break out of where it is written (a DNS label, an IP address, a number),
//! or percent-encoded down to `[A-Za-z0-9._:-]`. What cannot be represented
//! (an address that is no IP, port 0, two names that map to the same route)
//! is left out and listed as an [`Exclusion`], which `stagectl status`
//! reports.
//!
//! Pure: Consul's services in, routes and exclusions out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cluster::http::Instance;
use crate::labels::NOT_ROUTED_TAG;

/// Longest route name: one DNS label.
pub const MAX_ROUTE_LEN: usize = 63;

/// One service as the load balancer serves it. Every field is safe to write
/// anywhere in an nginx config, quoted or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceRoute {
    /// The service's name in Consul, encoded (for comments and messages).
    pub service: String,
    /// The route name: a DNS label, the service's own name when it is one
    /// (see [`route_name`]).
    pub name: String,
    /// `<name>.<env>.<domain>`.
    pub server_name: String,
    /// `/<name>/`.
    pub path: String,
    /// The nginx upstream's name.
    pub upstream: String,
    /// For a TCP service (`expose: tcp`): the load balancer's port for it,
    /// from the template agent's own options, never from a registration.
    pub tcp_port: Option<u16>,
    pub instances: Vec<Upstream>,
}

/// One healthy instance, checked and encoded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Upstream {
    /// Consul's service ID, encoded.
    pub id: String,
    /// The Consul node it is registered on, encoded.
    pub node: String,
    /// An IP address, IPv6 in brackets: ready for `address:port`.
    pub address: String,
    pub port: u16,
    /// `address:port`, for `server` lines.
    pub endpoint: String,
    /// Tags and meta, keys and values encoded.
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
}

/// A service or instance left out of the config, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Exclusion {
    /// The service's name in Consul, encoded.
    pub service: String,
    /// The instance's ID, encoded; none when the whole service is out.
    pub instance: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for Exclusion {
    /// `service web instance host-1:web-1:8080: <reason>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service {}", self.service)?;
        if let Some(id) = &self.instance {
            write!(f, " instance {id}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What the load balancer can serve, and what it had to leave out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// In route-name order.
    pub services: Vec<ServiceRoute>,
    pub excluded: Vec<Exclusion>,
}

impl RouteTable {
    /// Routes for every service Consul lists. Same input, same table: sorted
    /// throughout, so the same set of instances renders to the same text.
    pub fn build(env: &str, domain: &str, consul: &BTreeMap<String, Vec<Instance>>) -> Self {
        let mut table = RouteTable::default();
        let mut by_route: BTreeMap<String, ServiceRoute> = BTreeMap::new();
        for (service, instances) in consul {
            let name = route_name(service);
            if let Some(other) = by_route.get(&name) {
                table.excluded.push(Exclusion {
                    service: encode(service),
                    instance: None,
                    reason: format!(
                        "its route name `{name}` is already taken by service `{}`",
                        other.service
                    ),
                });
                continue;
            }
            let mut upstreams = BTreeSet::new();
            // Registered to be found, not to be routed (`expose: none`).
            let routed = instances
                .iter()
                .filter(|i| !i.tags.iter().any(|t| t == NOT_ROUTED_TAG));
            if routed.clone().next().is_none() && !instances.is_empty() {
                continue;
            }
            for i in routed {
                match upstream(i) {
                    Ok(u) => {
                        upstreams.insert(u);
                    }
                    Err(reason) => table.excluded.push(Exclusion {
                        service: encode(service),
                        instance: Some(encode(&i.id)),
                        reason,
                    }),
                }
            }
            by_route.insert(
                name.clone(),
                ServiceRoute {
                    service: encode(service),
                    server_name: format!("{name}.{env}.{domain}"),
                    path: format!("/{name}/"),
                    upstream: format!("{}__{}", env.replace('-', "_"), name.replace('-', "_")),
                    name,
                    tcp_port: None,
                    instances: upstreams.into_iter().collect(),
                },
            );
        }
        table.services = by_route.into_values().collect();
        table.excluded.sort();
        table
    }

    /// Mark the TCP services (`service name → port`): served on their own
    /// port by nginx's `stream` module rather than by Host and path.
    pub fn with_tcp(mut self, tcp: &BTreeMap<String, u16>) -> Self {
        for s in &mut self.services {
            s.tcp_port = tcp.get(&s.name).copied();
        }
        self
    }
}

fn upstream(i: &Instance) -> Result<Upstream, String> {
    // Encoded, such an ID could do no harm; but no registration agent
    // writes one, so it is a registration made by hand through Consul's
    // API to break the config: left out, and shown.
    if let Some(c) =
        i.id.chars()
            .find(|c| c.is_control() || NGINX_SYNTAX.contains(c))
    {
        return Err(format!(
            "its ID holds {c:?}, which nginx would read as syntax"
        ));
    }
    let ip: IpAddr = i
        .address
        .parse()
        .map_err(|_| format!("address `{}` is not an IP address", encode(&i.address)))?;
    if i.port == 0 {
        return Err("port 0".into());
    }
    let address = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    Ok(Upstream {
        id: encode(&i.id),
        node: encode(&i.node),
        endpoint: format!("{address}:{}", i.port),
        address,
        port: i.port,
        tags: i.tags.iter().map(|t| encode(t)).collect(),
        meta: i.meta.iter().map(|(k, v)| (encode(k), encode(v))).collect(),
    })
}

/// Characters with a meaning in nginx's config language.
const NGINX_SYNTAX: &[char] = &['{', '}', ';', '#', '"', '\'', '\\', '$', ' '];

/// Bytes kept as they are: letters, digits and `-._:`. None of them means
/// anything to nginx's parser; everything else (space, `;`, `{`, `}`, `#`,
/// `$`, quotes, newlines, non-ASCII) is percent-encoded.
const KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b':');

/// A value from outside, made safe to write anywhere in an nginx config.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, KEPT).to_string()
}

/// The name a service is routed by (`<route>.<env>.<domain>`, `/<route>/`).
///
/// A service name that is already a DNS label (lowercase letters, digits and
/// `-`, at most 63, not starting or ending with `-`) is its own route name.
/// Any other name is lowercased, every run of other characters becomes one
/// `-`, it is cut to 54 characters, and `-` plus 8 hex digits of the name's
/// SHA-256 are appended: `Payments_API` → `payments-api-1c4b0e6f`. The hash
/// keeps two names that differ only in case or punctuation apart.
pub fn route_name(service: &str) -> String {
    if is_dns_label(service) {
        return service.to_string();
    }
    let mut base = String::new();
    for c in service.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            base.push(c);
        } else if !base.ends_with('-') {
            base.push('-');
        }
    }
    let base: String = base.trim_matches('-').chars().take(54).collect();
    let base = base.trim_end_matches('-');
    let hash: String = Sha256::digest(service.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    if base.is_empty() {
        format!("svc-{hash}")
    } else {
        format!("{base}-{hash}")
    }
}

pub fn is_dns_label(s: &str) -> bool {
    (1..=MAX_ROUTE_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// nginx's `server_names_hash_bucket_size` for these server names: with the
/// default (64 on most CPUs) a name over 46 bytes stops nginx from loading
/// the config at all. nginx stores each name with a pointer and a length,
/// aligned to the pointer size, plus one pointer closing the bucket.
pub fn server_names_bucket_size<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    let longest = names.map(str::len).max().unwrap_or(0);
    let element = (8 + longest + 2).div_ceil(8) * 8;
    (element + 8).next_power_of_two().max(64)
}

/// nginx's `server_names_hash_max_size`: room for every name, generously,
/// so nginx finds a table size without a retry-and-fail at startup.
pub fn server_names_max_size(count: usize) -> usize {
    (count * 4).next_power_of_two().max(512)
}

/// Test helpers shared with the renderer's tests.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn inst(id: &str, addr: &str, port: u16) -> Instance {
        Instance {
            id: id.into(),
            node: "host-1".into(),
            address: addr.into(),
            port,
            ..Default::default()
        }
    }

    /// Routes of environment `env` for these services and instances.
    pub fn table_for(env: &str, services: &[(&str, Vec<Instance>)]) -> RouteTable {
        let map = services
            .iter()
            .map(|(n, i)| (n.to_string(), i.clone()))
            .collect();
        RouteTable::build(env, "stagectl.test", &map)
    }

    fn table(services: &[(&str, Vec<Instance>)]) -> RouteTable {
        table_for("shop", services)
    }

    #[test]
    fn dns_labels_are_their_own_route_names() {
        assert_eq!(route_name("web"), "web");
        let long = "payments-reconciliation-service-with-a-name-of-63-characters-xy";
        assert_eq!(long.len(), 63);
        assert_eq!(route_name(long), long);
    }

    #[test]
    fn other_names_map_to_a_label_with_a_hash() {
        for name in [
            "Payments_API",
            "payments_api",
            "a.b",
            "-x-",
            "",
            "}; server { listen 80; }",
            "ü",
            &"x".repeat(200),
        ] {
            let r = route_name(name);
            assert!(is_dns_label(&r), "{name:?} → {r:?}");
            assert_ne!(r, name);
        }
        assert!(route_name("Payments_API").starts_with("payments-api-"));
        assert_ne!(route_name("Payments_API"), route_name("payments_api"));
        assert!(route_name("").starts_with("svc-"));
    }

    #[test]
    fn instances_registered_not_to_be_routed_get_no_route() {
        let mut worker = inst("host-1:worker-1:8080", "10.0.0.2", 8080);
        worker.tags = vec![NOT_ROUTED_TAG.into()];
        let web = inst("host-1:web-1:8080", "10.0.0.2", 8081);
        let mut stray = inst("host-2:web-x:8080", "10.0.0.3", 8080);
        stray.tags = vec![NOT_ROUTED_TAG.into()];
        let t = table(&[("web", vec![web, stray]), ("worker", vec![worker])]);
        assert_eq!(t.services.len(), 1, "{t:#?}");
        assert_eq!(t.services[0].name, "web");
        assert_eq!(t.services[0].instances.len(), 1, "only the untagged one");
        assert!(t.excluded.is_empty(), "not routed is not an error: {t:#?}");
    }

    #[test]
    fn values_from_consul_are_encoded() {
        let mut i = inst("host-1:web-1:8080", "10.0.0.2", 80);
        i.node = "n}ode".into();
        i.tags = vec!["a b".into()];
        i.meta = BTreeMap::from([("k;".into(), "v\n".into())]);
        let t = table(&[("web", vec![i])]);
        let u = &t.services[0].instances[0];
        assert_eq!(u.id, "host-1:web-1:8080");
        assert_eq!(u.node, "n%7Dode");
        assert_eq!(u.tags, ["a%20b"]);
        assert_eq!(u.meta["k%3B"], "v%0A");
    }

    #[test]
    fn an_id_written_to_inject_config_is_left_out_and_reported() {
        let t = table(&[(
            "web",
            vec![
                inst(
                    "x\n}\nserver { listen 10.0.0.1:80 default_server; }",
                    "10.0.0.2",
                    80,
                ),
                inst("host-1:web-1:8080", "10.0.0.3", 80),
            ],
        )]);
        assert_eq!(t.services[0].instances.len(), 1);
        assert_eq!(t.excluded.len(), 1);
        let e = &t.excluded[0];
        let id = e.instance.as_deref().unwrap();
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:%".contains(&b)));
        assert!(id.starts_with("x%0A%7D%0Aserver%20%7B"));
        assert!(e.reason.contains("syntax"), "{}", e.reason);
    }

    #[test]
    fn ipv6_is_bracketed_and_bad_addresses_are_excluded() {
        let t = table(&[(
            "web",
            vec![
                inst("a", "fd00::1", 8080),
                inst("b", "10.0.0.1; include /etc/passwd", 1),
                inst("c", "10.0.0.3", 0),
            ],
        )]);
        let ups = &t.services[0].instances;
        assert_eq!(ups.len(), 1);
        assert_eq!(ups[0].endpoint, "[fd00::1]:8080");
        assert_eq!(t.excluded.len(), 2);
        assert!(t.excluded.iter().all(|e| !e.reason.contains("; include")));
    }

    #[test]
    fn a_route_name_collision_excludes_the_second_service() {
        let hashed = route_name("Web");
        let t = table(&[("Web", vec![]), (hashed.as_str(), vec![])]);
        assert_eq!(t.services.len(), 1);
        assert_eq!(t.excluded.len(), 1);
        assert!(t.excluded[0].reason.contains("already taken"));
    }

    #[test]
    fn bucket_size_fits_the_longest_name() {
        // nginx's default of 64 holds names up to 46 bytes.
        assert_eq!(
            server_names_bucket_size(["a".repeat(46).as_str()].into_iter()),
            64
        );
        assert_eq!(
            server_names_bucket_size(["a".repeat(47).as_str()].into_iter()),
            128
        );
        // 63 + 1 + 32 + 1 + "stagectl.test"
        assert_eq!(
            server_names_bucket_size(["a".repeat(110).as_str()].into_iter()),
            128
        );
        assert_eq!(server_names_bucket_size(std::iter::empty()), 64);
    }
}
