//! A host's `address`: an IP in the lab for `driver: local`, else
//! `ssh://` (with the host's and the top-level `ssh:` settings), `tcp://`
//! (with `tls` or `insecure`) or `unix://`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::hosts::is_local;
use super::Validator;
use crate::topology::model::{gateway, Endpoint, Lab, SshTarget, TlsFiles};
use crate::topology::raw::{RawHost, RawSsh};

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

impl Validator {
    /// Where host `name`'s Docker engine is reached; `None` when its address
    /// cannot be used.
    pub(super) fn endpoint(
        &mut self,
        name: &str,
        host: &Spanned<RawHost>,
        default_ssh: &RawSsh,
        lab: Option<&Lab>,
    ) -> Option<Endpoint> {
        let raw = &host.value;
        let addr = &raw.address;
        if raw.insecure.is_some() && !addr.value.starts_with("tcp://") {
            self.error(
                &host.referenced,
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
        if is_local(host) {
            self.lab_endpoint(name, addr, lab)
        } else {
            self.remote_endpoint(name, raw, default_ssh)
        }
    }

    /// A `driver: local` host's address: its IP in the lab subnet.
    fn lab_endpoint(
        &mut self,
        name: &str,
        addr: &Spanned<String>,
        lab: Option<&Lab>,
    ) -> Option<Endpoint> {
        let Ok(ip) = addr.value.parse::<Ipv4Addr>() else {
            self.error_hint(
                &addr.referenced,
                format!("host {name}: `{}` is not an IPv4 address; a `driver: local` host's address is its IP in the lab", addr.value),
                "e.g. `address: 10.77.0.11`",
            );
            return None;
        };
        if let Some(lab) = lab {
            let net = lab.subnet;
            if net.prefix_len() != 0
                && (!net.contains(&ip)
                    || ip == net.network()
                    || ip == net.broadcast()
                    || ip == gateway(&net))
            {
                self.error_hint(
                    &addr.referenced,
                    format!(
                        "host {name}: {ip} is not a usable host address in the lab subnet {net}"
                    ),
                    format!(
                        "pick an address between {} and {} (exclusive)",
                        gateway(&net),
                        net.broadcast()
                    ),
                );
            }
        }
        Some(Endpoint::Lab { ip })
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
            "ssh" => self.ssh_endpoint(name, raw, rest, default_ssh),
            "tcp" => self.tcp_endpoint(name, raw, rest),
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

    /// `ssh://[user@]host[:port]`; what the address leaves out comes from
    /// `ssh:`, then from ssh's own defaults (root, port 22).
    fn ssh_endpoint(
        &mut self,
        name: &str,
        raw: &RawHost,
        rest: &str,
        default_ssh: &RawSsh,
    ) -> Option<Endpoint> {
        let addr = &raw.address;
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
        // ssh would read `-oProxyCommand=...` as an option, not a name.
        if user.starts_with('-') {
            let at = match (user_part, &ssh.user) {
                (None, Some(u)) => &u.referenced,
                _ => &addr.referenced,
            };
            self.error(
                at,
                format!("host {name}: SSH user `{user}` starts with `-`, which ssh would read as an option"),
            );
        }
        if host.starts_with('-') {
            self.error(
                &addr.referenced,
                format!("host {name}: SSH host `{host}` starts with `-`, which ssh would read as an option"),
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

    /// `tcp://host[:port]`: with `tls`, or to loopback, or `insecure: true`.
    fn tcp_endpoint(&mut self, name: &str, raw: &RawHost, rest: &str) -> Option<Endpoint> {
        let addr = &raw.address;
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

    /// A key or certificate file, which must exist.
    fn existing_file(&mut self, p: &Spanned<String>) -> PathBuf {
        let path = self.resolve(p);
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
}
