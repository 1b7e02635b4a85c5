//! An older mpsync build to measure in the same run: `MPSYNC_BENCH_BASELINE_BIN=/path/to/mpsync`, or
//! `MPSYNC_BENCH_BASELINE=REV`, which builds commit REV of this repository once (release profile,
//! `--locked`) into `target/bench-baseline/COMMIT/` and reuses it afterwards.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ctx::Bin;

pub fn find() -> Option<Bin> {
    if let Some(path) = std::env::var_os("MPSYNC_BENCH_BASELINE_BIN").filter(|p| !p.is_empty()) {
        let label = std::env::var("MPSYNC_BENCH_BASELINE_LABEL").unwrap_or_else(|_| "baseline".into());
        let path = PathBuf::from(path);
        assert!(path.is_file(), "MPSYNC_BENCH_BASELINE_BIN: no such file: {}", path.display());
        return Some(Bin { label, path, manifest: None });
    }
    let rev = std::env::var("MPSYNC_BENCH_BASELINE").ok().filter(|r| !r.is_empty())?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        let out = Command::new("git").arg("-C").arg(repo).args(args).output().expect("git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let commit = git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")]);
    let short = git(&["rev-parse", "--short=7", &commit]);
    // target/release/mpsync → target
    let target = Path::new(env!("CARGO_BIN_EXE_mpsync")).parent().and_then(Path::parent).expect("the target dir");
    let root = target.join("bench-baseline").join(&commit);
    let bin = root.join("target/release/mpsync");
    if !bin.is_file() {
        eprintln!("baseline: building {short} into {} (once; a cold build takes 5-10 minutes here)", root.display());
        let src = root.join("src");
        let _ = fs::remove_dir_all(&src);
        fs::create_dir_all(&src).unwrap();
        let archive = format!("git -C '{}' archive '{commit}' | tar -x -C '{}'", repo.display(), src.display());
        let status = Command::new("sh").args(["-c", &archive]).status().expect("sh");
        assert!(status.success(), "{archive}: {status}");
        let status = build_release(&src.join("Cargo.toml"), &root.join("target"), &["--bin", "mpsync"]);
        assert!(status.success(), "building the baseline {short}: {status}");
    }
    Some(Bin { label: short, path: bin, manifest: Some(root.join("src/Cargo.toml")) })
}

/// `cargo build --release --locked` of `what` (`--bin mpsync`: as users build it, without the
/// dev-dependencies' features; or `--example NAME`) in the crate at `manifest`, into `target`.
pub fn build_release(manifest: &Path, target: &Path, what: &[&str]) -> std::process::ExitStatus {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
        .args(["build", "--release", "--locked"])
        .args(what)
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(Stdio::null())
        // The report goes to stdout: cargo's output, if any, goes with the progress to stderr.
        .stdout(std::io::stderr())
        .status()
        .expect("cargo")
}
