//! Located diagnostics for topology files: `file:line:col: message`, the
//! offending line with a caret under the column, and an optional hint.
//!
//! Parse errors come from serde-saphyr, which renders its own snippet; the
//! checks in `validate` produce [`Diagnostic`]s rendered here in the same
//! shape, so a user sees one style whatever went wrong.

use std::fmt::Write as _;

use serde_saphyr::Location;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line and column; 0 when the position is unknown.
    pub line: u64,
    pub column: u64,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn at(loc: &Location, message: impl Into<String>) -> Self {
        Diagnostic {
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Render against the source text the location refers to.
    pub fn render(&self, file: &str, source: &str) -> String {
        let mut out = String::new();
        if self.line == 0 {
            let _ = writeln!(out, "error: {file}: {}", self.message);
        } else {
            let _ = writeln!(
                out,
                "error: {file}:{}:{}: {}",
                self.line, self.column, self.message
            );
            if let Some(text) = source.lines().nth(self.line as usize - 1) {
                let gutter = self.line.to_string().len();
                let pad = " ".repeat(gutter);
                let caret_at = (self.column.max(1) - 1) as usize;
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{} | {}", self.line, text);
                let _ = writeln!(out, "{pad} | {}^", " ".repeat(caret_at));
            }
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "  = hint: {hint}");
        }
        out
    }
}
