//! Names: the environment's `name`, and the short-name rule it shares with
//! lab, host and datacenter names.

use serde_saphyr::Spanned;

use super::Validator;

/// Longest environment, lab or host name; Docker object names are built from
/// them (`<env>-<component>`), and short names keep `docker ps` readable.
const MAX_NAME_LEN: usize = 32;

/// 1 to `max` lowercase letters, digits or `-`, not starting with `-`.
pub(super) fn is_short_name(n: &str, max: usize) -> bool {
    !n.is_empty()
        && n.len() <= max
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Validator {
    /// Names end up in Docker object names and Consul node names.
    pub(super) fn name(&mut self, name: &Spanned<String>, what: &str) {
        let n = &name.value;
        if !is_short_name(n, MAX_NAME_LEN) {
            self.error(
                &name.referenced,
                format!(
                    "{what} `{n}` is not valid; expected 1 to {MAX_NAME_LEN} lowercase letters, digits or `-`, starting with a letter or digit"
                ),
            );
        }
    }
}
