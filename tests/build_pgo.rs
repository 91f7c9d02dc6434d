//! `scripts/build-pgo.sh --find-profdata`: step 1 of the profile-guided build alone, against fake
//! llvm-profdata tools first on PATH. Issue 16: on a machine with an older LLVM installed too,
//! `llvm-profdata-14 --version` exits 1 and `set -e` ended the search before it reached a working
//! one. Nothing here builds with PGO; the script compiles only a one-line probe program.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-pgo.sh")
}

/// rustc's LLVM major, as the script reads it.
fn rustc_llvm_major() -> u32 {
    let out = Command::new("rustc").arg("-vV").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("LLVM version: ")).unwrap();
    line.split('.').next().unwrap().parse().unwrap()
}

fn write_tool(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Debian's llvm-profdata-14 as the issue saw it: every invocation, `--version` included, fails.
fn failing(dir: &Path, name: &str) -> PathBuf {
    write_tool(dir, name, "echo \"$(basename \"$0\"): Unknown command!\" >&2\nexit 1")
}

/// A tool that says it is LLVM `major` and, when `merges`, writes the `-o` file of a merge.
fn reporting(dir: &Path, name: &str, major: u32, merges: bool) -> PathBuf {
    let merge = if merges {
        r#"while [ $# -gt 0 ]; do if [ "$1" = -o ]; then : > "$2"; fi; shift; done; exit 0"#
    } else {
        r#"echo "warning: unsupported instrumentation profile format version" >&2; exit 1"#
    };
    write_tool(
        dir,
        name,
        &format!(
            "case \"$1\" in\n--version) echo \"Debian LLVM version {major}.1.0\";;\n\
             merge) {merge};;\n*) exit 1;;\nesac"
        ),
    )
}

fn find_profdata(path_first: &[&Path]) -> Output {
    let mut path: Vec<String> = path_first.iter().map(|p| p.display().to_string()).collect();
    path.push(std::env::var("PATH").unwrap());
    Command::new("bash").arg(script()).arg("--find-profdata").env("PATH", path.join(":")).output().unwrap()
}

#[test]
fn a_failing_older_llvm_profdata_first_on_path_is_skipped_and_one_that_reads_rustcs_format_is_chosen() {
    let want = rustc_llvm_major();
    let old = tempfile::tempdir().unwrap();
    let tools = tempfile::tempdir().unwrap();
    let fake_14 = failing(old.path(), "llvm-profdata-14");
    // rustc's own major by its word, so tried first, but unable to merge the probe: passed over.
    let liar = reporting(tools.path(), &format!("llvm-profdata-{want}"), want, false);
    // Both read the probe; a newer LLVM is preferred to an older one.
    let good = reporting(tools.path(), &format!("llvm-profdata-{}", want + 1), want + 1, true);
    reporting(tools.path(), &format!("llvm-profdata-{}", want - 1), want - 1, true);

    let out = find_profdata(&[old.path(), tools.path()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let chosen = stdout.trim();
    let fake = |p: &Path| chosen.contains(p.to_str().unwrap());
    if !fake(old.path()) && !fake(tools.path()) {
        // The machine has a real llvm-profdata that reads rustc's profiles (rustup's llvm-tools
        // are tried first, Debian's for their version): it proves nothing more here.
        let (_, path) = chosen.split_once(' ').expect("MAJOR PATH");
        assert!(Path::new(path).exists(), "{chosen}\n{stderr}");
        return;
    }
    assert_eq!(chosen, format!("{} {}", want + 1, good.display()), "stderr: {stderr}");
    assert!(stderr.contains(&format!("skipping {}", fake_14.display())), "{stderr}");
    assert!(stderr.contains(&format!("skipping {}", liar.display())), "{stderr}");
}

#[test]
fn with_only_tools_that_fail_the_search_ends_with_a_reason_not_midway() {
    let want = rustc_llvm_major();
    let old = tempfile::tempdir().unwrap();
    let fake_14 = failing(old.path(), "llvm-profdata-14");
    let fake_old = reporting(old.path(), "llvm-profdata-13", 13, false);

    let out = find_profdata(&[old.path()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The failing tool was looked at and passed over, not the end of the search, and no fake
    // was chosen.
    assert!(stderr.contains(&format!("skipping {}", fake_14.display())), "{stderr}");
    assert!(!stdout.contains(old.path().to_str().unwrap()), "{stdout}");
    if out.status.success() {
        // The machine has a real llvm-profdata that reads rustc's profiles: it was found (and,
        // ranked before the fake LLVM 13, may have ended the search before that one was tried).
        let (_, path) = stdout.trim().split_once(' ').expect("MAJOR PATH");
        assert!(Path::new(path).exists(), "{stdout}");
    } else {
        // Nothing works: every candidate was tried, and the search says why it ends.
        assert!(stderr.contains(&format!("skipping {}", fake_old.display())), "{stderr}");
        assert!(stderr.contains(&format!("no llvm-profdata reads rustc's LLVM {want} profiles")), "{stderr}");
    }
}
