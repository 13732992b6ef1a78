//! Bad input never panics: every broken topology in tests/bad-topologies
//! ends in exit code 2 with a message naming file, line and column, and the
//! files that cannot be topologies at all (missing, a folder, huge, binary,
//! empty) end the same way with a clear sentence.
//!
//! Each corpus file starts with `# expect L:C text`: the location and a
//! piece of the message the error must show.

mod common;

use std::path::Path;

use common::stagectl;

fn check(path: &Path, location: Option<&str>, text: &str) {
    let state = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let r = stagectl(state.path(), &["-f", path.to_str().unwrap(), "validate"]);
    let shown = path.display();
    assert!(started.elapsed().as_secs() < 10, "{shown}: took too long");
    assert_eq!(
        r.code, 2,
        "{shown}: exit code\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    assert!(
        !r.stderr.contains("panicked"),
        "{shown}: panicked: {}",
        r.stderr
    );
    assert!(r.stderr.starts_with("error: "), "{shown}: {}", r.stderr);
    if let Some(loc) = location {
        let want = format!("{shown}:{loc}");
        assert!(
            r.stderr.contains(&want),
            "{shown}: expected location {want} in:\n{}",
            r.stderr
        );
    }
    assert!(
        r.stderr.contains(text),
        "{shown}: expected `{text}` in:\n{}",
        r.stderr
    );
    // `plan` and `up` refuse the same file before touching anything.
    for cmd in ["plan", "up"] {
        let again = stagectl(state.path(), &["-f", path.to_str().unwrap(), cmd]);
        assert_eq!(again.code, 2, "{shown}: {cmd} exit code: {}", again.stderr);
    }
    let written = files_under(state.path());
    assert!(
        written.is_empty(),
        "{shown}: nothing may be written for bad input, found {written:?}"
    );
}

/// Every file and directory under `dir` (none when it does not exist): the
/// whole state directory, not only its environments.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            found.push(p);
        }
    }
    found
}

#[test]
fn every_broken_topology_in_the_corpus_is_refused_with_its_location() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-topologies");
    // Files only: bases/ holds the files some of them extend.
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus is there");
    for f in files {
        let first = std::fs::read_to_string(&f)
            .unwrap()
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        let spec = first
            .strip_prefix("# expect ")
            .unwrap_or_else(|| panic!("{}: first line is `# expect L:C text`", f.display()));
        let (loc, text) = spec.split_once(' ').unwrap();
        // 0:0: the problem is the whole file, so there is no position.
        // `base:L:C`: the location is in the file it extends.
        match loc.strip_prefix("base:") {
            Some(base_loc) => check_located_in_base(&f, base_loc, text),
            None => check(&f, (loc != "0:0").then_some(loc), text),
        }
    }
}

/// An error found in the file a topology extends names that file.
fn check_located_in_base(path: &Path, loc: &str, text: &str) {
    let state = tempfile::tempdir().unwrap();
    let r = stagectl(state.path(), &["-f", path.to_str().unwrap(), "validate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let first = std::fs::read_to_string(path).unwrap();
    let base = first
        .lines()
        .find_map(|l| l.strip_prefix("extends: "))
        .unwrap();
    let want = format!("{}:{loc}", path.parent().unwrap().join(base).display());
    assert!(
        r.stderr.contains(&want),
        "{}: expected {want} in:\n{}",
        path.display(),
        r.stderr
    );
    assert!(
        r.stderr.contains(text),
        "{}: expected `{text}` in:\n{}",
        path.display(),
        r.stderr
    );
}

#[test]
fn files_that_cannot_be_topologies() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    check(&missing, None, "cannot read");
    check(dir.path(), None, "is not a file");

    let huge = dir.path().join("huge.yaml");
    std::fs::write(
        &huge,
        format!("name: demo\n#{}\n", "x".repeat(2 * 1024 * 1024)),
    )
    .unwrap();
    check(&huge, None, "may be at most");

    let binary = dir.path().join("binary.yaml");
    std::fs::write(&binary, [0x6eu8, 0x61, 0xff, 0xfe, 0x00, 0x01, 0x80]).unwrap();
    check(&binary, None, "not a text file");

    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    check(&empty, None, "the file is empty");
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let state = tempfile::tempdir().unwrap();
    assert_eq!(stagectl(state.path(), &["frobnicate"]).code, 2);
    assert_eq!(stagectl(state.path(), &["status", "-o", "xml"]).code, 2);
    assert_eq!(
        stagectl(state.path(), &["--connect-timeout", "0", "plan"]).code,
        2
    );
    let help = stagectl(state.path(), &["--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Exit codes"));
    // The version names the commit it was built from.
    let version = stagectl(state.path(), &["--version"]);
    assert_eq!(version.code, 0);
    assert!(
        version.stdout.starts_with("stagectl ") && version.stdout.contains(" ("),
        "{}",
        version.stdout
    );
    // Completions for every shell clap knows; an unknown one is a usage error.
    for shell in ["bash", "zsh", "fish"] {
        let c = stagectl(state.path(), &["completions", shell]);
        assert_eq!(c.code, 0, "{shell}: {}", c.stderr);
        assert!(c.stdout.contains("stagectl"), "{shell}");
        assert!(
            c.stdout.contains("unlock"),
            "{shell} completes the commands"
        );
    }
    assert_eq!(stagectl(state.path(), &["completions", "nosh"]).code, 2);
}

#[test]
fn shipped_topologies_are_valid() {
    let state = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies");
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        let r = stagectl(state.path(), &["-f", f.to_str().unwrap(), "validate"]);
        assert_eq!(r.code, 0, "{}: {}", f.display(), r.stderr);
    }
}

#[test]
fn validate_speaks_json_and_colour_is_asked_for() {
    let state = tempfile::tempdir().unwrap();
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/local.yaml");
    let f = local.to_str().unwrap();
    let r = stagectl(state.path(), &["-f", f, "validate", "-o", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert!(v["hosts"].as_array().is_some_and(|h| !h.is_empty()), "{v}");
    assert_eq!(v["services"][0]["expose"], "http", "{v}");
    assert_eq!(v["services"][0]["health"], "tcp", "{v}");

    // Not a terminal: no colour unless asked for.
    let missing = ["-f", "/nonexistent/stagectl.yaml", "validate"];
    let plain = stagectl(state.path(), &missing);
    assert!(plain.stderr.starts_with("error:"), "{}", plain.stderr);
    let mut asked = vec!["--color", "always"];
    asked.extend(missing);
    let coloured = stagectl(state.path(), &asked);
    assert!(
        coloured.stderr.starts_with("\x1b[31merror:"),
        "{:?}",
        coloured.stderr
    );
    assert_eq!(coloured.code, plain.code);
    let r = stagectl(state.path(), &["--color", "sometimes", "validate"]);
    assert_eq!(r.code, 2, "an unknown --color value is a usage error");
}

#[test]
fn every_subcommand_parses_its_help() {
    // clap checks a command's definition when it is used: ask each for help.
    let state = tempfile::tempdir().unwrap();
    for cmd in [
        "validate",
        "plan",
        "lock",
        "up",
        "down",
        "status",
        "logs",
        "agent",
        "demo-http",
    ] {
        let r = stagectl(state.path(), &[cmd, "--help"]);
        assert_eq!(r.code, 0, "{cmd} --help: {}", r.stderr);
    }
    for sub in ["register", "template", "services"] {
        let r = stagectl(state.path(), &["agent", sub, "--help"]);
        assert_eq!(r.code, 0, "agent {sub} --help: {}", r.stderr);
    }
}

#[test]
fn the_smaller_doors_are_closed_with_exit_2_naming_the_flag() {
    let state = tempfile::tempdir().unwrap();
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/local.yaml");
    let f = local.to_str().unwrap();
    let refused = |args: &[&str], text: &str| {
        let r = stagectl(state.path(), args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(text),
            "{args:?}: `{text}` in {}",
            r.stderr
        );
    };
    // What --set may change still works, so the refusals below are theirs.
    let ok = stagectl(
        state.path(),
        &["-f", f, "--set", "services.demo.per_host=2", "validate"],
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let ok = stagectl(
        state.path(),
        &[
            "-f",
            f,
            "--set",
            "services.demo.secrets={token: {from_env: CI_TOKEN}}",
            "validate",
        ],
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    refused(
        &[
            "-f",
            f,
            "--set",
            "services.demo.binds=[\"/etc:/host-etc\"]",
            "validate",
        ],
        "--set services.demo.binds",
    );
    refused(
        &[
            "-f",
            f,
            "--set",
            "services.demo.secrets={token: {from_file: /root/.ssh/id_ed25519}}",
            "plan",
        ],
        "from_file",
    );
    // --ttl: a year at most, never wrapped around.
    refused(&["-f", f, "up", "--ttl", "18446744073709551000s"], "--ttl");
    refused(&["-f", f, "up", "--ttl", "400d"], "out of range");
    // ui: off this machine only with --expose (refused before connecting).
    refused(&["-f", f, "ui", "--listen", "0.0.0.0:0"], "--expose");
    // A state directory others can write into is refused, untouched.
    let shared = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = stagectl(shared.path(), &["-f", f, "plan"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("writable by group or others"),
        "{}",
        r.stderr
    );
    assert!(std::fs::read_dir(shared.path()).unwrap().next().is_none());
}

#[test]
fn sigterm_ends_a_run_like_ctrl_c_with_exit_143() {
    use std::io::Write as _;
    let state = tempfile::tempdir().unwrap();
    // An "engine" that accepts and never answers: `status` waits on it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let file = state.path().join("t.yaml");
    let mut f = std::fs::File::create(&file).unwrap();
    write!(
        f,
        "name: sigterm\nhosts:\n  host-1: {{ address: \"tcp://127.0.0.1:{port}\", roles: [lb, app] }}\nservices:\n  web: {{ image: stagectl/demo:latest, port: 8080 }}\n"
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stagectl"))
        .env("STAGECTL_STATE_DIR", state.path())
        .args([
            "--connect-timeout",
            "30",
            "-f",
            file.to_str().unwrap(),
            "status",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It is connecting (not finished) before the signal comes.
    silent.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let _accepted = loop {
        match silent.accept() {
            Ok(c) => break c,
            Err(_) if std::time::Instant::now() < deadline => {
                assert!(child.try_wait().unwrap().is_none(), "status ended early");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("status never connected: {e}"),
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    // SAFETY: a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("terminated"), "{stderr}");
    assert!(started.elapsed().as_secs() < 5);
}
