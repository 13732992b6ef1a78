//! Consul and the agents as stagectl sees them from outside: the cluster's
//! members and leader (`consul`), Consul's HTTP API as the agents use it
//! (`http`), what the load-balancer host reports (`discovery`), and what each
//! ACL token may do (`acl`) and making them so in Consul (`acl_sync`), and
//! the CA and certificates of its RPC (`tls`).

pub mod acl;
pub mod acl_sync;
pub mod consul;
pub mod discovery;
pub mod http;
pub mod record;
pub mod tls;
