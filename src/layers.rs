//! The layer map, enforced: which top-level module may name which (`crate::x` in a `use` or a
//! path). Dependencies point one way, from the gRPC edge down to the leaves:
//!
//! ```text
//! startup   operator                       wires everything (the only module that may) / the operator's commands
//!   listener                               accepting connections: limits, TLS, call timeout, health
//!     api                                  gRPC adapters, the auth layer, Status mapping
//!       auth    vault                      who may call / the flows
//!         audit   keys   oauth   store   crypto
//!           config   connection_key   metrics   reload   telemetry   proto     leaves
//! ```
//!
//! Leaves import nothing above them (`crypto` and `store` use `connection_key`, a leaf too).
//!
//! CONTRIBUTING.md shows the same map. A new edge is a design decision: add it to `ALLOWED`
//! with the reason, or move the code so that it points down.

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        path::Path,
    };

    /// Every module and the modules it may name. A module absent from the table may name
    /// nothing in the crate.
    const ALLOWED: &[(&str, &[&str])] = &[
        (
            "startup",
            &[
                "api",
                "audit",
                "auth",
                "config",
                "crypto",
                "keys",
                "listener",
                "metrics",
                "oauth",
                "proto",
                "reload",
                "store",
                "telemetry",
                "vault",
            ],
        ),
        // The operator's commands (`connections`, `doctor`): a gRPC client of the API (proto)
        // and read-only checks over what the vault would start with.
        (
            "operator",
            &["auth", "config", "crypto", "keys", "oauth", "proto", "store"],
        ),
        // The edge: converts proto <-> domain and hands calls to auth and the vault. It reads
        // the callback parameters' limits from oauth to validate input before the vault.
        (
            "api",
            &[
                "audit",
                "auth",
                "config",
                "metrics",
                "oauth",
                "proto",
                "telemetry",
                "vault",
            ],
        ),
        // Accepts connections and serves health before any caller is known; it answers with the
        // API's error domain, and records the status of a call its call timeout ends on the
        // call's span as the API does (telemetry).
        ("listener", &["api", "auth", "config", "telemetry"]),
        ("auth", &["config", "connection_key", "metrics", "reload"]),
        (
            "vault",
            &["config", "connection_key", "crypto", "metrics", "oauth", "store"],
        ),
        ("audit", &["config", "store"]),
        ("keys", &["config", "crypto", "reload", "store"]),
        ("oauth", &["config", "metrics"]),
        ("store", &["connection_key"]),
        ("crypto", &["connection_key"]),
        ("connection_key", &[]),
        ("config", &[]),
        ("metrics", &[]),
        // The poll-and-SIGHUP loop of file reloads (keyring, client secrets, TLS, caller policy).
        ("reload", &[]),
        ("telemetry", &["config"]),
        ("proto", &[]),
        // Test and fuzzing entry points only (not compiled into the service).
        ("fuzzing", &["config", "crypto", "oauth"]),
        ("layers", &[]),
    ];

    /// The top-level modules named by `crate::…` in a source file: in `use crate::{a, b::c}`
    /// groups and in paths anywhere. Comments are skipped.
    fn named_modules(source: &str) -> BTreeSet<String> {
        let code: String = source
            .lines()
            .map(|line| match line.find("//") {
                Some(i) => &line[..i],
                None => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let mut named = BTreeSet::new();
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // A group: the first segment of each top-level item.
                let mut depth = 0usize;
                let mut item_start = true;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            item_start = true;
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 && item_start {
                        if c.is_alphanumeric() || c == '_' {
                            item.push(c);
                        } else if !item.is_empty() {
                            named.insert(std::mem::take(&mut item));
                            item_start = false;
                        }
                    }
                }
                if !item.is_empty() {
                    named.insert(item);
                }
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    named.insert(name);
                }
            }
        }
        named
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn dependencies_point_one_way() {
        let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut violations = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&src).expect("under src/");
            let top = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|c| c.trim_end_matches(".rs").to_owned())
                .expect("a file name");
            // main wires the binary; lib declares the modules; this file quotes paths in tests.
            if top == "main" || top == "lib" || top == "layers" {
                continue;
            }
            let Some(may_name) = allowed.get(top.as_str()) else {
                violations.push(format!(
                    "{}: module `{top}` is not in the layer table",
                    relative.display()
                ));
                continue;
            };
            let source = std::fs::read_to_string(&file).expect("a source file");
            for named in named_modules(&source) {
                if named != top && !may_name.contains(&named.as_str()) {
                    violations.push(format!("{}: `{top}` may not name `crate::{named}`", relative.display()));
                }
            }
        }
        assert!(
            violations.is_empty(),
            "dependencies must point down the layer map (src/layers.rs):\n{}",
            violations.join("\n")
        );
    }

    #[test]
    fn the_scanner_sees_groups_paths_and_skips_comments() {
        let source = "use crate::{\n    config::{A, B},\n    store::Store,\n};\n// crate::api is only mentioned\nfn f() { crate::vault::g(); }\n";
        let named: Vec<_> = named_modules(source).into_iter().collect();
        assert_eq!(named, ["config", "store", "vault"]);
    }
}
