//! The fuzz targets (fuzz/harness.rs), run over their seed corpus and the findings kept beside
//! it (fuzz/corpus/<target>/): every input that once found a bug stays a test.

#[path = "../fuzz/harness.rs"]
#[allow(dead_code)]
mod harness;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            (path.display().to_string(), bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no seeds in {}", dir.display());
    inputs
}

fn replay(target: &str, run: fn(&[u8])) {
    for (name, input) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| run(&input));
        assert!(outcome.is_ok(), "{target} failed on {name}");
    }
}

#[test]
fn lean_head_seeds() {
    replay("head", harness::head);
}

#[test]
fn sse_parser_seeds() {
    replay("sse", harness::sse);
}

#[test]
fn config_seeds() {
    replay("config", harness::config);
}

#[test]
fn upstream_response_seeds() {
    replay("upstream", harness::upstream);
}
