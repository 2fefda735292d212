//! `tend key`, `tend skill sign` and `tend skill verify` as a publisher and an operator use
//! them: real keys, real signatures, and the errors each attack produces.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::support::*;

fn tend_at(dir: &Path, args: &[&str]) -> Output {
    tend()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run tend")
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A publisher key, a signed trivial component, and a trust policy trusting the key for names
/// starting with `prefix`.
fn signed_setup(dir: &Path, prefix: &str) {
    assert_eq!(
        tend_at(dir, &["key", "gen", "--out", "publisher.key"])
            .status
            .code(),
        Some(0)
    );
    std::fs::copy(guest("trivial"), dir.join("skill.wasm")).expect("copy");
    std::fs::write(
        dir.join("skill.toml"),
        "[skill]\nname = \"acme-echo\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\n",
    )
    .expect("manifest");
    let o = tend_at(
        dir,
        &[
            "skill",
            "sign",
            "skill.wasm",
            "--manifest",
            "skill.toml",
            "--key",
            "publisher.key",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let shown = tend_at(dir, &["key", "show", "publisher.key", "--json"]);
    let key: Value = serde_json::from_slice(&shown.stdout).expect("json");
    std::fs::write(
        dir.join("trust.toml"),
        format!(
            "[[publishers]]\nname = \"acme\"\nkey = \"{}\"\nprefixes = [\"{prefix}\"]\n",
            key["public_key"].as_str().expect("key")
        ),
    )
    .expect("trust");
}

fn verify(dir: &Path) -> Output {
    tend_at(
        dir,
        &["skill", "verify", "skill.wasm", "--trust", "trust.toml"],
    )
}

#[test]
fn keys_are_private_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let o = tend_at(dir.path(), &["key", "gen", "--out", "k.pem"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let path = dir.path().join("k.pem");
    let before = std::fs::read(&path).expect("key");
    assert_eq!(
        std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    let o = tend_at(dir.path(), &["key", "gen", "--out", "k.pem"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("refusing to overwrite"), "{}", err(&o));
    assert_eq!(
        std::fs::read(&path).expect("key"),
        before,
        "the key file changed"
    );
}

#[test]
fn a_signed_component_verifies_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    signed_setup(dir.path(), "acme-");
    let o = verify(dir.path());
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out.contains("trusted: acme-echo 1.0.0"), "{out}");
    assert!(out.contains("trusted publisher \"acme\""), "{out}");
}

#[test]
fn tampering_and_untrusted_signers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    signed_setup(d, "acme-");
    let sig = std::fs::read_to_string(d.join("skill.wasm.sig")).expect("sig");

    // One flipped byte in the component.
    let original = std::fs::read(d.join("skill.wasm")).expect("wasm");
    let mut flipped = original.clone();
    flipped[100] ^= 0x01;
    std::fs::write(d.join("skill.wasm"), &flipped).expect("write");
    let o = verify(d);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("changed after signing"), "{}", err(&o));
    std::fs::write(d.join("skill.wasm"), &original).expect("restore");

    // The manifest in the envelope edited after signing (a capability added).
    let mut env: Value = serde_json::from_str(&sig).expect("json");
    let m = env["manifest"].as_str().expect("manifest").to_string()
        + "[capabilities]\nfs_read = [\"/etc\"]\n";
    env["manifest"] = Value::String(m);
    std::fs::write(d.join("skill.wasm.sig"), env.to_string()).expect("write");
    let o = verify(d);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("does not verify"), "{}", err(&o));

    // A truncated envelope.
    std::fs::write(d.join("skill.wasm.sig"), &sig[..sig.len() / 2]).expect("write");
    let o = verify(d);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("malformed signature envelope"),
        "{}",
        err(&o)
    );
    std::fs::write(d.join("skill.wasm.sig"), &sig).expect("restore");
    assert_eq!(
        verify(d).status.code(),
        Some(0),
        "restored artifact verifies again"
    );

    // A key trusted only for another prefix.
    let trust = std::fs::read_to_string(d.join("trust.toml")).expect("trust");
    std::fs::write(d.join("trust.toml"), trust.replace("acme-", "other-")).expect("write");
    let o = verify(d);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("may sign skills named [\"other-\"], not \"acme-echo\""),
        "{}",
        err(&o)
    );
}

#[test]
fn a_signature_by_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    signed_setup(d, "acme-");
    assert_eq!(
        tend_at(d, &["key", "gen", "--out", "stranger.key"])
            .status
            .code(),
        Some(0)
    );
    let o = tend_at(
        d,
        &[
            "skill",
            "sign",
            "skill.wasm",
            "--manifest",
            "skill.toml",
            "--key",
            "stranger.key",
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    let o = verify(d);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("not a trusted publisher key"),
        "{}",
        err(&o)
    );
}

/// `tend run` with the setup's trust policy.
fn run_trusted(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", "skill.wasm", "--trust", "trust.toml", "--json"];
    args.extend_from_slice(extra);
    tend_at(dir, &args)
}

#[test]
fn run_verifies_before_it_compiles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    signed_setup(d, "acme-");
    let cache = d.join("cache");
    let cache_arg = cache.to_str().expect("p");

    // Signed and trusted: runs with its signed manifest, provenance in the report.
    let o = run_trusted(d, &["--cache-dir", cache_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("report");
    assert_eq!(report["skill"], "acme-echo");
    assert_eq!(report["provenance"]["trust"], "signed");

    // A --manifest that is not the signed one is refused (it could add capabilities).
    std::fs::write(
        d.join("more.toml"),
        "[skill]\nname = \"acme-echo\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\n[capabilities]\nfs_read = [\"/etc\"]\n",
    )
    .expect("manifest");
    let o = run_trusted(d, &["--manifest", "more.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("differs from the manifest signed"),
        "{}",
        err(&o)
    );

    // One flipped byte: refused, and nothing compiled into the cache.
    std::fs::remove_dir_all(&cache).expect("clear cache");
    let original = std::fs::read(d.join("skill.wasm")).expect("wasm");
    let mut flipped = original.clone();
    flipped[200] ^= 0x01;
    std::fs::write(d.join("skill.wasm"), &flipped).expect("write");
    let o = run_trusted(d, &["--cache-dir", cache_arg]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("not trusted") && err(&o).contains("changed after signing"),
        "{}",
        err(&o)
    );
    let cached = std::fs::read_dir(&cache).map(|r| r.count()).unwrap_or(0);
    assert_eq!(
        cached, 0,
        "an unverified component was compiled into the cache"
    );
    std::fs::write(d.join("skill.wasm"), &original).expect("restore");

    // A revoked key.
    let trust = std::fs::read_to_string(d.join("trust.toml")).expect("trust");
    let shown = tend_at(d, &["key", "show", "publisher.key", "--json"]);
    let key: Value = serde_json::from_slice(&shown.stdout).expect("json");
    std::fs::write(
        d.join("revoked.toml"),
        format!(
            "{trust}[revoked]\nkeys = [\"{}\"]\n",
            key["key_id"].as_str().expect("id")
        ),
    )
    .expect("write");
    let o = tend_at(d, &["run", "skill.wasm", "--trust", "revoked.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("is revoked"), "{}", err(&o));

    // No trust policy at all: named, with how to make one.
    let o = tend_at(d, &["run", "skill.wasm", "--trust", "missing.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("no trust policy at missing.toml"),
        "{}",
        err(&o)
    );

    // Unsigned: refused unless the operator says --insecure-unsigned, which is loud.
    std::fs::remove_file(d.join("skill.wasm.sig")).expect("unsign");
    let o = run_trusted(d, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("refusing to run unsigned") && err(&o).contains("--insecure-unsigned"),
        "{}",
        err(&o)
    );
    let o = run_trusted(d, &["--insecure-unsigned"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        err(&o).contains("runs without signature verification"),
        "{}",
        err(&o)
    );
    let report: Value = serde_json::from_slice(&o.stdout).expect("report");
    assert_eq!(report["provenance"]["trust"], "insecure_unsigned");
}

#[test]
fn the_runtime_compiles_only_the_bytes_that_were_verified() {
    use tend_runtime::{LoadError, Provenance};
    let (rt, dir) = runtime();
    let bytes = guest_bytes("trivial");
    let other = guest_bytes("hostile");
    let signed = |digest: String| Provenance::Signed {
        publisher: "acme".into(),
        key_id: "0011223344556677".into(),
        digest,
    };
    let verified = format!("sha256:{}", tend_registry::envelope::sha256_hex(&bytes));
    // Other bytes handed over with this digest (a swap between verify and compile): refused
    // before anything compiles or is cached.
    let err = rt
        .load_admitted(&other, None, signed(verified.clone()))
        .expect_err("swapped bytes");
    assert!(matches!(err, LoadError::NotVerified { .. }), "{err}");
    assert!(err.to_string().contains("not the"), "{err}");
    assert_eq!(rt.stats().compiles, 0);
    assert!(
        std::fs::read_dir(dir.path().join("cache"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    let skill = rt
        .load_admitted(&bytes, None, signed(verified))
        .expect("the verified bytes load");
    assert!(matches!(
        skill.provenance(),
        Some(Provenance::Signed { .. })
    ));
}
