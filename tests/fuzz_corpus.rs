//! Every saved fuzz input, run on stable Rust through the same functions the fuzz targets
//! call (`fulcrum::fuzzing`): seeds and every crash a fuzzer once found stay fixed. A target
//! without a corpus directory, or a corpus directory without a target, is a failure.

use std::path::Path;

use fulcrum::fuzzing::TARGETS;

#[test]
fn every_corpus_file_of_every_target_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut ran = Vec::new();
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; every target keeps a seed corpus", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for f in &files {
            let data = std::fs::read(f).expect("corpus file is readable");
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "fuzz target {name} fails on {}", f.display());
        }
        ran.push((*name, files.len()));
    }
    for entry in std::fs::read_dir(&root).expect("fuzz/corpus exists") {
        let name = entry.expect("corpus dir entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} has no target in fulcrum::fuzzing::TARGETS"
        );
    }
    eprintln!("fuzz corpus: {ran:?}");
}

#[test]
fn the_client_hello_seeds_are_what_they_say() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/client_hello_sni");
    for seed in ["hello-with-sni", "hello-split-records"] {
        let data = std::fs::read(dir.join(seed)).unwrap();
        let got = fulcrum::tls::client_hello_sni(&data).map(|n| n.map(|n| n.into_owned()));
        assert_eq!(got, Ok(Some("a.example".to_string())), "{seed}");
    }
}
