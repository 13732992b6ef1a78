//! The agents: long-running parts of stagectl that run in containers of the
//! agent image next to Consul on each host (host network, Docker socket).
//!
//! - `register`: containers with published ports → Consul services
//!   (what registrator did).
//! - `template`: healthy instances in Consul → nginx config and reload
//!   (what consul-template did).
//!
//! Both run on a single-threaded runtime: they wait on I/O almost always,
//! and one thread keeps their memory small.

pub mod coalesce;
pub mod register;
pub mod registration;
pub mod render;
pub mod routes;
pub mod template;

/// One log line on stderr; `docker logs -t` adds the time.
pub fn log(msg: &str) {
    eprintln!("{msg}");
}
