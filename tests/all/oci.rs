//! `tend skill push/pull oci://...` against a real OCI registry: Debian's `docker-registry`
//! (distribution), started here on loopback with its own storage (scripts/test installs it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::registry::{World, err};
use crate::support::*;

pub(crate) struct OciRegistry {
    child: Child,
    pub(crate) host: String,
}

impl OciRegistry {
    pub(crate) fn start(dir: &Path) -> OciRegistry {
        let binary = Path::new("/usr/bin/docker-registry");
        assert!(
            binary.exists(),
            "docker-registry is not installed: `apt-get install docker-registry` (scripts/test does this)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
                dir.join("oci-storage").display()
            ),
        )
        .expect("config");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        // Ready when /v2/ answers.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(&host).is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        OciRegistry { child, host }
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn push_and_pull_through_a_real_oci_registry() {
    let w = World::new();
    let wasm = w.signed("echo", &guest("trivial"), "acme-echo", "1.2.0");
    let oci = OciRegistry::start(w.dir.path());
    let reference = format!("oci://{}/acme/acme-echo:1.2.0", oci.host);

    let o = w.ok(&["skill", "push", &reference, &wasm]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("pushed acme-echo 1.2.0"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // The registry holds a standard wasm artifact: config and layer media types.
    let manifest = Command::new("python3")
        .args([
            "-c",
            "import sys,urllib.request as u; r=u.Request(sys.argv[1], headers={'Accept':'application/vnd.oci.image.manifest.v1+json'}); print(u.urlopen(r).read().decode())",
        ])
        .arg(format!("http://{}/v2/acme/acme-echo/manifests/1.2.0", oci.host))
        .output()
        .expect("python3");
    let manifest: Value = serde_json::from_slice(&manifest.stdout).expect("manifest json");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    // Exactly one layer, the component: any wasm client can pull it.
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    let config = get(
        &oci.host,
        &format!(
            "/v2/acme/acme-echo/blobs/{}",
            manifest["config"]["digest"]
                .as_str()
                .expect("config digest")
        ),
        "*/*",
    );
    let config: Value = serde_json::from_slice(&config.1).expect("config json");
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip2");
    assert_eq!(config["layerDigests"][0], manifest["layers"][0]["digest"]);
    // The component's world, as wasm-pkg-tools records it: Tend's skill interface and `run`.
    let names = |field: &str| -> Vec<String> {
        config["component"][field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(names("exports").contains(&"run".to_string()), "{config}");
    assert!(
        names("imports")
            .iter()
            .any(|i| i.starts_with("tend:skill/")),
        "{config}"
    );
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"],
        "acme-echo"
    );

    let o = w.ok(&["skill", "pull", &reference, "--json"]);
    let pulled: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(pulled["name"], "acme-echo");
    assert_eq!(pulled["publisher"], "acme");
    let o = w.ok(&[
        "run",
        "acme-echo@1.2.0",
        "--input",
        r#"{"oci":true}"#,
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&o.stdout).expect("report");
    assert_eq!(report["output"]["echo"]["oci"], true);

    // The same artifact under a host whose trust policy does not list the publisher.
    std::fs::write(w.path("empty-trust.toml"), "").expect("trust");
    let o = tend()
        .current_dir(w.dir.path())
        .env("TEND_TRUST", w.path("empty-trust.toml"))
        .env("TEND_DATA_DIR", w.path("other-host"))
        .args(["skill", "pull", &reference])
        .output()
        .expect("tend");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("not a trusted publisher key"),
        "{}",
        err(&o)
    );
    assert!(!w.path("other-host/skills/acme-echo").exists());

    // A tampered component layer is caught by its digest before trust is even consulted.
    let blob_dir = w.path("oci-storage/docker/registry/v2/blobs/sha256");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("digest")
        .trim_start_matches("sha256:")
        .to_string();
    let data = blob_dir.join(&layer[..2]).join(&layer).join("data");
    let mut bytes = std::fs::read(&data).expect("layer data");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&data, bytes).expect("tamper");
    let o = w.tend(&["skill", "pull", &reference]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err(&o).contains("digest") || err(&o).contains("Digest"),
        "{}",
        err(&o)
    );
}

/// A reference names one skill and one version (`…/<name>:<version>`). A component signed as
/// another skill, or as another version of the same one, is refused at pull and nothing is
/// installed; `tend skill push` will not create such a reference in the first place.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_refuses_a_component_signed_as_another_skill_or_version() {
    let w = World::new();
    let oci = OciRegistry::start(w.dir.path());
    let other = w.signed("other", &guest("trivial"), "acme-kill", "1.0.0");
    let older = w.signed("older", &guest("trivial"), "acme-echo", "0.9.0");

    // Tend's own push refuses a reference that names something else.
    let wrong = format!("oci://{}/acme/acme-echo:1.0.0", oci.host);
    let o = w.tend(&["skill", "push", &wrong, &other]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("signed as acme-kill 1.0.0"), "{}", err(&o));

    // A hostile publisher pushes with another client: the name or the version lies.
    for (file, reference, signed) in [
        (
            &other,
            format!("oci://{}/acme/acme-echo:1.0.0", oci.host),
            "acme-kill 1.0.0",
        ),
        (
            &older,
            format!("oci://{}/acme/acme-echo:1.2.0", oci.host),
            "acme-echo 0.9.0",
        ),
    ] {
        let bytes = std::fs::read(w.path(file)).expect("component");
        let envelope = tend_registry::envelope::Envelope::parse(
            &std::fs::read(w.path(&format!("{file}.sig"))).expect("signature"),
        )
        .expect("envelope");
        let parsed = tend_registry::oci::parse_reference(&reference).expect("reference");
        tend_registry::oci::push(&parsed, bytes, &envelope)
            .await
            .expect("raw push");
        let o = w.tend(&["skill", "pull", &reference]);
        assert_eq!(o.status.code(), Some(2), "{reference}: {}", err(&o));
        assert!(
            err(&o).contains("asked for acme-echo")
                && err(&o).contains(&format!("signed as {signed}")),
            "{}",
            err(&o)
        );
        assert!(!w.path("host-data/skills/acme-kill").exists());
        assert!(!w.path("host-data/skills/acme-echo").exists());
    }
}

/// One HTTP request to the registry (python3's urllib, as above): (status, body).
fn request(method: &str, host: &str, path: &str, accept: &str) -> (u16, Vec<u8>) {
    let o = Command::new("python3")
        .args([
            "-c",
            "import sys,urllib.request as u,urllib.error as e\n\
             r=u.Request(sys.argv[2], method=sys.argv[1], headers={'Accept':sys.argv[3]})\n\
             try:\n  x=u.urlopen(r); s=x.status; b=x.read()\n\
             except e.HTTPError as h:\n  s=h.code; b=h.read()\n\
             sys.stdout.write(str(s)+'\\n'); sys.stdout.flush(); sys.stdout.buffer.write(b)",
        ])
        .args([method, &format!("http://{host}{path}"), accept])
        .output()
        .expect("python3");
    let (status, body) = o
        .stdout
        .split_at(o.stdout.iter().position(|b| *b == b'\n').expect("status") + 1);
    let status = String::from_utf8_lossy(status)
        .trim()
        .parse()
        .expect("status");
    (status, body.to_vec())
}

fn get(host: &str, path: &str, accept: &str) -> (u16, Vec<u8>) {
    request("GET", host, path, accept)
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The Bytecode Alliance's `wkg` (crates.io), as scripts/test installs it (`ensure_wkg` in
/// scripts/lib.sh sets TEND_TEST_WKG), else from PATH.
fn wkg(w: &World) -> Command {
    let binary = std::env::var_os("TEND_TEST_WKG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("wkg"));
    let probe = Command::new(&binary).arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "{} does not run: install wkg with `source scripts/lib.sh; ensure_wkg` (scripts/test does this)",
        binary.display()
    );
    let mut c = Command::new(binary);
    // Its own (empty) configuration and credentials, not the user's.
    c.current_dir(w.dir.path())
        .env("HOME", w.path("wkg-home"))
        .env("XDG_CONFIG_HOME", w.path("wkg-home/config"))
        .env("XDG_CACHE_HOME", w.path("wkg-home/cache"))
        .env("DOCKER_CONFIG", w.path("wkg-home/docker"))
        .env_remove("WKG_OCI_USERNAME")
        .env_remove("WKG_OCI_PASSWORD");
    c
}

fn wkg_ok(w: &World, args: &[&str]) -> std::process::Output {
    let o = wkg(w).args(args).output().expect("run wkg");
    assert!(
        o.status.success(),
        "wkg {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The manifest digest a tag resolves to.
fn manifest_digest(host: &str, repo: &str, tag: &str) -> (String, Vec<u8>) {
    let (status, body) = get(host, &format!("/v2/{repo}/manifests/{tag}"), OCI_MANIFEST);
    assert_eq!(
        status,
        200,
        "{repo}:{tag}: {}",
        String::from_utf8_lossy(&body)
    );
    (
        format!("sha256:{}", tend_registry::envelope::sha256_hex(&body)),
        body,
    )
}

/// What Tend pushes is a standard wasm artifact: the Bytecode Alliance's `wkg oci pull` pulls
/// it, and the file it writes is byte for byte the signed component.
#[test]
fn wkg_pulls_exactly_the_component_that_tend_pushes() {
    let w = World::new();
    let wasm = w.signed("echo", &guest("trivial"), "acme-echo", "1.2.0");
    let oci = OciRegistry::start(w.dir.path());
    w.ok(&[
        "skill",
        "push",
        &format!("oci://{}/acme/acme-echo:1.2.0", oci.host),
        &wasm,
    ]);
    let out = w.path("pulled-by-wkg.wasm");
    wkg_ok(
        &w,
        &[
            "oci",
            "pull",
            "--insecure",
            &oci.host,
            &format!("{}/acme/acme-echo:1.2.0", oci.host),
            "-o",
            out.to_str().expect("path"),
        ],
    );
    assert_eq!(
        std::fs::read(&out).expect("wkg wrote the component"),
        std::fs::read(w.path(&wasm)).expect("component"),
        "wkg pulled other bytes than the component tend pushed"
    );
}

/// What a wasm client pushes without a Tend signature is a valid wasm artifact, and `tend skill
/// pull` refuses it, naming the reference and the missing signature; nothing is installed.
#[test]
fn tend_refuses_a_component_that_wkg_pushed_unsigned() {
    let w = World::new();
    let oci = OciRegistry::start(w.dir.path());
    let component = guest("trivial");
    wkg_ok(
        &w,
        &[
            "oci",
            "push",
            "--insecure",
            &oci.host,
            &format!("{}/acme/acme-echo:1.2.0", oci.host),
            component.to_str().expect("path"),
        ],
    );
    let reference = format!("oci://{}/acme/acme-echo:1.2.0", oci.host);
    let o = w.tend(&["skill", "pull", &reference]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let e = err(&o);
    assert!(
        e.contains(&format!("{}/acme/acme-echo:1.2.0", oci.host))
            && e.contains("no Tend signature")
            && e.contains("application/vnd.tend.signature.v1+json"),
        "{e}"
    );
    assert!(!w.path("host-data/skills/acme-echo").exists());
}

/// A referrers list is not signed: whoever can write to the repository can list any
/// artifact as a component's signature. A signature artifact about another manifest, or one
/// whose envelope signs other bytes, is refused before trust is consulted, and nothing is
/// installed.
#[tokio::test(flavor = "multi_thread")]
async fn a_signature_about_another_manifest_or_other_bytes_is_refused() {
    use tend_registry::oci;
    let w = World::new();
    let oci_registry = OciRegistry::start(w.dir.path());
    let host = oci_registry.host.clone();
    let wasm = w.signed("echo", &guest("trivial"), "acme-echo", "1.2.0");
    let envelope = tend_registry::envelope::Envelope::parse(
        &std::fs::read(w.path(&format!("{wasm}.sig"))).expect("signature"),
    )
    .expect("envelope");
    let reference = format!("oci://{host}/acme/acme-echo:1.2.0");
    let parsed = oci::parse_reference(&reference).expect("reference");
    let genuine = oci::push(
        &parsed,
        std::fs::read(w.path(&wasm)).expect("component"),
        &envelope,
    )
    .await
    .expect("push");

    // Someone who can write to the repository replaces the tag with other bytes (unsigned,
    // through a plain wasm client)...
    let evil = guest("repair-exec");
    let o = wkg(&w)
        .args([
            "oci",
            "push",
            "--insecure",
            &host,
            &format!("{host}/acme/acme-echo:1.2.0"),
            evil.to_str().expect("path"),
        ])
        .output()
        .expect("wkg");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (evil_digest, evil_manifest) = manifest_digest(&host, "acme/acme-echo", "1.2.0");
    assert_ne!(evil_digest, genuine.manifest.digest);

    // ...and lists the genuine signature (whose subject is the genuine manifest) as its own.
    let tag = oci::list_referrer(
        &parsed,
        &evil_digest,
        &genuine.signature,
        oci::SIGNATURE_MEDIA_TYPE,
    )
    .await
    .expect("list");
    let o = w.tend(&["skill", "pull", &reference]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains(&format!(
            "refers to {}, not to this component's manifest {evil_digest}",
            genuine.manifest.digest
        )),
        "{}",
        err(&o)
    );
    assert!(!w.path("host-data/skills/acme-echo").exists());

    // Or pushes a signature artifact about the evil manifest that carries the genuine
    // envelope (a valid signature, over the genuine bytes).
    let subject = oci::OciDescriptor {
        media_type: OCI_MANIFEST.to_string(),
        digest: evil_digest.clone(),
        size: evil_manifest.len() as i64,
        ..Default::default()
    };
    let (forged, _) = oci::push_signature(&parsed, &subject, &envelope)
        .await
        .expect("push signature");
    // The referrers tag kept the first entry and added this one (merged, not replaced).
    let (status, index) = get(
        &host,
        &format!("/v2/acme/acme-echo/manifests/{tag}"),
        OCI_INDEX,
    );
    assert_eq!(status, 200);
    let index: Value = serde_json::from_slice(&index).expect("index");
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| m["digest"].as_str())
        .collect();
    assert_eq!(
        listed,
        [genuine.signature.digest.as_str(), forged.digest.as_str()]
    );
    let o = w.tend(&["skill", "pull", &reference]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains(&format!(
            "signs the component sha256:{}, not the one this tag holds",
            envelope.component_sha256
        )),
        "{}",
        err(&o)
    );
    assert!(!w.path("host-data/skills/acme-echo").exists());
    drop(oci_registry);
}

/// Debian's docker-registry has no referrers API (404): push lists the signature in the
/// referrers tag `sha256-<hex>` (an image index), and that tag is how a pull finds it —
/// without it, the pull has no signature and refuses; pushing again restores it.
#[test]
fn on_a_registry_without_the_referrers_api_the_referrers_tag_carries_the_signature() {
    let w = World::new();
    let wasm = w.signed("echo", &guest("trivial"), "acme-echo", "1.2.0");
    let oci = OciRegistry::start(w.dir.path());
    let reference = format!("oci://{}/acme/acme-echo:1.2.0", oci.host);
    let o = w.ok(&["skill", "push", &reference, &wasm]);
    let (digest, _) = manifest_digest(&oci.host, "acme/acme-echo", "1.2.0");
    let tag = digest.replacen(':', "-", 1);
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(stdout.contains(&format!("referrers tag {tag}")), "{stdout}");

    let (status, _) = get(
        &oci.host,
        &format!("/v2/acme/acme-echo/referrers/{digest}"),
        OCI_INDEX,
    );
    assert_eq!(status, 404, "docker-registry grew a referrers API");
    let (status, index) = get(
        &oci.host,
        &format!("/v2/acme/acme-echo/manifests/{tag}"),
        OCI_INDEX,
    );
    assert_eq!(status, 200);
    let index_digest = format!("sha256:{}", tend_registry::envelope::sha256_hex(&index));
    let index: Value = serde_json::from_slice(&index).expect("index");
    assert_eq!(index["mediaType"], OCI_INDEX);
    let entries = index["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(
        entries[0]["artifactType"],
        "application/vnd.tend.signature.v1+json"
    );
    // The signature artifact's subject is the component's manifest.
    let (status, signature) = get(
        &oci.host,
        &format!(
            "/v2/acme/acme-echo/manifests/{}",
            entries[0]["digest"].as_str().expect("digest")
        ),
        OCI_MANIFEST,
    );
    assert_eq!(status, 200);
    let signature: Value = serde_json::from_slice(&signature).expect("signature manifest");
    assert_eq!(signature["subject"]["digest"], digest.as_str());
    assert_eq!(
        signature["artifactType"],
        "application/vnd.tend.signature.v1+json"
    );

    // Remove the referrers tag: the pull finds no signature, and says where it looked.
    let (status, body) = request(
        "DELETE",
        &oci.host,
        &format!("/v2/acme/acme-echo/manifests/{index_digest}"),
        OCI_INDEX,
    );
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let o = w.tend(&["skill", "pull", &reference]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("no Tend signature") && err(&o).contains(&tag),
        "{}",
        err(&o)
    );
    assert!(!w.path("host-data/skills/acme-echo").exists());

    // Pushing again restores it, listing the signature once.
    w.ok(&["skill", "push", &reference, &wasm]);
    w.ok(&["skill", "push", &reference, &wasm]);
    let (_, index) = get(
        &oci.host,
        &format!("/v2/acme/acme-echo/manifests/{tag}"),
        OCI_INDEX,
    );
    let index: Value = serde_json::from_slice(&index).expect("index");
    assert_eq!(
        index["manifests"].as_array().map(Vec::len),
        Some(1),
        "{index}"
    );
    let o = w.ok(&["skill", "pull", &reference, "--json"]);
    let pulled: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(pulled["name"], "acme-echo");
}

/// Anyone who can write to the repository can add signatures. One by a key the host does not
/// trust, listed before the publisher's, changes nothing: the pull installs the skill as the
/// trusted publisher's. Alone, it is refused as untrusted.
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_signature_listed_first_is_passed_over_and_alone_refused() {
    use tend_registry::envelope::Envelope;
    use tend_registry::oci;
    let w = World::new();
    let oci_registry = OciRegistry::start(w.dir.path());
    let host = oci_registry.host.clone();
    let wasm = w.signed("echo", &guest("trivial"), "acme-echo", "1.2.0");
    // The same bytes and manifest, signed by a stranger's key.
    w.ok(&["key", "gen", "--out", "stranger.key"]);
    std::fs::copy(w.path(&wasm), w.path("stranger.wasm")).expect("copy");
    w.ok(&[
        "skill",
        "sign",
        "stranger.wasm",
        "--manifest",
        "echo.toml",
        "--key",
        "stranger.key",
    ]);
    let read = |file: &str| {
        Envelope::parse(&std::fs::read(w.path(file)).expect("signature")).expect("envelope")
    };
    let (genuine, stranger) = (read(&format!("{wasm}.sig")), read("stranger.wasm.sig"));
    let component = std::fs::read(w.path(&wasm)).expect("component");

    // Only the stranger's signature: refused, nothing installed.
    let alone = format!("oci://{host}/acme/acme-echo:1.2.0");
    let parsed = oci::parse_reference(&alone).expect("reference");
    oci::push(&parsed, component.clone(), &stranger)
        .await
        .expect("push");
    let o = w.tend(&["skill", "pull", &alone]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("not trusted") && err(&o).contains("not a trusted publisher key"),
        "{}",
        err(&o)
    );
    assert!(!w.path("host-data/skills/acme-echo").exists());

    // The publisher's signature added after it: the pull passes the stranger's over.
    let pushed = oci::push(&parsed, component, &genuine).await.expect("push");
    assert!(pushed.referrers_tag.is_some());
    let (_, index) = get(
        &host,
        &format!(
            "/v2/acme/acme-echo/manifests/{}",
            oci::referrers_tag(&pushed.manifest.digest)
        ),
        OCI_INDEX,
    );
    let index: Value = serde_json::from_slice(&index).expect("index");
    assert_eq!(
        index["manifests"].as_array().map(Vec::len),
        Some(2),
        "{index}"
    );
    assert_eq!(
        index["manifests"][1]["digest"],
        pushed.signature.digest.as_str()
    );
    let o = w.ok(&["skill", "pull", &alone, "--json"]);
    let pulled: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(pulled["publisher"], "acme");
    drop(oci_registry);
}
