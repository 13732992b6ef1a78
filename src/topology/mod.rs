//! Topology files: finding, reading, parsing and validating them.
//!
//! `load` is the only entry point: it returns a [`Topology`] whose every value
//! has been checked, or an input error whose text names the file, line and
//! column of each problem. Nothing in this module touches Docker or the
//! network, so `validate` and `plan` fail fast and identically on bad input.

pub mod diag;
pub mod model;
pub mod raw;
pub mod validate;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::error::input;
pub use model::*;

/// Refuse larger files outright: a topology is a few dozen lines, and a huge
/// file is a mistake (wrong path) or an attack on the parser.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The file to use when `-f` is not given: `stagectl.yaml` in the current
/// folder, else the repository's local lab topology.
pub fn default_path() -> Result<PathBuf> {
    for candidate in ["stagectl.yaml", "topologies/local.yaml"] {
        let p = PathBuf::from(candidate);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(input(
        "no topology file: neither ./stagectl.yaml nor ./topologies/local.yaml exists; pass one with -f FILE",
    ))
}

/// Read, parse and validate a topology file.
pub fn load(path: &Path) -> Result<Topology> {
    load_with(path, &Overrides::default())
}

/// What the command line changes in a topology: the environment's name
/// (`--env`, so one file describes the shape of many environments, a
/// preview per branch) and services' images (`--image web=team/web:3f2c1a`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub env: Option<String>,
    pub images: Vec<(String, String)>,
    /// `--set services.web.per_host=2`: (path, YAML value), checked like
    /// the file, problems located in the flag.
    pub sets: Vec<(String, String)>,
}

/// [`load`], with the command line's overrides: `--env` names the
/// environment (the file's `name` may then be left out), `--image` sets a
/// service's image. Errors about them name the flag.
pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Topology> {
    let text = read_text(path).map_err(input)?;
    let env = match &overrides.env {
        Some(e) => Some(normalize_env_name(e).map_err(input)?),
        None => None,
    };
    let mut t = parse_as(&text, path, env.as_deref(), &overrides.sets)?;
    for (service, image) in &overrides.images {
        let unknown = t.unknown_service(service);
        let Some(s) = t.services.iter_mut().find(|s| s.name == *service) else {
            return Err(input(format!("--image {service}={image}: {unknown}")));
        };
        if image.is_empty() || image.contains(char::is_whitespace) {
            return Err(input(format!(
                "--image {service}={image}: `{image}` is not an image reference"
            )));
        }
        s.image = image.clone();
    }
    Ok(t)
}

/// An environment name from anything a CI system hands over (a branch
/// name, `feature/Login_Fix`): lowercased, every run of other characters
/// one `-`, trimmed; over 32 characters, cut and given 8 hex digits of
/// the original's SHA-256 so two long names stay apart. Nothing left (no
/// letter or digit) is an error.
pub fn normalize_env_name(given: &str) -> std::result::Result<String, String> {
    const MAX: usize = 32;
    let mut name = String::new();
    for c in given.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_end_matches('-').to_string();
    if name.is_empty() {
        return Err(format!(
            "--env `{given}`: no letter or digit to name an environment with"
        ));
    }
    if name.len() <= MAX {
        return Ok(name);
    }
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(given.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let head = name[..MAX - 9].trim_end_matches('-');
    Ok(format!("{head}-{hash}"))
}

/// Like [`load`], but a file without `name` (a shared hosts file, as
/// environments extend) is accepted: for commands that look at the hosts,
/// not at one environment (`ls`).
pub fn load_hosts(path: &Path) -> Result<Topology> {
    let text = read_text(path).map_err(input)?;
    if text.lines().any(|l| l.starts_with("name:")) {
        return parse(&text, path);
    }
    // A name line appended after the file's own lines keeps every location.
    parse(&format!("{}\nname: hosts-file\n", text.trim_end()), path)
}

/// A topology file's text, refusing what cannot be one (missing, a folder,
/// huge, not UTF-8) with a sentence naming it.
fn read_text(path: &Path) -> std::result::Result<String, String> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{shown} is {} bytes; a topology file may be at most {MAX_FILE_BYTES} bytes",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{shown}: not a text file (invalid UTF-8 at byte {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// The files a topology was read from, for rendering diagnostics. A base
/// file is parsed after as many blank lines as its environment's file has
/// lines, so every location tells by its line which file it is in.
struct Sources {
    files: Vec<(String, String, u64)>,
}

impl Sources {
    fn render(&self, d: &diag::Diagnostic) -> String {
        let (name, text, first) = self
            .files
            .iter()
            .rev()
            .find(|(_, _, first)| d.line >= *first)
            .unwrap_or(&self.files[0]);
        let mut local = d.clone();
        if local.line > 0 {
            local.line -= first - 1;
        }
        local.render(name, text)
    }
}

/// Parse and validate topology text; `path` is used for messages and to
/// resolve relative paths inside the file, including `extends`. Relative
/// paths inside the base are resolved against the base's own folder.
pub fn parse(text: &str, path: &Path) -> Result<Topology> {
    parse_as(text, path, None, &[])
}

/// [`parse`], with the environment named `env` whatever the file says,
/// and the `--set` values over the file's.
fn parse_as(
    text: &str,
    path: &Path,
    env: Option<&str>,
    sets: &[(String, String)],
) -> Result<Topology> {
    let shown = path.display().to_string();
    let only_comments = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    if only_comments {
        let diag = diag::Diagnostic {
            line: 0,
            column: 0,
            message: "the file is empty; a topology needs at least `name:` and `hosts:`".into(),
            hint: None,
        };
        return Err(input(diag.render(&shown, text).trim_end().to_string()));
    }
    let mut sources = Sources {
        files: vec![(shown.clone(), text.to_string(), 1)],
    };
    let mut raw = parse_raw(text, &sources)?;
    let mut base_file = None;
    if let Some(ext) = raw.extends.clone() {
        let env_dir = path.parent().unwrap_or(Path::new(""));
        let base_path = validate::expand_path(&ext.value, env_dir);
        let base_text = read_text(&base_path).map_err(|why| {
            input(sources.render(&diag::Diagnostic::at(
                &ext.referenced,
                format!("extends: {why}"),
            )))
        })?;
        let first = text.lines().count() as u64 + 2;
        sources
            .files
            .push((base_path.display().to_string(), base_text.clone(), first));
        let padded = format!("{}{base_text}", "\n".repeat(first as usize - 1));
        let base = parse_raw(&padded, &sources)?;
        let misplaced = [
            (
                base.extends.as_ref().map(|e| e.referenced),
                "a base file cannot extend another",
            ),
            (
                base.name.as_ref().map(|n| n.referenced),
                "a base file leaves `name` to each environment's file",
            ),
        ];
        let errors: Vec<String> = misplaced
            .iter()
            .filter_map(|(loc, msg)| loc.map(|l| sources.render(&diag::Diagnostic::at(&l, *msg))))
            .collect();
        if !errors.is_empty() {
            return Err(input(errors.join("").trim_end().to_string()));
        }
        raw = raw.over(base);
        base_file = Some(validate::BaseFile {
            first_line: first,
            path: base_path.to_path_buf(),
            dir: base_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        });
    }
    for (key, value) in sets {
        // Parsed after as many blank lines as the files before it have, so
        // a problem in it is reported in the flag (see `Sources`).
        let first = sources
            .files
            .iter()
            .map(|(_, text, first)| first + text.lines().count() as u64 + 1)
            .max()
            .unwrap_or(1);
        sources
            .files
            .push((format!("--set {key}"), value.clone(), first));
        let padded = format!("{}{value}", "\n".repeat(first as usize - 1));
        set_value(&mut raw, key, &padded, &sources)?;
    }
    if let Some(env) = env {
        let here = serde_saphyr::Location::UNKNOWN;
        raw.name = Some(serde_saphyr::Spanned::new(env.to_string(), here, here));
    }
    validate::validate(raw, path, base_file).map_err(|diags| {
        let mut out: Vec<String> = diags.iter().map(|d| sources.render(d)).collect();
        if diags.len() > 1 {
            out.push(format!("{} problems in {shown}", diags.len()));
        }
        input(out.join("").trim_end().to_string())
    })
}

/// `--set PATH=VALUE` into the raw topology, `padded` being the value at
/// its place in `sources`. Only a service's keys can be set: the rest of a
/// topology (hosts, ports) is the shape the file gives every environment.
fn set_value(raw: &mut raw::RawTopology, key: &str, padded: &str, sources: &Sources) -> Result<()> {
    let flag = format!("--set {key}");
    let ["services", name, field] = key.splitn(3, '.').collect::<Vec<_>>()[..] else {
        return Err(input(format!(
            "{flag}: only a service's keys can be set, as services.<name>.<key> (services.web.per_host=2); --env names the environment, --image sets an image"
        )));
    };
    let services = raw.services.get_or_insert_with(Default::default);
    let known: Vec<String> = services.keys().cloned().collect();
    let Some(service) = services.get_mut(name) else {
        return Err(input(format!(
            "{flag}: no service `{name}` in the file; services: {}",
            known.join(", ")
        )));
    };
    let s = &mut service.value;
    // A CI job's `--set` values are not trusted with the runner's files:
    // only the topology file (reviewed with the code) may name them.
    if field == "binds" {
        return Err(input(format!(
            "{flag}: `binds` mounts the runner's host paths and can only be set in the topology file"
        )));
    }
    if field == "secrets" {
        let secrets: Option<
            std::collections::BTreeMap<String, serde_saphyr::Spanned<raw::RawSecret>>,
        > = parse_yaml(padded, sources)?;
        if secrets
            .iter()
            .flat_map(|m| m.values())
            .any(|secret| secret.value.from_file.is_some())
        {
            return Err(input(format!(
                "{flag}: a secret's `from_file` reads the runner's files and can only be set in the topology file (use from_env)"
            )));
        }
    }
    macro_rules! set {
        ($($field:ident),* $(,)?) => {
            match field {
                $( stringify!($field) => s.$field = parse_yaml(padded, sources)?, )*
                f if f.starts_with("env.") => {
                    let value = parse_yaml(padded, sources)?;
                    s.env.get_or_insert_with(Default::default).insert(f[4..].to_string(), value);
                }
                f if f.starts_with("labels.") => {
                    let value = parse_yaml(padded, sources)?;
                    s.labels.get_or_insert_with(Default::default).insert(f[7..].to_string(), value);
                }
                _ => return Err(input(format!("{flag}: a service has no key `{field}`"))),
            }
        };
    }
    set!(
        image,
        port,
        hosts,
        per_host,
        env,
        labels,
        check_http,
        health,
        drain_seconds,
        reserved,
        command,
        entrypoint,
        user,
        binds,
        memory,
        cpus,
        restart,
        volumes,
        expose,
        lb_port,
        depends_on,
        before_rollout,
        secrets,
    );
    Ok(())
}

/// One file's YAML into the raw structure, errors located and rendered.
fn parse_raw(text: &str, sources: &Sources) -> Result<raw::RawTopology> {
    parse_yaml(text, sources)
}

/// YAML into `T`, errors located and rendered.
fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, sources: &Sources) -> Result<T> {
    serde_saphyr::from_str(text).map_err(|e| {
        // Rendered like our own checks' diagnostics: one style for all.
        use serde_saphyr::MessageFormatter as _;
        let message = serde_saphyr::DefaultMessageFormatter
            .format_message(&e)
            .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
        let diag = match e.location() {
            Some(loc) => diag::Diagnostic::at(&loc, message),
            None => diag::Diagnostic {
                line: 0,
                column: 0,
                message,
                hint: None,
            },
        };
        input(sources.render(&diag).trim_end().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_endpoint_is_only_used_the_ways_the_topology_uses() {
        let t = parse(
            "name: qa\nlab: { subnet: 10.77.0.0/24 }\nhosts:\n  h1: { driver: local, address: 10.77.0.11, roles: [app, lb] }\n  h2: { address: ssh://deploy@10.0.0.2, roles: [app], ssh: { identity_file: /dev/null } }\nconsul: { servers: [h1] }\n",
            Path::new("qa.yaml"),
        )
        .unwrap();
        let ssh = |identity: Option<&str>| {
            Endpoint::Ssh(SshTarget {
                user: "deploy".into(),
                host: "10.0.0.9".into(),
                port: 22,
                identity_file: identity.map(Into::into),
                known_hosts: None,
            })
        };
        assert!(t.allows_endpoint(&ssh(Some("/dev/null"))).is_ok());
        assert!(t.allows_endpoint(&ssh(None)).is_ok());
        assert!(t
            .allows_endpoint(&Endpoint::Lab {
                ip: "10.77.0.40".parse().unwrap()
            })
            .is_ok());
        // Not the topology's: another identity file, plain TCP, a lab
        // address elsewhere, a unix socket.
        let err = t
            .allows_endpoint(&ssh(Some("/root/.ssh/other")))
            .unwrap_err();
        assert!(err.contains("qa.yaml does not use"), "{err}");
        let plain = Endpoint::Tcp {
            host: "10.0.0.9".into(),
            port: 2375,
            tls: None,
        };
        assert!(t.allows_endpoint(&plain).is_err());
        assert!(t
            .allows_endpoint(&Endpoint::Lab {
                ip: "10.78.0.4".parse().unwrap()
            })
            .is_err());
        assert!(t
            .allows_endpoint(&Endpoint::Unix {
                path: "/run/x.sock".into()
            })
            .is_err());
    }

    #[test]
    fn branch_names_become_environment_names() {
        assert_eq!(normalize_env_name("pr-1234").unwrap(), "pr-1234");
        assert_eq!(
            normalize_env_name("feature/Login_Fix").unwrap(),
            "feature-login-fix"
        );
        assert_eq!(normalize_env_name("--Ünïcode--x").unwrap(), "n-code-x");
        let long = normalize_env_name("feature/payments-reconciliation-service-retry").unwrap();
        assert_eq!(long.len(), 32, "{long}");
        assert!(long.starts_with("feature-payments-reconc-"), "{long}");
        assert_ne!(
            long,
            normalize_env_name("feature/payments-reconciliation-service-retries").unwrap()
        );
        let err = normalize_env_name("///").unwrap_err();
        assert!(err.contains("--env `///`"), "{err}");
    }

    #[test]
    fn the_command_line_names_the_environment_and_sets_images() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("preview.yaml");
        std::fs::write(
            &file,
            "lab: { name: previews, subnet: 10.77.9.0/24 }\nhosts:\n  h: { driver: local, address: 10.77.9.11, roles: [app, lb] }\nservices:\n  web: { image: team/web:main, port: 80 }\n",
        )
        .unwrap();
        let o = Overrides {
            env: Some("PR/42".into()),
            images: vec![("web".into(), "team/web:3f2c1a".into())],
            sets: vec![
                ("services.web.per_host".into(), "2".into()),
                ("services.web.env.MODE".into(), "preview".into()),
                ("services.web.hosts".into(), "[h]".into()),
            ],
        };
        let t = load_with(&file, &o).unwrap();
        assert_eq!(t.name, "pr-42");
        assert_eq!(t.lab.as_ref().unwrap().name, "previews");
        assert_eq!(t.services[0].image, "team/web:3f2c1a");
        assert_eq!(t.services[0].per_host, 2);
        assert_eq!(t.services[0].env["MODE"], "preview");
        // A bad value is reported in the flag, checked like the file.
        let set = |k: &str, v: &str| Overrides {
            env: Some("pr-42".into()),
            sets: vec![(k.into(), v.into())],
            ..Default::default()
        };
        let err = load_with(&file, &set("services.web.per_host", "500"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "--set services.web.per_host:1:1: service web: per_host 500 is out of range"
            ),
            "{err}"
        );
        let err = load_with(&file, &set("services.web.per_host", "[x]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--set services.web.per_host:1:1"), "{err}");
        let err = load_with(&file, &set("services.web.colour", "red"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--set services.web.colour: a service has no key `colour`"),
            "{err}"
        );
        let err = load_with(&file, &set("hosts.h.address", "x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("only a service's keys can be set"), "{err}");
        // Without --env the file must name the environment.
        assert!(load(&file).unwrap_err().to_string().contains("no `name`"));
        let bad = Overrides {
            env: Some("pr-42".into()),
            images: vec![("api".into(), "x:1".into())],
            ..Default::default()
        };
        let err = load_with(&file, &bad).unwrap_err().to_string();
        assert!(err.contains("--image api=x:1: no service `api`"), "{err}");
        assert!(err.contains("services: web"), "{err}");
    }

    #[test]
    fn an_environment_extends_a_base_and_overrides_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("servers.yaml"),
            "ssh: { user: deploy, port: 2222 }\nimages: { nginx: team/nginx:1 }\nhosts:\n  a: { address: ssh://10.0.0.1, roles: [app] }\n  b: { address: ssh://10.0.0.2, roles: [app] }\n  c: { address: ssh://10.0.0.3, roles: [lb] }\nservices:\n  web: { image: web:1, port: 80 }\n",
        )
        .unwrap();
        let env = dir.path().join("qa.yaml");
        std::fs::write(
            &env,
            "extends: servers.yaml\nname: qa\nssh: { user: qa }\nhosts:\n  b: { address: ssh://10.0.0.20, roles: [app] }\nservices:\n  api: { image: api:2, port: 90 }\n",
        )
        .unwrap();
        let t = load(&env).unwrap();
        assert_eq!(t.name, "qa");
        let b = t.host("b").unwrap();
        assert_eq!(
            b.advertise.to_string(),
            "10.0.0.20",
            "the environment's host wins"
        );
        match &t.host("a").unwrap().endpoint {
            Endpoint::Ssh(s) => {
                assert_eq!(s.user, "qa", "ssh merges key by key: the user from qa.yaml");
                assert_eq!(s.port, 2222, "... the port from the base");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.images.nginx, "team/nginx:1");
        assert_eq!(t.images.consul, Images::default().consul);
        let names: Vec<&str> = t.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["api", "web"]);
    }

    /// `shared/servers.yaml` (with a key file and an nginx template next to
    /// it) and `envs/qa.yaml` extending it with `env_text`.
    fn base_in_another_folder(env_text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(shared.join("keys")).unwrap();
        std::fs::create_dir_all(dir.path().join("envs")).unwrap();
        std::fs::write(shared.join("keys/id_ed25519"), "key").unwrap();
        std::fs::write(shared.join("nginx.conf.j2"), "# {{ env }}\n").unwrap();
        std::fs::write(
            shared.join("servers.yaml"),
            "ssh: { identity_file: keys/id_ed25519 }\nlb: { template: nginx.conf.j2 }\nhosts:\n  a: { address: ssh://10.0.0.1, roles: [app, lb] }\n",
        )
        .unwrap();
        let env = dir.path().join("envs/qa.yaml");
        std::fs::write(&env, env_text).unwrap();
        (dir, env)
    }

    #[test]
    fn paths_in_a_base_are_relative_to_the_base() {
        let (dir, env) = base_in_another_folder("extends: ../shared/servers.yaml\nname: qa\n");
        let t = load(&env).unwrap();
        let shared = dir.path().join("envs/../shared");
        match &t.host("a").unwrap().endpoint {
            Endpoint::Ssh(s) => assert_eq!(
                s.identity_file.as_deref(),
                Some(shared.join("keys/id_ed25519").as_path())
            ),
            other => panic!("{other:?}"),
        }
        let (template, text) = t.lb.template.as_ref().unwrap();
        assert_eq!(template, &shared.join("nginx.conf.j2"));
        assert_eq!(text, "# {{ env }}\n");
    }

    #[test]
    fn paths_in_the_environment_stay_relative_to_the_environment() {
        // The environment's own `ssh:` merges with the base's key by key:
        // each path keeps the folder of the file it is written in.
        let (dir, env) = base_in_another_folder(
            "extends: ../shared/servers.yaml\nname: qa\nssh: { known_hosts: known_hosts }\n",
        );
        std::fs::write(dir.path().join("envs/known_hosts"), "").unwrap();
        let t = load(&env).unwrap();
        match &t.host("a").unwrap().endpoint {
            Endpoint::Ssh(s) => {
                assert_eq!(
                    s.known_hosts.as_deref(),
                    Some(dir.path().join("envs/known_hosts").as_path())
                );
                assert_eq!(
                    s.identity_file.as_deref(),
                    Some(dir.path().join("envs/../shared/keys/id_ed25519").as_path())
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_file_named_in_a_base_is_reported_in_the_base() {
        let (dir, env) = base_in_another_folder(
            "extends: ../shared/servers.yaml\nname: qa\nlb: { template: missing.j2 }\n",
        );
        std::fs::remove_file(dir.path().join("shared/keys/id_ed25519")).unwrap();
        let err = load(&env).unwrap_err().to_string();
        let base = dir.path().join("envs/../shared/servers.yaml");
        let key = dir.path().join("envs/../shared/keys/id_ed25519");
        assert!(
            err.contains(&format!(
                "{}:1:23: cannot read {}",
                base.display(),
                key.display()
            )),
            "{err}"
        );
        // The environment's `lb` replaces the base's whole; its path is the
        // environment's.
        let template = dir.path().join("envs/missing.j2");
        assert!(
            err.contains(&format!(
                "{}:3:17: cannot read {}",
                env.display(),
                template.display()
            )),
            "{err}"
        );
    }
}
