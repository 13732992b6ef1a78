//! stagectl: a YAML topology of Docker hosts in, a staging environment with
//! Consul discovery and nginx load balancing out.
//!
//! The data flows one way, and the modules follow it (each imports only
//! those listed after it; `tests/layout.rs` checks the README's drawing):
//!
//! - [`commands`]: one thin module per verb.
//! - [`pipeline`]: connect every host once, take the snapshot, execute the
//!   plan, and report events to a terminal, plain lines or JSON.
//! - [`plan`]: the model → what each host should run (pure), then desired
//!   against a snapshot of what runs → one plan of steps (pure).
//! - [`agent`]: what runs inside the containers (registration, template).
//! - [`cluster`]: Consul as stagectl sees it from outside.
//! - [`engine`]: the hosts' container engines behind one trait (Docker over
//!   SSH, TLS or a socket; the local lab; an in-memory one for tests).
//! - [`topology`]: the file → a validated model (no I/O beyond reading it).
//! - [`spec`] and [`labels`]: the plain types and the label contract every
//!   layer shares; they import nothing of the project.

pub mod agent;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod edge;
pub mod engine;
pub mod error;
pub mod labels;
pub mod lock;
pub mod pipeline;
pub mod plan;
pub mod poll;
pub mod secrets;
pub mod spec;
pub mod state;
pub mod style;
pub mod terminal;
pub mod topology;
