//! Shared helpers: fixture guests (built once per run), WAT skills, runtimes, the CLI binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tend_runtime::{
    ExecutionReport, Export, LimitOverrides, LoadedSkill, Manifest, Runtime, RuntimeConfig,
};

/// The target directory this test binary was built into (`<target>/debug/deps/all-…`).
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Path of a fixture guest component, building the fixture workspace once if needed
/// (`scripts/test` builds it before the tests; cargo's lock serialises parallel builders).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    BUILT.get_or_init(|| build_wasm_workspace("tests/guests/Cargo.toml"));
    assert!(path.exists(), "fixture guest {} missing", path.display());
    path
}

/// Build a workspace of guests (`manifest`, relative to the repo) for wasm32-wasip2 into the
/// shared target dir; cargo's own lock serialises parallel test processes.
fn build_wasm_workspace(manifest: &str) {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(repo_root().join(manifest))
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .expect("run cargo to build guests");
    assert!(status.success(), "building {manifest} failed");
}

pub fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("read guest")
}

/// Wrap a core module (WAT) that implements the canonical ABI of `run` into a component
/// targeting `tend:skill/diagnose@0.1.0`. The module must export `memory`, `cabi_realloc`
/// and `run: (i32 i32) -> i32`.
pub fn wat_skill(core_wat: &str) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_dir(repo_root().join("wit/skill"))
        .expect("parse wit/skill");
    componentize(core_wat, &resolve, pkg, "diagnose")
}

/// Encode a core module (WAT) as a component of `world` in package `pkg`.
pub fn componentize(
    core_wat: &str,
    resolve: &wit_parser::Resolve,
    pkg: wit_parser::PackageId,
    world: &str,
) -> Vec<u8> {
    let mut module = wat::parse_str(core_wat).expect("valid WAT");
    let world = resolve.select_world(&[pkg], Some(world)).expect("world");
    wit_component::embed_component_metadata(
        &mut module,
        resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("embed metadata");
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .expect("encoder accepts module")
        .encode()
        .expect("encode component")
}

/// A core module skeleton: a bump allocator and a `run` whose body is `body`. Helpers
/// `$ok` (ptr len -> retptr) build an `ok(string)` result in the return area at 512.
pub fn wat_module(extra: &str, body: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))
  (func $ok (param $ptr i32) (param $len i32) (result i32)
    (i32.store8 (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (local.get $ptr))
    (i32.store (i32.const 520) (local.get $len))
    (i32.const 512))
  {extra}
  (func (export "run") (param $in i32) (param $in_len i32) (result i32)
    {body})
)"#
    )
}

/// A runtime with its own cache directory (kept alive by the returned guard).
pub fn runtime() -> (Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.path().join("cache")),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    (rt, dir)
}

pub fn manifest(text: &str) -> Manifest {
    Manifest::parse(text, "test skill.toml").expect("valid manifest")
}

/// A diagnose manifest granting `caps` (TOML lines under `[capabilities]`).
pub fn diagnose_manifest(caps: &str) -> Manifest {
    manifest(&format!(
        "[skill]\nname = \"test\"\nversion = \"0.1.0\"\nkind = \"diagnose\"\n[capabilities]\n{caps}\n"
    ))
}

pub fn repair_manifest(caps: &str) -> Manifest {
    manifest(&format!(
        "[skill]\nname = \"test-repair\"\nversion = \"0.1.0\"\nkind = \"repair\"\nlevel = 2\n[capabilities]\n{caps}\n"
    ))
}

pub async fn call(rt: &Runtime, skill: &LoadedSkill, input: &str) -> ExecutionReport {
    call_with(rt, skill, input, LimitOverrides::default()).await
}

pub async fn call_with(
    rt: &Runtime,
    skill: &LoadedSkill,
    input: &str,
    overrides: LimitOverrides,
) -> ExecutionReport {
    rt.invoke(skill, Export::Run, input, &overrides)
        .await
        .expect("the host itself does not fail")
}

/// The `tend` binary of this build.
pub fn tend() -> Command {
    let path = target_dir().join("debug/tend");
    assert!(
        path.exists(),
        "{} missing: build it first with `cargo build -p tend-cli`",
        path.display()
    );
    // Never the user's own trust policy, pulled skills or registry.
    static ISOLATED: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let home = ISOLATED.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let mut cmd = Command::new(path);
    cmd.env_remove("TEND_CACHE_DIR")
        .env_remove("TEND_REGISTRY")
        .env_remove("TEND_REGISTRY_TOKEN")
        .env("TEND_TRUST", home.path().join("no-trust.toml"))
        .env("TEND_DATA_DIR", home.path().join("data"))
        .env("TEND_LOG", "error");
    cmd
}

/// A catalog skill: its component (from `skills/<name>/dist/`, written by `tend skill build`;
/// for a Rust skill not built that way yet, the skills workspace is built once) and its real
/// manifest.
pub fn catalog_skill(name: &str) -> (Vec<u8>, Manifest) {
    let dir = repo_root().join("skills").join(name);
    let manifest = Manifest::from_file(&dir.join("skill.toml")).expect("catalog manifest");
    let dist = dir
        .join("dist")
        .join(format!("{name}-{}.wasm", manifest.skill.version));
    if let Ok(bytes) = std::fs::read(&dist) {
        return (bytes, manifest);
    }
    assert!(
        dir.join("Cargo.toml").exists(),
        "{} missing: build it with `tend skill build skills/{name}` (./scripts/test does)",
        dist.display()
    );
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| build_wasm_workspace("skills/Cargo.toml"));
    let wasm = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    (std::fs::read(&wasm).expect("catalog component"), manifest)
}

/// Load a catalog skill with its own manifest, or with `manifest` in its place (tests that
/// point a grant at a temp dir or a stand-in program).
pub fn load_catalog(rt: &Runtime, name: &str, manifest: Option<Manifest>) -> LoadedSkill {
    let (bytes, own) = catalog_skill(name);
    rt.load(&bytes, Some(manifest.unwrap_or(own)))
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

/// Check a value against the `[output.schema]` of a catalog skill's manifest.
pub fn assert_output_schema(name: &str, output: &serde_json::Value) {
    let (_, manifest) = catalog_skill(name);
    let schema = &manifest
        .output
        .unwrap_or_else(|| panic!("{name} declares no [output.schema]"))
        .schema;
    let validator = jsonschema::validator_for(schema).expect("valid schema");
    let errors: Vec<String> = validator
        .iter_errors(output)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} output breaks its schema: {errors:?}\n{output:#}"
    );
}

/// The people who approve in tests. Each has a fixed ed25519 key ([`approver_key`]), listed in
/// every test world's trust policy ([`approvers_toml`]) and registered with the orchestrator
/// when their token is made, so that `Api::approve` signs as they would with `tend approve`.
pub const APPROVERS: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "victor", "admin",
];

/// `name`'s approver key: fixed, so a trust policy written before the orchestrator starts
/// can list it.
pub fn approver_key(name: &str) -> ed25519_dalek::SigningKey {
    let mut seed = [0x5a_u8; 32];
    for (i, b) in name.bytes().take(31).enumerate() {
        seed[i + 1] = b;
    }
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// `[[approvers]]` entries for [`APPROVERS`], to append to a trust policy.
pub fn approvers_toml() -> String {
    APPROVERS
        .iter()
        .map(|name| {
            format!(
                "\n[[approvers]]\nname = \"{name}\"\nkey = \"{}\"\n",
                tend_protocol::public_key_text(&approver_key(name).verifying_key())
            )
        })
        .collect()
}

fn token_names() -> &'static std::sync::Mutex<std::collections::HashMap<String, String>> {
    static NAMES: OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        OnceLock::new();
    NAMES.get_or_init(Default::default)
}

/// Remember whose a token is, so an approval made with it can be signed by that person's key.
pub fn remember_token(token: &str, name: &str) {
    token_names()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(token.to_string(), name.to_string());
}

/// The name a token was made for (see [`remember_token`]).
pub fn token_name(token: &str) -> Option<String> {
    token_names()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(token)
        .cloned()
}
