//! `promtool check metrics`: the Prometheus project's own parser and linter of the text
//! exposition format, run on what a gateway's `/metrics` answered.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `promtool check metrics` on `exposition`; `Err` holds what promtool reported (a parse
/// error or a lint problem). Panics when promtool is not installed: `scripts/test.sh` installs
/// it (the Debian package `prometheus`), so a missing promtool is a broken setup, not a skip.
pub fn check_metrics(exposition: &str) -> Result<(), String> {
    let binary = binary();
    let mut child = Command::new(&binary)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("run {}: {err}", binary.display()));
    child.stdin.take().expect("promtool's stdin").write_all(exposition.as_bytes()).expect("write to promtool");
    let output = child.wait_with_output().expect("wait for promtool");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool exited with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `promtool` in `$PATH`, else where Debian's `prometheus` package puts it.
fn binary() -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("promtool")).collect::<Vec<_>>())
        .unwrap_or_default();
    in_path
        .into_iter()
        .chain([Path::new("/usr/bin/promtool").to_owned()])
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("`promtool` not found: install the Debian package prometheus (scripts/test.sh does)"))
}
