//! The certificate authority of a set of hosts and the certificates it
//! issues to environments (pure: keys and certificates in, PEM out).
//!
//! No internet and no ACME: stagectl makes one CA per domain on a set of
//! load balancer hosts, name-constrained to that domain, keeps it there
//! (see [`super::ca_holder`]), and issues each environment a wildcard
//! certificate for `*.<env>.<domain>` when its route is written. Users trust the CA once (`stagectl ca` prints its
//! certificate, never its key).

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use time::{Duration, OffsetDateTime};

/// File names in the CA volume.
pub const CERT_FILE: &str = "ca.crt";
pub const KEY_FILE: &str = "ca.key";

/// How long an environment's certificate is valid: under the 398 days
/// browsers accept for a server certificate.
const LEAF_DAYS: i64 = 397;
/// How long the CA is valid.
const CA_DAYS: i64 = 3650;

/// An issued certificate is issued again when it has less than this left
/// (on `up` of its environment, and on `gc`).
pub const RENEW_WITHIN_SECS: i64 = 30 * 86_400;

/// When a PEM certificate expires, in Unix seconds; `None` when it is not
/// one.
pub fn not_after(cert_pem: &str) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A CA: its certificate and its key, both PEM.
#[derive(Clone)]
pub struct Ca {
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A new CA for `domain`: name-constrained to it, so trusting it
    /// trusts no certificate for any other name.
    pub fn generate(domain: &str) -> Result<Ca> {
        let key = KeyPair::generate().context("cannot make a key for the CA")?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("stagectl edge CA ({domain})"));
        name.push(DnType::OrganizationName, "stagectl");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(domain.to_string())],
            excluded_subtrees: vec![],
        });
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_DAYS);
        let cert = params
            .self_signed(&key)
            .context("cannot sign the CA certificate")?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CA read back from the hosts (or given by the user); checked by
    /// making an issuer of it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let ca = Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        };
        ca.issuer()?;
        Ok(ca)
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key_pem).context("the CA key is not a PEM key")?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .context("the CA certificate is not a PEM certificate matching its key")
    }

    /// A server certificate for `names` (the first is its common name).
    pub fn issue(&self, names: &[String]) -> Result<Issued> {
        let key = KeyPair::generate().context("cannot make a key")?;
        let mut params =
            CertificateParams::new(names.to_vec()).context("a name cannot be in a certificate")?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(LEAF_DAYS);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .context("cannot sign the certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_read_back_issues_certificates_for_the_names() {
        let made = Ca::generate("preview.test").unwrap();
        let ca = Ca::from_pem(&made.cert_pem, made.key_pem()).unwrap();
        let names = super::super::conf::names("pr-1", "preview.test").to_vec();
        let issued = ca.issue(&names).unwrap();
        let der = pem_der(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            sans,
            ["DNSName(pr-1.preview.test)", "DNSName(*.pr-1.preview.test)"]
        );
        let ca_der = pem_der(&ca.cert_pem);
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert!(days <= 398, "{days}");
        assert_eq!(
            not_after(&issued.cert_pem),
            Some(cert.validity().not_after.timestamp())
        );
        assert_eq!(not_after("not a certificate"), None);
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        let constraints = ca_cert.name_constraints().unwrap().unwrap().value;
        let permitted: Vec<String> = constraints
            .permitted_subtrees
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| s.base.to_string())
            .collect();
        assert_eq!(permitted, ["DNSName(preview.test)"]);
    }

    #[test]
    fn a_key_that_is_not_the_cas_is_refused() {
        let a = Ca::generate("a").unwrap();
        assert!(Ca::from_pem(&a.cert_pem, "not a key").is_err());
        assert!(Ca::from_pem("not a cert", a.key_pem()).is_err());
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }
}
