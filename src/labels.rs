//! The labels stagectl puts on everything it creates.
//!
//! Ownership is decided by labels, never by names: `down` removes exactly what
//! carries this environment's label, so a same-named container someone else
//! made is never touched, and a renamed one of ours is still found.

/// The environment a container, volume or network belongs to.
pub const ENV: &str = "io.stagectl.env";
/// What the container is: `consul`, `register`, `nginx`, `template`, ...
pub const COMPONENT: &str = "io.stagectl.component";
/// The topology host it was planned for.
pub const HOST: &str = "io.stagectl.host";
/// Hash of the desired spec it was created from; a different hash means the
/// topology changed and the container is replaced.
pub const SPEC_HASH: &str = "io.stagectl.spec-hash";
/// The local lab a lab host container or lab network belongs to.
pub const LAB: &str = "io.stagectl.lab";
/// The topology host name a lab host container stands for.
pub const LAB_HOST: &str = "io.stagectl.lab-host";

/// A Docker API label filter for `key=value`.
pub fn filter(key: &str, value: &str) -> std::collections::HashMap<String, Vec<String>> {
    std::collections::HashMap::from([("label".to_string(), vec![format!("{key}={value}")])])
}
