//! The services' secrets, read on the operator's side when `up` or `plan`
//! runs: from an environment variable or a file, never from the topology,
//! so the topology can be committed. The values go into containers as files
//! (see `plan::desired`) and are never printed.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::plan::desired::secret_key;
use crate::topology::{SecretSource, Service};

/// Every secret of these services, by `secret_key`. A missing variable or
/// an unreadable file is an input error naming where the secret is
/// declared; nothing is changed.
pub fn read<'a>(
    services: impl IntoIterator<Item = &'a Service>,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut values = BTreeMap::new();
    let mut problems = Vec::new();
    for service in services {
        for secret in &service.secrets {
            let what = format!(
                "{}: service {}: secret {}",
                secret.declared_at, service.name, secret.name
            );
            let value = match &secret.source {
                SecretSource::Env(var) => match std::env::var_os(var) {
                    Some(v) => Ok(v.into_encoded_bytes()),
                    None => Err(format!("{what}: the environment variable {var} is not set")),
                },
                SecretSource::File(path) => std::fs::read(path)
                    .map_err(|e| format!("{what}: cannot read {}: {e}", path.display())),
            };
            match value {
                Ok(v) => {
                    values.insert(secret_key(&service.name, &secret.name), v);
                }
                Err(p) => problems.push(p),
            }
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        problems.push("nothing was changed".into());
        Err(crate::error::input(problems.join("\n")))
    }
}
