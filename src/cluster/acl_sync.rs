//! Making a cluster's ACL policies and tokens those of an [`AclPlan`]:
//! what `up` does against a server, with the management token.
//!
//! The decisions are pure ([`requests`]: Consul's lists in, the requests
//! to make out), each with its cause, and the lists alone decide: every
//! object stagectl makes carries a description that says whose it is and a
//! digest of what it holds (Consul's lists leave the rules out), so the
//! steady state, which is every `up` but the first, costs two reads.

use std::time::Duration;

use anyhow::{Context, Result};
use hyper::Method;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::cluster::acl::AclPlan;
use crate::cluster::http::{encode, ConsulClient};

/// A policy as `GET /v1/acl/policies` lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListedPolicy {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// A token as `GET /v1/acl/tokens` lists it (never with its secret).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListedToken {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(default)]
    pub description: String,
}

/// One request to make, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub change: Change,
    pub path: String,
    pub body: Option<serde_json::Value>,
    pub cause: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Create,
    Update,
    Delete,
}

impl Change {
    fn method(self) -> Method {
        match self {
            Change::Create | Change::Update => Method::PUT,
            Change::Delete => Method::DELETE,
        }
    }
}

/// What [`ensure`] changed: nothing in the steady state.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Changes {
    pub created: usize,
    pub updated: usize,
    pub removed: usize,
}

/// The description Consul gives the management token it makes from a
/// server's `acl.tokens.master`.
const CONSUL_MASTER_DESCRIPTION: &str = "Master Token";

/// What stagectl writes in the description of what it makes in `env`.
fn description(env: &str, content: &str) -> String {
    let digest = sha2::Sha256::digest(content.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("stagectl env={env} content={hex}")
}

/// Whether `description` marks an object stagectl made in `env`.
fn made_in(description: &str, env: &str) -> bool {
    description
        .strip_prefix("stagectl env=")
        .and_then(|rest| rest.split_once(' '))
        .is_some_and(|(e, _)| e == env)
}

/// The requests that make Consul's `policies` and `tokens` those of `plan`:
/// what is missing is created, what differs updated, what stagectl made
/// in `env` and the plan no longer has (a host that left, an earlier
/// record key's tokens) deleted, tokens before the policies they link to.
pub fn requests(
    env: &str,
    plan: &AclPlan,
    policies: &[ListedPolicy],
    tokens: &[ListedToken],
) -> Vec<Request> {
    let mut out = Vec::new();
    let put = |change, path: String, body: serde_json::Value, cause: String| Request {
        change,
        path,
        body: Some(body),
        cause,
    };
    for token in &plan.tokens {
        let p = &token.policy;
        let wanted = description(env, &p.rules);
        let body = serde_json::json!({ "Name": p.name, "Description": wanted, "Rules": p.rules });
        match policies.iter().find(|l| l.name == p.name) {
            Some(l) if l.description == wanted => {}
            Some(l) => out.push(put(
                Change::Update,
                format!("/v1/acl/policy/{}", encode(&l.id)),
                body,
                format!("policy {}: its rules changed", p.name),
            )),
            None => out.push(put(
                Change::Create,
                "/v1/acl/policy".into(),
                body,
                format!("policy {}: missing", p.name),
            )),
        }
        let wanted = description(env, &p.name);
        let body = serde_json::json!({
            "AccessorID": token.accessor,
            "SecretID": token.secret,
            "Description": wanted,
            "Policies": [{ "Name": p.name }],
        });
        match tokens.iter().find(|l| l.accessor_id == token.accessor) {
            Some(l) if l.description == wanted => {}
            Some(_) => out.push(put(
                Change::Update,
                format!("/v1/acl/token/{}", encode(&token.accessor)),
                body,
                format!("token of {}: not as planned", p.name),
            )),
            None => out.push(put(
                Change::Create,
                "/v1/acl/token".into(),
                body,
                format!("token of {}: missing", p.name),
            )),
        }
    }
    let delete = |path: String, cause: String| Request {
        change: Change::Delete,
        path,
        body: None,
        cause,
    };
    for l in tokens.iter().filter(|l| made_in(&l.description, env)) {
        if !plan.tokens.iter().any(|t| t.accessor == l.accessor_id) {
            out.push(delete(
                format!("/v1/acl/token/{}", encode(&l.accessor_id)),
                format!("token {}: no longer planned", l.accessor_id),
            ));
        }
    }
    for l in policies.iter().filter(|l| made_in(&l.description, env)) {
        if !plan.tokens.iter().any(|t| t.policy.name == l.name) {
            out.push(delete(
                format!("/v1/acl/policy/{}", encode(&l.id)),
                format!("policy {}: no longer planned", l.name),
            ));
        }
    }
    out
}

/// Make it so, through `client` (which carries the management token).
/// Consul keeps the management token of every record key a server was
/// configured with: all but the one `client` holds are deleted too (asked
/// only when there is more than one).
pub async fn ensure(client: &ConsulClient, env: &str, plan: &AclPlan) -> Result<Changes> {
    let t = Duration::from_secs(10);
    let (_, body) = client
        .call(Method::GET, "/v1/acl/policies", None, t)
        .await?;
    let policies: Vec<ListedPolicy> =
        serde_json::from_slice(&body).context("Consul's policy list")?;
    let (_, body) = client.call(Method::GET, "/v1/acl/tokens", None, t).await?;
    let tokens: Vec<ListedToken> = serde_json::from_slice(&body).context("Consul's token list")?;
    let mut todo = requests(env, plan, &policies, &tokens);
    let masters: Vec<&ListedToken> = tokens
        .iter()
        .filter(|l| l.description == CONSUL_MASTER_DESCRIPTION)
        .collect();
    if masters.len() > 1 {
        let (_, body) = client
            .call(Method::GET, "/v1/acl/token/self", None, t)
            .await?;
        let current: ListedToken =
            serde_json::from_slice(&body).context("Consul's answer about our token")?;
        for l in masters
            .iter()
            .filter(|l| l.accessor_id != current.accessor_id)
        {
            todo.insert(
                0,
                Request {
                    change: Change::Delete,
                    path: format!("/v1/acl/token/{}", encode(&l.accessor_id)),
                    body: None,
                    cause: "a management token of an earlier record key".into(),
                },
            );
        }
    }
    let mut changes = Changes::default();
    for r in todo {
        let body = r.body.as_ref().map(|b| b.to_string().into_bytes());
        client
            .call(r.change.method(), &r.path, body, t)
            .await
            .with_context(|| r.cause.clone())?;
        match r.change {
            Change::Create => changes.created += 1,
            Change::Update => changes.updated += 1,
            Change::Delete => changes.removed += 1,
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::acl;

    /// Consul's lists as they are once `plan` was applied.
    fn applied(env: &str, plan: &AclPlan) -> (Vec<ListedPolicy>, Vec<ListedToken>) {
        let policies = plan
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| ListedPolicy {
                id: format!("p{i}"),
                name: t.policy.name.clone(),
                description: description(env, &t.policy.rules),
            })
            .collect();
        let tokens = plan
            .tokens
            .iter()
            .map(|t| ListedToken {
                accessor_id: t.accessor.clone(),
                description: description(env, &t.policy.name),
            })
            .collect();
        (policies, tokens)
    }

    #[test]
    fn nothing_to_do_once_applied_and_everything_on_an_empty_cluster() {
        let plan = acl::plan(&[1; 32], "qa", &["host-1", "host-2"]);
        let (policies, tokens) = applied("qa", &plan);
        assert_eq!(requests("qa", &plan, &policies, &tokens), vec![]);
        let all = requests("qa", &plan, &[], &[]);
        assert_eq!(all.len(), 2 * plan.tokens.len());
        assert!(all.iter().all(|r| r.change == Change::Create));
    }

    #[test]
    fn a_host_that_left_loses_its_tokens_and_only_stagectl_s_own_go() {
        let before = acl::plan(&[1; 32], "qa", &["host-1", "host-2"]);
        let (mut policies, mut tokens) = applied("qa", &before);
        // Another environment's and an operator's own: never touched.
        policies.push(ListedPolicy {
            id: "theirs".into(),
            name: "stagectl-qa-b-ui".into(),
            description: description("qa-b", "x"),
        });
        tokens.push(ListedToken {
            accessor_id: "operator".into(),
            description: "my token".into(),
        });
        let after = acl::plan(&[1; 32], "qa", &["host-1"]);
        let todo = requests("qa", &after, &policies, &tokens);
        let causes: Vec<&str> = todo.iter().map(|r| r.cause.as_str()).collect();
        assert_eq!(todo.len(), 4, "{causes:?}");
        assert!(todo.iter().all(|r| r.change == Change::Delete));
        assert!(
            causes[2].contains("stagectl-qa-register-host-2"),
            "{causes:?}"
        );
        assert!(!todo
            .iter()
            .any(|r| r.path.contains("theirs") || r.path.contains("operator")));
    }

    #[test]
    fn changed_rules_and_a_new_key_are_updates_and_replacements() {
        let plan = acl::plan(&[1; 32], "qa", &["host-1"]);
        let (mut policies, tokens) = applied("qa", &plan);
        policies[0].description = description("qa", "older rules");
        let todo = requests("qa", &plan, &policies, &tokens);
        assert_eq!(todo.len(), 1);
        assert_eq!(
            (todo[0].change, todo[0].path.as_str()),
            (Change::Update, "/v1/acl/policy/p0")
        );
        // Another record key: every token is new, the old ones go.
        let rotated = acl::plan(&[2; 32], "qa", &["host-1"]);
        let todo = requests("qa", &rotated, &policies, &tokens);
        let created = todo.iter().filter(|r| r.path == "/v1/acl/token").count();
        let deleted = todo.iter().filter(|r| r.change == Change::Delete).count();
        assert_eq!((created, deleted), (plan.tokens.len(), plan.tokens.len()));
    }
}
