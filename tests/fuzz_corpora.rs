//! Replays every fuzz corpus and crash artifact under `fuzz/` through its
//! target, so what the fuzzers found stays fixed. The targets' invariants
//! are in src/fuzzing.rs.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("artifacts").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus for {target}");
}

#[test]
fn cookie_corpus() {
    replay("cookie", sessiongate::fuzzing::cookie);
}

#[test]
fn operations_corpus() {
    replay("operations", sessiongate::fuzzing::operations);
}

#[test]
fn strip_corpus() {
    replay("strip", sessiongate::fuzzing::strip);
}

#[test]
fn config_corpus() {
    replay("config", sessiongate::fuzzing::config);
}
