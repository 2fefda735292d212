//! Attacks on the supply chain as issue 16 left it: OCI pull from a hostile registry (or a man
//! in the middle), the referrers tag push merges, and rollback through OCI. The hostile registry
//! is a small axum server on loopback that answers each path as the test says and records
//! every request it gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use tend_registry::envelope::sha256_hex;
use tend_registry::oci;

use crate::oci::OciRegistry;
use crate::registry::{Registry, World, err};
use crate::support::*;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const SIGNATURE: &str = "application/vnd.tend.signature.v1+json";
const REPO: &str = "acme/acme-echo";
/// More than the 4 MiB a pull reads of any manifest, index or referrers list.
const HUGE: usize = 5 << 20;

#[derive(Clone)]
enum Answer {
    Body(&'static str, Vec<u8>),
    Redirect(String),
}

/// A registry that answers each path as told (404 otherwise) and records what it was asked:
/// (path, Authorization header).
/// Requests a server got: (path, Authorization header).
type Seen = Vec<(String, Option<String>)>;

#[derive(Clone, Default)]
struct Hostile {
    routes: Arc<Mutex<HashMap<String, Answer>>>,
    seen: Arc<Mutex<Seen>>,
    /// When set, /v2/ paths need `Authorization: Bearer <.0>` and answer 401 with the
    /// challenge `.1` otherwise.
    bearer: Arc<Mutex<Option<(String, String)>>>,
}

impl Hostile {
    async fn start() -> (Hostile, String) {
        let hostile = Hostile::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let h = hostile.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let h = h.clone();
            async move { h.answer(&request) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        (hostile, format!("127.0.0.1:{port}"))
    }

    fn answer(&self, request: &Request) -> Response {
        let path = request.uri().path().to_string();
        let auth = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.seen
            .lock()
            .expect("seen")
            .push((path.clone(), auth.clone()));
        if let Some((token, challenge)) = self.bearer.lock().expect("bearer").clone()
            && path.starts_with("/v2/")
            && auth != Some(format!("Bearer {token}"))
        {
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", challenge)
                .body(Body::empty())
                .expect("response");
        }
        let answer = self.routes.lock().expect("routes").get(&path).cloned();
        let built = match answer {
            Some(Answer::Body(content_type, body)) => Response::builder()
                .header("content-type", content_type)
                .body(Body::from(body)),
            Some(Answer::Redirect(location)) => Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("location", location)
                .body(Body::empty()),
            None => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Body::from("{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}")),
        };
        built.expect("response")
    }

    fn route(&self, path: &str, answer: Answer) {
        self.routes
            .lock()
            .expect("routes")
            .insert(path.to_string(), answer);
    }

    fn seen(&self) -> Seen {
        self.seen.lock().expect("seen").clone()
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// A wasm artifact as Tend pushes it, its component `component`; `tweak` edits the manifest
/// before it is served under the tag 1.0.0. Returns the manifest's digest.
fn serve_artifact(h: &Hostile, component: &[u8], tweak: impl FnOnce(&mut Value)) -> String {
    let config = br#"{"architecture":"wasm","os":"wasip2"}"#.to_vec();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/wasm", "digest": digest(component), "size": component.len()}],
    });
    tweak(&mut manifest);
    let body = serde_json::to_vec(&manifest).expect("json");
    h.route(
        &format!("/v2/{REPO}/blobs/{}", digest(&config)),
        Answer::Body("application/octet-stream", config),
    );
    h.route(
        &format!("/v2/{REPO}/blobs/{}", digest(component)),
        Answer::Body("application/octet-stream", component.to_vec()),
    );
    h.route(
        &format!("/v2/{REPO}/manifests/1.0.0"),
        Answer::Body(MANIFEST, body.clone()),
    );
    digest(&body)
}

const COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

async fn pull(host: &str) -> String {
    let reference = oci::parse_reference(&format!("oci://{host}/{REPO}:1.0.0")).expect("ref");
    oci::pull(&reference)
        .await
        .expect_err("a hostile pull")
        .to_string()
}

/// A registry that serves a manifest (or a referrers list, or a referrers tag) of any size
/// made a pull read all of it into memory: every one is now refused past 4 MiB, while it
/// streams, whatever Content-Length says.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_manifests_and_referrers_lists_are_refused_while_they_stream() {
    let cap = (4u64 << 20).to_string();
    // A manifest fattened with an annotation: valid JSON, a valid wasm artifact otherwise.
    let (h, host) = Hostile::start().await;
    serve_artifact(&h, COMPONENT, |m| {
        m["annotations"] = json!({"padding": "x".repeat(HUGE)});
    });
    let e = pull(&host).await;
    assert!(
        e.contains("its manifest is more than") && e.contains(&cap),
        "{e}"
    );

    // A referrers list (the API) with hundreds of thousands of entries.
    let (h, host) = Hostile::start().await;
    let subject = serve_artifact(&h, COMPONENT, |_| {});
    let entry = json!({"mediaType": MANIFEST, "digest": digest(b"x"), "size": 1, "artifactType": SIGNATURE});
    let index =
        json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": vec![entry; HUGE / 100]});
    let index = serde_json::to_vec(&index).expect("json");
    assert!(index.len() > HUGE);
    h.route(
        &format!("/v2/{REPO}/referrers/{subject}"),
        Answer::Body(INDEX, index.clone()),
    );
    let e = pull(&host).await;
    assert!(e.contains("its referrers list is more than"), "{e}");

    // The same through the referrers tag, for registries without the API.
    let (h, host) = Hostile::start().await;
    let subject = serve_artifact(&h, COMPONENT, |_| {});
    h.route(
        &format!("/v2/{REPO}/manifests/{}", subject.replacen(':', "-", 1)),
        Answer::Body(INDEX, index),
    );
    let e = pull(&host).await;
    assert!(
        e.contains("referrers tag") && e.contains("is more than"),
        "{e}"
    );
}

/// A blob longer than its descriptor says is cut off at the descriptor's size, not read to the
/// end and then found to be wrong.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_longer_than_its_descriptor_is_cut_off() {
    let (h, host) = Hostile::start().await;
    serve_artifact(&h, COMPONENT, |_| {});
    let mut long = COMPONENT.to_vec();
    long.resize(HUGE, 0);
    h.route(
        &format!("/v2/{REPO}/blobs/{}", digest(COMPONENT)),
        Answer::Body("application/octet-stream", long),
    );
    let e = pull(&host).await;
    assert!(
        e.contains("application/wasm blob is more than the 8 bytes"),
        "{e}"
    );
}

/// A manifest's descriptor may list `urls` to fetch a blob from when the registry lacks it;
/// oci-client fetched them, so a hostile manifest made the puller send requests wherever it
/// liked (a cloud metadata endpoint, an internal service). A pull never fetches them.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_never_fetches_the_urls_a_descriptor_lists() {
    let (elsewhere, elsewhere_host) = Hostile::start().await;
    let (h, host) = Hostile::start().await;
    let component = b"\0asm\x0d\x00\x01\x00 missing".to_vec();
    serve_artifact(&h, &component, |m| {
        m["layers"][0]["urls"] = json!([format!("http://{elsewhere_host}/latest/meta-data/")]);
    });
    // The registry does not have the blob.
    h.routes
        .lock()
        .expect("routes")
        .remove(&format!("/v2/{REPO}/blobs/{}", digest(&component)));
    let e = pull(&host).await;
    assert!(
        e.contains("the registry has no application/wasm blob"),
        "{e}"
    );
    assert_eq!(
        elsewhere.seen(),
        vec![],
        "the pull went to a descriptor's URL"
    );
}

/// A redirect (for a blob, a manifest, anything) to an internal address is refused before it
/// is followed, whatever spelling the address takes; so is a remote registry's redirect to
/// loopback and a plain-HTTP redirect off loopback.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_an_internal_address_is_refused() {
    for target in [
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://2852039166/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/",
        "http://[fd00::1]/",
        "http://10.0.0.1/",
        "http://100.100.100.200/latest/meta-data/",
        "https://192.168.1.1/",
        "http://0.0.0.0:8080/",
        "http://registry.example.com/v2/",
    ] {
        let (h, host) = Hostile::start().await;
        serve_artifact(&h, COMPONENT, |_| {});
        h.route(
            &format!("/v2/{REPO}/blobs/{}", digest(COMPONENT)),
            Answer::Redirect(target.to_string()),
        );
        let e = pull(&host).await;
        assert!(e.contains("refused a redirect to"), "{target}: {e}");
    }
    // A manifest redirect too.
    let (h, host) = Hostile::start().await;
    h.route(
        &format!("/v2/{REPO}/manifests/1.0.0"),
        Answer::Redirect("http://169.254.169.254/".into()),
    );
    let e = pull(&host).await;
    assert!(e.contains("refused a redirect to"), "{e}");
}

/// A referrers list is unsigned: what it lists becomes part of a URL only if it is a digest
/// (`sha256:../../…` is not), and at most 16 signature artifacts are fetched however many it
/// lists. An image index served where the component's manifest should be is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_referrers_list_cannot_steer_or_flood_a_pull() {
    let (h, host) = Hostile::start().await;
    let subject = serve_artifact(&h, COMPONENT, |_| {});
    let mut entries = vec![
        json!({"mediaType": MANIFEST, "digest": "sha256:../../../../admin/delete", "size": 10, "artifactType": SIGNATURE}),
    ];
    for i in 0..300 {
        entries.push(json!({"mediaType": MANIFEST, "digest": digest(format!("sig {i}").as_bytes()), "size": 10, "artifactType": SIGNATURE}));
    }
    let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries});
    h.route(
        &format!("/v2/{REPO}/referrers/{subject}"),
        Answer::Body(INDEX, serde_json::to_vec(&index).expect("json")),
    );
    let e = pull(&host).await;
    assert!(
        e.contains("no usable signature") && e.contains("is not a sha256 digest"),
        "{e}"
    );
    let seen = h.seen();
    assert!(
        seen.iter()
            .all(|(p, _)| p.starts_with(&format!("/v2/{REPO}/"))),
        "{seen:?}"
    );
    let fetched = seen
        .iter()
        .filter(|(p, _)| p.starts_with(&format!("/v2/{REPO}/manifests/sha256:")))
        .count();
    assert!(fetched <= 16, "{fetched} signature artifacts fetched");

    // An index where the manifest should be.
    let (h, host) = Hostile::start().await;
    let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [{"mediaType": MANIFEST, "digest": subject, "size": 10}]});
    h.route(
        &format!("/v2/{REPO}/manifests/1.0.0"),
        Answer::Body(INDEX, serde_json::to_vec(&index).expect("json")),
    );
    let e = pull(&host).await;
    assert!(e.contains("not an OCI image manifest"), "{e}");
}

/// Registry credentials (TEND_OCI_USERNAME / TEND_OCI_PASSWORD) go to the registry only: a
/// redirect to another origin (a CDN, or a host the registry's operator wants to read them)
/// is followed without them.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_do_not_follow_a_redirect_to_another_origin() {
    let w = World::new();
    let (h, host) = Hostile::start().await;
    let (cdn, cdn_host) = Hostile::start().await;
    serve_artifact(&h, COMPONENT, |_| {});
    let port = cdn_host.rsplit_once(':').expect("port").1;
    h.route(
        &format!("/v2/{REPO}/blobs/{}", digest(COMPONENT)),
        Answer::Redirect(format!("http://localhost:{port}/blob")),
    );
    cdn.route(
        "/blob",
        Answer::Body("application/octet-stream", COMPONENT.to_vec()),
    );
    let reference = format!("oci://{host}/{REPO}:1.0.0");
    let dir = w.dir.path().to_path_buf();
    let o = tokio::task::spawn_blocking(move || {
        tend()
            .current_dir(&dir)
            .env("TEND_TRUST", dir.join("trust.toml"))
            .env("TEND_DATA_DIR", dir.join("host-data"))
            .env("TEND_OCI_USERNAME", "publisher")
            .env("TEND_OCI_PASSWORD", "s3cret")
            .args(["skill", "pull", &reference])
            .output()
            .expect("run tend")
    })
    .await
    .expect("join");
    // The component came from the CDN; there is no signature, so the pull is refused.
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("no Tend signature"), "{}", err(&o));
    let registry_seen = h.seen();
    assert!(
        registry_seen
            .iter()
            .all(|(_, auth)| auth.as_deref().is_some_and(|a| a.starts_with("Basic "))),
        "{registry_seen:?}"
    );
    let cdn_seen = cdn.seen();
    assert_eq!(cdn_seen, vec![("/blob".to_string(), None)]);
}

/// Rollback protection holds through OCI: after 1.2.0, a validly signed 1.0.0 pulled by its
/// own reference is refused as a downgrade and not installed.
#[test]
fn a_downgrade_through_oci_is_refused() {
    let w = World::new();
    let oci = OciRegistry::start(w.dir.path());
    let new = w.signed("new", &guest("trivial"), "acme-echo", "1.2.0");
    let old = w.signed("old", &guest("trivial"), "acme-echo", "1.0.0");
    let at = |v: &str| format!("oci://{}/acme/acme-echo:{v}", oci.host);
    w.ok(&["skill", "push", &at("1.2.0"), &new]);
    w.ok(&["skill", "push", &at("1.0.0"), &old]);
    w.ok(&["skill", "pull", &at("1.2.0")]);
    let o = w.tend(&["skill", "pull", &at("1.0.0")]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("older than 1.2.0") && err(&o).contains("--allow-downgrade"),
        "{}",
        err(&o)
    );
    assert!(!w.path("host-data/skills/acme-echo/1.0.0").exists());
}

/// Push merges its signature into the referrers tag: what the tag already lists (another
/// tool's referrers) is kept, and a tag that holds something other than an index is an error,
/// not overwritten.
#[tokio::test(flavor = "multi_thread")]
async fn push_keeps_other_referrers_and_never_overwrites_a_foreign_tag() {
    let w = World::new();
    let oci = OciRegistry::start(w.dir.path());
    let wasm = w.signed("echo", &guest("trivial"), "acme-echo", "1.2.0");
    let bytes = std::fs::read(w.path(&wasm)).expect("component");
    let reference = format!("oci://{}/acme/acme-echo:1.2.0", oci.host);
    let parsed = oci::parse_reference(&reference).expect("reference");
    let subject = oci::push_component(&parsed, &bytes, None, Default::default())
        .await
        .expect("component");
    let tag_ref = |tag: &str| {
        oci::parse_reference(&format!("oci://{}/acme/acme-echo:{tag}", oci.host)).expect("ref")
    };
    let tag = oci::referrers_tag(&subject.digest);

    // Another tool's referrer is listed already (the registry checks that it exists).
    let sbom = oci::push_component(&tag_ref("sbom"), b"an sbom", None, Default::default())
        .await
        .expect("another artifact");
    oci::list_referrer(&parsed, &subject.digest, &sbom, "application/spdx+json")
        .await
        .expect("list");
    let w2 = &w;
    let o = tokio::task::block_in_place(|| w2.tend(&["skill", "push", &reference, &wasm]));
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let index = oci_index(&oci.host, &tag);
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| m["artifactType"].as_str())
        .collect();
    assert_eq!(listed, vec!["application/spdx+json", SIGNATURE], "{index}");

    // A tag that holds an image manifest, not an index: push refuses and leaves it alone.
    let other = w.signed("other", &guest("trivial"), "acme-echo", "1.3.0");
    let other_bytes = std::fs::read(w.path(&other)).expect("component");
    let other_ref = oci::parse_reference(&format!("oci://{}/acme/acme-echo:1.3.0", oci.host))
        .expect("reference");
    let subject = oci::push_component(&other_ref, &other_bytes, None, Default::default())
        .await
        .expect("component");
    let squatted = oci::push_component(
        &tag_ref(&oci::referrers_tag(&subject.digest)),
        b"\0asm\x0d\x00\x01\x00",
        None,
        Default::default(),
    )
    .await
    .expect("squat");
    let reference = format!("oci://{}/acme/acme-echo:1.3.0", oci.host);
    let o = tokio::task::block_in_place(|| w2.tend(&["skill", "push", &reference, &other]));
    assert_ne!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        err(&o).contains("does not hold an image index"),
        "{}",
        err(&o)
    );
    let (status, body) = raw_get(
        &oci.host,
        &format!(
            "/v2/acme/acme-echo/manifests/{}",
            oci::referrers_tag(&subject.digest)
        ),
    );
    assert_eq!(status, 200);
    assert_eq!(digest(&body), squatted.digest);
}

fn raw_get(host: &str, path: &str) -> (u16, Vec<u8>) {
    let o = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,urllib.request as u\n\
             r=u.Request(sys.argv[1], headers={'Accept':'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json'})\n\
             x=u.urlopen(r); sys.stdout.buffer.write(x.read())",
        ])
        .arg(format!("http://{host}{path}"))
        .output()
        .expect("python3");
    (if o.status.success() { 200 } else { 0 }, o.stdout)
}

fn oci_index(host: &str, tag: &str) -> Value {
    let (status, body) = raw_get(host, &format!("/v2/acme/acme-echo/manifests/{tag}"));
    assert_eq!(status, 200);
    serde_json::from_slice(&body).expect("index json")
}

/// `tend skill new|build` with only the binary: HOME a temp dir, the cache where told.
fn bare_new(work: &std::path::Path, xdg: &std::path::Path, name: &str) -> std::process::Output {
    tend()
        .current_dir(work)
        .env_remove("TEND_HOME")
        .env("HOME", work.join("home"))
        .env("XDG_CACHE_HOME", xdg)
        .args(["skill", "new", name, "--lang", "rust"])
        .output()
        .expect("run tend")
}

/// The SDK cache holds what every build runs (WIT, helpers, the npm and pip toolchains). It is
/// created 0700; one that is a symbolic link, owned by another user or writable by others
/// (another local user pre-creating it under a shared XDG_CACHE_HOME) is refused before
/// anything is unpacked or scaffolded.
#[test]
fn the_sdk_cache_is_private_and_a_planted_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path();
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;

    let xdg = work.join("xdg-fresh");
    let o = bare_new(work, &xdg, "fresh");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(mode(&xdg.join("tend")), 0o700);
    assert_eq!(mode(&xdg.join("tend/sdk")), 0o700);

    // An older Tend left it 0755: narrowed, not refused.
    let xdg = work.join("xdg-older");
    std::fs::create_dir_all(xdg.join("tend/sdk")).expect("mkdir");
    std::fs::set_permissions(xdg.join("tend"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let o = bare_new(work, &xdg, "older");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(mode(&xdg.join("tend")), 0o700);

    let planted = work.join("planted");
    std::fs::create_dir_all(&planted).expect("mkdir");
    type Plant<'a> = Box<dyn Fn(&std::path::Path) + 'a>;
    let mut cases: Vec<(&str, String, Plant)> = vec![
        (
            "link",
            "is a symbolic link".into(),
            Box::new(|xdg: &std::path::Path| {
                std::os::unix::fs::symlink(&planted, xdg.join("tend")).expect("link");
            }),
        ),
        (
            "shared",
            "other users can write to it".into(),
            Box::new(|xdg: &std::path::Path| {
                std::fs::create_dir(xdg.join("tend")).expect("mkdir");
                std::fs::set_permissions(xdg.join("tend"), std::fs::Permissions::from_mode(0o777))
                    .expect("chmod");
            }),
        ),
        (
            "sdk-link",
            "is a symbolic link".into(),
            Box::new(|xdg: &std::path::Path| {
                std::fs::create_dir(xdg.join("tend")).expect("mkdir");
                std::os::unix::fs::symlink(&planted, xdg.join("tend/sdk")).expect("link");
            }),
        ),
    ];
    if rustix::process::geteuid().is_root() {
        cases.push((
            "other-owner",
            "is owned by uid 65534".into(),
            Box::new(|xdg: &std::path::Path| {
                std::fs::create_dir(xdg.join("tend")).expect("mkdir");
                std::os::unix::fs::chown(xdg.join("tend"), Some(65534), Some(65534))
                    .expect("chown");
            }),
        ));
    }
    for (case, says, plant) in cases {
        let xdg = work.join(format!("xdg-{case}"));
        std::fs::create_dir_all(&xdg).expect("mkdir");
        plant(&xdg);
        let o = bare_new(work, &xdg, case);
        assert_eq!(o.status.code(), Some(2), "{case}: {}", err(&o));
        assert!(err(&o).contains(&says), "{case}: {}", err(&o));
        assert!(!work.join(case).exists(), "{case}: scaffolded anyway");
        assert_eq!(
            std::fs::read_dir(&planted).expect("planted").count(),
            0,
            "{case}: unpacked into the planted directory"
        );
    }
}

/// componentize-py is installed on demand with pip, pinned by version and by the hash of each
/// wheel: an index, mirror or `--find-links` directory that serves other bytes under its name
/// (here a well-formed wheel that would run the attacker's code at every Python build) installs
/// nothing, and the build fails saying so.
#[test]
fn pip_refuses_a_componentize_py_wheel_that_is_not_the_pinned_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path();
    let wheels = work.join("wheels");
    std::fs::create_dir_all(&wheels).expect("mkdir");
    let made = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\n\
             d = 'componentize_py-0.25.1.dist-info/'\n\
             files = {'componentize_py/__init__.py': 'open(%r, \"w\").close()\\n' % sys.argv[2],\n\
                      d + 'METADATA': 'Metadata-Version: 2.1\\nName: componentize-py\\nVersion: 0.25.1\\n',\n\
                      d + 'WHEEL': 'Wheel-Version: 1.0\\nGenerator: x\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n'}\n\
             files[d + 'RECORD'] = ''.join(n + ',,\\n' for n in list(files) + [d + 'RECORD'])\n\
             with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
             \x20   [z.writestr(n, t) for n, t in files.items()]",
        ])
        .arg(wheels.join("componentize_py-0.25.1-py3-none-any.whl"))
        .arg(work.join("owned"))
        .status()
        .expect("python3");
    assert!(made.success());
    let xdg = work.join("xdg");
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let path = crate::authoring_binary::path_without("componentize-py", &bin);
    let run = |args: &[&str]| {
        tend()
            .current_dir(work)
            .env_remove("TEND_HOME")
            .env("HOME", work.join("home"))
            .env("XDG_CACHE_HOME", &xdg)
            .env("PATH", &path)
            .env("TEND_CACHE_DIR", work.join("precompiled"))
            // Only the hostile wheels: no index.
            .env("PIP_NO_INDEX", "1")
            .env("PIP_FIND_LINKS", &wheels)
            .args(args)
            .output()
            .expect("run tend")
    };
    let o = run(&["skill", "new", "py-skill", "--lang", "python"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = run(&["skill", "build", "py-skill"]);
    assert_ne!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        err(&o).contains("pip could not install componentize-py"),
        "{}",
        err(&o)
    );
    assert!(
        !xdg.join("tend/python/componentize-py-0.25.1").exists(),
        "the hostile wheel was installed"
    );
    assert!(!work.join("py-skill/dist/py-skill-0.1.0.wasm").exists());
    assert!(!work.join("owned").exists(), "the hostile wheel's code ran");
}

/// The unpacked SDK's `node_modules` is a link to the cache's toolchain. A link pointing
/// anywhere else (planted, or a cache copied from another checkout) is replaced by the right
/// one, never followed: the JavaScript build runs only the toolchain npm installed from the
/// embedded lock. (No npm here: the planted toolchain is simply never run.)
#[test]
fn a_node_modules_link_to_elsewhere_is_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path();
    let xdg = work.join("xdg");
    let o = bare_new(work, &xdg, "seed");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // A toolchain elsewhere that "works": componentize-js that records it ran.
    let evil = work.join("evil/node_modules");
    std::fs::create_dir_all(evil.join("@bytecodealliance/componentize-js")).expect("mkdir");
    let sdk = std::fs::read_dir(xdg.join("tend/sdk"))
        .expect("sdk")
        .flatten()
        .find(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .expect("unpacked")
        .path();
    std::os::unix::fs::symlink(&evil, sdk.join("sdk/js/node_modules")).expect("plant");
    // node, but no npm.
    let bin = work.join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let node = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("node"))
        .find(|p| p.is_file())
        .expect("node on PATH");
    std::os::unix::fs::symlink(node, bin.join("node")).expect("symlink");
    let o = tend()
        .current_dir(work)
        .env_remove("TEND_HOME")
        .env("HOME", work.join("home"))
        .env("XDG_CACHE_HOME", &xdg)
        .env("PATH", &bin)
        .env("TEND_CACHE_DIR", work.join("precompiled"))
        .args(["skill", "new", "js-skill", "--lang", "js"])
        .output()
        .expect("tend");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = tend()
        .current_dir(work)
        .env_remove("TEND_HOME")
        .env("HOME", work.join("home"))
        .env("XDG_CACHE_HOME", &xdg)
        // No npm: the build must fail asking for npm, not run the planted toolchain.
        .env("PATH", &bin)
        .env("TEND_CACHE_DIR", work.join("precompiled"))
        .args(["skill", "build", "js-skill"])
        .output()
        .expect("tend");
    assert_ne!(o.status.code(), Some(0));
    assert!(err(&o).contains("npm not found"), "{}", err(&o));
    assert_eq!(
        std::fs::read_link(sdk.join("sdk/js/node_modules")).expect("link"),
        evil,
        "left as it was: nothing was installed to link to"
    );
}

/// An OCI registry keeps every signature pushed for a component: the same bytes signed as the
/// same version under a second, wider manifest (a re-sign with more grants, or an old
/// signature replayed) would be installed or not depending on the listing order. A pull that
/// finds two trusted signatures with different manifests refuses, and installs nothing.
#[test]
fn the_same_bytes_under_two_signed_manifests_through_oci_are_refused() {
    let w = World::new();
    let oci = OciRegistry::start(w.dir.path());
    let narrow = w.signed("echo", &guest("trivial"), "acme-echo", "1.0.0");
    let reference = format!("oci://{}/acme/acme-echo:1.0.0", oci.host);
    w.ok(&["skill", "push", &reference, &narrow]);
    let wider = "[skill]\nname = \"acme-echo\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\ndescription = \"Echo for acme-echo\"\n[capabilities]\nfs_read = [\"/var/log\"]\n";
    let wide = w.signed_with("echo-wider", &guest("trivial"), wider);
    w.ok(&["skill", "push", &reference, &wide]);
    let o = w.tend(&["skill", "pull", &reference]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("under a different manifest"),
        "{}",
        err(&o)
    );
    assert!(!w.path("host-data/skills/acme-echo/1.0.0").exists());
}

/// The publication log of a Tend registry: (number of entries, number of blobs stored).
fn registry_state(w: &World, url: &str) -> (usize, usize) {
    let o = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1]).read().decode())",
        ])
        .arg(format!("{url}/api/v1/log"))
        .output()
        .expect("python3");
    let log: Value = serde_json::from_slice(&o.stdout).expect("log json");
    let entries = log["entries"].as_array().map_or(0, Vec::len);
    let blobs = std::fs::read_dir(w.path("registry/blobs/sha256"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0);
    (entries, blobs)
}

/// A signed manifest is its bytes: one that differs from the published one only in whitespace
/// or a comment is a different signed manifest (its digest differs, and so does the cache key
/// of every host that loaded it), refused like any other (409), not "nothing changed". Other
/// bytes under the same manifest are a version conflict. Neither refusal adds a log entry or
/// a blob.
#[test]
fn a_refused_publish_changes_nothing_even_for_a_whitespace_only_manifest() {
    let w = World::new();
    let publisher = w.token("ci", "publisher");
    let reg = Registry::start(&w);
    let manifest = "[skill]\nname = \"acme-echo\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\ndescription = \"Echo for acme-echo\"\n";
    let first = w.signed_with("echo", &guest("trivial"), manifest);
    w.published(&reg.url, &first, &publisher);
    let before = registry_state(&w, &reg.url);
    assert!(before.0 >= 1 && before.1 == 1, "{before:?}");

    let spaced = w.signed_with(
        "echo-spaced",
        &guest("trivial"),
        &format!(
            "# the same, with a comment\n{}\n\n",
            manifest.replace(" = ", "   =   ")
        ),
    );
    let o = w.publish(&reg.url, &spaced, &publisher);
    assert_ne!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        err(&o).contains("409") && err(&o).contains("different signed manifest"),
        "{}",
        err(&o)
    );

    let other = w.signed_with("echo-other", &guest("hostile"), manifest);
    let o = w.publish(&reg.url, &other, &publisher);
    assert_ne!(o.status.code(), Some(0), "{}", err(&o));
    assert!(err(&o).contains("409"), "{}", err(&o));

    assert_eq!(registry_state(&w, &reg.url), before);
}

/// `tend skill new` with hostile names and places: a name that is a path is refused by the
/// manifest's name rules before anything is written, and an existing directory or a link
/// (dangling or not) at the skill's place is refused without writing through it.
#[test]
fn skill_new_writes_only_into_a_directory_it_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path();
    let xdg = work.join("xdg");
    for name in ["../escape", "a/b", "/tmp/abs", ".hidden", "UPPER"] {
        let o = bare_new(work, &xdg, name);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", err(&o));
    }
    assert!(!work.parent().expect("parent").join("escape").exists());
    let elsewhere = work.join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::os::unix::fs::symlink(&elsewhere, work.join("linked")).expect("link");
    std::os::unix::fs::symlink(elsewhere.join("not-yet"), work.join("dangling")).expect("link");
    std::fs::create_dir(work.join("taken")).expect("mkdir");
    for name in ["linked", "dangling", "taken"] {
        let o = bare_new(work, &xdg, name);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", err(&o));
        assert!(err(&o).contains("already exists"), "{name}: {}", err(&o));
    }
    assert_eq!(std::fs::read_dir(&elsewhere).expect("dir").count(), 0);
    assert_eq!(
        std::fs::read_dir(work.join("taken")).expect("dir").count(),
        0
    );
}

/// A registry that answers with a bearer challenge: the pull fetches a token from the realm
/// (with the basic credentials, if any) and uses it; a realm on an internal address is refused
/// before it is asked, like a redirect.
#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_challenge_is_answered_but_its_realm_cannot_be_internal() {
    let (h, host) = Hostile::start().await;
    serve_artifact(&h, COMPONENT, |_| {});
    h.route(
        "/token",
        Answer::Body("application/json", br#"{"token":"t0ken"}"#.to_vec()),
    );
    *h.bearer.lock().expect("bearer") = Some((
        "t0ken".into(),
        format!(
            r#"Bearer realm="http://{host}/token",service="test",scope="repository:{REPO}:pull""#
        ),
    ));
    let e = pull(&host).await;
    // Past the manifest and the blob: only the signature is missing.
    assert!(e.contains("no Tend signature"), "{e}");
    let seen = h.seen();
    assert!(seen.iter().any(|(p, _)| p == "/token"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|(p, a)| p.contains("/blobs/") && a.as_deref() == Some("Bearer t0ken")),
        "{seen:?}"
    );

    let (h, host) = Hostile::start().await;
    serve_artifact(&h, COMPONENT, |_| {});
    *h.bearer.lock().expect("bearer") = Some((
        "t0ken".into(),
        r#"Bearer realm="http://169.254.169.254/latest/meta-data/",service="x""#.into(),
    ));
    let e = pull(&host).await;
    assert!(
        e.contains("refused its token realm") && e.contains("169.254.169.254"),
        "{e}"
    );
}
