//! Progress reporting: one line per host on a terminal, plain log lines
//! otherwise.
//!
//! Workers never print; they call their [`HostLine`], and the [`Reporter`]
//! decides how it looks. On a terminal each host has one indicatif line that
//! accumulates `✔ step` marks with a spinner on the current step; without a
//! terminal (CI, pipes) each event is one timestamped-free line on stderr, so
//! logs stay readable and diffable.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Reporter {
    multi: Option<MultiProgress>,
    width: usize,
    quiet: bool,
}

impl Reporter {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn new(host_name_width: usize) -> Self {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Reporter {
            multi,
            width: host_name_width.max(7),
            quiet: false,
        }
    }

    pub fn plain(host_name_width: usize) -> Self {
        Reporter {
            multi: None,
            width: host_name_width.max(7),
            quiet: false,
        }
    }

    /// Reports nothing (for commands that print their own summary).
    pub fn quiet() -> Self {
        Reporter {
            multi: None,
            width: 7,
            quiet: true,
        }
    }

    pub fn host(&self, name: &str) -> HostLine {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{prefix} {msg} {spinner}")
                    .expect("template is valid")
                    .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
            );
            bar.set_prefix(format!("{name:<w$}", w = self.width));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        HostLine {
            name: format!("{name:<w$}", w = self.width),
            bar,
            done: Arc::new(Mutex::new(Vec::new())),
            quiet: self.quiet,
        }
    }

    /// Width of the name column, for summary lines that align with hosts.
    pub fn width(&self) -> usize {
        self.width
    }

    /// A line printed above the bars (or plainly).
    pub fn println(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None if self.quiet => {}
            None => eprintln!("{text}"),
        }
    }
}

/// The progress line of one host.
#[derive(Clone)]
pub struct HostLine {
    name: String,
    bar: Option<ProgressBar>,
    done: Arc<Mutex<Vec<String>>>,
    quiet: bool,
}

impl HostLine {
    fn render(&self, current: Option<String>) {
        if let Some(bar) = &self.bar {
            let mut parts = self.done.lock().unwrap().clone();
            if let Some(c) = current {
                parts.push(c);
            }
            bar.set_message(parts.join("  "));
        }
    }

    /// A step has started.
    pub fn step(&self, what: &str) {
        match &self.bar {
            Some(_) => self.render(Some(format!("… {what}"))),
            None if self.quiet => {}
            None => eprintln!("{}  … {what}", self.name),
        }
    }

    /// A step finished well.
    pub fn ok(&self, what: &str) {
        self.done.lock().unwrap().push(format!("✔ {what}"));
        match &self.bar {
            Some(_) => self.render(None),
            None if self.quiet => {}
            None => eprintln!("{}  ✔ {what}", self.name),
        }
    }

    /// A step failed; the message is the reason.
    pub fn fail(&self, what: &str, reason: &str) {
        self.done.lock().unwrap().push(format!("✘ {what}"));
        match &self.bar {
            Some(_) => self.render(None),
            None if self.quiet => {}
            None => eprintln!("{}  ✘ {what}: {reason}", self.name),
        }
    }

    /// Bytes moved so far in a long step (image transfer).
    pub fn bytes(&self, what: &str, sent: u64, total: Option<u64>) {
        if self.bar.is_some() {
            let mb = |b: u64| b as f64 / 1_000_000.0;
            let text = match total {
                Some(t) => format!("… {what} {:.0} MB/{:.0} MB", mb(sent), mb(t)),
                None => format!("… {what} {:.0} MB", mb(sent)),
            };
            self.render(Some(text));
        }
    }

    /// Stop the spinner, keeping the line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            self.render(None);
            bar.finish();
        }
    }
}
