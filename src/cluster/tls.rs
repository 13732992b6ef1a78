//! TLS on Consul's RPC: the environment's own CA and each server's
//! certificate, worked out from the environment's TLS seed (pure).
//!
//! Without it, anything that reaches a server's RPC port (any process on a
//! host of the environment, which all hold the gossip key) could speak to
//! the servers as an agent. With it, servers verify both ends of every RPC
//! connection (`verify_incoming_rpc`, `verify_outgoing`) and check that a
//! server's certificate names `server.<datacenter>.consul`
//! (`verify_server_hostname`), so only a holder of a certificate from this
//! CA is a server. Clients hold no key of it: they ask the servers for a
//! certificate at start (`auto_encrypt`), with their agent token, which
//! may write only their own node (see `cluster::acl`), and trust the
//! servers through the CA's certificate alone.
//!
//! The CA's key and each server's key are Ed25519 keys derived from the
//! seed (HMAC-SHA256 of what they are for), and every field of the
//! certificates is fixed (validity, serial from the key), so the same seed
//! gives the same certificates byte for byte: a second machine works them
//! out again with nothing kept locally, and a no-op `up` changes no spec.
//! The seed (32 random bytes) is kept like the record key, beside it in
//! each server's data volume ([`SEED_PATH`], 0400); it is not the record
//! key so that rotating that one (`up --rotate-keys`, server by server)
//! never leaves two servers without a CA in common.

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use sha2::Sha256;

/// Where a server keeps the seed (its data volume, beside the record key).
pub const SEED_PATH: &str = "/consul/data/stagectl-tls.key";

/// Where every agent finds the CA's certificate, and a server its own.
pub const CA_FILE: &str = "/consul/tls/ca.pem";
pub const CERT_FILE: &str = "/consul/tls/server.pem";
pub const KEY_FILE: &str = "/consul/tls/server-key.pem";

/// A server's TLS files, PEM.
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// A new seed, for an environment's first `up`.
pub fn new_seed() -> Result<Vec<u8>> {
    crate::cluster::record::new_key()
}

/// The CA's certificate, PEM (what every agent trusts).
pub fn ca_pem(seed: &[u8], env: &str) -> Result<String> {
    let (params, key) = ca(seed, env)?;
    Ok(params
        .self_signed(&key)
        .context("cannot sign the Consul CA certificate")?
        .pem())
}

/// The certificate and key of server `host` in `datacenter`.
pub fn server(seed: &[u8], env: &str, datacenter: &str, host: &str) -> Result<ServerTls> {
    let (ca_params, ca_key) = ca(seed, env)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = derived_key(seed, &format!("server {host}"))?;
    // The name Consul checks (`verify_server_hostname`); `localhost` lets
    // a CLI on the host reach it over TLS too.
    let names = vec![format!("server.{datacenter}.consul"), "localhost".into()];
    let mut params = CertificateParams::new(names).context("a name cannot be in a certificate")?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("{host}.server.{datacenter}.consul"),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Servers are both ends of RPC: each dials the others.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    fixed_validity(&mut params);
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign a Consul server certificate")?;
    Ok(ServerTls {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ca(seed: &[u8], env: &str) -> Result<(CertificateParams, KeyPair)> {
    let key = derived_key(seed, "ca")?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("stagectl Consul CA ({env})"));
    name.push(DnType::OrganizationName, "stagectl");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    fixed_validity(&mut params);
    Ok((params, key))
}

/// The same dates for every certificate, so that certificates are a pure
/// function of the seed. They last as long as the seed does: a new seed is
/// the way to end them.
fn fixed_validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
}

/// The Ed25519 key for `purpose`: its 32-byte private key is
/// HMAC-SHA256(seed, "stagectl consul tls\0" purpose), wrapped as PKCS#8.
fn derived_key(seed: &[u8], purpose: &str) -> Result<KeyPair> {
    let mut mac = Hmac::<Sha256>::new_from_slice(seed).expect("HMAC takes keys of any length");
    mac.update(b"stagectl consul tls\0");
    mac.update(purpose.as_bytes());
    // PKCS#8 v1 of an Ed25519 key (RFC 8410): a fixed prefix, then the key.
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&mac.finalize().into_bytes());
    KeyPair::from_pkcs8_der_and_sign_algo(&der.as_slice().into(), &PKCS_ED25519)
        .context("cannot make an Ed25519 key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }

    #[test]
    fn the_same_seed_gives_the_same_certificates_and_another_seed_others() {
        let seed = [7u8; 32];
        let a = server(&seed, "qa", "dc1", "host-1").unwrap();
        let b = server(&seed, "qa", "dc1", "host-1").unwrap();
        assert_eq!(a.cert_pem, b.cert_pem);
        assert_eq!(a.key_pem, b.key_pem);
        assert_eq!(ca_pem(&seed, "qa").unwrap(), ca_pem(&seed, "qa").unwrap());
        let other = server(&[8u8; 32], "qa", "dc1", "host-1").unwrap();
        assert_ne!(a.key_pem, other.key_pem);
        assert_ne!(
            ca_pem(&seed, "qa").unwrap(),
            ca_pem(&[8u8; 32], "qa").unwrap()
        );
        let host_2 = server(&seed, "qa", "dc1", "host-2").unwrap();
        assert_ne!(a.key_pem, host_2.key_pem);
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_server_certificate_names_consuls_server_name_and_is_signed_by_the_ca() {
        let seed = [7u8; 32];
        let ca_der = parsed(&ca_pem(&seed, "qa").unwrap());
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let issued = server(&seed, "qa", "dc2", "web-1").unwrap();
        let der = parsed(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
        assert_eq!(cert.issuer(), ca.subject());
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, ["DNSName(server.dc2.consul)", "DNSName(localhost)"]);
        // Signed by another seed's CA, it is not this CA's.
        let other = parsed(&server(&[8u8; 32], "qa", "dc2", "web-1").unwrap().cert_pem);
        let (_, other) = x509_parser::parse_x509_certificate(&other).unwrap();
        assert!(other.verify_signature(Some(ca.public_key())).is_err());
    }
}
