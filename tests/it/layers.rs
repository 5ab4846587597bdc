//! The layering of `src/`, checked: a module may use its own layer and the layers below it, never
//! one above. Read from the source text (`crate::<module>` paths outside comments), so an upward
//! import fails here with the file and line, before it can grow into a cycle.
//!
//! {error, parameters, metrics, history} -> storage -> {features, scoring} -> planning -> session -> {query, auth, executor}
//!   -> ingest -> {flight, http, sources} -> {server, config, demo, telemetry}

use std::path::{Path, PathBuf};

/// Each top-level module of `src/` with its layer; a module may use modules of its layer or lower.
/// `features` and `scoring` share a layer but stay apart (see [`APART`]).
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("parameters", 0),
    // What every layer records: metric names, the statement history.
    ("metrics", 0),
    ("history", 0),
    ("storage", 1),
    ("features", 2),
    ("scoring", 2),
    ("planning", 3),
    ("session", 4),
    ("query", 5),
    ("auth", 5),
    ("executor", 5),
    ("ingest", 6),
    ("flight", 7),
    ("http", 7),
    // Streams consumed into tables: written through ingest, beside the servers.
    ("sources", 7),
    // The process: the command line (`config`), its logs, the server and the demo that runs one.
    ("server", 8),
    ("config", 8),
    ("telemetry", 8),
    ("demo", 8),
];

/// Modules of one layer that must not use each other.
const APART: &[(&str, &str)] = &[("features", "scoring"), ("scoring", "features")];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`src/storage/table.rs` -> `storage`,
/// `src/session.rs` -> `session`); `None` for the crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The modules a line names as `crate::<module>`, ignoring what follows `//`.
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or_default();
    code.match_indices("crate::")
        .filter(|(at, _)| {
            // `quiver_crate::` or `$crate::` are not this crate's paths.
            !code[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
        })
        .map(|(at, _)| {
            code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn modules_use_only_their_layer_and_those_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut upward = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let own = layer(&module)
            .unwrap_or_else(|| panic!("module '{module}' has no layer: add it to LAYERS"));
        let text = std::fs::read_to_string(file).expect("readable");
        for (number, line) in text.lines().enumerate() {
            for used in crate_paths(line) {
                if used == module {
                    continue;
                }
                let Some(theirs) = layer(&used) else {
                    continue;
                };
                if theirs > own || APART.contains(&(module.as_str(), used.as_str())) {
                    upward.push(format!(
                        "{}:{}: {module} uses {used}: {}",
                        file.strip_prefix(&src).expect("under src").display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layering (lower layers must not use higher ones):\n{}",
        upward.join("\n")
    );
}

#[test]
fn crate_paths_are_read_from_code_only() {
    assert_eq!(crate_paths("use crate::storage::Warehouse;"), ["storage"]);
    assert_eq!(
        crate_paths("let x = crate::query::one_batch(b); // see crate::flight"),
        ["query"]
    );
    assert!(crate_paths("/// [`crate::flight::handle`]").is_empty());
    assert!(crate_paths("$crate::storage").is_empty());
}
