//! The real binary: worker threads follow the CPU affinity mask.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn worker_threads_follow_cpu_affinity() {
    if Command::new("taskset").arg("--version").output().is_err() {
        // On CI taskset (util-linux) is always there; a silent skip there would hide a gap.
        assert!(std::env::var_os("CI").is_none(), "taskset is missing on CI");
        eprintln!("skipping: taskset not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(&path, "[admin]\nenabled = false\n[[listener]]\nname = \"w\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nservers = [ { addr = \"127.0.0.1:9\" } ]\n[pool.health]\nkind = \"none\"\n").unwrap();
    let mut child = Command::new("taskset")
        .args([
            "-c",
            "0",
            env!("CARGO_BIN_EXE_fulcrum"),
            "--log-format",
            "json",
            "run",
            "-c",
        ])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut workers = None;
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
            if v["message"] == "starting worker threads" {
                workers = v["workers"].as_u64();
                break;
            }
        }
    }
    // taskset execs fulcrum, so the child's pid is fulcrum's: count its worker threads.
    let mut threads = 0;
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        threads = worker_threads(child.id());
        if threads > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        workers,
        Some(1),
        "pinned to one CPU, the runtime runs one worker"
    );
    assert_eq!(threads, 1, "one fulcrum-worker thread serves connections");
}

/// Threads of `pid` named fulcrum-worker-N.
fn worker_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.starts_with("fulcrum-worker"))
        .count()
}
