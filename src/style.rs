//! Colour on terminals, and only there: `--color auto` (the default) colours
//! a stream when it is a terminal and `NO_COLOR` is not set
//! (<https://no-color.org>); `always` and `never` decide for both streams.
//! Only marks and verdicts are coloured (✔, ✘, healthy, degraded, error);
//! the text stays plain, so logs read the same without colour.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::ValueEnum;

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

static STDOUT: AtomicBool = AtomicBool::new(false);
static STDERR: AtomicBool = AtomicBool::new(false);

/// Decide once, at start-up.
pub fn init(choice: ColorChoice) {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let (out, err) = match choice {
        ColorChoice::Always => (true, true),
        ColorChoice::Never => (false, false),
        ColorChoice::Auto if no_color => (false, false),
        ColorChoice::Auto => (
            std::io::stdout().is_terminal(),
            std::io::stderr().is_terminal(),
        ),
    };
    STDOUT.store(out, Ordering::Relaxed);
    STDERR.store(err, Ordering::Relaxed);
}

/// Which stream the text goes to.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn enabled(self) -> bool {
        match self {
            Stream::Stdout => STDOUT.load(Ordering::Relaxed),
            Stream::Stderr => STDERR.load(Ordering::Relaxed),
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.enabled() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Done, healthy.
    pub fn good(self, text: &str) -> String {
        self.paint("32", text)
    }

    /// Failed, degraded, error.
    pub fn bad(self, text: &str) -> String {
        self.paint("31", text)
    }

    /// Warnings, things left out.
    pub fn warn(self, text: &str) -> String {
        self.paint("33", text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_paints_and_always_does() {
        init(ColorChoice::Never);
        assert_eq!(Stream::Stdout.good("healthy"), "healthy");
        init(ColorChoice::Always);
        assert_eq!(Stream::Stderr.bad("✘"), "\x1b[31m✘\x1b[0m");
        init(ColorChoice::Never);
    }
}
