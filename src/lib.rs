//! stagectl: a YAML topology of Docker hosts in, a staging environment with
//! Consul discovery and nginx load balancing out.
//!
//! The data flows one way, and the modules follow it:
//!
//! - [`topology`]: the file → a validated model (no I/O beyond reading it).
//! - [`desired`]: the model → the containers and volumes each host should
//!   have (pure).
//! - [`reconcile`]: desired versus observed → a plan of actions (pure).
//! - [`docker`], [`connect`], [`lab`], [`consul`]: the edges that touch the
//!   world, with plain types at their boundaries.
//! - [`commands`]: `up`, `down`, `plan`, `status`, `validate`: each wires the
//!   above together and reports through [`progress`].

pub mod agent;
pub mod cli;
pub mod commands;
pub mod connect;
pub mod consul;
pub mod consul_http;
pub mod desired;
pub mod docker;
pub mod error;
pub mod lab;
pub mod labels;
pub mod ports;
pub mod progress;
pub mod reconcile;
pub mod state;
pub mod topology;
