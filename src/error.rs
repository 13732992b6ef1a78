//! How failures are classified for the exit code.
//!
//! The binary maps outcomes to three exit codes: 0 ok, 1 an operation failed
//! (a host unreachable, a container that would not start), 2 the input was
//! wrong (the topology, a command-line argument). Everything is carried as
//! `anyhow::Error` with context; an input problem is marked by wrapping it in
//! [`InputError`] somewhere in the chain so `main` can tell the two apart
//! without every module agreeing on one big error enum.

use std::fmt;

/// An error caused by what the user gave us, not by the state of the world.
#[derive(Debug)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// Build an input error as an `anyhow::Error`.
pub fn input(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(InputError(msg.into()))
}

/// True when any error in the chain is an input error.
pub fn is_input_error(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<InputError>().is_some())
}

/// Exit codes, in one place.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_INPUT: u8 = 2;
