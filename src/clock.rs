//! Wall-clock time as Unix seconds: what records kept on the hosts (the
//! lock, the last `up`, the template agent's last reload) carry, so any
//! machine reading them can tell their age.

use std::time::{SystemTime, UNIX_EPOCH};

/// `42 s`, `7 min`, `3 h`, `2 d`: a duration at a glance.
pub fn span(seconds: u64) -> String {
    match seconds {
        0..=119 => format!("{seconds} s"),
        120..=7199 => format!("{} min", seconds / 60),
        7200..=172_799 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}

/// Seconds since the Unix epoch; 0 on a clock set before it.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
