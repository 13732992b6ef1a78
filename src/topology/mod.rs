//! Topology files: finding, reading, parsing and validating them.
//!
//! `load` is the only entry point: it returns a [`Topology`] whose every value
//! has been checked, or an input error whose text names the file, line and
//! column of each problem. Nothing in this module touches Docker or the
//! network, so `validate` and `plan` fail fast and identically on bad input.

pub mod diag;
pub mod model;
pub mod raw;
pub mod validate;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::error::input;
pub use model::*;

/// Refuse larger files outright: a topology is a few dozen lines, and a huge
/// file is a mistake (wrong path) or an attack on the parser.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The file to use when `-f` is not given: `stagectl.yaml` in the current
/// folder, else the repository's local lab topology.
pub fn default_path() -> Result<PathBuf> {
    for candidate in ["stagectl.yaml", "topologies/local.yaml"] {
        let p = PathBuf::from(candidate);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(input(
        "no topology file: neither ./stagectl.yaml nor ./topologies/local.yaml exists; pass one with -f FILE",
    ))
}

/// Read, parse and validate a topology file.
pub fn load(path: &Path) -> Result<Topology> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| input(format!("cannot read {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(input(format!("{shown} is not a file")));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(input(format!(
            "{shown} is {} bytes; a topology file may be at most {MAX_FILE_BYTES} bytes",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| input(format!("cannot read {shown}: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        input(format!(
            "{shown}: not a text file (invalid UTF-8 at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(&text, path)
}

/// Parse and validate topology text; `path` is used for messages and to
/// resolve relative paths inside the file.
pub fn parse(text: &str, path: &Path) -> Result<Topology> {
    let shown = path.display().to_string();
    let only_comments = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    if only_comments {
        let diag = diag::Diagnostic {
            line: 0,
            column: 0,
            message: "the file is empty; a topology needs at least `name:` and `hosts:`".into(),
            hint: None,
        };
        return Err(input(diag.render(&shown, text).trim_end().to_string()));
    }
    let raw: raw::RawTopology = serde_saphyr::from_str(text).map_err(|e| {
        // Rendered like our own checks' diagnostics: one style for all.
        use serde_saphyr::MessageFormatter as _;
        let message = serde_saphyr::DefaultMessageFormatter
            .format_message(&e)
            .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
        let diag = match e.location() {
            Some(loc) => diag::Diagnostic::at(&loc, message),
            None => diag::Diagnostic {
                line: 0,
                column: 0,
                message,
                hint: None,
            },
        };
        input(diag.render(&shown, text).trim_end().to_string())
    })?;
    validate::validate(raw, path).map_err(|diags| {
        let mut out: Vec<String> = diags.iter().map(|d| d.render(&shown, text)).collect();
        if diags.len() > 1 {
            out.push(format!("{} problems in {shown}", diags.len()));
        }
        input(out.join("").trim_end().to_string())
    })
}
