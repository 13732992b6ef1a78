//! The `registration:` section: `adopt` is one of the known choices.

use super::Validator;
use crate::topology::model::{Adopt, RegistrationSettings};
use crate::topology::raw::RawRegistration;

impl Validator {
    pub(super) fn registration(&mut self, raw: RawRegistration) -> RegistrationSettings {
        let adopt = match raw.adopt {
            None => Adopt::default(),
            Some(a) => match Adopt::CHOICES.iter().find(|(name, _)| *name == a.value) {
                Some((_, adopt)) => *adopt,
                None => {
                    let choices: Vec<&str> = Adopt::CHOICES.iter().map(|(n, _)| *n).collect();
                    self.error_hint(
                        &a.referenced,
                        format!(
                            "registration.adopt `{}` is not one of: {}",
                            a.value,
                            choices.join(", ")
                        ),
                        format!("all: also containers without an environment label (the default); labeled: only containers labelled {}=<env>", crate::labels::ENV),
                    );
                    Adopt::default()
                }
            },
        };
        RegistrationSettings { adopt }
    }
}
