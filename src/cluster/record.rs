//! Records stagectl keeps in an environment's Consul and later acts on
//! (the last `up`: which hosts to clear, when the environment expires),
//! sealed with a key only the Consul servers and stagectl hold.
//!
//! Consul's key/value store takes writes from any process that reaches an
//! agent, so a record read back from it is only believed when its seal
//! checks out: an HMAC-SHA256, under the environment's record key, over the
//! environment's name, the record's key path and its exact text. A record
//! written by anyone else (or copied from another environment) is ignored
//! with a warning, never acted on.
//!
//! The record key (32 random bytes) lives in each server's Consul data
//! volume ([`KEY_PATH`], mode 0600): not in any container's spec, command
//! line or environment, so `docker inspect` shows nothing of it, and it
//! stays with the cluster's data (a second machine reads it back from
//! there, as it does the gossip key).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Where the key is kept in a server's Consul container (its data volume).
pub const KEY_PATH: &str = "/consul/data/stagectl-record.key";

/// The envelope kept in Consul: the record's text and its seal.
#[derive(Serialize, Deserialize)]
struct Sealed {
    record: String,
    /// base64 of HMAC-SHA256(key, env \0 path \0 record).
    seal: String,
}

/// A new random record key.
pub fn new_key() -> anyhow::Result<Vec<u8>> {
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no random bytes for a key: {e}"))?;
    Ok(key)
}

fn mac(key: &[u8], env: &str, path: &str, record: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in [env, "\0", path, "\0", record] {
        mac.update(part.as_bytes());
    }
    mac
}

/// The text to keep at `path` for `record` of environment `env`.
pub fn seal<T: Serialize>(key: &[u8], env: &str, path: &str, record: &T) -> String {
    let record = serde_json::to_string(record).expect("records serialize");
    let seal = mac(key, env, path, &record).finalize().into_bytes();
    let sealed = Sealed {
        seal: base64::engine::general_purpose::STANDARD.encode(seal),
        record,
    };
    serde_json::to_string(&sealed).expect("records serialize")
}

/// Why a record read back is not believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// No record key was found on the servers, so nothing can be checked.
    NoKey,
    /// Not a sealed record at all (an older stagectl's, or anything else).
    Unsealed,
    /// Sealed, but not with this environment's key for this path.
    BadSeal,
    /// The seal checks out but the record does not parse (a newer format).
    Unreadable,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rejected::NoKey => "no Consul server holds the environment's record key",
            Rejected::Unsealed => "it carries no seal",
            Rejected::BadSeal => "its seal does not match this environment's record key",
            Rejected::Unreadable => "it does not read as a record of this version",
        })
    }
}

/// The record kept at `path` for `env`, if its seal checks out.
pub fn open<T: DeserializeOwned>(
    key: &[u8],
    env: &str,
    path: &str,
    text: &str,
) -> Result<T, Rejected> {
    let sealed: Sealed = serde_json::from_str(text.trim()).map_err(|_| Rejected::Unsealed)?;
    let seal = base64::engine::general_purpose::STANDARD
        .decode(&sealed.seal)
        .map_err(|_| Rejected::BadSeal)?;
    // verify_slice compares in constant time.
    mac(key, env, path, &sealed.record)
        .verify_slice(&seal)
        .map_err(|_| Rejected::BadSeal)?;
    serde_json::from_str(&sealed.record).map_err(|_| Rejected::Unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct R {
        expires_at: Option<u64>,
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_sealed_record_opens_with_its_key_env_and_path() {
        let text = seal(
            KEY,
            "qa",
            "stagectl/qa/last-up",
            &R {
                expires_at: Some(5),
            },
        );
        let back: R = open(KEY, "qa", "stagectl/qa/last-up", &text).unwrap();
        assert_eq!(
            back,
            R {
                expires_at: Some(5)
            }
        );
    }

    #[test]
    fn anything_changed_is_rejected() {
        let text = seal(
            KEY,
            "qa",
            "p",
            &R {
                expires_at: Some(5),
            },
        );
        // Another key, another environment, another path.
        assert_eq!(
            open::<R>(b"other", "qa", "p", &text),
            Err(Rejected::BadSeal)
        );
        assert_eq!(open::<R>(KEY, "pr-1", "p", &text), Err(Rejected::BadSeal));
        assert_eq!(open::<R>(KEY, "qa", "q", &text), Err(Rejected::BadSeal));
        // The record edited (an expiry moved into the past), seal kept.
        let forged = text.replace(r#"\"expires_at\":5"#, r#"\"expires_at\":1"#);
        assert_ne!(forged, text);
        assert_eq!(open::<R>(KEY, "qa", "p", &forged), Err(Rejected::BadSeal));
        // A bare record, as an older stagectl (or a forger) writes it.
        assert_eq!(
            open::<R>(KEY, "qa", "p", r#"{"expires_at":1}"#),
            Err(Rejected::Unsealed)
        );
        assert_eq!(
            open::<R>(KEY, "qa", "p", "garbage"),
            Err(Rejected::Unsealed)
        );
    }
}
