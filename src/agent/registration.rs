//! Which services a container stands for: a pure function from a container
//! description to Consul registrations, following registrator's conventions
//! so existing images and habits keep working.
//!
//! Per container (labels win over environment variables of the same name):
//! - `SERVICE_IGNORE`: register nothing; `SERVICE_<port>_IGNORE`: skip a port.
//! - `SERVICE_NAME` / `SERVICE_<port>_NAME`: the service name; else the
//!   image's base name (`registry:5000/team/web:1.2` → `web`), with
//!   `-<port>` appended when the container publishes several ports.
//! - `SERVICE_TAGS` / `SERVICE_<port>_TAGS`: comma-separated tags.
//! - `SERVICE_CHECK_HTTP` / `SERVICE_<port>_CHECK_HTTP`: an HTTP check on
//!   that path instead of the default TCP check on the published port.
//! - `SERVICE_CHECK_INTERVAL`, `SERVICE_CHECK_TIMEOUT`: check interval and
//!   timeout (default 1s each; Consul refuses what is not a duration).
//! - `SERVICE_CHECK_RETRIES`: failed checks in a row before the instance
//!   counts as critical (default 1).
//! - A container with a Docker health check is registered only while
//!   Docker reports it healthy.
//!
//! Only published TCP ports count. Containers of other environments and
//! stagectl's own agents are never registered; containers with no
//! environment label are registered when the agent is told to adopt them
//! (the default on a host with one environment, as registrator did).
//! A reserved service name is registered only for stagectl's own instances
//! of that service: any other container claiming it is not registered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::cluster::http::{Check, Registration};
use crate::labels;

/// What the agent knows about a container (from `docker inspect`).
#[derive(Debug, Clone, Default)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    /// `KEY=VALUE` strings.
    pub env: Vec<String>,
    pub ports: Vec<PublishedPort>,
    pub running: bool,
    /// Docker health status when the image defines a health check.
    pub health: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedPort {
    pub container_port: u16,
    pub host_port: u16,
    pub tcp: bool,
}

/// Who is registering: the environment, host and address of this agent.
#[derive(Debug, Clone)]
pub struct AgentContext {
    pub env: String,
    pub host: String,
    pub advertise: String,
    /// Register containers that carry no environment label.
    pub adopt_unlabeled: bool,
    /// Service names only the environment's own instances of that service
    /// may register under (`reserved: true` in the topology).
    pub reserved: BTreeSet<String>,
}

/// Meta keys every registration carries, so the agent can find its own.
pub const META_ENV: &str = "stagectl-env";
pub const META_HOST: &str = "stagectl-host";
pub const META_CONTAINER: &str = "stagectl-container";
/// Whether the instance is one of a declared service's own containers
/// ([`ORIGIN_DECLARED`]) or any other container that publishes a port
/// ([`ORIGIN_ADHOC`]): tells templates and people which instances `up`
/// manages.
pub const META_ORIGIN: &str = "stagectl-origin";
pub const ORIGIN_DECLARED: &str = "declared";
pub const ORIGIN_ADHOC: &str = "adhoc";

/// Why a container gets no registration (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    NotRunning,
    NotHealthy(String),
    OtherEnvironment(String),
    Unlabeled,
    Infrastructure,
    Ignored,
    NoPublishedPorts,
    /// It claims a reserved service name without being one of that
    /// service's own instances.
    Reserved(String),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotRunning => f.write_str("not running"),
            Skip::NotHealthy(status) => write!(f, "not healthy ({status})"),
            Skip::OtherEnvironment(env) => write!(f, "belongs to environment {env}"),
            Skip::Unlabeled => write!(
                f,
                "no {} label, and this agent adopts no unlabelled container",
                labels::ENV
            ),
            Skip::Infrastructure => f.write_str("one of stagectl's own agents"),
            Skip::Ignored => f.write_str("SERVICE_IGNORE is set"),
            Skip::NoPublishedPorts => f.write_str("no published TCP port"),
            Skip::Reserved(name) => write!(
                f,
                "service {name} is reserved for the instances stagectl runs for it, and this is not one"
            ),
        }
    }
}

pub fn registrations(c: &ContainerInfo, ctx: &AgentContext) -> Result<Vec<Registration>, Skip> {
    if !c.running {
        return Err(Skip::NotRunning);
    }
    match c.labels.get(labels::ENV) {
        Some(env) if *env != ctx.env => return Err(Skip::OtherEnvironment(env.clone())),
        None if !ctx.adopt_unlabeled => return Err(Skip::Unlabeled),
        _ => {}
    }
    if c.labels
        .get(labels::COMPONENT)
        .and_then(|k| labels::Component::from_label(k))
        .is_some_and(|k| labels::Component::AGENTS.contains(&k))
    {
        return Err(Skip::Infrastructure);
    }
    if let Some(h) = &c.health {
        if h != "healthy" {
            return Err(Skip::NotHealthy(h.clone()));
        }
    }
    let vars = settings(c);
    if truthy(vars.get("SERVICE_IGNORE")) {
        return Err(Skip::Ignored);
    }
    let ports: Vec<&PublishedPort> = c
        .ports
        .iter()
        .filter(|p| p.tcp && p.host_port != 0)
        .collect();
    if ports.is_empty() {
        return Err(Skip::NoPublishedPorts);
    }
    let interval = vars
        .get("SERVICE_CHECK_INTERVAL")
        .cloned()
        .unwrap_or_else(|| "1s".into());
    let timeout = vars
        .get("SERVICE_CHECK_TIMEOUT")
        .cloned()
        .unwrap_or_else(|| "1s".into());
    let failures_before_critical = vars
        .get("SERVICE_CHECK_RETRIES")
        .and_then(|r| r.parse::<u32>().ok())
        .filter(|r| *r > 1);
    let several = ports.len() > 1;
    let mut out = Vec::new();
    for p in ports {
        let per = |key: &str| vars.get(&format!("SERVICE_{}_{key}", p.container_port));
        if truthy(per("IGNORE")) {
            continue;
        }
        let name = match (per("NAME"), vars.get("SERVICE_NAME")) {
            (Some(n), _) => n.clone(),
            (None, Some(n)) if !several => n.clone(),
            (None, Some(n)) => format!("{n}-{}", p.container_port),
            (None, None) if !several => image_base_name(&c.image),
            (None, None) => format!("{}-{}", image_base_name(&c.image), p.container_port),
        };
        let name = sanitize(&name);
        if name.is_empty() {
            continue;
        }
        let declared = is_declared_instance(c, ctx, &name);
        if ctx.reserved.contains(&name) && !declared {
            // The whole container: one that impersonates a reserved service
            // on one port is not to be trusted with its others.
            return Err(Skip::Reserved(name));
        }
        let tags = per("TAGS")
            .or(vars.get("SERVICE_TAGS"))
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let target = format!("{}:{}", ctx.advertise, p.host_port);
        let http = per("CHECK_HTTP").or(vars.get("SERVICE_CHECK_HTTP"));
        let check = Check {
            tcp: http.is_none().then(|| target.clone()),
            http: http.map(|path| format!("http://{target}/{}", path.trim_start_matches('/'))),
            interval: interval.clone(),
            timeout: timeout.clone(),
            failures_before_critical,
            deregister_critical_service_after: "1m".into(),
            status: None,
        };
        out.push(Registration {
            id: labels::service_id(&ctx.host, &c.name, p.container_port),
            name,
            tags,
            address: ctx.advertise.clone(),
            port: p.host_port,
            meta: BTreeMap::from([
                (META_ENV.to_string(), ctx.env.clone()),
                (META_HOST.to_string(), ctx.host.clone()),
                (META_CONTAINER.to_string(), c.id.chars().take(12).collect()),
                (
                    META_ORIGIN.to_string(),
                    if declared {
                        ORIGIN_DECLARED
                    } else {
                        ORIGIN_ADHOC
                    }
                    .to_string(),
                ),
            ]),
            check,
        });
    }
    Ok(out)
}

/// Whether `c` is one of the instances `up` runs for the declared service
/// `name` in this environment: labelled as such by `desired`, which no user
/// label can override.
fn is_declared_instance(c: &ContainerInfo, ctx: &AgentContext, name: &str) -> bool {
    let label = |key: &str| c.labels.get(key).map(String::as_str);
    label(labels::ENV) == Some(ctx.env.as_str())
        && label(labels::COMPONENT) == Some(labels::Component::Service.label())
        && label(labels::SERVICE) == Some(name)
}

/// `SERVICE_*` settings: environment variables, overridden by labels.
fn settings(c: &ContainerInfo) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = c
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| k.starts_with("SERVICE_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &c.labels {
        if k.starts_with("SERVICE_") {
            vars.insert(k.clone(), v.clone());
        }
    }
    vars
}

fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "" | "0" | "false" | "no"))
}

/// `registry:5000/team/web:1.2@sha256:…` → `web`.
pub fn image_base_name(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last).to_string()
}

/// Service names end up in nginx `server_name`s and upstream names: keep
/// them to lowercase letters, digits and `-`.
pub fn sanitize(name: &str) -> String {
    let s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> AgentContext {
        AgentContext {
            env: "qa".into(),
            host: "host-1".into(),
            advertise: "10.77.0.11".into(),
            adopt_unlabeled: true,
            reserved: BTreeSet::new(),
        }
    }

    fn web() -> ContainerInfo {
        ContainerInfo {
            id: "0123456789abcdef".into(),
            name: "/qa-web-1".into(),
            image: "registry.local:5000/team/web:1.4".into(),
            labels: HashMap::from([(labels::ENV.to_string(), "qa".to_string())]),
            env: vec!["PATH=/usr/bin".into()],
            ports: vec![PublishedPort {
                container_port: 8080,
                host_port: 32768,
                tcp: true,
            }],
            running: true,
            health: None,
        }
    }

    #[test]
    fn one_port_uses_the_image_name_and_a_tcp_check() {
        let r = registrations(&web(), &ctx()).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "web");
        assert_eq!(r[0].id, "host-1:qa-web-1:8080");
        assert_eq!(r[0].address, "10.77.0.11");
        assert_eq!(r[0].port, 32768);
        assert_eq!(r[0].check.tcp.as_deref(), Some("10.77.0.11:32768"));
        assert_eq!(r[0].meta[META_CONTAINER], "0123456789ab");
    }

    #[test]
    fn names_tags_and_http_checks_from_env_and_labels() {
        let mut c = web();
        c.env.push("SERVICE_NAME=shop".into());
        c.env.push("SERVICE_TAGS=blue, v2,".into());
        c.labels.insert("SERVICE_NAME".into(), "Shop_Front".into());
        c.labels
            .insert("SERVICE_CHECK_HTTP".into(), "/health".into());
        let r = registrations(&c, &ctx()).unwrap();
        assert_eq!(
            r[0].name, "shop-front",
            "labels win, and names are sanitized"
        );
        assert_eq!(r[0].tags, vec!["blue".to_string(), "v2".to_string()]);
        assert_eq!(
            r[0].check.http.as_deref(),
            Some("http://10.77.0.11:32768/health")
        );
        assert!(r[0].check.tcp.is_none());
    }

    #[test]
    fn several_ports_get_suffixes_unless_named_per_port() {
        let mut c = web();
        c.ports.push(PublishedPort {
            container_port: 9090,
            host_port: 32769,
            tcp: true,
        });
        c.ports.push(PublishedPort {
            container_port: 53,
            host_port: 32770,
            tcp: false,
        });
        c.env.push("SERVICE_9090_NAME=metrics".into());
        let r = registrations(&c, &ctx()).unwrap();
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["web-8080", "metrics"]);
        assert_ne!(r[0].id, r[1].id);
        c.env.push("SERVICE_8080_IGNORE=1".into());
        assert_eq!(registrations(&c, &ctx()).unwrap().len(), 1);
    }

    #[test]
    fn what_is_never_registered() {
        let mut c = web();
        c.running = false;
        assert_eq!(registrations(&c, &ctx()), Err(Skip::NotRunning));

        let mut c = web();
        c.labels.insert(labels::ENV.into(), "prod".into());
        assert_eq!(
            registrations(&c, &ctx()),
            Err(Skip::OtherEnvironment("prod".into()))
        );

        let mut c = web();
        c.labels.insert(labels::COMPONENT.into(), "nginx".into());
        assert_eq!(registrations(&c, &ctx()), Err(Skip::Infrastructure));

        let mut c = web();
        c.env.push("SERVICE_IGNORE=true".into());
        assert_eq!(registrations(&c, &ctx()), Err(Skip::Ignored));

        let mut c = web();
        c.ports.clear();
        assert_eq!(registrations(&c, &ctx()), Err(Skip::NoPublishedPorts));

        let mut c = web();
        c.health = Some("starting".into());
        assert_eq!(
            registrations(&c, &ctx()),
            Err(Skip::NotHealthy("starting".into()))
        );
        c.health = Some("healthy".into());
        assert!(registrations(&c, &ctx()).is_ok());

        let mut c = web();
        c.labels.clear();
        assert!(
            registrations(&c, &ctx()).is_ok(),
            "unlabeled containers are adopted by default"
        );
        let strict = AgentContext {
            adopt_unlabeled: false,
            ..ctx()
        };
        assert_eq!(registrations(&c, &strict), Err(Skip::Unlabeled));
    }

    /// A container as `up` runs it for the declared service `service`.
    fn declared(service: &str) -> ContainerInfo {
        let mut c = web();
        c.labels.extend([
            (labels::COMPONENT.to_string(), "service".to_string()),
            (labels::SERVICE.to_string(), service.to_string()),
            ("SERVICE_NAME".to_string(), service.to_string()),
        ]);
        c
    }

    fn reserving(names: &[&str]) -> AgentContext {
        AgentContext {
            reserved: names.iter().map(|n| n.to_string()).collect(),
            ..ctx()
        }
    }

    #[test]
    fn a_reserved_name_claimed_by_another_container_is_not_registered() {
        let ctx = reserving(&["web", "api"]);
        // By its image's name, by SERVICE_NAME, unlabelled, or as an
        // instance of another declared service of the environment.
        let by_image = web();
        let mut by_env = web();
        by_env.image = "team/whatever:1".into();
        by_env.env.push("SERVICE_NAME=api".into());
        let mut unlabeled = web();
        unlabeled.labels.clear();
        let mut other_service = declared("shop");
        other_service
            .labels
            .insert("SERVICE_NAME".into(), "web".into());
        let mut other_env = declared("web");
        other_env.labels.insert(labels::ENV.into(), "prod".into());
        for (c, name) in [
            (&by_image, "web"),
            (&by_env, "api"),
            (&unlabeled, "web"),
            (&other_service, "web"),
        ] {
            assert_eq!(
                registrations(c, &ctx),
                Err(Skip::Reserved(name.into())),
                "{c:?}"
            );
        }
        assert_eq!(
            registrations(&other_env, &ctx),
            Err(Skip::OtherEnvironment("prod".into()))
        );
        assert!(Skip::Reserved("web".into())
            .to_string()
            .contains("service web is reserved"));
        assert!(
            registrations(&by_image, &reserving(&["api"])).is_ok(),
            "names not reserved are free to claim"
        );
    }

    #[test]
    fn a_reserved_name_is_registered_for_its_own_instances() {
        let r = registrations(&declared("web"), &reserving(&["web"])).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "web");
        assert_eq!(r[0].meta[META_ORIGIN], ORIGIN_DECLARED);
    }

    #[test]
    fn origin_tells_declared_instances_from_adhoc_containers() {
        let ctx = ctx();
        let origin =
            |c: &ContainerInfo| registrations(c, &ctx).unwrap()[0].meta[META_ORIGIN].clone();
        assert_eq!(origin(&declared("web")), ORIGIN_DECLARED);
        assert_eq!(origin(&web()), ORIGIN_ADHOC, "env label only");
        let mut unlabeled = web();
        unlabeled.labels.clear();
        assert_eq!(origin(&unlabeled), ORIGIN_ADHOC);
        let mut renamed = declared("web");
        renamed.labels.insert("SERVICE_NAME".into(), "shop".into());
        assert_eq!(
            origin(&renamed),
            ORIGIN_ADHOC,
            "registered under another name than its service's"
        );
    }

    #[test]
    fn labeled_only_ignores_containers_without_the_environment_label() {
        let labeled_only = AgentContext {
            adopt_unlabeled: false,
            ..ctx()
        };
        let mut unlabeled = web();
        unlabeled.labels.clear();
        unlabeled.env.push("SERVICE_NAME=web".into());
        assert_eq!(
            registrations(&unlabeled, &labeled_only),
            Err(Skip::Unlabeled)
        );
        assert_eq!(registrations(&web(), &labeled_only).unwrap().len(), 1);
        assert_eq!(
            registrations(&declared("web"), &labeled_only)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn image_base_names() {
        assert_eq!(image_base_name("nginx"), "nginx");
        assert_eq!(image_base_name("stagectl/demo:latest"), "demo");
        assert_eq!(image_base_name("reg:5000/a/b/web:1@sha256:abc"), "web");
        assert_eq!(sanitize("--My.App_v2--"), "my-app-v2");
    }
}
