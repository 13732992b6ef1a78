//! What each of an environment's Consul ACL tokens may do: one policy per
//! role, as the rules text Consul 1.8's `PUT /v1/acl/policy` takes.
//!
//! Each role gets the least its caller needs, so that under
//! `default_policy = "deny"` a process holding one token cannot rewrite what
//! another one trusts:
//! - a host's registration agent writes services only on its own node
//!   (`service:write` alone cannot place a service on another node: the
//!   catalog asks `node:write` for that node too);
//! - the template agent and the UI only read;
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
//! Pure: the names and rules only; creating them is the caller's job.

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
                 service_prefix \"\" {{ policy = \"write\" }}\n",
                quoted(host),
                quoted(host)
            ),
        ),
        Role::Template => ("template".to_string(), all_read.to_string()),
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
                 service_prefix \"\" {{ policy = \"read\" }}\n",
                quoted(host)
            ),
        ),
    };
    Policy {
        name: format!("stagectl-{env}-{suffix}"),
        rules,
    }
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
        assert!(!register.contains("node_prefix"));
        let agent = policy("qa", &Role::ConsulAgent { host: "host-1" }).rules;
        assert!(agent.contains("node \"host-1\" { policy = \"write\" }"));
        assert!(!agent.contains("node_prefix"));
    }

    #[test]
    fn a_name_cannot_break_out_of_its_literal() {
        let host = "h\" { policy = \"write\" }\nnode_prefix \"";
        let rules = policy("qa", &Role::Register { host }).rules;
        assert!(!rules.contains("\nnode_prefix"));
        assert!(rules.contains(r#"node "h\" { policy = \"write\" }\nnode_prefix \"" {"#));
    }
}
