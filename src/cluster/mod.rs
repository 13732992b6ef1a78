//! Consul as stagectl sees it from outside: the cluster's members and
//! leader (`view`, and `consul`, which asks the agents for them), Consul's
//! HTTP API as the agents use it (`http`), what each ACL token may do
//! (`acl`) and making them so in Consul (`acl_sync`), the records
//! stagectl keeps in its KV (`record`), and the CA and certificates of its
//! RPC (`tls`).

pub mod acl;
pub mod acl_sync;
pub mod consul;
pub mod http;
pub mod record;
pub mod tls;
pub mod view;
