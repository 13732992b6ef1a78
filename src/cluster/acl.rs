//! What each of an environment's Consul ACL tokens may do: one policy per
//! role, as the rules text Consul 1.8's `PUT /v1/acl/policy` takes.
//!
//! Each role gets the least its caller needs, so that under
//! `default_policy = "deny"` a process holding one token cannot rewrite what
//! another one trusts:
//! - a host's registration agent writes services only on its own node
//!   (`service:write` alone cannot place a service on another node: the
//!   catalog asks `node:write` for that node too), and reads the members
//!   and raft peers (`stagectl agent cluster` answers with its token);
//! - a host's Consul agent writes its own node and may leave it (`consul
//!   leave` in a client's container runs with it);
//! - the template agent and the UI only read;
//! - every token reads the members and raft peers (`node_prefix` and
//!   `operator` read): Consul filters a list by what the token may see, so
//!   a token without them would see a cluster where everyone has left, and
//!   whichever agent answers `stagectl agent cluster` must see it whole;
//! - stagectl's own token writes only its environment's keys, and holds
//!   `operator:write` and `agent:write` because `force-leave` and `leave` ask
//!   for them (checked against Consul 1.8.7: with `operator = "read"`,
//!   `consul force-leave` answers 403).
//!
//! Checked against Consul 1.8.7 (`consul agent -dev` with ACLs on and
//! `default_policy = "deny"`, a token per policy): with no token, KV reads
//! and writes, service registration, raft peers and `force-leave` answer
//! 403, and `consul members` answers an empty list with exit code 0 (so a
//! caller without a token must not read "no members" as "everyone left");
//! stagectl's token writes `stagectl/<env>/` but no other key; only the
//! registration agent's registers services; the UI's reads keys, members and
//! peers and writes nothing.
//!
//! Every token's IDs are derived from the environment's record key (see
//! `cluster::record`), which only the Consul servers and stagectl hold: a
//! second machine works them out again from the hosts with nothing kept
//! locally, and rotating the record key rotates every token with it.
//!
//! Pure: the names, rules and IDs only; creating them in Consul is
//! `acl_sync`'s job, which `up` runs against a server
//! (see `cluster::consul::ensure_acl`).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Where each agent container (Consul's and stagectl's) keeps the one
/// token it uses (0600): the Consul CLI reads it through
/// `CONSUL_HTTP_TOKEN_FILE`, the agents through `--token-file`. Never in
/// the container's spec, environment or command line.
pub const TOKEN_PATH: &str = "/run/stagectl/consul-token";

/// Whose token a policy is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role<'a> {
    /// stagectl itself: its record in KV, membership, raft peers, leaving.
    Stagectl,
    /// The registration agent on `host`: the services of that host.
    Register { host: &'a str },
    /// The template agent: reads the catalog and instances' health.
    Template,
    /// `stagectl ui`: everything the UI shows, nothing it could change.
    Ui,
    /// The Consul agent on `host` (its `acl.tokens.agent`): its own node.
    ConsulAgent { host: &'a str },
}

/// A policy as Consul stores it: a unique name and its rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    pub rules: String,
}

/// The policy of `role` in environment `env`, named
/// `stagectl-<env>-<role>[-<host>]` so that environments sharing a cluster
/// never share a policy.
pub fn policy(env: &str, role: &Role) -> Policy {
    let all_read = "node_prefix \"\" { policy = \"read\" }\n\
                    service_prefix \"\" { policy = \"read\" }\n";
    let (suffix, rules) = match role {
        Role::Stagectl => (
            "stagectl".to_string(),
            format!(
                "key_prefix {} {{ policy = \"write\" }}\n{all_read}\
                 agent_prefix \"\" {{ policy = \"write\" }}\n\
                 operator = \"write\"\n",
                quoted(&key_prefix(env))
            ),
        ),
        Role::Register { host } => (
            format!("register-{host}"),
            format!(
                "node {} {{ policy = \"write\" }}\n\
                 agent {} {{ policy = \"read\" }}\n\
                 service_prefix \"\" {{ policy = \"write\" }}\n\
                 node_prefix \"\" {{ policy = \"read\" }}\n\
                 operator = \"read\"\n",
                quoted(host),
                quoted(host)
            ),
        ),
        Role::Template => (
            "template".to_string(),
            format!("{all_read}operator = \"read\"\n"),
        ),
        Role::Ui => (
            "ui".to_string(),
            format!(
                "key_prefix {} {{ policy = \"read\" }}\n{all_read}\
                 agent_prefix \"\" {{ policy = \"read\" }}\n\
                 operator = \"read\"\n",
                quoted(&key_prefix(env))
            ),
        ),
        Role::ConsulAgent { host } => (
            format!("agent-{host}"),
            format!(
                "node {} {{ policy = \"write\" }}\n\
                 agent {} {{ policy = \"write\" }}\n\
                 node_prefix \"\" {{ policy = \"read\" }}\n\
                 service_prefix \"\" {{ policy = \"read\" }}\n\
                 operator = \"read\"\n",
                quoted(host),
                quoted(host)
            ),
        ),
    };
    Policy {
        name: format!("stagectl-{env}-{suffix}"),
        rules,
    }
}

/// One token stagectl keeps in Consul: its policy and its two IDs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub policy: Policy,
    /// The public ID Consul lists and updates a token by.
    pub accessor: String,
    /// The secret a request carries.
    pub secret: String,
}

/// Everything `up` makes sure of in Consul: every role's policy and
/// token, and the management token it does so with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AclPlan {
    /// The initial management token (`acl.tokens.master` on the servers):
    /// Consul creates it when a server first becomes leader.
    pub master: String,
    pub tokens: Vec<Token>,
}

/// The token of `role` in environment `env`.
pub fn token(record_key: &[u8], env: &str, role: &Role) -> Token {
    let policy = policy(env, role);
    Token {
        accessor: derived_uuid(record_key, "accessor", &policy.name),
        secret: derived_uuid(record_key, "secret", &policy.name),
        policy,
    }
}

/// The environment's management token.
pub fn master(record_key: &[u8], env: &str) -> String {
    derived_uuid(record_key, "secret", &format!("stagectl-{env}-master"))
}

/// Every token of environment `env` whose hosts are `hosts`.
pub fn plan(record_key: &[u8], env: &str, hosts: &[&str]) -> AclPlan {
    let mut roles = vec![Role::Stagectl, Role::Template, Role::Ui];
    for host in hosts {
        roles.push(Role::Register { host });
        roles.push(Role::ConsulAgent { host });
    }
    AclPlan {
        master: master(record_key, env),
        tokens: roles.iter().map(|r| token(record_key, env, r)).collect(),
    }
}

/// A UUID (the form Consul takes IDs in) from HMAC-SHA256 under the record
/// key: unguessable without the key, the same on every machine with it.
fn derived_uuid(record_key: &[u8], kind: &str, name: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(record_key).expect("HMAC takes keys of any length");
    for part in ["stagectl acl ", kind, "\0", name] {
        mac.update(part.as_bytes());
    }
    let mut b: [u8; 16] = mac.finalize().into_bytes()[..16]
        .try_into()
        .expect("16 of 32 bytes");
    // Version 4 and the RFC 4122 variant, as a random UUID has.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The KV prefix an environment's records live under.
pub fn key_prefix(env: &str) -> String {
    format!("stagectl/{env}/")
}

/// A string literal for the rules: JSON's escaping is HCL's, so a name can
/// never close the literal and add a rule of its own.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_has_its_own_name_per_environment() {
        let names: Vec<String> = [
            Role::Stagectl,
            Role::Register { host: "host-1" },
            Role::Register { host: "host-2" },
            Role::Template,
            Role::Ui,
            Role::ConsulAgent { host: "host-1" },
        ]
        .iter()
        .map(|r| policy("qa", r).name)
        .collect();
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert_eq!(names[1], "stagectl-qa-register-host-1");
        assert_ne!(policy("qa", &Role::Ui).name, policy("qb", &Role::Ui).name);
    }

    #[test]
    fn only_stagectl_writes_keys_and_only_its_environment_s() {
        let stagectl = policy("qa", &Role::Stagectl).rules;
        assert!(stagectl.contains("key_prefix \"stagectl/qa/\" { policy = \"write\" }"));
        assert!(!stagectl.contains("key_prefix \"\""));
        for role in [
            Role::Register { host: "host-1" },
            Role::Template,
            Role::Ui,
            Role::ConsulAgent { host: "host-1" },
        ] {
            let rules = policy("qa", &role).rules;
            assert!(!rules.contains("key_prefix \"stagectl/qa/\" { policy = \"write\""));
            assert!(!rules.contains("operator = \"write\""), "{role:?}");
        }
    }

    #[test]
    fn readers_write_nothing_and_writers_only_their_own_node() {
        for role in [Role::Template, Role::Ui] {
            assert!(!policy("qa", &role).rules.contains("\"write\""), "{role:?}");
        }
        let register = policy("qa", &Role::Register { host: "host-1" }).rules;
        assert!(register.contains("node \"host-1\" { policy = \"write\" }"));
        let agent = policy("qa", &Role::ConsulAgent { host: "host-1" }).rules;
        assert!(agent.contains("node \"host-1\" { policy = \"write\" }"));
        for rules in [register, agent] {
            assert!(!rules.contains("node_prefix \"\" { policy = \"write\""));
            assert!(!rules.contains("agent_prefix"));
        }
    }

    #[test]
    fn tokens_are_uuids_of_the_key_environment_and_role() {
        let key = [7u8; 32];
        let t = token(&key, "qa", &Role::Template);
        assert_eq!(
            t,
            token(&key, "qa", &Role::Template),
            "the same on every machine"
        );
        let uuid = is_uuid(&t.secret);
        assert!(uuid, "{}", t.secret);
        assert!(is_uuid(&t.accessor));
        let others = [
            token(&[8u8; 32], "qa", &Role::Template).secret,
            token(&key, "qb", &Role::Template).secret,
            token(&key, "qa", &Role::Ui).secret,
            t.accessor.clone(),
            master(&key, "qa"),
        ];
        for other in others {
            assert_ne!(other, t.secret);
        }
        let plan = plan(&key, "qa", &["host-1", "host-2"]);
        assert_eq!(plan.tokens.len(), 3 + 2 * 2);
    }

    /// Consul's own check: 8-4-4-4-12 lowercase hex digits.
    fn is_uuid(s: &str) -> bool {
        let parts: Vec<&str> = s.split('-').collect();
        parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
            && s.chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    }

    #[test]
    fn a_name_cannot_break_out_of_its_literal() {
        let host = "h\" { policy = \"write\" }\nnode_prefix \"";
        let rules = policy("qa", &Role::Register { host }).rules;
        assert!(!rules.contains("node_prefix \"\" { policy = \"write\""));
        assert!(rules.contains(r#"node "h\" { policy = \"write\" }\nnode_prefix \"" {"#));
    }
}
