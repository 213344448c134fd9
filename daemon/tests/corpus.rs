//! Replays every kept fuzz input and hand-made malformed input (tests/corpus/<target>/)
//! through its target: each must be handled (Ok or a specific error), never panic.

use std::path::Path;

/// Address space for this test process: an input that makes a parser allocate
/// what a length field claims (gigabytes) aborts the test instead of passing
/// unnoticed on a machine with memory to spare.
const ADDRESS_SPACE: u64 = 2 << 30;

#[test]
fn every_kept_input_is_handled_without_a_panic() {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_AS, ADDRESS_SPACE, ADDRESS_SPACE).expect("setrlimit");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus");
    for (name, target) in scanside::fuzz_targets::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no kept inputs for target {name}");
        for p in inputs {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let r = std::panic::catch_unwind(|| target(&bytes));
            assert!(r.is_ok(), "{name}: {} panicked", p.display());
        }
    }
}
