//! The skill registry as publishers and operators use it: a real `tend registry serve` on
//! loopback with its SQLite index and blob store, real tokens, real signatures, and `tend
//! skill publish | pull | list | search` and `tend run NAME` against it — plus every way a
//! registry (or someone holding its disk) can lie.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use crate::support::*;

/// A publisher (key, trust policy) and an operator host (its own data dir) in one temp dir.
pub struct World {
    pub dir: tempfile::TempDir,
}

impl World {
    /// A publisher key trusted for names starting with `acme-`, a trust policy, and a signed
    /// trivial component `acme-echo` at `version`.
    pub fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = World { dir };
        w.ok(&["key", "gen", "--out", "publisher.key"]);
        let shown = w.ok(&["key", "show", "publisher.key", "--json"]);
        let key: Value = serde_json::from_slice(&shown.stdout).expect("json");
        let public = key["public_key"].as_str().expect("key").to_string();
        std::fs::write(
            w.path("trust.toml"),
            format!(
                "[[publishers]]\nname = \"acme\"\nkey = \"{public}\"\nprefixes = [\"acme-\"]\n{}",
                approvers_toml()
            ),
        )
        .expect("trust");
        w
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `tend` with this world's trust policy, data dir and precompile cache.
    pub fn tend(&self, args: &[&str]) -> Output {
        tend()
            .current_dir(self.dir.path())
            .env("TEND_TRUST", self.path("trust.toml"))
            .env("TEND_DATA_DIR", self.path("host-data"))
            .env("TEND_CACHE_DIR", self.path("cache"))
            .args(args)
            .output()
            .expect("run tend")
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let o = self.tend(args);
        assert_eq!(o.status.code(), Some(0), "tend {args:?}: {}", err(&o));
        o
    }

    /// Sign `component` as `<file>.wasm` with a manifest for `name` `version`.
    pub fn signed(&self, file: &str, component: &Path, name: &str, version: &str) -> String {
        self.signed_with(
            file,
            component,
            &format!(
                "[skill]\nname = \"{name}\"\nversion = \"{version}\"\nkind = \"diagnose\"\ndescription = \"Echo for {name}\"\n"
            ),
        )
    }

    /// Sign `component` as `<file>.wasm` with this manifest text.
    pub fn signed_with(&self, file: &str, component: &Path, manifest_text: &str) -> String {
        let wasm = format!("{file}.wasm");
        std::fs::copy(component, self.path(&wasm)).expect("copy");
        let manifest = format!("{file}.toml");
        std::fs::write(self.path(&manifest), manifest_text).expect("manifest");
        self.ok(&[
            "skill",
            "sign",
            &wasm,
            "--manifest",
            &manifest,
            "--key",
            "publisher.key",
        ]);
        wasm
    }

    /// `tend skill publish` (not checked: the caller asserts).
    pub fn publish(&self, registry: &str, wasm: &str, token: &str) -> Output {
        self.tend(&[
            "skill",
            "publish",
            wasm,
            "--registry",
            registry,
            "--token",
            token,
        ])
    }

    /// `tend skill publish` that must succeed.
    pub fn published(&self, registry: &str, wasm: &str, token: &str) -> Output {
        let o = self.publish(registry, wasm, token);
        assert_eq!(o.status.code(), Some(0), "publish {wasm}: {}", err(&o));
        o
    }

    pub fn token(&self, name: &str, role: &str) -> String {
        let o = self.ok(&[
            "registry", "token", "create", "--data", "registry", "--name", name, "--role", role,
        ]);
        String::from_utf8(o.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    }
}

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running `tend registry serve`, stopped (SIGTERM) when dropped.
pub struct Registry {
    child: Child,
    pub url: String,
}

impl Registry {
    pub fn start(world: &World) -> Registry {
        let mut child = tend()
            .current_dir(world.dir.path())
            .env("TEND_LOG", "info")
            .args([
                "registry",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data",
                "registry",
                "--trust",
                "trust.toml",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start registry");
        // Ready when it says where it listens.
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("the registry exited before listening")
                .expect("read");
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().expect("url").to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Registry { child, url }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// Edit the registry's SQLite index behind its back (as someone with its disk could).
fn sqlite(db: &Path, sql: &str) {
    let status = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()",
        ])
        .arg(db)
        .arg(sql)
        .status()
        .expect("python3");
    assert!(status.success());
}

#[test]
fn publish_list_search_pull_and_run_by_name() {
    let w = World::new();
    let wasm = w.signed("echo", &guest("trivial"), "acme-echo", "1.0.0");
    let publisher = w.token("ci", "publisher");
    let reg = Registry::start(&w);

    let o = w.published(&reg.url, &wasm, &publisher);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("published acme-echo 1.0.0") && out.contains("log entry 1"),
        "{out}"
    );
    // Publishing the same bytes again changes nothing.
    let o = w.published(&reg.url, &wasm, &publisher);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already published"));

    let o = w.ok(&["skill", "list", "--registry", &reg.url]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("acme-echo") && out.contains("1.0.0") && out.contains("acme"));
    let o = w.ok(&[
        "skill",
        "search",
        "ECHO FOR",
        "--registry",
        &reg.url,
        "--json",
    ]);
    let found: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(found[0]["name"], "acme-echo");
    let o = w.ok(&["skill", "search", "nothing-like-it", "--registry", &reg.url]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no skill matches"));

    // Pull: verified against the host's own trust policy, stored, precompiled.
    let o = w.ok(&[
        "skill",
        "pull",
        "acme-echo@latest",
        "--registry",
        &reg.url,
        "--json",
    ]);
    let pulled: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(pulled["version"], "1.0.0");
    assert_eq!(pulled["publisher"], "acme");
    assert!(
        pulled["component"]
            .as_str()
            .expect("path")
            .ends_with("acme-echo/1.0.0/component.wasm")
    );
    assert!(
        std::fs::read_to_string(w.path("host-data/seen.toml"))
            .expect("seen")
            .contains("acme-echo = \"1.0.0\"")
    );

    // Ready: runs by name, from the precompile cache, with its provenance in the report.
    let o = w.ok(&["run", "acme-echo", "--input", r#"{"n":7}"#, "--json"]);
    let report: Value = serde_json::from_slice(&o.stdout).expect("report");
    assert_eq!(report["output"]["echo"]["n"], 7);
    assert_eq!(report["provenance"]["trust"], "signed");
    assert_eq!(report["provenance"]["publisher"], "acme");
}

#[test]
fn publishing_needs_a_publisher_token_and_a_trusted_signature() {
    let w = World::new();
    let wasm = w.signed("echo", &guest("trivial"), "acme-echo", "1.0.0");
    let viewer = w.token("dashboard", "viewer");
    let publisher = w.token("ci", "publisher");
    let reg = Registry::start(&w);

    let o = w.tend(&["skill", "publish", &wasm, "--registry", &reg.url]);
    assert_eq!(code(&o), Some(2));
    assert!(
        err(&o).contains("401") && err(&o).contains("needs a publisher token"),
        "{}",
        err(&o)
    );
    let o = w.publish(&reg.url, &wasm, &viewer);
    assert!(
        err(&o).contains("403") && err(&o).contains("has role viewer"),
        "{}",
        err(&o)
    );
    let forged = format!("{}x", &publisher[..publisher.len() - 1]);
    let o = w.publish(&reg.url, &wasm, &forged);
    assert!(err(&o).contains("token is not valid"), "{}", err(&o));

    // A valid signature by a key the registry does not trust; a name outside the prefix.
    w.ok(&["key", "gen", "--out", "stranger.key"]);
    std::fs::copy(guest("trivial"), w.path("stranger.wasm")).expect("copy");
    w.ok(&[
        "skill",
        "sign",
        "stranger.wasm",
        "--manifest",
        "echo.toml",
        "--key",
        "stranger.key",
    ]);
    let o = w.publish(&reg.url, "stranger.wasm", &publisher);
    assert!(
        err(&o).contains("422") && err(&o).contains("not a trusted publisher key"),
        "{}",
        err(&o)
    );
    let other = w.signed("other", &guest("trivial"), "other-echo", "1.0.0");
    let o = w.publish(&reg.url, &other, &publisher);
    assert!(err(&o).contains("may sign skills named"), "{}", err(&o));

    // Nothing refused was stored.
    let o = w.ok(&["skill", "list", "--registry", &reg.url, "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).expect("json"),
        serde_json::json!([])
    );
    let blobs = std::fs::read_dir(w.path("registry/blobs/sha256"))
        .expect("blobs")
        .count();
    assert_eq!(blobs, 0, "a refused publication left a blob behind");
}

#[test]
fn a_published_version_is_immutable() {
    let w = World::new();
    let first = w.signed("v1", &guest("trivial"), "acme-echo", "1.0.0");
    let publisher = w.token("ci", "publisher");
    let reg = Registry::start(&w);
    w.published(&reg.url, &first, &publisher);
    // Different bytes, same name and version.
    let changed = w.signed("v1b", &guest("hostile"), "acme-echo", "1.0.0");
    let o = w.publish(&reg.url, &changed, &publisher);
    assert_eq!(code(&o), Some(2));
    assert!(
        err(&o).contains("409") && err(&o).contains("immutable"),
        "{}",
        err(&o)
    );
}

#[test]
fn a_registry_that_lies_is_caught_and_nothing_is_installed() {
    let w = World::new();
    let wasm = w.signed("echo", &guest("trivial"), "acme-echo", "1.0.0");
    let publisher = w.token("ci", "publisher");
    let reg = Registry::start(&w);
    let o = w.ok(&[
        "skill",
        "publish",
        &wasm,
        "--registry",
        &reg.url,
        "--token",
        &publisher,
        "--json",
    ]);
    let entry: Value = serde_json::from_slice(&o.stdout).expect("json");
    let digest = entry["digest"].as_str().expect("digest").to_string();
    let blob = w.path(&format!(
        "registry/blobs/sha256/{}",
        digest.trim_start_matches("sha256:")
    ));

    // The blob on the server's disk is swapped for other bytes.
    let original = std::fs::read(&blob).expect("blob");
    std::fs::write(&blob, std::fs::read(guest("hostile")).expect("other")).expect("swap");
    let o = w.tend(&["skill", "pull", "acme-echo@1.0.0", "--registry", &reg.url]);
    assert_eq!(code(&o), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("served a blob whose sha256 is") && err(&o).contains(&digest),
        "{}",
        err(&o)
    );
    let o = w.tend(&["run", "acme-echo"]);
    assert!(err(&o).contains("no pulled skill acme-echo"), "{}", err(&o));
    std::fs::write(&blob, original).expect("restore");

    // A publication-log entry altered behind the registry's back.
    let db = w.path("registry/index.db");
    sqlite(
        &db,
        "UPDATE publication_log SET key_id = 'ffffffffffffffff' WHERE idx = 1",
    );
    let o = w.tend(&["skill", "pull", "acme-echo", "--registry", &reg.url]);
    assert!(
        err(&o).contains("entry 1") && err(&o).contains("altered"),
        "{}",
        err(&o)
    );
}

#[test]
fn a_registry_that_rewrites_its_history_is_caught() {
    let w = World::new();
    let one = w.signed("one", &guest("trivial"), "acme-echo", "1.0.0");
    let two = w.signed("two", &guest("trivial"), "acme-other", "1.0.0");
    let publisher = w.token("ci", "publisher");
    let reg = Registry::start(&w);
    for wasm in [&one, &two] {
        w.published(&reg.url, wasm, &publisher);
    }
    // The host pulls once and remembers the log head (entry 2).
    w.ok(&["skill", "pull", "acme-echo", "--registry", &reg.url]);

    // The registry drops entry 2 and its skill, chain still consistent on its own.
    let db = w.path("registry/index.db");
    sqlite(&db, "DELETE FROM publication_log WHERE idx = 2");
    sqlite(&db, "DELETE FROM skills WHERE name = 'acme-other'");
    let o = w.tend(&["skill", "pull", "acme-echo", "--registry", &reg.url]);
    assert_eq!(code(&o), Some(2));
    assert!(err(&o).contains("dropped entries"), "{}", err(&o));
}

#[test]
fn pull_refuses_a_downgrade_unless_told_and_remembers_what_it_saw() {
    let w = World::new();
    let old = w.signed("old", &guest("trivial"), "acme-echo", "1.0.0");
    let new = w.signed("new", &guest("trivial"), "acme-echo", "1.1.0");
    let publisher = w.token("ci", "publisher");
    let reg = Registry::start(&w);
    for wasm in [&old, &new] {
        w.published(&reg.url, wasm, &publisher);
    }
    let o = w.ok(&["skill", "pull", "acme-echo", "--registry", &reg.url]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("acme-echo 1.1.0"));

    let o = w.tend(&["skill", "pull", "acme-echo@1.0.0", "--registry", &reg.url]);
    assert_eq!(code(&o), Some(2));
    assert!(
        err(&o).contains("older than 1.1.0") && err(&o).contains("--allow-downgrade"),
        "{}",
        err(&o)
    );
    let o = w.ok(&[
        "skill",
        "pull",
        "acme-echo@1.0.0",
        "--registry",
        &reg.url,
        "--allow-downgrade",
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("DOWNGRADE from 1.1.0 to 1.0.0"));
    // The floor stays at the highest version seen.
    assert!(
        std::fs::read_to_string(w.path("host-data/seen.toml"))
            .expect("seen")
            .contains("acme-echo = \"1.1.0\"")
    );
}

#[test]
fn bad_requests_get_clear_errors() {
    let w = World::new();
    let reg = Registry::start(&w);
    let o = w.tend(&["skill", "pull", "Not A Name", "--registry", &reg.url]);
    assert_eq!(code(&o), Some(2));
    assert!(err(&o).contains("is not NAME@VERSION"), "{}", err(&o));
    let o = w.tend(&["skill", "pull", "acme-none@1.0.0", "--registry", &reg.url]);
    assert_eq!(code(&o), Some(2));
    assert!(
        err(&o).contains("404") && err(&o).contains("no skill acme-none version 1.0.0"),
        "{}",
        err(&o)
    );
    let o = w.tend(&["skill", "list", "--registry", "http://127.0.0.1:9"]);
    assert_eq!(code(&o), Some(4));
    assert!(err(&o).contains("cannot reach the registry"), "{}", err(&o));
    // An unsigned component cannot be published at all.
    std::fs::copy(guest("trivial"), w.path("bare.wasm")).expect("copy");
    let o = w.tend(&["skill", "publish", "bare.wasm", "--registry", &reg.url]);
    assert_eq!(code(&o), Some(2));
    assert!(err(&o).contains("no signature envelope"), "{}", err(&o));
}

/// The registry answers an upload it will refuse before reading its body: an anonymous or
/// read-only caller cannot make it buffer a 64 MiB component. The request below announces
/// 64 MiB and sends none of it; the answer must come anyway.
#[test]
fn an_upload_is_refused_before_its_body_is_read() {
    use std::io::{Read, Write};
    let w = World::new();
    let r = Registry::start(&w);
    let viewer = w.token("reader", "viewer");
    let addr = r.url.trim_start_matches("http://").to_string();
    for (auth, status) in [
        (String::new(), "401"),
        (format!("Authorization: Bearer {viewer}\r\n"), "403"),
    ] {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .expect("timeout");
        write!(
            s,
            "PUT /api/v1/skills/acme-echo/9.9.9 HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/wasm\r\nContent-Length: {}\r\n\r\n",
            64 << 20
        )
        .expect("send headers");
        let mut answer = [0u8; 64];
        let n = s
            .read(&mut answer)
            .expect("an answer before any of the body was sent");
        let line = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(line.starts_with(&format!("HTTP/1.1 {status}")), "{line}");
    }
}
