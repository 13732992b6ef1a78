//! The `services:` section: each service's name, image, port, hosts, instance
//! count, drain time, health check, command, user, volumes and binds, limits,
//! how it is exposed, its secrets, and the order (`depends_on`, no cycle).

use std::collections::BTreeMap;

use serde_saphyr::{Location, Spanned};

use super::names::is_short_name;
use super::Validator;
use crate::topology::model::{
    interpolate, service_variables, Expose, Health, HealthCheck, Host, Limits, Role, Secret,
    SecretSource, Service, MAX_DEFAULT_TCP_PORTS,
};
use crate::topology::raw::{RawHealth, RawSecret, RawService};

/// Longest service name: services answer as `<service>.<env>.<domain>`, so a
/// service name may be a whole DNS label; real service names are often
/// longer than the short names that prefix every Docker object.
const MAX_SERVICE_NAME_LEN: usize = 63;

/// Longest volume name (`<env>-<service>-<instance>-<volume>` on the host).
const MAX_VOLUME_NAME_LEN: usize = 32;

impl Validator {
    /// `hosts` are the topology's checked hosts, which services run on.
    pub(super) fn services(
        &mut self,
        raw: BTreeMap<String, Spanned<RawService>>,
        hosts: &[Host],
    ) -> Vec<Service> {
        let mut dependencies = Vec::new();
        let located: Vec<(Service, Location)> = raw
            .into_iter()
            .map(|(name, mut svc)| {
                let loc = svc.referenced;
                if let Some(d) = svc.value.depends_on.take() {
                    dependencies.push((name.clone(), d));
                }
                (self.service(name, svc, hosts), loc)
            })
            .collect();
        let mut services: Vec<Service> = located.iter().map(|(s, _)| s.clone()).collect();
        self.env_references(&located, &services);
        self.tcp_listeners(&located);
        self.dependencies(&mut services, dependencies);
        services
    }

    /// `health` (or the older `check_http`): one kind of check, durations
    /// Consul and Docker both read, retries in range.
    fn health(
        &mut self,
        name: &str,
        check_http: Option<Spanned<String>>,
        raw: Option<Spanned<RawHealth>>,
    ) -> Health {
        let mut health = Health::default();
        let path = |me: &mut Self, c: &Spanned<String>, key: &str| {
            if !c.value.starts_with('/')
                || c.value
                    .contains(|ch: char| ch.is_whitespace() || ch.is_control())
            {
                me.error(
                    &c.referenced,
                    format!(
                        "service {name}: {key} `{}` must be a path starting with /",
                        c.value
                    ),
                );
            }
            HealthCheck::Http(c.value.clone())
        };
        if let Some(c) = &check_http {
            health.check = path(self, c, "check_http");
        }
        let Some(raw) = raw else { return health };
        health.declared = true;
        let h = raw.value;
        let kinds = [h.http.is_some(), h.tcp.is_some(), h.cmd.is_some()];
        if kinds.iter().filter(|k| **k).count() > 1
            || (check_http.is_some() && kinds.iter().any(|k| *k))
        {
            self.error(
                &raw.referenced,
                format!("service {name}: health has more than one of http, tcp, cmd (check_http counts as http)"),
            );
        }
        if let Some(c) = &h.http {
            health.check = path(self, c, "health.http");
        }
        if let Some(t) = &h.tcp {
            if !t.value {
                self.error(
                    &t.referenced,
                    format!("service {name}: health.tcp can only be true; give http or cmd for another check"),
                );
            }
            health.check = HealthCheck::Tcp;
        }
        if let Some(c) = h.cmd {
            health.check = HealthCheck::Cmd(self.argv(name, "health.cmd", c));
        }
        // Consul runs no check more often than once a second.
        let duration = |me: &mut Self,
                        d: &Option<Spanned<String>>,
                        key: &str,
                        min: u64,
                        default: u64| match d {
            None => default,
            Some(d) => match parse_duration_ms(&d.value) {
                Some(ms) if (min..=600_000).contains(&ms) => ms,
                _ => {
                    me.error(
                        &d.referenced,
                        format!(
                            "service {name}: health.{key} `{}` is not a duration from {} to 10m (like 2s, 1500ms, 1m)",
                            d.value,
                            if min.is_multiple_of(1000) { format!("{}s", min / 1000) } else { format!("{min}ms") }
                        ),
                    );
                    default
                }
            },
        };
        health.interval_ms = duration(self, &h.interval, "interval", 1000, health.interval_ms);
        health.timeout_ms = duration(self, &h.timeout, "timeout", 100, health.timeout_ms);
        if let Some(r) = &h.retries {
            if (1..=100).contains(&r.value) {
                health.retries = r.value as u32;
            } else {
                self.error(
                    &r.referenced,
                    format!(
                        "service {name}: health.retries {} is out of range; expected 1 to 100",
                        r.value
                    ),
                );
            }
        }
        health
    }

    /// `binds`: `HOST:CONTAINER[:ro|:rw]`, both absolute, no `..`.
    fn binds(&mut self, name: &str, raw: Vec<Spanned<String>>) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for b in raw {
            let parts: Vec<&str> = b.value.split(':').collect();
            let (host, target, ro) = match parts[..] {
                [h, c] => (h, c, Some(false)),
                [h, c, "ro"] => (h, c, Some(true)),
                [h, c, "rw"] => (h, c, Some(false)),
                [h, c, _] => (h, c, None),
                _ => ("", "", None),
            };
            let path_ok = |p: &str| {
                p.starts_with('/')
                    && !p.split('/').any(|c| c == "..")
                    && !p.contains(|c: char| c.is_control())
            };
            match ro {
                Some(ro) if path_ok(host) && path_ok(target) && target != "/" => {
                    out.push((host.to_string(), target.to_string(), ro))
                }
                _ => self.error(
                    &b.referenced,
                    format!(
                        "service {name}: bind `{}` is not HOST:CONTAINER[:ro], two absolute paths without `..`",
                        b.value
                    ),
                ),
            }
        }
        out
    }

    /// `memory`, `cpus`, `restart`.
    fn limits(
        &mut self,
        name: &str,
        memory: Option<Spanned<String>>,
        cpus: Option<Spanned<f64>>,
        restart: Option<Spanned<String>>,
    ) -> Limits {
        let mut limits = Limits::default();
        if let Some(m) = memory {
            match parse_bytes(&m.value) {
                // Docker refuses less than 6 MB.
                Some(b) if b >= 6 << 20 => limits.memory_bytes = Some(b),
                _ => self.error(
                    &m.referenced,
                    format!(
                        "service {name}: memory `{}` is not a size of at least 6m (like 512m, 2g)",
                        m.value
                    ),
                ),
            }
        }
        if let Some(c) = cpus {
            if c.value.is_finite() && c.value >= 0.01 && c.value <= 1024.0 {
                limits.nano_cpus = Some((c.value * 1e9).round() as u64);
            } else {
                self.error(
                    &c.referenced,
                    format!(
                        "service {name}: cpus {} is out of range; expected 0.01 to 1024",
                        c.value
                    ),
                );
            }
        }
        if let Some(r) = restart {
            const POLICIES: [&str; 4] = ["unless-stopped", "always", "on-failure", "no"];
            if POLICIES.contains(&r.value.as_str()) {
                limits.restart = (r.value != "unless-stopped").then(|| r.value.clone());
            } else {
                self.error(
                    &r.referenced,
                    format!(
                        "service {name}: restart `{}` is not one of {}",
                        r.value,
                        POLICIES.join(", ")
                    ),
                );
            }
        }
        limits
    }

    /// `depends_on`: services of this topology, not itself, no cycle.
    fn dependencies(
        &mut self,
        services: &mut [Service],
        raw: Vec<(String, Spanned<Vec<Spanned<String>>>)>,
    ) {
        let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
        let mut graph: BTreeMap<String, (Vec<String>, Location)> = BTreeMap::new();
        for (name, deps) in raw {
            let mut valid = Vec::new();
            for d in deps.value {
                if d.value == name {
                    self.error(&d.referenced, format!("service {name} depends on itself"));
                } else if !names.contains(&d.value) {
                    self.error_hint(
                        &d.referenced,
                        format!(
                            "service {name} depends on `{}`, which is not a service here",
                            d.value
                        ),
                        format!("the services are {}", names.join(", ")),
                    );
                } else if !valid.contains(&d.value) {
                    valid.push(d.value);
                }
            }
            graph.insert(name, (valid, deps.referenced));
        }
        if let Some(cycle) = find_cycle(&graph) {
            let loc = graph[&cycle[0]].1;
            self.error(
                &loc,
                format!(
                    "services depend on each other in a cycle: {}",
                    cycle.join(" → ")
                ),
            );
            return;
        }
        for s in services.iter_mut() {
            if let Some((deps, _)) = graph.remove(&s.name) {
                s.depends_on = deps;
            }
        }
    }

    /// `expose: tcp` services: at most [`MAX_DEFAULT_TCP_PORTS`] without a
    /// declared `lb_port`, no two declaring the same one. (Clashes with the
    /// environment's other ports are found once the ports are resolved.)
    fn tcp_listeners(&mut self, located: &[(Service, Location)]) {
        let tcp: Vec<&(Service, Location)> = located
            .iter()
            .filter(|(s, _)| s.expose == Expose::Tcp)
            .collect();
        if let Some((s, loc)) = tcp
            .iter()
            .filter(|(s, _)| s.lb_port.is_none())
            .nth(MAX_DEFAULT_TCP_PORTS)
        {
            self.error_hint(
                loc,
                format!(
                    "service {}: more than {MAX_DEFAULT_TCP_PORTS} `expose: tcp` services without an lb_port",
                    s.name
                ),
                "give this one an lb_port".to_string(),
            );
        }
        let mut seen: BTreeMap<u16, &str> = BTreeMap::new();
        for (s, loc) in &tcp {
            let Some(port) = s.lb_port else { continue };
            if let Some(other) = seen.insert(port, &s.name) {
                self.error(
                    loc,
                    format!(
                        "service {}: lb_port {port} is also service {other}'s",
                        s.name
                    ),
                );
            }
        }
    }

    /// `${NAME}` in env values may only name the variables every instance
    /// gets (`<S>_SERVICE_HOST`, ...): their values are known at `up`.
    fn env_references(&mut self, located: &[(Service, Location)], services: &[Service]) {
        let known: BTreeMap<String, String> = service_variables(services)
            .flat_map(|(_, names)| names.names())
            .map(|n| (n, String::new()))
            .collect();
        for (s, loc) in located {
            for (key, value) in &s.env {
                let (_, missing) = interpolate(value, &known);
                if let Some(name) = missing.first() {
                    let offer: Vec<&str> = known.keys().map(String::as_str).collect();
                    self.error_hint(
                        loc,
                        format!(
                            "service {}: env {key} refers to ${{{name}}}, which no instance gets",
                            s.name
                        ),
                        format!(
                            "the variables given are {}; write $${{ for a literal ${{",
                            if offer.is_empty() {
                                "none".to_string()
                            } else {
                                offer.join(", ")
                            }
                        ),
                    );
                }
            }
        }
    }

    fn service(&mut self, name: String, svc: Spanned<RawService>, hosts: &[Host]) -> Service {
        let loc = svc.referenced;
        self.service_name(&name, &loc);
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
        let on = self.service_hosts(&name, &loc, s.hosts.as_ref(), hosts);
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
        let health = self.health(&name, s.check_http, s.health);
        let command = s.command.map(|c| self.argv(&name, "command", c));
        let entrypoint = s.entrypoint.map(|c| self.argv(&name, "entrypoint", c));
        let user = s.user.map(|u| {
            let valid = !u.value.is_empty()
                && u.value.len() <= 64
                && u.value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
            if !valid {
                self.error(
                    &u.referenced,
                    format!(
                        "service {name}: user `{}` is not valid; expected a user name or uid, optionally `:group` or `:gid`",
                        u.value
                    ),
                );
            }
            u.value
        });
        let volumes = self.service_volumes(&name, s.volumes.unwrap_or_default());
        let binds = self.binds(&name, s.binds.unwrap_or_default());
        let limits = self.limits(&name, s.memory, s.cpus, s.restart);
        let expose = match &s.expose {
            None => Expose::Http,
            Some(e) => match Expose::CHOICES.iter().find(|(word, _)| *word == e.value) {
                Some((_, expose)) => *expose,
                None => {
                    self.error(
                        &e.referenced,
                        format!(
                            "service {name}: expose `{}` is not one of http, tcp, none",
                            e.value
                        ),
                    );
                    Expose::Http
                }
            },
        };
        let lb_port = s.lb_port.map(|p| {
            if expose != Expose::Tcp {
                self.error(
                    &p.referenced,
                    format!("service {name}: lb_port is only for `expose: tcp`"),
                );
            }
            self.port_value(&p, &format!("service {name}: lb_port"))
        });
        let secrets = self.service_secrets(&name, s.secrets.unwrap_or_default());
        let before_rollout = s
            .before_rollout
            .map(|c| self.argv(&name, "before_rollout", c));
        Service {
            name,
            image: s.image.value,
            port,
            hosts: on,
            per_host,
            env: s.env.unwrap_or_default(),
            labels: s.labels.unwrap_or_default(),
            health,
            drain_seconds,
            reserved: s.reserved.unwrap_or(false),
            command,
            entrypoint,
            user,
            volumes,
            binds,
            limits,
            expose,
            lb_port,
            secrets,
            depends_on: vec![],
            before_rollout,
        }
    }

    /// `secrets`: each from exactly one of an environment variable or a
    /// file, its name fit for a file name, its `env` a variable name.
    fn service_secrets(
        &mut self,
        name: &str,
        raw: BTreeMap<String, Spanned<RawSecret>>,
    ) -> Vec<Secret> {
        let is_var = |v: &str| {
            !v.is_empty()
                && !v.starts_with(|c: char| c.is_ascii_digit())
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let mut secrets = Vec::new();
        for (secret, raw) in raw {
            let loc = raw.referenced;
            let valid_name = !secret.is_empty()
                && secret.len() <= 64
                && secret
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                && !secret.starts_with('.');
            if !valid_name {
                self.error(
                    &loc,
                    format!("service {name}: secret name `{secret}` is not valid; expected 1 to 64 letters, digits, `_`, `-` or `.` (it is a file name)"),
                );
            }
            let source = match (&raw.value.from_env, &raw.value.from_file) {
                (Some(var), None) => {
                    if !is_var(&var.value) {
                        self.error(
                            &var.referenced,
                            format!("service {name}: secret {secret}: `{}` is not an environment variable's name", var.value),
                        );
                    }
                    SecretSource::Env(var.value.clone())
                }
                (None, Some(file)) => SecretSource::File(self.resolve(file)),
                _ => {
                    self.error_hint(
                        &loc,
                        format!("service {name}: secret {secret} needs exactly one of from_env and from_file"),
                        "secrets are read when `up` runs, never written in the topology",
                    );
                    continue;
                }
            };
            if let Some(var) = raw.value.env.as_ref().filter(|v| !is_var(&v.value)) {
                self.error(
                    &var.referenced,
                    format!(
                        "service {name}: secret {secret}: env `{}` is not a variable name",
                        var.value
                    ),
                );
            }
            secrets.push(Secret {
                name: secret,
                source,
                env: raw.value.env.map(|v| v.value),
                declared_at: self.place(&loc),
            });
        }
        secrets
    }

    /// A command line (`command`, `entrypoint`): at least one argument, none
    /// with a NUL byte (no process could receive it).
    fn argv(&mut self, name: &str, what: &str, argv: Spanned<Vec<Spanned<String>>>) -> Vec<String> {
        if argv.value.is_empty() {
            self.error(
                &argv.referenced,
                format!("service {name}: `{what}` is empty; leave it out to keep the image's"),
            );
        }
        for arg in argv.value.iter().filter(|a| a.value.contains('\0')) {
            self.error(
                &arg.referenced,
                format!("service {name}: an argument of `{what}` contains a NUL byte"),
            );
        }
        argv.value.into_iter().map(|a| a.value).collect()
    }

    /// `volumes`: names that can be part of a Docker volume name, absolute
    /// paths (not `/` itself, no `..`), each path once.
    fn service_volumes(
        &mut self,
        name: &str,
        raw: BTreeMap<String, Spanned<String>>,
    ) -> BTreeMap<String, String> {
        let mut paths = std::collections::BTreeSet::new();
        let mut volumes = BTreeMap::new();
        for (volume, path) in raw {
            if !is_short_name(&volume, MAX_VOLUME_NAME_LEN) {
                self.error(
                    &path.referenced,
                    format!(
                        "service {name}: volume name `{volume}` is not valid; expected 1 to {MAX_VOLUME_NAME_LEN} lowercase letters, digits or `-`, starting with a letter or digit"
                    ),
                );
            }
            let p = &path.value;
            let bad_path = !p.starts_with('/')
                || p == "/"
                || p.split('/').any(|part| part == "..")
                || p.chars().any(|c| c.is_control() || c == ',');
            if bad_path {
                self.error(
                    &path.referenced,
                    format!(
                        "service {name}: volume {volume}: `{p}` is not a path for it; expected an absolute path in the container, not `/`, without `..`"
                    ),
                );
            } else if !paths.insert(p.trim_end_matches('/').to_string()) {
                self.error(
                    &path.referenced,
                    format!("service {name}: volume {volume}: `{p}` is already a volume's path"),
                );
            }
            volumes.insert(volume, path.value);
        }
        volumes
    }

    /// Service names are also the first label of the names services answer
    /// at (`<service>.<env>.<domain>`), so they must be DNS labels.
    fn service_name(&mut self, name: &str, loc: &Location) {
        if !is_short_name(name, MAX_SERVICE_NAME_LEN) || name.ends_with('-') {
            self.error(
                loc,
                format!(
                    "service name `{name}` is not valid; expected a DNS label: 1 to {MAX_SERVICE_NAME_LEN} lowercase letters, digits or `-`, starting and ending with a letter or digit"
                ),
            );
        }
    }

    /// The hosts service `name` runs on: those `list`ed, which must be `app`
    /// hosts of this topology, else every `app` host.
    fn service_hosts(
        &mut self,
        name: &str,
        loc: &Location,
        list: Option<&Spanned<Vec<Spanned<String>>>>,
        hosts: &[Host],
    ) -> Vec<String> {
        let Some(list) = list else {
            let app_hosts: Vec<String> = hosts
                .iter()
                .filter(|h| h.has_role(Role::App))
                .map(|h| h.name.clone())
                .collect();
            if app_hosts.is_empty() {
                self.error(
                    loc,
                    format!("service {name}: no host has the `app` role to run it"),
                );
            }
            return app_hosts;
        };
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
}

/// A cycle in `service → its dependencies`, as the path around it
/// (`web → api → web`); the first found in name order.
fn find_cycle(graph: &BTreeMap<String, (Vec<String>, Location)>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, (Vec<String>, Location)>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph
            .get(node)
            .map(|(d, _)| d.as_slice())
            .unwrap_or_default()
        {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// `500ms`, `5s`, `2m` in milliseconds; `None` for anything else.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// `512m`, `2g`, `1048576` in bytes; `None` for anything else.
fn parse_bytes(s: &str) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    let (n, factor) = match lower.trim_end_matches('b').char_indices().last()? {
        (i, 'k') => (&lower[..i], 1u64 << 10),
        (i, 'm') => (&lower[..i], 1 << 20),
        (i, 'g') => (&lower[..i], 1 << 30),
        _ => (lower.trim_end_matches('b'), 1),
    };
    n.parse::<u64>().ok()?.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_and_durations() {
        use super::{parse_bytes, parse_duration_ms};
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("64kb"), Some(64 << 10));
        assert_eq!(parse_bytes("100"), Some(100));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes("-1m"), None);
        assert_eq!(parse_duration_ms("1500ms"), Some(1500));
        assert_eq!(parse_duration_ms("2s"), Some(2000));
        assert_eq!(parse_duration_ms("1m"), Some(60_000));
        assert_eq!(parse_duration_ms("1h"), None);
        assert_eq!(parse_duration_ms("s"), None);
    }
}
