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
use crate::registry::{World, err};
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
        self.seen.lock().expect("seen").push((path.clone(), auth));
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
