//! The `lb:` section: the DNS domain services answer under, the nginx
//! template (readable, and a template minijinja accepts) and the timings of
//! applying changes.

use serde_saphyr::Spanned;

use super::Validator;
use crate::topology::model::LbSettings;
use crate::topology::raw::RawLb;

impl Validator {
    pub(super) fn lb(&mut self, raw: RawLb) -> LbSettings {
        let d = LbSettings::default();
        let domain = match raw.domain {
            Some(dom) => {
                let ok = !dom.value.is_empty()
                    && dom.value.len() <= 200
                    && dom.value.split('.').all(|l| {
                        !l.is_empty()
                            && l.chars()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    });
                if !ok {
                    self.error(&dom.referenced, format!("lb.domain `{}` is not a DNS domain (lowercase labels separated by dots)", dom.value));
                }
                dom.value
            }
            None => d.domain,
        };
        let template = raw.template.map(|t| {
            let path = self.resolve(&t);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    if let Err(e) = minijinja::Environment::new().template_from_str(&text) {
                        self.error(
                            &t.referenced,
                            format!("lb.template {}: {e}", path.display()),
                        );
                    }
                    (path, text)
                }
                Err(e) => {
                    self.error(
                        &t.referenced,
                        format!("cannot read {}: {e}", path.display()),
                    );
                    (path, String::new())
                }
            }
        });
        let mut ms = |v: Option<Spanned<i64>>,
                      what: &str,
                      default: u64,
                      range: std::ops::RangeInclusive<i64>| match v {
            None => default,
            Some(v) if range.contains(&v.value) => v.value as u64,
            Some(v) => {
                self.error(
                    &v.referenced,
                    format!(
                        "lb.{what} {} is out of range; expected {} to {}",
                        v.value,
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        };
        let quiet_ms = ms(raw.quiet_ms, "quiet_ms", d.quiet_ms, 0..=10_000);
        let max_wait_ms = ms(raw.max_wait_ms, "max_wait_ms", d.max_wait_ms, 1..=60_000);
        LbSettings {
            domain,
            template,
            quiet_ms,
            max_wait_ms,
            edge: raw.edge.unwrap_or(false),
        }
    }
}
