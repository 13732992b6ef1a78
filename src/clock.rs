//! Wall-clock time as Unix seconds: what records kept on the hosts (the
//! lock, the last `up`, the template agent's last reload) carry, so any
//! machine reading them can tell their age.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; 0 on a clock set before it.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
