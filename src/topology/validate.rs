//! From the file as written ([`RawTopology`]) to the checked model
//! ([`Topology`]).
//!
//! Every check runs and every problem is collected, so a user fixes a file in
//! one pass instead of one error at a time. Each problem carries the line and
//! column of the value it is about.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, Spanned};

use super::diag::Diagnostic;
use super::model::*;
use super::raw::*;

/// Longest environment, lab or host name; Docker object names are built from
/// them (`<env>-<component>`), and short names keep `docker ps` readable.
const MAX_NAME_LEN: usize = 32;

pub fn validate(raw: RawTopology, source: &Path) -> Result<Topology, Vec<Diagnostic>> {
    let mut v = Validator {
        diags: Vec::new(),
        base_dir: source.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let topology = v.topology(raw, source);
    if v.diags.is_empty() {
        Ok(topology)
    } else {
        v.diags.sort_by_key(|d| (d.line, d.column));
        v.diags.dedup();
        Err(v.diags)
    }
}

struct Validator {
    diags: Vec<Diagnostic>,
    /// Relative paths in the file are relative to the file's folder.
    base_dir: PathBuf,
}

impl Validator {
    fn error(&mut self, loc: &Location, msg: impl Into<String>) {
        self.diags.push(Diagnostic::at(loc, msg));
    }

    fn error_hint(&mut self, loc: &Location, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags.push(Diagnostic::at(loc, msg).hint(hint));
    }

    fn topology(&mut self, mut raw: RawTopology, source: &Path) -> Topology {
        let name = match raw.name.take() {
            Some(n) => n,
            None => {
                self.error(
                    &Location::UNKNOWN,
                    "the topology has no `name` (the environment's name)",
                );
                Spanned {
                    value: "unnamed".into(),
                    referenced: Location::UNKNOWN,
                    defined: Location::UNKNOWN,
                }
            }
        };
        let raw_hosts = match raw.hosts.take() {
            Some(h) => h,
            None => {
                self.error(&Location::UNKNOWN, "the topology has no `hosts`");
                Spanned {
                    value: BTreeMap::new(),
                    referenced: Location::UNKNOWN,
                    defined: Location::UNKNOWN,
                }
            }
        };
        self.name(&name, "environment name");
        let lab = raw.lab.as_ref().map(|l| self.lab(l, &name.value));

        let default_ssh = raw.ssh.clone().unwrap_or_default();
        let hosts_loc = raw_hosts.referenced;
        let mut hosts = Vec::new();
        for (name, host) in &raw_hosts.value {
            if let Some(h) = self.host(name, host, &default_ssh, lab.as_ref()) {
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

        let consul_raw = raw.consul.unwrap_or_default();
        let servers = self.consul_servers(&consul_raw, &raw_hosts, hosts_loc);
        for h in &mut hosts {
            h.consul_server = servers.contains(&h.name);
        }
        let consul = ConsulSettings {
            datacenter: consul_raw
                .datacenter
                .as_ref()
                .map(|d| {
                    self.name(d, "datacenter");
                    d.value.clone()
                })
                .unwrap_or_else(|| "dc1".into()),
            bootstrap_expect: servers.len(),
            join_timeout_secs: consul_raw
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
        };

        let ports_declared = raw.ports.is_some();
        let ports = self.ports(raw.ports.unwrap_or_default());
        let images = self.images(raw.images.unwrap_or_default());
        let lb = self.lb(raw.lb.unwrap_or_default());
        let services = self.services(raw.services.unwrap_or_default(), &hosts);

        if lab.is_none() {
            if let Some(h) = raw_hosts.value.values().find(|h| is_local(h)) {
                self.error_hint(
                    &h.referenced,
                    "a host with `driver: local` needs a `lab:` section",
                    "add `lab: { subnet: 10.77.0.0/24 }` at the top level",
                );
            }
        }

        Topology {
            name: name.value.clone(),
            source: source.to_path_buf(),
            lab: lab.filter(|_| hosts.iter().any(Host::is_lab)),
            hosts,
            images,
            consul,
            ports,
            ports_declared,
            lb,
            services,
        }
    }

    fn lb(&mut self, raw: RawLb) -> LbSettings {
        let d = LbSettings::default();
        let domain = match raw.domain {
            Some(dom) => {
                let ok = !dom.value.is_empty()
                    && dom.value.len() <= 200
                    && dom.value.split('.').all(|l| {
                        !l.is_empty()
                            && l.chars()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    });
                if !ok {
                    self.error(&dom.referenced, format!("lb.domain `{}` is not a DNS domain (lowercase labels separated by dots)", dom.value));
                }
                dom.value
            }
            None => d.domain,
        };
        let template = raw.template.map(|t| {
            let path = expand_path(&t.value, &self.base_dir);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    if let Err(e) = minijinja::Environment::new().template_from_str(&text) {
                        self.error(
                            &t.referenced,
                            format!("lb.template {}: {e}", path.display()),
                        );
                    }
                    (path, text)
                }
                Err(e) => {
                    self.error(
                        &t.referenced,
                        format!("cannot read {}: {e}", path.display()),
                    );
                    (path, String::new())
                }
            }
        });
        let mut ms = |v: Option<Spanned<i64>>,
                      what: &str,
                      default: u64,
                      range: std::ops::RangeInclusive<i64>| match v {
            None => default,
            Some(v) if range.contains(&v.value) => v.value as u64,
            Some(v) => {
                self.error(
                    &v.referenced,
                    format!(
                        "lb.{what} {} is out of range; expected {} to {}",
                        v.value,
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        };
        let quiet_ms = ms(raw.quiet_ms, "quiet_ms", d.quiet_ms, 0..=10_000);
        let max_wait_ms = ms(raw.max_wait_ms, "max_wait_ms", d.max_wait_ms, 1..=60_000);
        LbSettings {
            domain,
            template,
            quiet_ms,
            max_wait_ms,
        }
    }

    fn services(
        &mut self,
        raw: BTreeMap<String, Spanned<RawService>>,
        hosts: &[Host],
    ) -> Vec<Service> {
        let mut out = Vec::new();
        for (name, svc) in raw {
            let loc = svc.referenced;
            self.name(
                &Spanned {
                    value: name.clone(),
                    referenced: loc,
                    defined: loc,
                },
                "service name",
            );
            let s = svc.value;
            if s.image.value.trim().is_empty() || s.image.value.contains(char::is_whitespace) {
                self.error(
                    &s.image.referenced,
                    format!(
                        "service {name}: `{}` is not an image reference",
                        s.image.value
                    ),
                );
            }
            let port = self.port_value(&s.port, &format!("service {name}: port"));
            let app_hosts: Vec<String> = hosts
                .iter()
                .filter(|h| h.has_role(Role::App))
                .map(|h| h.name.clone())
                .collect();
            let on = match &s.hosts {
                None => {
                    if app_hosts.is_empty() {
                        self.error(
                            &loc,
                            format!("service {name}: no host has the `app` role to run it"),
                        );
                    }
                    app_hosts
                }
                Some(list) => {
                    let mut on = Vec::new();
                    for h in &list.value {
                        match hosts.iter().find(|x| x.name == h.value) {
                            None => self.error(
                                &h.referenced,
                                format!(
                                    "service {name}: `{}` is not a host of this topology",
                                    h.value
                                ),
                            ),
                            Some(x) if !x.has_role(Role::App) => self.error_hint(
                                &h.referenced,
                                format!(
                                    "service {name}: host {} does not have the `app` role",
                                    h.value
                                ),
                                "services run on app hosts, where the registration agent runs",
                            ),
                            Some(_) if on.contains(&h.value) => self.error(
                                &h.referenced,
                                format!("service {name}: host {} is listed twice", h.value),
                            ),
                            Some(_) => on.push(h.value.clone()),
                        }
                    }
                    if list.value.is_empty() {
                        self.error(
                            &list.referenced,
                            format!("service {name}: `hosts` is empty"),
                        );
                    }
                    on
                }
            };
            let per_host = match &s.per_host {
                None => 1,
                Some(n) if (1..=50).contains(&n.value) => n.value as u16,
                Some(n) => {
                    self.error(
                        &n.referenced,
                        format!(
                            "service {name}: per_host {} is out of range; expected 1 to 50",
                            n.value
                        ),
                    );
                    1
                }
            };
            let drain_seconds = match &s.drain_seconds {
                None => 2,
                Some(n) if (0..=600).contains(&n.value) => n.value as u64,
                Some(n) => {
                    self.error(
                        &n.referenced,
                        format!(
                            "service {name}: drain_seconds {} is out of range; expected 0 to 600",
                            n.value
                        ),
                    );
                    2
                }
            };
            let check_http = s.check_http.map(|c| {
                if !c.value.starts_with('/') || c.value.contains(char::is_whitespace) {
                    self.error(
                        &c.referenced,
                        format!(
                            "service {name}: check_http `{}` must be a path starting with /",
                            c.value
                        ),
                    );
                }
                c.value
            });
            out.push(Service {
                name,
                image: s.image.value,
                port,
                hosts: on,
                per_host,
                env: s.env.unwrap_or_default(),
                labels: s.labels.unwrap_or_default(),
                check_http,
                drain_seconds,
            });
        }
        out
    }

    /// Names end up in Docker object names and Consul node names.
    fn name(&mut self, name: &Spanned<String>, what: &str) {
        let n = &name.value;
        let ok = !n.is_empty()
            && n.len() <= MAX_NAME_LEN
            && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            self.error(
                &name.referenced,
                format!(
                    "{what} `{n}` is not valid; expected 1 to {MAX_NAME_LEN} lowercase letters, digits or `-`, starting with a letter or digit"
                ),
            );
        }
    }

    fn lab(&mut self, lab: &Spanned<RawLab>, env: &str) -> Lab {
        let name = match &lab.value.name {
            Some(n) => {
                self.name(n, "lab name");
                n.value.clone()
            }
            None => env.to_string(),
        };
        let subnet = match parse_ipv4_net(&lab.value.subnet.value) {
            Ok(net) if (8..=29).contains(&net.prefix) => net,
            Ok(net) => {
                self.error(
                    &lab.value.subnet.referenced,
                    format!(
                        "lab subnet /{} is not usable; expected a prefix from /8 to /29",
                        net.prefix
                    ),
                );
                net
            }
            Err(e) => {
                self.error(&lab.value.subnet.referenced, format!("lab subnet: {e}"));
                Ipv4Net {
                    addr: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                }
            }
        };
        Lab { name, subnet }
    }

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
        let raw = &host.value;
        let addr = &raw.address;
        let local = is_local(host);

        if raw.insecure.is_some() && !addr.value.starts_with("tcp://") {
            self.error(
                &loc,
                format!("host {name}: `insecure` only applies to tcp:// addresses"),
            );
        }
        if let Some(tls) = &raw.tls {
            if !addr.value.starts_with("tcp://") {
                self.error(
                    &tls.referenced,
                    format!("host {name}: `tls` only applies to tcp:// addresses"),
                );
            }
        }

        let endpoint = if local {
            match addr.value.parse::<Ipv4Addr>() {
                Ok(ip) => {
                    if let Some(lab) = lab {
                        let net = lab.subnet;
                        if net.prefix != 0
                            && (!net.contains(ip)
                                || ip == net.network()
                                || ip == net.broadcast()
                                || ip == net.gateway())
                        {
                            self.error_hint(
                                &addr.referenced,
                                format!("host {name}: {ip} is not a usable host address in the lab subnet {net}"),
                                format!("pick an address between {} and {} (exclusive)", net.gateway(), net.broadcast()),
                            );
                        }
                    }
                    Endpoint::Lab { ip }
                }
                Err(_) => {
                    self.error_hint(
                        &addr.referenced,
                        format!("host {name}: `{}` is not an IPv4 address; a `driver: local` host's address is its IP in the lab", addr.value),
                        "e.g. `address: 10.77.0.11`",
                    );
                    return None;
                }
            }
        } else {
            self.remote_endpoint(name, raw, default_ssh)?
        };

        let advertise = match (&raw.advertise, &endpoint) {
            (Some(a), _) => match a.value.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => {
                    self.error(
                        &a.referenced,
                        format!("host {name}: advertise `{}` is not an IP address", a.value),
                    );
                    return None;
                }
            },
            (None, Endpoint::Lab { ip }) => IpAddr::V4(*ip),
            (None, Endpoint::Ssh(SshTarget { host: h, .. }))
            | (None, Endpoint::Tcp { host: h, .. }) => match h.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => {
                    self.error_hint(
                        &addr.referenced,
                        format!("host {name}: cannot tell the IP other hosts reach `{h}` at"),
                        "add `advertise: <IP>` to this host",
                    );
                    return None;
                }
            },
            (None, Endpoint::Unix { .. }) => {
                self.error_hint(
                    &addr.referenced,
                    format!("host {name}: a unix:// host needs `advertise:`, the IP other hosts reach it at"),
                    "add `advertise: <IP>` to this host",
                );
                return None;
            }
        };

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

        Some(Host {
            name: name.to_string(),
            endpoint,
            advertise,
            roles,
            consul_server: false,
        })
    }

    fn remote_endpoint(
        &mut self,
        name: &str,
        raw: &RawHost,
        default_ssh: &RawSsh,
    ) -> Option<Endpoint> {
        let addr = &raw.address;
        let Some((scheme, rest)) = addr.value.split_once("://") else {
            self.error_hint(
                &addr.referenced,
                format!("host {name}: address `{}` has no scheme", addr.value),
                "write ssh://user@host[:port], tcp://host:port or unix:///path, or set `driver: local`",
            );
            return None;
        };
        match scheme {
            "ssh" => {
                let ssh = merge_ssh(raw.ssh.as_ref(), default_ssh);
                let (user_part, hostport) = match rest.rsplit_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, rest),
                };
                let (host, port) = self.host_port(name, addr, hostport)?;
                let port = match (port, &ssh.port) {
                    (Some(p), _) => p,
                    (None, Some(p)) => self.port_value(p, "ssh port"),
                    (None, None) => 22,
                };
                let user = user_part
                    .map(str::to_string)
                    .or_else(|| ssh.user.as_ref().map(|u| u.value.clone()))
                    .unwrap_or_else(|| "root".into());
                if user.is_empty() {
                    self.error(
                        &addr.referenced,
                        format!("host {name}: empty user in `{}`", addr.value),
                    );
                }
                let identity_file = ssh.identity_file.as_ref().map(|p| self.existing_file(p));
                let known_hosts = ssh.known_hosts.as_ref().map(|p| self.existing_file(p));
                Some(Endpoint::Ssh(SshTarget {
                    user,
                    host,
                    port,
                    identity_file,
                    known_hosts,
                }))
            }
            "tcp" => {
                let (host, port) = self.host_port(name, addr, rest)?;
                let tls = raw.tls.as_ref().map(|t| TlsFiles {
                    ca: self.existing_file(&t.value.ca),
                    cert: self.existing_file(&t.value.cert),
                    key: self.existing_file(&t.value.key),
                });
                let loopback =
                    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if tls.is_none() && !loopback && raw.insecure != Some(true) {
                    self.error_hint(
                        &addr.referenced,
                        format!("host {name}: plain tcp:// to {host} would expose the Docker API unencrypted and unauthenticated"),
                        "add `tls: { ca: ..., cert: ..., key: ... }`, or `insecure: true` if you accept the risk",
                    );
                }
                let port = port.unwrap_or(if tls.is_some() { 2376 } else { 2375 });
                Some(Endpoint::Tcp { host, port, tls })
            }
            "unix" => {
                if !rest.starts_with('/') {
                    self.error(&addr.referenced, format!("host {name}: unix:// needs an absolute socket path, e.g. unix:///var/run/docker.sock"));
                    return None;
                }
                Some(Endpoint::Unix {
                    path: PathBuf::from(rest),
                })
            }
            other => {
                self.error_hint(
                    &addr.referenced,
                    format!("host {name}: bad address scheme `{other}://`"),
                    "expected ssh://, tcp:// or unix://",
                );
                None
            }
        }
    }

    /// `host[:port]`, with `[v6]:port` brackets allowed.
    fn host_port(
        &mut self,
        name: &str,
        addr: &Spanned<String>,
        s: &str,
    ) -> Option<(String, Option<u16>)> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            match rest.split_once(']') {
                Some((h, p)) => (h.to_string(), p.strip_prefix(':')),
                None => (s.to_string(), None),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (s.to_string(), None),
            }
        };
        if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
            self.error(
                &addr.referenced,
                format!("host {name}: `{}` has no valid host name", addr.value),
            );
            return None;
        }
        let port = match port {
            None => None,
            Some(p) => {
                match p.parse::<u32>() {
                    Ok(n) if (1..=65535).contains(&n) => Some(n as u16),
                    _ => {
                        self.error(&addr.referenced, format!("host {name}: port `{p}` in `{}` is out of range; expected 1 to 65535", addr.value));
                        return None;
                    }
                }
            }
        };
        Some((host, port))
    }

    fn port_value(&mut self, p: &Spanned<i64>, what: &str) -> u16 {
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

    fn existing_file(&mut self, p: &Spanned<String>) -> PathBuf {
        let path = expand_path(&p.value, &self.base_dir);
        if let Err(e) = std::fs::metadata(&path) {
            // No host name: a path from the top-level `ssh:` is shared by
            // many hosts and is reported once.
            self.error(
                &p.referenced,
                format!("cannot read {}: {e}", path.display()),
            );
        }
        path
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

    fn consul_servers(
        &mut self,
        consul: &RawConsul,
        hosts: &Spanned<BTreeMap<String, Spanned<RawHost>>>,
        hosts_loc: Location,
    ) -> BTreeSet<String> {
        let (servers, loc): (BTreeSet<String>, Location) = match &consul.servers {
            None => (hosts.value.keys().cloned().collect(), hosts_loc),
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

    fn ports(&mut self, raw: RawPorts) -> Ports {
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

    fn images(&mut self, raw: RawImages) -> Images {
        let d = Images::default();
        Images {
            consul: raw.consul.unwrap_or(d.consul),
            agent: raw.agent.unwrap_or(d.agent),
            nginx: raw.nginx.unwrap_or(d.nginx),
            labhost: raw.labhost.unwrap_or(d.labhost),
        }
    }
}

fn is_local(h: &Spanned<RawHost>) -> bool {
    h.value
        .driver
        .as_ref()
        .is_some_and(|d| d.value == RawDriver::Local)
}

/// A host's `ssh:` keys win over the top-level defaults, key by key.
fn merge_ssh(host: Option<&RawSsh>, default: &RawSsh) -> RawSsh {
    let h = host.cloned().unwrap_or_default();
    RawSsh {
        user: h.user.or_else(|| default.user.clone()),
        port: h.port.or_else(|| default.port.clone()),
        identity_file: h.identity_file.or_else(|| default.identity_file.clone()),
        known_hosts: h.known_hosts.or_else(|| default.known_hosts.clone()),
    }
}

/// `~/x` is under $HOME; a relative path is relative to the topology's folder.
pub fn expand_path(p: &str, base: &Path) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
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
    Ok(Ipv4Net { addr, prefix })
}
