//! Build script: gives the binary its source revision (`dingtalk_relay_build_info{revision}`).
//! `DINGTALK_RELAY_REVISION` from the build environment wins (a Docker build has no `.git`);
//! else `git rev-parse --short=12 HEAD`; else `unknown`, so a build from a tarball works.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// Asks cargo to rebuild when `path` changes. Only for paths that exist: cargo reruns the
/// script on every build for a missing one.
fn watch(path: &str) {
    if std::path::Path::new(path).exists() {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=DINGTALK_RELAY_REVISION");
    let from_env = std::env::var("DINGTALK_RELAY_REVISION")
        .ok()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    let revision = from_env.or_else(|| {
        // Rebuild when HEAD moves: HEAD itself (checkout), the branch it points at (commit).
        if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
            watch(&format!("{dir}/HEAD"));
        }
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"])
            && let Some(path) = git(&["rev-parse", "--git-path", &reference])
        {
            watch(&path);
        }
        if let Some(packed) = git(&["rev-parse", "--git-path", "packed-refs"]) {
            watch(&packed);
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    let revision = revision
        .filter(|r| {
            r.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=DINGTALK_RELAY_REVISION={revision}");
}
