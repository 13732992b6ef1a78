//! Events of a run and their three renderers.
//!
//! Workers never print; they report events (connected, step started,
//! progress, done, failed) on their host's [`HostLine`], and the
//! [`Reporter`] decides how they look:
//!
//! - terminal: each host has one indicatif line that accumulates `✔ step`
//!   marks with a spinner on the current step;
//! - plain (CI, pipes): one line per event on stderr, readable and
//!   diffable;
//! - JSON (`-o json`): one object per line on stdout, with the fields of
//!   the plan's steps (`phase`, `host`, `action`, `subject`) so that what
//!   `up` did can be compared with what `plan` said. The README documents
//!   the format.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::plan::StepRef;
use crate::style::Stream;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Reporter {
    multi: Option<MultiProgress>,
    width: usize,
    quiet: bool,
    json: bool,
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
            json: false,
        }
    }

    /// One JSON object per event on stdout.
    pub fn json() -> Self {
        Reporter {
            multi: None,
            width: 7,
            quiet: true,
            json: true,
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    pub fn plain(host_name_width: usize) -> Self {
        Reporter {
            multi: None,
            width: host_name_width.max(7),
            quiet: false,
            json: false,
        }
    }

    /// Reports nothing (for commands that print their own summary).
    pub fn quiet() -> Self {
        Reporter {
            multi: None,
            width: 7,
            quiet: true,
            json: false,
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
            host: name.to_string(),
            name: format!("{name:<w$}", w = self.width),
            bar,
            done: Arc::new(Mutex::new(Vec::new())),
            quiet: self.quiet,
            json: self.json,
            last_progress: Arc::new(Mutex::new(None)),
        }
    }

    /// A step that belongs to no host line (a wait) finished: `text` is
    /// its line for people.
    pub fn done(&self, step: &StepRef, started: Instant, text: &str) {
        if self.json {
            emit(step, "done", started, json!({ "note": text }));
        } else if !text.is_empty() {
            self.println(text);
        }
    }

    /// A wait was met: `rows` say what was found, each as (what, text).
    /// On a terminal or plain lines each is a checked line aligned with the
    /// hosts' names; in JSON the texts alone are the `note`, one a line,
    /// with no colour and no padding.
    pub fn met(&self, step: &StepRef, started: Instant, rows: &[(&str, String)]) {
        if self.json {
            let texts: Vec<&str> = rows.iter().map(|(_, text)| text.as_str()).collect();
            emit(step, "done", started, json!({ "note": texts.join("\n") }));
            return;
        }
        let mark = Stream::Stderr.good("✔");
        for (what, text) in rows {
            self.println(&format!("{what:<w$}  {mark} {text}", w = self.width));
        }
    }

    /// A line printed above the bars (or plainly).
    /// With JSON on stdout, such lines (waiting for the lock, warnings) go
    /// to stderr, so stdout stays one JSON object per line.
    pub fn println(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None if self.quiet && !self.json => {}
            None => eprintln!("{text}"),
        }
    }
}

/// The progress line of one host.
#[derive(Clone)]
pub struct HostLine {
    host: String,
    /// The host's name padded to the column width.
    name: String,
    bar: Option<ProgressBar>,
    done: Arc<Mutex<Vec<String>>>,
    quiet: bool,
    json: bool,
    /// When the last JSON progress event went out (they are throttled).
    last_progress: Arc<Mutex<Option<Instant>>>,
}

/// One JSON event line on stdout: the step's fields, the event, the
/// seconds since the step started, and `extra`'s fields.
fn emit(step: &StepRef, event: &str, started: Instant, extra: serde_json::Value) {
    let mut v = json!({
        "event": event,
        "phase": step.phase,
        "host": step.host,
        "action": step.action,
        "subject": step.subject,
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    if let (Some(map), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
        map.extend(more);
    }
    println!("{v}");
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
        let mark = Stream::Stderr.good("✔");
        self.done.lock().unwrap().push(format!("{mark} {what}"));
        match &self.bar {
            Some(_) => self.render(None),
            None if self.quiet => {}
            None => eprintln!("{}  {mark} {what}", self.name),
        }
    }

    /// A step failed; the message is the reason.
    pub fn fail(&self, what: &str, reason: &str) {
        let mark = Stream::Stderr.bad("✘");
        self.done.lock().unwrap().push(format!("{mark} {what}"));
        match &self.bar {
            Some(_) => self.render(None),
            None if self.quiet => {}
            None => eprintln!("{}  {mark} {what}: {reason}", self.name),
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

    /// The host answered.
    pub fn connected(&self, transport: &str, engine_version: &str) {
        if self.json {
            println!(
                "{}",
                json!({"event": "connected", "host": self.host, "transport": transport, "engine": engine_version})
            );
        } else {
            self.ok(&format!("connected ({transport}, Docker {engine_version})"));
        }
    }

    /// The host did not answer.
    pub fn connect_failed(&self, reason: &str) {
        if self.json {
            println!(
                "{}",
                json!({"event": "connect_failed", "host": self.host, "error": reason})
            );
        } else {
            self.fail("connect", reason);
        }
    }

    /// A planned step started; `label` is its name for people.
    pub fn started(&self, step: &StepRef, label: &str) {
        if self.json {
            emit(step, "started", Instant::now(), json!({}));
        } else {
            self.step(label);
        }
    }

    /// A planned step is done; `note` says what it did when there is more
    /// to say than its name (bytes sent).
    pub fn finished(&self, step: &StepRef, label: &str, started: Instant, note: Option<&str>) {
        if self.json {
            emit(step, "done", started, json!({ "note": note }));
        } else {
            match note {
                Some(n) => self.ok(&format!("{label} ({n})")),
                None => self.ok(label),
            }
        }
    }

    /// A planned step failed; printed once, here.
    pub fn failed(&self, step: &StepRef, label: &str, started: Instant, reason: &str) {
        if self.json {
            emit(step, "failed", started, json!({ "error": reason }));
        } else {
            self.fail(label, reason);
        }
    }

    /// Bytes moved so far in a long step; JSON events at most every 500 ms.
    pub fn progress(&self, step: &StepRef, label: &str, started: Instant, sent: u64, total: u64) {
        if !self.json {
            return self.bytes(label, sent, Some(total));
        }
        let mut last = self.last_progress.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(500)) && sent < total {
            return;
        }
        *last = Some(Instant::now());
        emit(
            step,
            "progress",
            started,
            json!({ "bytes_sent": sent, "bytes_total": total }),
        );
    }

    /// Stop the spinner, keeping the line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            self.render(None);
            bar.finish();
        }
    }
}
