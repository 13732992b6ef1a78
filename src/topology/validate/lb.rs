//! The `lb:` section: the DNS domain services answer under, the nginx
//! template (readable, and a template minijinja accepts) and the timings of
//! applying changes.

use serde_saphyr::Spanned;

use super::Validator;
use crate::topology::model::{EdgeTls, LbSettings};
use crate::topology::raw::{RawEdgeTls, RawLb};

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
            let (path, text) = self.read_text(&t);
            let text = text.unwrap_or_default();
            if let Err(e) = minijinja::Environment::new().template_from_str(&text) {
                self.error(
                    &t.referenced,
                    format!("lb.template {}: {e}", path.display()),
                );
            }
            (path, text)
        });
        let edge = raw.edge.unwrap_or(false);
        let edge_tls = raw.edge_tls.and_then(|tls| {
            if !edge {
                self.error(
                    &tls.referenced,
                    "lb.edge_tls is the certificate of the edge proxy; it needs lb.edge: true",
                );
            }
            self.edge_tls(tls.value)
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
            edge,
            edge_tls,
        }
    }

    /// The user's certificate and key: both readable PEM, the key a
    /// private key, the certificate a certificate.
    fn edge_tls(&mut self, raw: RawEdgeTls) -> Option<EdgeTls> {
        let mut read = |p: &Spanned<String>, marker: &str, what: &str| {
            let (path, text) = self.read_text(p);
            let text = text?;
            if !text.contains(marker) {
                self.error(
                    &p.referenced,
                    format!("{}: not a PEM {what}", path.display()),
                );
                return None;
            }
            Some((path, text))
        };
        let cert = read(&raw.cert, "-----BEGIN CERTIFICATE-----", "certificate");
        let key = read(&raw.key, "PRIVATE KEY-----", "private key");
        let ((cert_path, cert_pem), (key_path, key_pem)) = (cert?, key?);
        Some(EdgeTls {
            cert_path,
            key_path,
            cert_pem,
            key_pem,
        })
    }
}
