//! From the file as written ([`RawTopology`]) to the checked model
//! ([`Topology`]).
//!
//! Every check runs and every problem is collected, so a user fixes a file in
//! one pass instead of one error at a time. Each problem carries the line and
//! column of the value it is about.
//!
//! One submodule per section of the file; [`validate`] runs them in order.

mod address;
mod consul;
mod hosts;
mod images;
mod lab;
mod lb;
mod names;
mod ports;
mod registration;
mod services;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, Spanned};

use super::diag::Diagnostic;
use super::model::{Host, Topology};
use super::raw::RawTopology;

pub use lab::parse_ipv4_net;

/// The file an environment `extends`, as far as validation needs it.
pub struct BaseFile {
    /// The base is parsed after as many blank lines as the environment's file
    /// has lines: a value on this line or later was written in the base.
    pub first_line: u64,
    pub path: PathBuf,
    /// The base's folder, which its relative paths are relative to.
    pub dir: PathBuf,
}

/// `source` is the environment's file; `base`, the file it extends, if any.
pub fn validate(
    raw: RawTopology,
    source: &Path,
    base: Option<BaseFile>,
) -> Result<Topology, Vec<Diagnostic>> {
    let mut v = Validator {
        diags: Vec::new(),
        source: source.to_path_buf(),
        env_dir: source.parent().map(Path::to_path_buf).unwrap_or_default(),
        base,
    };

    // Keep this order: later phases use what earlier ones built (the lab,
    // the hosts), and problems at one position are reported in the order
    // they were found (the sort below is stable).
    let name = v.required(
        raw.name,
        "the topology has no `name` (the environment's name)",
        "unnamed".into(),
    );
    let raw_hosts = v.required(raw.hosts, "the topology has no `hosts`", BTreeMap::new());
    v.name(&name, "environment name");
    let lab = raw.lab.as_ref().map(|l| v.lab(l, &name.value));
    let mut hosts = v.hosts(&raw_hosts, &raw.ssh.unwrap_or_default(), lab.as_ref());
    let consul = v.consul(&raw.consul.unwrap_or_default(), &raw_hosts, &mut hosts);
    let ports_declared = raw.ports.is_some();
    let ports = v.ports(raw.ports.unwrap_or_default());
    let images = v.images(raw.images.unwrap_or_default());
    let lb = v.lb(raw.lb.unwrap_or_default());
    let registration = v.registration(raw.registration.unwrap_or_default());
    let services = v.services(raw.services.unwrap_or_default(), &hosts);
    if lab.is_none() {
        v.local_hosts_need_lab(&raw_hosts.value);
    }

    let topology = Topology {
        name: name.value,
        source: source.to_path_buf(),
        lab: lab.filter(|_| hosts.iter().any(Host::is_lab)),
        hosts,
        images,
        consul,
        ports,
        ports_declared,
        lb,
        registration,
        services,
    };
    if v.diags.is_empty() {
        Ok(topology)
    } else {
        v.diags.sort_by_key(|d| (d.line, d.column));
        v.diags.dedup();
        Err(v.diags)
    }
}

/// What every section's checks share: the problems found so far, and where
/// relative paths start from.
struct Validator {
    diags: Vec<Diagnostic>,
    /// The environment's file.
    source: PathBuf,
    /// Relative paths are relative to the folder of the file that declares
    /// them: the environment's file, or its base.
    env_dir: PathBuf,
    base: Option<BaseFile>,
}

impl Validator {
    /// `file:line:col` of `loc`, in the file it was written in, for messages
    /// given after validation.
    fn place(&self, loc: &serde_saphyr::Location) -> String {
        match &self.base {
            Some(base) if loc.line() >= base.first_line => format!(
                "{}:{}:{}",
                base.path.display(),
                loc.line() + 1 - base.first_line,
                loc.column()
            ),
            _ => format!("{}:{}:{}", self.source.display(), loc.line(), loc.column()),
        }
    }

    /// A path as written, made absolute against the folder of the file it is
    /// written in (which its line tells), so a base's paths mean the same
    /// whichever environment extends it.
    fn resolve(&self, p: &Spanned<String>) -> PathBuf {
        let dir = match &self.base {
            Some(base) if p.referenced.line() >= base.first_line => &base.dir,
            _ => &self.env_dir,
        };
        expand_path(&p.value, dir)
    }

    /// A text file the topology names (relative to the file it is written
    /// in): its path, and its text unless it cannot be read, which is
    /// reported at `p`.
    fn read_text(&mut self, p: &Spanned<String>) -> (PathBuf, Option<String>) {
        let path = self.resolve(p);
        match std::fs::read_to_string(&path) {
            Ok(text) => (path, Some(text)),
            Err(e) => {
                self.error(
                    &p.referenced,
                    format!("cannot read {}: {e}", path.display()),
                );
                (path, None)
            }
        }
    }

    fn error(&mut self, loc: &Location, msg: impl Into<String>) {
        self.diags.push(Diagnostic::at(loc, msg));
    }

    fn error_hint(&mut self, loc: &Location, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags.push(Diagnostic::at(loc, msg).hint(hint));
    }

    /// A top-level key the file must have; when it is missing, `missing` is
    /// reported (at no position) and `stand_in` is checked in its place.
    fn required<T>(&mut self, value: Option<Spanned<T>>, missing: &str, stand_in: T) -> Spanned<T> {
        value.unwrap_or_else(|| {
            self.error(&Location::UNKNOWN, missing);
            Spanned {
                value: stand_in,
                referenced: Location::UNKNOWN,
                defined: Location::UNKNOWN,
            }
        })
    }
}

/// `~/x` is under $HOME; a relative path is relative to `base`, the folder
/// of the file it is written in.
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::topology::{parse, Adopt, Topology};

    const HOSTS: &str = "hosts:\n  host-1: { address: ssh://10.0.0.1, roles: [app, lb] }\n";

    fn topology(yaml: &str) -> Result<Topology, String> {
        parse(yaml, Path::new("t.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_service_name_may_be_a_whole_dns_label() {
        let env = "e".repeat(32);
        let service = format!("s{}9", "-".repeat(61));
        let t = topology(&format!(
            "name: {env}\n{HOSTS}services:\n  {service}: {{ image: web:1, port: 80 }}\n"
        ))
        .unwrap();
        assert_eq!(t.name.len(), 32);
        assert_eq!(t.services[0].name, service);
        assert_eq!(service.len(), 63);
    }

    #[test]
    fn service_names_that_are_not_dns_labels() {
        for bad in ["s".repeat(64), "web-".into(), "-web".into(), "Web".into()] {
            let err = topology(&format!(
                "name: qa\n{HOSTS}services:\n  {bad}: {{ image: web:1, port: 80 }}\n"
            ))
            .unwrap_err();
            assert!(
                err.contains("t.yaml:5:")
                    && err.contains(&format!(
                        "service name `{bad}` is not valid; expected a DNS label: 1 to 63"
                    )),
                "{bad}: {err}"
            );
        }
        let err = topology(&format!("name: {}\n{HOSTS}", "e".repeat(33))).unwrap_err();
        assert!(err.contains("expected 1 to 32 lowercase letters"), "{err}");
    }

    #[test]
    fn registration_adopt_and_reserved_services() {
        let t = topology(&format!("name: qa\n{HOSTS}")).unwrap();
        assert_eq!(t.registration.adopt, Adopt::All);
        let t = topology(&format!(
            "name: qa\n{HOSTS}registration: {{ adopt: labeled }}\nservices:\n  web: {{ image: web:1, port: 80, reserved: true }}\n  api: {{ image: api:1, port: 80 }}\n"
        ))
        .unwrap();
        assert_eq!(t.registration.adopt, Adopt::Labeled);
        let reserved: Vec<(&str, bool)> = t
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.reserved))
            .collect();
        assert_eq!(reserved, vec![("api", false), ("web", true)]);
    }

    #[test]
    fn an_unknown_adopt_value_is_located_and_lists_the_choices() {
        let err = topology(&format!(
            "name: qa\n{HOSTS}registration:\n  adopt: everything\n"
        ))
        .unwrap_err();
        assert!(
            err.contains(
                "t.yaml:5:10: registration.adopt `everything` is not one of: all, labeled"
            ),
            "{err}"
        );
    }
}
