//! `tend skill push/pull oci://...` against a real OCI registry: Debian's `docker-registry`
//! (distribution), started here on loopback with its own storage (scripts/test installs it).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::registry::{World, err};
use crate::support::*;

struct OciRegistry {
    child: Child,
    host: String,
}

impl OciRegistry {
    fn start(dir: &Path) -> OciRegistry {
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
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(
        manifest["layers"][1]["mediaType"],
        "application/vnd.tend.signature.v1+json"
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
