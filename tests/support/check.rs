//! `fulcrum check --config` on a config written to a temporary directory, for the tests of
//! what `check` accepts, refuses and warns about. Include it with
//! `#[path = "support/check.rs"] mod check_cmd;`.

use std::process::Command;

/// Runs `fulcrum check` on `text` (written as `f.toml`) beside `files` (name, contents):
/// (exit code, stdout, stderr with the config's path replaced by `F`).
pub fn check_files(text: &str, files: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let path = dir.path().join("f.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).replace(&*path.to_string_lossy(), "F"),
    )
}

/// [`check_files`] with no other files.
#[allow(dead_code)]
pub fn check(text: &str) -> (i32, String, String) {
    check_files(text, &[])
}
