//! The README's drawing of the code ("How the code is laid out") held
//! against the imports: every module of `src/` is on one of its lines, and
//! a module only names modules on its own line or under it.
//!
//! An import that runs up is how circles start (the plan reaching the
//! Docker client through the cluster, say), so it fails here, naming the
//! file and the module it names, rather than in a review months later.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers of the README's drawing, top first: each line that starts
/// with `src/` opens a layer, and every `src/...` path on it or on the
/// lines that continue it (indented) belongs to that layer.
fn layers_of(readme: &str) -> Vec<Vec<String>> {
    let section = readme
        .split("## How the code is laid out")
        .nth(1)
        .expect("README has a section 'How the code is laid out'");
    let block = section
        .split("```")
        .nth(1)
        .expect("the section draws the layout in a code block");
    let mut layers: Vec<Vec<String>> = Vec::new();
    for line in block.lines() {
        if line.starts_with("src/") {
            layers.push(Vec::new());
        }
        let Some(layer) = layers.last_mut() else {
            continue;
        };
        for word in line.split(|c: char| c.is_whitespace() || c == ',' || c == ':' || c == ';') {
            if let Some(module) = module_of_path(word) {
                layer.push(module);
            }
        }
    }
    layers
}

/// `src/plan/` → `plan`, `src/lock.rs` → `lock`.
fn module_of_path(word: &str) -> Option<String> {
    let rest = word.strip_prefix("src/")?;
    let name = match rest.split_once('/') {
        Some((dir, _)) => dir,
        None => rest.strip_suffix(".rs")?,
    };
    (!name.is_empty()).then(|| name.to_string())
}

/// The project's modules each of a file's lines names (`crate::plan::…`,
/// `crate::{plan, engine}`), its own unit tests left out: a test may reach
/// up to build what it checks.
fn named_modules(source: &str) -> Vec<(usize, String)> {
    let code = source.split("#[cfg(test)]\nmod tests").next().unwrap();
    let mut found = Vec::new();
    for (i, line) in code.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap())
                    .collect(),
                None => vec![rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap()],
            };
            for name in names {
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    found.push((i + 1, name.to_string()));
                }
            }
        }
    }
    found
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn sources(src: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap();
                let module = match rel.components().count() {
                    1 => rel.file_stem().unwrap().to_string_lossy().into_owned(),
                    _ => rel.iter().next().unwrap().to_string_lossy().into_owned(),
                };
                out.push((path, module));
            }
        }
    }
    out.sort();
    out
}

/// What breaks the drawing: modules it leaves out, and imports that run up.
fn violations(layers: &[Vec<String>], files: &[(String, String, String)]) -> Vec<String> {
    let depth: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let mut out = Vec::new();
    for (path, module, source) in files {
        // lib.rs only declares the modules.
        if module == "lib" || path.ends_with("/tests.rs") {
            continue;
        }
        let Some(&own) = depth.get(module.as_str()) else {
            out.push(format!(
                "{path}: module {module} is on no line of the drawing"
            ));
            continue;
        };
        for (line, named) in named_modules(source) {
            match depth.get(named.as_str()) {
                Some(&d) if d < own => out.push(format!(
                    "{path}:{line}: {module} names {named}, which the drawing puts above it"
                )),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn the_readme_draws_the_modules_as_they_import_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let layers = layers_of(&readme);
    let files: Vec<(String, String, String)> = sources(&root.join("src"))
        .into_iter()
        .map(|(path, module)| {
            let source = std::fs::read_to_string(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            (rel, module, source)
        })
        .collect();
    // The drawing is read at all: the layers the README names, top first.
    assert!(layers.len() >= 8, "{layers:?}");
    assert_eq!(layers[0], ["main", "commands"]);
    assert!(layers.iter().flatten().any(|m| m == "spec"), "{layers:?}");
    assert!(files.len() > 50, "found {} source files", files.len());

    // The check can fail: the same files against the drawing turned upside
    // down break it, as plan (which names spec) would then stand under it.
    let upside_down: Vec<Vec<String>> = layers.iter().rev().cloned().collect();
    let broken = violations(&upside_down, &files);
    assert!(
        broken
            .iter()
            .any(|v| v.contains("src/plan/desired.rs") && v.contains("names spec")),
        "{broken:#?}"
    );

    let broken = violations(&layers, &files);
    assert!(
        broken.is_empty(),
        "the README's layout and the imports differ:\n{}",
        broken.join("\n")
    );
}

#[test]
fn paths_and_imports_are_read_as_modules() {
    assert_eq!(module_of_path("src/plan/"), Some("plan".into()));
    assert_eq!(module_of_path("src/lock.rs"), Some("lock".into()));
    assert_eq!(
        module_of_path("src/engine/docker.rs"),
        Some("engine".into())
    );
    assert_eq!(module_of_path("STEPS.md"), None);
    let named = named_modules(
        "//! see crate::commands\nuse crate::{plan, engine::docker};\nlet x = crate::spec::Limits::default();\n#[cfg(test)]\nmod tests {\n    use crate::pipeline;\n}\n",
    );
    assert_eq!(
        named,
        [(2, "plan".into()), (2, "engine".into()), (3, "spec".into())]
    );
}
