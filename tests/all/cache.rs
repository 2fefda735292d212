//! The precompile cache: nothing compiles on the invoke path, entries are checked before they
//! are trusted, and refused input leaves nothing behind.

use std::os::unix::fs::PermissionsExt;

use tend_runtime::{LoadError, Outcome, Runtime, RuntimeConfig};

use crate::support::*;

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn runtime_at(dir: &std::path::Path) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.to_path_buf()),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

#[tokio::test]
async fn second_invocation_compiles_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let bytes = guest_bytes("trivial");

    let rt = runtime_at(&cache);
    let skill = rt.load(&bytes, None).expect("load");
    assert_eq!(rt.stats().compiles, 1);
    for _ in 0..3 {
        assert_eq!(call(&rt, &skill, "{}").await.outcome, Outcome::Ok);
    }
    let again = rt.load(&bytes, None).expect("load again");
    assert_eq!(call(&rt, &again, "{}").await.outcome, Outcome::Ok);
    assert_eq!(
        rt.stats().compiles,
        1,
        "invocations and re-loads compiled again"
    );
    assert_eq!(rt.stats().memory_cache_hits, 1);

    // A new process (a new runtime) loads from disk and compiles nothing.
    let rt2 = runtime_at(&cache);
    let skill = rt2.load(&bytes, None).expect("load from disk");
    assert_eq!(call(&rt2, &skill, "{}").await.outcome, Outcome::Ok);
    assert_eq!(rt2.stats().compiles, 0);
    assert_eq!(rt2.stats().disk_cache_hits, 1);
}

#[tokio::test]
async fn cache_files_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let rt = runtime_at(&cache);
    rt.load(&guest_bytes("trivial"), None).expect("load");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    let entries = files(&cache);
    assert_eq!(entries.len(), 2, "{entries:?}");
    for e in entries {
        assert_eq!(mode(&e), 0o600, "{}", e.display());
    }
}

#[tokio::test]
async fn a_tampered_cache_entry_is_discarded_and_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let bytes = guest_bytes("trivial");
    runtime_at(&cache).load(&bytes, None).expect("load");
    let cwasm = files(&cache)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("cwasm");
    let mut code = std::fs::read(&cwasm).expect("read");
    let mid = code.len() / 2;
    code[mid] ^= 0xff;
    std::fs::write(&cwasm, &code).expect("tamper");

    let rt = runtime_at(&cache);
    let skill = rt.load(&bytes, None).expect("load");
    assert_eq!(rt.stats().disk_cache_hits, 0);
    assert_eq!(rt.stats().compiles, 1, "tampered entry must not be used");
    assert_eq!(call(&rt, &skill, "{}").await.outcome, Outcome::Ok);
}

#[tokio::test]
async fn a_world_writable_cache_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).expect("mkdir");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.clone()),
        ..RuntimeConfig::default()
    })
    .expect_err("unsafe cache dir");
    assert!(err.to_string().contains("writable by others"), "{err}");
}

#[tokio::test]
async fn refused_components_leave_nothing_in_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let rt = runtime_at(&cache);

    let err = rt.load(b"definitely not wasm", None).expect_err("not wasm");
    assert!(matches!(err, LoadError::NotWasm), "{err}");

    let core = wat::parse_str("(module)").expect("wat");
    let err = rt.load(&core, None).expect_err("core module");
    assert!(matches!(err, LoadError::CoreModule), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"));

    let mut truncated = guest_bytes("trivial");
    truncated.truncate(truncated.len() / 2);
    let err = rt.load(&truncated, None).expect_err("truncated");
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");

    let other = other_world_component();
    let err = rt.load(&other, None).expect_err("other world");
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err}");
    assert!(err.to_string().contains("exports [hello]"), "{err}");

    assert!(files(&cache).is_empty(), "{:?}", files(&cache));
}

/// A valid component of some other world: exports `hello: func() -> string`.
pub fn other_world_component() -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let pkg = resolve
        .push_str(
            "other.wit",
            "package test:other; world other { export hello: func() -> string; }",
        )
        .expect("wit");
    componentize(
        r#"(module
            (memory (export "memory") 1)
            (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
            (data (i32.const 16) "hi")
            (func (export "hello") (result i32)
              (i32.store (i32.const 512) (i32.const 16))
              (i32.store (i32.const 516) (i32.const 2))
              (i32.const 512)))"#,
        &resolve,
        pkg,
        "other",
    )
}
