//! What the precompile cache trusts without re-hashing the precompiled file: only an entry the
//! current user wrote, in its private directory, unchanged since it was written. Anything else
//! is never run: it is removed and the component compiled again.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tend_runtime::{Outcome, Runtime, RuntimeConfig};

use crate::support::*;

fn runtime_at(dir: &Path) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.to_path_buf()),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// The one entry file with extension `ext` for a component compiled into `cache`.
fn entry(cache: &Path, digest: &str, ext: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    std::fs::read_dir(cache)
        .expect("cache dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with(hex) && name.ends_with(ext)
        })
        .unwrap_or_else(|| panic!("no {ext} entry for {digest} in {}", cache.display()))
}

/// A valid skill that is not `trivial`: it answers `{"decoy":true}` whatever it is asked.
fn decoy() -> Vec<u8> {
    wat_skill(&wat_module(
        r#"(data (i32.const 1024) "{\"decoy\":true}")"#,
        "(call $ok (i32.const 1024) (i32.const 14))",
    ))
}

/// Compile `trivial` into a fresh cache; returns the cache dir (in `tmp`) and its digest.
fn cached_trivial(tmp: &Path) -> (PathBuf, String) {
    let cache = tmp.join("cache");
    let skill = runtime_at(&cache)
        .load(&guest_bytes("trivial"), None)
        .expect("load");
    (cache, skill.digest())
}

/// Load `trivial` in a new runtime (a new process's view) and call it: it must have been
/// compiled again, not loaded from the entry, and must behave as itself.
async fn assert_rebuilt_and_genuine(cache: &Path) {
    let rt = runtime_at(cache);
    let skill = rt.load(&guest_bytes("trivial"), None).expect("load");
    assert_eq!(rt.stats().disk_cache_hits, 0, "an untrusted entry was used");
    assert_eq!(rt.stats().compiles, 1);
    let report = call(&rt, &skill, r#"{"probe":7}"#).await;
    assert_eq!(report.outcome, Outcome::Ok);
    assert_eq!(
        report.output,
        Some(serde_json::json!({"echo": {"probe": 7}, "ok": true}))
    );
}

#[tokio::test]
async fn an_unchanged_entry_is_used_without_compiling() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cache, _) = cached_trivial(tmp.path());
    let rt = runtime_at(&cache);
    let skill = rt.load(&guest_bytes("trivial"), None).expect("load");
    assert_eq!(rt.stats().compiles, 0);
    assert_eq!(rt.stats().disk_cache_hits, 1);
    assert_eq!(call(&rt, &skill, "{}").await.outcome, Outcome::Ok);
}

#[tokio::test]
async fn a_precompiled_file_writable_by_group_or_others_is_rebuilt_not_loaded() {
    for mode in [0o620, 0o602, 0o640] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cache, digest) = cached_trivial(tmp.path());
        let cwasm = entry(&cache, &digest, ".cwasm");
        std::fs::set_permissions(&cwasm, std::fs::Permissions::from_mode(mode)).expect("chmod");
        assert_rebuilt_and_genuine(&cache).await;
        let rebuilt = std::fs::metadata(entry(&cache, &digest, ".cwasm")).expect("rebuilt");
        assert_eq!(rebuilt.mode() & 0o777, 0o600, "mode {mode:o}");
    }
}

#[tokio::test]
async fn a_symlinked_precompiled_file_or_sidecar_is_not_followed_but_rebuilt() {
    for ext in [".cwasm", ".meta"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cache, digest) = cached_trivial(tmp.path());
        let file = entry(&cache, &digest, ext);
        // The link points at a byte-identical copy outside the cache: still not trusted.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::copy(&file, &elsewhere).expect("copy");
        std::fs::remove_file(&file).expect("rm");
        std::os::unix::fs::symlink(&elsewhere, &file).expect("symlink");

        assert_rebuilt_and_genuine(&cache).await;
        let now = std::fs::symlink_metadata(entry(&cache, &digest, ext)).expect("entry");
        assert!(now.file_type().is_file(), "{ext} is still a symlink");
        assert!(elsewhere.exists(), "the link's target was touched");
    }
}

#[tokio::test]
async fn another_components_precompiled_code_in_its_place_is_never_run() {
    // Written over the entry in place (same inode) and renamed onto it (new inode).
    for rename in [false, true] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cache, digest) = cached_trivial(tmp.path());
        let decoy = runtime_at(&cache).load(&decoy(), None).expect("decoy");
        let decoy_cwasm = entry(&cache, &decoy.digest(), ".cwasm");
        let cwasm = entry(&cache, &digest, ".cwasm");
        if rename {
            std::fs::rename(&decoy_cwasm, &cwasm).expect("rename");
        } else {
            std::fs::write(&cwasm, std::fs::read(&decoy_cwasm).expect("read")).expect("write");
        }
        assert_rebuilt_and_genuine(&cache).await;
    }
}

#[tokio::test]
async fn a_precompiled_file_rewritten_with_its_own_bytes_is_not_trusted() {
    // The check is on the file, not its content: any write after ours means someone else's
    // hand was on it, even if the bytes look the same.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cache, digest) = cached_trivial(tmp.path());
    let cwasm = entry(&cache, &digest, ".cwasm");
    std::fs::write(&cwasm, std::fs::read(&cwasm).expect("read")).expect("write");
    assert_rebuilt_and_genuine(&cache).await;
}

#[tokio::test]
async fn a_sidecar_that_names_another_component_or_is_malformed_is_rebuilt() {
    for sidecar in [
        None,
        Some("{\"component_sha256\": \"00\"}"),
        Some("not json"),
    ] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cache, digest) = cached_trivial(tmp.path());
        let meta = entry(&cache, &digest, ".meta");
        let text = match sidecar {
            Some(t) => t.to_string(),
            // The real sidecar with another component's digest.
            None => std::fs::read_to_string(&meta)
                .expect("meta")
                .replace(digest.trim_start_matches("sha256:"), &"ab".repeat(32)),
        };
        std::fs::write(&meta, text).expect("write");
        assert_rebuilt_and_genuine(&cache).await;
    }
}

#[test]
fn tend_run_uses_the_entry_a_long_running_host_wrote() {
    // `tend run` builds its engine with the on-demand allocator, the orchestrator and agent with
    // the pooling one: the precompiled code is the same, so a skill pulled (and precompiled) once
    // is not compiled again by a one-shot run.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cache, digest) = cached_trivial(tmp.path());
    let cwasm = entry(&cache, &digest, ".cwasm");
    let before = std::fs::metadata(&cwasm).expect("entry");
    let out = tend()
        .arg("run")
        .arg(guest("trivial"))
        .args(["--insecure-unsigned", "--json", "--input", r#"{"n":1}"#])
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .expect("tend run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["output"]["echo"], serde_json::json!({"n": 1}));
    let after = std::fs::metadata(entry(&cache, &digest, ".cwasm")).expect("entry");
    assert_eq!(
        (after.ino(), after.ctime(), after.ctime_nsec()),
        (before.ino(), before.ctime(), before.ctime_nsec()),
        "tend run compiled the skill again instead of using the cached entry"
    );
}

fn signed(digest: &str) -> tend_runtime::Provenance {
    tend_runtime::Provenance::Signed {
        publisher: "acme".into(),
        key_id: "0011223344556677".into(),
        digest: digest.to_string(),
    }
}

#[tokio::test]
async fn a_verified_digest_already_precompiled_runs_that_component_and_nothing_else() {
    // Once the verified digest's code is cached, the bytes in hand are not hashed again: what
    // runs is the verified component, never the bytes that came with it.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cache, digest) = cached_trivial(tmp.path());
    let rt = runtime_at(&cache);
    let skill = rt
        .load_admitted(&decoy(), None, signed(&digest))
        .expect("the verified component loads");
    assert_eq!(rt.stats().compiles, 0);
    assert_eq!(skill.digest(), digest);
    let report = call(&rt, &skill, r#"{"probe":1}"#).await;
    assert_eq!(
        report.output,
        Some(serde_json::json!({"echo": {"probe": 1}, "ok": true}))
    );
}

#[test]
fn a_verified_digest_that_is_not_a_sha256_never_names_a_cache_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cache, _) = cached_trivial(tmp.path());
    let rt = runtime_at(&cache);
    for digest in ["sha256:../../etc/passwd", "sha256:ABC", ""] {
        let err = rt
            .load_admitted(&guest_bytes("trivial"), None, signed(digest))
            .expect_err("not a digest");
        assert!(
            matches!(err, tend_runtime::LoadError::NotVerified { .. }),
            "{err}"
        );
    }
    assert_eq!(rt.stats().disk_cache_hits, 0);
    assert_eq!(rt.stats().compiles, 0);
}
