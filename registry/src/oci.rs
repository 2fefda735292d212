//! Push and pull signed skills to and from any OCI registry (oci-client).
//!
//! A skill is two artifacts in one repository:
//!
//! - the component, a standard wasm artifact (the CNCF wasm OCI artifact layout, as the
//!   Bytecode Alliance's `wkg` writes it): an image manifest whose config has media type
//!   `application/vnd.wasm.config.v0+json` (`{"created","architecture":"wasm","os":"wasip2",
//!   "layerDigests","component":{"exports","imports"}}`) and exactly one layer, the component,
//!   `application/wasm`. It is tagged with the skill's version, so any wasm client pulls it;
//! - its signature, an OCI 1.1 artifact manifest (artifactType
//!   `application/vnd.tend.signature.v1+json`, the empty config, one layer: the envelope)
//!   whose `subject` is the component's manifest. It has no tag: a pull finds it through the
//!   registry's referrers API, or, on registries without one (Debian's docker-registry), through
//!   the referrers tag `sha256-<hex of the component manifest digest>`, an image index that
//!   push keeps up to date (merging with what it lists).
//!
//! Pull checks every manifest and blob against its digest, accepts only signatures whose
//! subject is the component's manifest and whose envelope signs the component's bytes, and
//! returns them for the caller's local trust policy to decide, as for the HTTP registry. An
//! artifact without a signature is refused. Every read (pull's, and push's of what a tag
//! already holds) goes through [`Reader`], which bounds bodies, redirects and token realms
//! (see its doc and docs/registry.md). Loopback registries (`localhost`, `127.0.0.1`,
//! `[::1]`) are spoken to over plain HTTP; every other host over HTTPS.

use std::collections::BTreeMap;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciImageIndex,
    OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::envelope::{Envelope, sha256_hex};

pub use oci_client::manifest::OciDescriptor;

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const COMPONENT_MEDIA_TYPE: &str = "application/wasm";
/// The signature artifact's artifactType and its one layer's media type.
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.tend.signature.v1+json";
/// OCI 1.1's empty config (`{}`), for artifacts that have no config of their own.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_CONFIG: &[u8] = b"{}";
const TITLE: &str = "org.opencontainers.image.title";

/// Bounds on what a registry may make a pull download (a hostile registry picks the sizes).
const MAX_COMPONENT_BYTES: i64 = 64 << 20;
const MAX_ENVELOPE_BYTES: i64 = 1 << 20;
/// At most this many signature artifacts are examined per component.
const MAX_SIGNATURES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(
        "{reference:?} is not an OCI reference (expected oci://host[:port]/repo:tag): {message}"
    )]
    Reference { reference: String, message: String },
    #[error("OCI registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("{reference}: {message}")]
    Artifact { reference: String, message: String },
}

/// Parse `oci://host[:port]/repo[:tag]`.
pub fn parse_reference(text: &str) -> Result<Reference, OciError> {
    let bad = |message: &str| OciError::Reference {
        reference: text.to_string(),
        message: message.to_string(),
    };
    let rest = text
        .strip_prefix("oci://")
        .ok_or_else(|| bad("it must start with oci://"))?;
    if !rest.contains('/') {
        return Err(bad("it names no repository"));
    }
    rest.parse::<Reference>().map_err(|e| bad(&e.to_string()))
}

/// The skill a reference names: the repository's last segment is the skill name and the tag
/// its version (`oci://host/tend/disk-usage:0.1.0` is `disk-usage` 0.1.0). Pull checks that
/// the signed manifest says exactly this; push refuses a reference that says otherwise.
pub fn named_skill(reference: &Reference) -> Result<(String, String), OciError> {
    let bad = |message: String| OciError::Reference {
        reference: reference.whole(),
        message,
    };
    let name = reference
        .repository()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let version = reference.tag().ok_or_else(|| {
        bad("it has no tag: name the skill's version as the tag (…/disk-usage:0.1.0)".into())
    })?;
    if semver::Version::parse(version).is_err() {
        return Err(bad(format!(
            "its tag {version:?} is not a skill version (a semantic version, e.g. 0.1.0)"
        )));
    }
    Ok((name, version.to_string()))
}

fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(registry, |(h, _)| h);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// A client for the reference's registry, its credentials already stored.
async fn client(reference: &Reference) -> Client {
    let registry = reference.resolve_registry().to_string();
    let protocol = if is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    client.store_auth_if_needed(&registry, &auth()).await;
    client
}

/// `TEND_OCI_USERNAME` / `TEND_OCI_PASSWORD` for basic auth, else anonymous.
fn auth() -> RegistryAuth {
    match (
        std::env::var("TEND_OCI_USERNAME"),
        std::env::var("TEND_OCI_PASSWORD"),
    ) {
        (Ok(u), Ok(p)) => RegistryAuth::Basic(u, p),
        _ => RegistryAuth::Anonymous,
    }
}

/// Bounds on what a registry may make a pull read into memory: a manifest, an index or a
/// referrers list (4 MiB, as containerd and distribution bound manifests), and a token answer.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
const MAX_TOKEN_BYTES: u64 = 64 << 10;
/// An Accept header for any manifest or index, OCI or Docker.
const ANY_MANIFEST: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// At most this many redirects are followed for one read.
const MAX_REDIRECTS: usize = 5;

/// Reads from a registry within bounds a hostile registry cannot lift. oci-client reads whole
/// bodies whatever their size, follows any redirect (to 169.254.169.254 as readily as to a CDN)
/// and, when a blob is missing, fetches the URLs a manifest's descriptor lists; so every read a
/// pull or push makes goes through here instead: bodies are capped while they stream, a
/// redirect or token realm may not lead to an internal address (nor from a remote registry to
/// loopback, nor off loopback over plain HTTP), descriptor URLs are never fetched, and a
/// digest is checked to be one before it becomes part of a URL. Credentials go to the
/// registry's own origin only (reqwest drops them on a redirect to another origin).
struct Reader {
    http: reqwest::Client,
    origin: String,
    repository: String,
    registry: String,
    loopback: bool,
    basic: Option<(String, String)>,
    bearer: std::sync::Mutex<Option<String>>,
}

/// A digest that may become part of a URL: `sha256:` and 64 lower-case hex digits.
fn is_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Whether an address is on the public internet (not loopback, private, link-local, shared,
/// documentation, benchmarking, multicast, reserved or unspecified).
fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(a) => {
            let [x, y, ..] = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_documentation()
                || a.is_multicast()
                || x == 0
                || x >= 240
                || (x == 100 && (64..128).contains(&y))
                || (x == 198 && (18..20).contains(&y)))
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let s = a.segments()[0];
                !(a.is_loopback()
                    || a.is_unspecified()
                    || a.is_multicast()
                    || (s & 0xfe00) == 0xfc00
                    || (s & 0xffc0) == 0xfe80)
            }
        },
    }
}

/// Why a registry may not send this client to `url` (by a redirect or as its token realm), if
/// it may not. Hosts named by DNS are judged by name only (see docs/registry.md).
fn refused_destination(url: &reqwest::Url, registry_is_loopback: bool) -> Option<&'static str> {
    use std::net::{IpAddr, Ipv4Addr};
    // The URL parser has normalised the host (`2852039166` is `169.254.169.254`).
    let Some(host) = url.host_str() else {
        return Some("it names no host");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) if name == "localhost" || name.ends_with(".localhost") => {
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
        Err(_) => None,
    };
    let loopback = ip.is_some_and(|ip| match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    });
    if loopback {
        return (!registry_is_loopback).then_some("a remote registry may not send it to loopback");
    }
    if ip.is_some_and(|ip| !is_public(ip)) {
        return Some("it is a private, link-local or otherwise internal address");
    }
    if url.scheme() != "https" {
        return Some("off loopback only HTTPS is followed");
    }
    None
}

/// The parameters of a `WWW-Authenticate: Bearer k="v",…` challenge.
fn bearer_challenge(header: &str) -> Option<BTreeMap<String, String>> {
    let (scheme, mut rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"')?,
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = after;
    }
    Some(params)
}

/// Read a response's body, refusing it as soon as it is longer than `max`.
async fn read_capped(
    mut response: reqwest::Response,
    max: u64,
    what: &str,
) -> Result<Vec<u8>, String> {
    let too_big = || format!("{what} is more than the {max} bytes a pull accepts");
    if response.content_length().is_some_and(|len| len > max) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("{what}: {e}"))? {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Reader {
    fn new(reference: &Reference) -> Result<Reader, OciError> {
        let registry = reference.resolve_registry().to_string();
        let loopback = is_loopback(&registry);
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match refused_destination(attempt.url(), loopback) {
                Some(why) => {
                    let message = format!("refused a redirect to {}: {why}", attempt.url());
                    attempt.error(message)
                }
                None => attempt.follow(),
            }
        });
        let http = reqwest::Client::builder()
            .redirect(policy)
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("tend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| registry_error(reference, e))?;
        let basic = match auth() {
            RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        };
        Ok(Reader {
            http,
            origin: format!("{}://{registry}", if loopback { "http" } else { "https" }),
            repository: reference.repository().to_string(),
            registry,
            loopback,
            basic,
            bearer: std::sync::Mutex::new(None),
        })
    }

    fn error(&self, message: impl std::fmt::Display) -> OciError {
        OciError::Registry {
            registry: self.registry.clone(),
            message: message.to_string(),
        }
    }

    async fn send(&self, url: &str, accept: &str) -> Result<reqwest::Response, OciError> {
        let mut request = self.http.get(url).header(reqwest::header::ACCEPT, accept);
        let bearer = self.bearer.lock().ok().and_then(|t| t.clone());
        request = match (bearer, &self.basic) {
            (Some(token), _) => request.bearer_auth(token),
            (None, Some((user, password))) => request.basic_auth(user, Some(password)),
            (None, None) => request,
        };
        // reqwest's error names the URL, and a refused redirect says why.
        request.send().await.map_err(|e| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            self.error(message)
        })
    }

    /// Answer a bearer challenge: fetch a token from its realm (with the basic credentials, if
    /// any), within the same bounds as every other read.
    async fn login(&self, challenge: &BTreeMap<String, String>) -> Result<(), OciError> {
        let realm = challenge
            .get("realm")
            .ok_or_else(|| self.error("its bearer challenge names no realm"))?;
        let url = reqwest::Url::parse(realm)
            .map_err(|e| self.error(format!("its token realm {realm:?}: {e}")))?;
        if let Some(why) = refused_destination(&url, self.loopback) {
            return Err(self.error(format!("refused its token realm {url}: {why}")));
        }
        let scope = challenge
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = challenge.get("service") {
            query.push(("service", service.as_str()));
        }
        let mut request = self.http.get(url).query(&query);
        if let Some((user, password)) = &self.basic {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| self.error(e))?;
        if !response.status().is_success() {
            return Err(self.error(format!("its token realm answered {}", response.status())));
        }
        let body = read_capped(response, MAX_TOKEN_BYTES, "its token answer")
            .await
            .map_err(|e| self.error(e))?;
        let answer: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.error(format!("its token answer is not JSON: {e}")))?;
        let token = answer
            .get("token")
            .or_else(|| answer.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| self.error("its token answer holds no token"))?;
        if let Ok(mut held) = self.bearer.lock() {
            *held = Some(token.to_string());
        }
        Ok(())
    }

    /// GET `/v2/<repository>/<path>`, at most `max` bytes of it; `None` if the registry has
    /// no such thing (404).
    async fn get(
        &self,
        path: &str,
        accept: &str,
        max: u64,
        what: &str,
    ) -> Result<Option<Vec<u8>>, OciError> {
        let url = format!("{}/v2/{}/{path}", self.origin, self.repository);
        let mut response = self.send(&url, accept).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED
            && let Some(challenge) = response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .and_then(bearer_challenge)
        {
            self.login(&challenge).await?;
            response = self.send(&url, accept).await?;
        }
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = read_capped(response, 512, "its error")
                .await
                .unwrap_or_default();
            return Err(self.error(format!(
                "{what}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        read_capped(response, max, what)
            .await
            .map(Some)
            .map_err(|e| self.error(e))
    }

    /// A manifest or index by the reference's tag or digest, at most MAX_MANIFEST_BYTES.
    async fn manifest(
        &self,
        reference: &Reference,
        accept: &str,
        what: &str,
    ) -> Result<Option<Vec<u8>>, OciError> {
        let at = match (reference.digest(), reference.tag()) {
            (Some(digest), _) if is_digest(digest) => digest,
            (Some(digest), _) => {
                return Err(self.error(format!("{what}: {digest:?} is not a sha256 digest")));
            }
            (None, Some(tag)) => tag,
            (None, None) => "latest",
        };
        self.get(&format!("manifests/{at}"), accept, MAX_MANIFEST_BYTES, what)
            .await
    }
}

fn registry_error(reference: &Reference, e: impl std::fmt::Display) -> OciError {
    OciError::Registry {
        registry: reference.resolve_registry().to_string(),
        message: e.to_string(),
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

fn descriptor(media_type: &str, bytes: &[u8]) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_string(),
        digest: sha256_digest(bytes),
        size: bytes.len() as i64,
        ..Default::default()
    }
}

/// The same repository, another tag or a digest.
fn with_tag(reference: &Reference, tag: &str) -> Reference {
    Reference::with_tag(
        reference.resolve_registry().to_string(),
        reference.repository().to_string(),
        tag.to_string(),
    )
}

fn with_digest(reference: &Reference, digest: &str) -> Reference {
    Reference::with_digest(
        reference.resolve_registry().to_string(),
        reference.repository().to_string(),
        digest.to_string(),
    )
}

/// The referrers tag of a manifest digest (OCI distribution spec, referrers tag schema).
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// Upload a blob unless the registry already has it.
async fn push_blob(
    client: &Client,
    reference: &Reference,
    bytes: &[u8],
) -> Result<OciDescriptor, OciError> {
    let d = descriptor("", bytes);
    let exists = client
        .blob_exists(reference, &d.digest)
        .await
        .unwrap_or(false);
    if !exists {
        client
            .push_blob(reference, bytes.to_vec(), &d.digest)
            .await
            .map_err(|e| registry_error(reference, e))?;
    }
    Ok(d)
}

/// Put a manifest (or index) as these exact bytes; returns its descriptor.
async fn put_manifest(
    client: &Client,
    reference: &Reference,
    media_type: &str,
    body: Vec<u8>,
) -> Result<OciDescriptor, OciError> {
    let d = descriptor(media_type, &body);
    let content_type = media_type
        .parse()
        .map_err(|e| registry_error(reference, format!("media type {media_type}: {e}")))?;
    client
        .push_manifest_raw(reference, body, content_type)
        .await
        .map_err(|e| registry_error(reference, e))?;
    Ok(d)
}

/// The top-level import and export names of a component (what `wkg` records in the config's
/// `component` field, from the component's world). `None` if the bytes are not a component
/// this reader understands; the config then omits the field.
fn component_world(bytes: &[u8]) -> Option<(Vec<String>, Vec<String>)> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn byte(&mut self) -> Option<u8> {
            let (b, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(*b)
        }
        fn leb(&mut self) -> Option<u64> {
            let mut value = 0u64;
            for shift in (0..64).step_by(7) {
                let b = self.byte()?;
                value |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Some(value);
                }
            }
            None
        }
        fn take(&mut self, n: u64) -> Option<&'a [u8]> {
            let n = usize::try_from(n).ok()?;
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn name(&mut self) -> Option<String> {
            // importname' / exportname': 0x00 or 0x01, then the name as a string.
            if self.byte()? > 1 {
                return None;
            }
            let len = self.leb()?;
            String::from_utf8(self.take(len)?.to_vec()).ok()
        }
        fn externdesc(&mut self) -> Option<()> {
            match self.byte()? {
                0x00 => {
                    self.byte()?;
                    self.leb()?;
                }
                0x01 | 0x04 | 0x05 => {
                    self.leb()?;
                }
                0x02 => {
                    self.byte()?;
                    self.leb()?;
                }
                0x03 => {
                    if self.byte()? == 0x00 {
                        self.leb()?;
                    }
                }
                _ => return None,
            }
            Some(())
        }
    }
    let mut r = Reader(bytes);
    if r.take(8)? != b"\0asm\x0d\x00\x01\x00" {
        return None;
    }
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    while !r.0.is_empty() {
        let id = r.byte()?;
        let len = r.leb()?;
        let mut section = Reader(r.take(len)?);
        match id {
            10 => {
                for _ in 0..section.leb()? {
                    imports.push(section.name()?);
                    section.externdesc()?;
                }
            }
            11 => {
                for _ in 0..section.leb()? {
                    exports.push(section.name()?);
                    // sortidx, then an optional externdesc.
                    if section.byte()? == 0x00 {
                        section.byte()?;
                    }
                    section.leb()?;
                    if section.byte()? == 0x01 {
                        section.externdesc()?;
                    }
                }
            }
            _ => {}
        }
    }
    Some((imports, exports))
}

/// The wasm artifact config, as wasm-pkg-tools writes it for a component.
fn wasm_config(component: &[u8]) -> Vec<u8> {
    let mut config = serde_json::json!({
        "created": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "author": null,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [sha256_digest(component)],
    });
    if let Some((imports, exports)) = component_world(component) {
        config["component"] = serde_json::json!({
            "exports": exports,
            "imports": imports,
            "target": null,
        });
    }
    serde_json::to_vec(&config).unwrap_or_default()
}

/// What a push left in the registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The component's manifest (what the tag points at).
    pub manifest: OciDescriptor,
    /// The signature artifact's manifest (its subject is `manifest`).
    pub signature: OciDescriptor,
    /// The referrers tag updated because the registry has no referrers API, if any.
    pub referrers_tag: Option<String>,
}

/// Push a component as a wasm artifact under the reference's tag, and its envelope as a
/// signature artifact referring to it.
pub async fn push(
    reference: &Reference,
    component: Vec<u8>,
    envelope: &Envelope,
) -> Result<Pushed, OciError> {
    let manifest = Envelope::parse(envelope.to_json().as_bytes())
        .ok()
        .and_then(|e| tend_manifest::Manifest::parse(&e.manifest, "manifest").ok());
    let mut annotations = BTreeMap::new();
    let mut title = None;
    if let Some(m) = &manifest {
        title = Some(format!("{}-{}.wasm", m.skill.name, m.skill.version));
        annotations.insert(TITLE.to_string(), m.skill.name.to_string());
        annotations.insert(
            "org.opencontainers.image.version".to_string(),
            m.skill.version.clone(),
        );
        if !m.skill.description.is_empty() {
            annotations.insert(
                "org.opencontainers.image.description".to_string(),
                m.skill.description.clone(),
            );
        }
    }
    // Pushing the same bytes again keeps the manifest the tag holds (its `created` time, its
    // digest and so the signatures that refer to it).
    let reader = Reader::new(reference)?;
    let kept = match pull_manifest(&reader, reference, "its manifest").await {
        Ok((m, held))
            if m.config.media_type == CONFIG_MEDIA_TYPE
                && matches!(m.layers.as_slice(), [l] if l.media_type == COMPONENT_MEDIA_TYPE
                    && l.digest == sha256_digest(&component)) =>
        {
            Some(held)
        }
        _ => None,
    };
    let manifest = match kept {
        Some(kept) => kept,
        None => push_component(reference, &component, title, annotations).await?,
    };
    let (signature, referrers_tag) = push_signature(reference, &manifest, envelope).await?;
    Ok(Pushed {
        manifest,
        signature,
        referrers_tag,
    })
}

/// Push a component as a standard wasm artifact under the reference's tag (no signature);
/// returns its manifest's descriptor.
pub async fn push_component(
    reference: &Reference,
    component: &[u8],
    title: Option<String>,
    annotations: BTreeMap<String, String>,
) -> Result<OciDescriptor, OciError> {
    let client = client(reference).await;
    let config_bytes = wasm_config(component);
    let mut config = push_blob(&client, reference, &config_bytes).await?;
    config.media_type = CONFIG_MEDIA_TYPE.to_string();
    let mut layer = push_blob(&client, reference, component).await?;
    layer.media_type = COMPONENT_MEDIA_TYPE.to_string();
    // The layer's title lets OCI tools name the file on disk (as `wkg oci push` does).
    layer.annotations = title.map(|t| BTreeMap::from([(TITLE.to_string(), t)]));
    let manifest = OciImageManifest {
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config,
        layers: vec![layer],
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..Default::default()
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| registry_error(reference, e))?;
    put_manifest(&client, reference, OCI_IMAGE_MEDIA_TYPE, body).await
}

/// Push an envelope as a signature artifact whose subject is `subject`, and list it in the
/// subject's referrers tag when the registry does not index referrers itself. Returns the
/// artifact's descriptor and the referrers tag it updated, if any.
pub async fn push_signature(
    reference: &Reference,
    subject: &OciDescriptor,
    envelope: &Envelope,
) -> Result<(OciDescriptor, Option<String>), OciError> {
    let client = client(reference).await;
    let mut config = push_blob(&client, reference, EMPTY_CONFIG).await?;
    config.media_type = EMPTY_MEDIA_TYPE.to_string();
    let mut layer = push_blob(&client, reference, envelope.to_json().as_bytes()).await?;
    layer.media_type = SIGNATURE_MEDIA_TYPE.to_string();
    let manifest = OciImageManifest {
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        artifact_type: Some(SIGNATURE_MEDIA_TYPE.to_string()),
        config,
        layers: vec![layer],
        subject: Some(OciDescriptor {
            media_type: subject.media_type.clone(),
            digest: subject.digest.clone(),
            size: subject.size,
            ..Default::default()
        }),
        // No timestamp: the same envelope about the same manifest is the same artifact, so
        // pushing again lists nothing twice.
        ..Default::default()
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| registry_error(reference, e))?;
    let digest = sha256_digest(&body);
    let signature = put_manifest(
        &client,
        &with_digest(reference, &digest),
        OCI_IMAGE_MEDIA_TYPE,
        body,
    )
    .await?;
    // A registry with the referrers API lists the new artifact at once; one without it answers
    // 404 and the client reads the referrers tag instead, which does not list it yet.
    let listed = referrers(&Reader::new(reference)?, reference, &subject.digest).await?;
    if listed
        .manifests
        .iter()
        .any(|m| m.digest == signature.digest)
    {
        return Ok((signature, None));
    }
    let tag = list_referrer(reference, &subject.digest, &signature, SIGNATURE_MEDIA_TYPE).await?;
    Ok((signature, Some(tag)))
}

/// The artifacts that refer to `digest`: the registry's referrers API, or where it has none
/// (404, or an answer that is not an index), the referrers tag. An absent tag is an empty list.
async fn referrers(
    reader: &Reader,
    reference: &Reference,
    digest: &str,
) -> Result<OciImageIndex, OciError> {
    if !is_digest(digest) {
        return Err(reader.error(format!("{digest:?} is not a sha256 digest")));
    }
    if let Some(body) = reader
        .get(
            &format!("referrers/{digest}"),
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            MAX_MANIFEST_BYTES,
            "its referrers list",
        )
        .await?
        && let Ok(index) = parse_index(&body)
    {
        return Ok(index);
    }
    referrers_by_tag(reader, reference, digest).await
}

/// The referrers tag of `digest`, read as an image index; an absent tag is an empty list.
async fn referrers_by_tag(
    reader: &Reader,
    reference: &Reference,
    digest: &str,
) -> Result<OciImageIndex, OciError> {
    let tag = referrers_tag(digest);
    let what = format!("the referrers tag {tag}");
    // Accept every manifest type, so that a tag holding something else is seen (and refused)
    // rather than answered 404 and taken for absent, then overwritten by push.
    match reader
        .manifest(&with_tag(reference, &tag), ANY_MANIFEST, &what)
        .await?
    {
        Some(body) => parse_index(&body).map_err(|e| {
            registry_error(
                reference,
                format!("the referrers tag {tag} does not hold an image index: {e}"),
            )
        }),
        None => Ok(empty_index()),
    }
}

/// An image index, and nothing else: oci-client's type reads an image manifest (or `{}`) as
/// an empty index, which push would then overwrite with its own.
fn parse_index(body: &[u8]) -> Result<OciImageIndex, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let media_type = value.get("mediaType").and_then(|m| m.as_str());
    if media_type.is_some_and(|m| m != OCI_IMAGE_INDEX_MEDIA_TYPE) {
        return Err(format!("it is a {}", media_type.unwrap_or_default()));
    }
    if !value.get("manifests").is_some_and(|m| m.is_array()) {
        return Err("it lists no manifests".into());
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn empty_index() -> OciImageIndex {
    OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_string()),
        manifests: vec![],
        artifact_type: None,
        annotations: None,
    }
}

/// Add `referrer` to the referrers tag of `subject_digest` (an image index, merged with what
/// the tag lists already); returns the tag.
pub async fn list_referrer(
    reference: &Reference,
    subject_digest: &str,
    referrer: &OciDescriptor,
    artifact_type: &str,
) -> Result<String, OciError> {
    let client = client(reference).await;
    let tag = referrers_tag(subject_digest);
    let tagged = with_tag(reference, &tag);
    // A tag that holds something other than an index is an error, not overwritten: it may be
    // someone else's, and what it lists is kept.
    let mut index = referrers_by_tag(&Reader::new(reference)?, reference, subject_digest).await?;
    if !index.manifests.iter().any(|m| m.digest == referrer.digest) {
        index.manifests.push(ImageIndexEntry {
            media_type: referrer.media_type.clone(),
            digest: referrer.digest.clone(),
            size: referrer.size,
            platform: None,
            annotations: None,
            artifact_type: Some(artifact_type.to_string()),
        });
    }
    index.media_type = Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_string());
    let body = serde_json::to_vec(&index).map_err(|e| registry_error(reference, e))?;
    put_manifest(&client, &tagged, OCI_IMAGE_INDEX_MEDIA_TYPE, body).await?;
    Ok(tag)
}

/// A pulled component and the signature envelopes that refer to it, each already checked to
/// be about this component's manifest and bytes; trust is the caller's to decide.
#[derive(Debug)]
pub struct Pulled {
    pub component: Vec<u8>,
    /// The digest of the component's manifest (what the tag resolved to).
    pub manifest_digest: String,
    /// (signature artifact digest, envelope), in the order the registry listed them.
    pub signatures: Vec<(String, Envelope)>,
}

async fn pull_manifest(
    reader: &Reader,
    reference: &Reference,
    what: &str,
) -> Result<(OciImageManifest, OciDescriptor), OciError> {
    let body = reader
        .manifest(reference, OCI_IMAGE_MEDIA_TYPE, what)
        .await?
        .ok_or_else(|| OciError::Artifact {
            reference: reference.whole(),
            message: format!("the registry has no {what} (404)"),
        })?;
    let digest = sha256_digest(&body);
    if let Some(expected) = reference.digest()
        && expected != digest
    {
        return Err(OciError::Artifact {
            reference: reference.whole(),
            message: format!("the registry served {what} whose digest is {digest}, not {expected}"),
        });
    }
    let manifest =
        serde_json::from_slice::<OciImageManifest>(&body).map_err(|e| OciError::Artifact {
            reference: reference.whole(),
            message: format!("{what} is not an OCI image manifest: {e}"),
        })?;
    Ok((manifest, descriptor(OCI_IMAGE_MEDIA_TYPE, &body)))
}

async fn pull_blob(
    reader: &Reader,
    reference: &Reference,
    layer: &OciDescriptor,
    max: i64,
) -> Result<Vec<u8>, OciError> {
    let artifact = |message: String| OciError::Artifact {
        reference: reference.whole(),
        message,
    };
    if layer.size < 0 || layer.size > max {
        return Err(artifact(format!(
            "its {} layer is {} bytes, more than the {max} a pull accepts",
            layer.media_type, layer.size
        )));
    }
    if !is_digest(&layer.digest) {
        return Err(artifact(format!(
            "its {} layer's digest {:?} is not a sha256 digest",
            layer.media_type, layer.digest
        )));
    }
    // Read no more than the descriptor says (the digest check below would catch a longer
    // body, but only after it had all been read). The descriptor's `urls` are never fetched.
    let what = format!("its {} blob", layer.media_type);
    let data = reader
        .get(
            &format!("blobs/{}", layer.digest),
            "*/*",
            layer.size.unsigned_abs(),
            &what,
        )
        .await?
        .ok_or_else(|| {
            artifact(format!(
                "the registry has no {} blob {}",
                layer.media_type, layer.digest
            ))
        })?;
    if data.len() as u64 != layer.size.unsigned_abs() {
        return Err(artifact(format!(
            "the registry served {} bytes of {what}, not the {} its manifest says",
            data.len(),
            layer.size
        )));
    }
    let actual = sha256_digest(&data);
    if actual != layer.digest {
        return Err(artifact(format!(
            "the registry served a {} blob whose digest is {actual}, not the {} in its manifest",
            layer.media_type, layer.digest
        )));
    }
    Ok(data)
}

/// Pull a component and the signatures that refer to it. Every manifest and blob is checked
/// against its digest; a component with no signature about it is refused.
pub async fn pull(reference: &Reference) -> Result<Pulled, OciError> {
    let reader = Reader::new(reference)?;
    let artifact = |message: String| OciError::Artifact {
        reference: reference.whole(),
        message,
    };
    let (manifest, held) = pull_manifest(&reader, reference, "its manifest").await?;
    let manifest_digest = held.digest;
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(artifact(format!(
            "config media type is {}, not {CONFIG_MEDIA_TYPE}: not a wasm artifact",
            manifest.config.media_type
        )));
    }
    if manifest
        .layers
        .iter()
        .any(|l| l.media_type == SIGNATURE_MEDIA_TYPE)
    {
        return Err(artifact(
            "it carries its signature as a layer of the component's image, a layout this tend \
             no longer reads: push it again with `tend skill push`, which pushes the signature \
             as a separate artifact referring to the component"
                .to_string(),
        ));
    }
    let layer = match manifest.layers.as_slice() {
        [layer] if layer.media_type == COMPONENT_MEDIA_TYPE => layer,
        layers => {
            return Err(artifact(format!(
                "a wasm artifact has exactly one {COMPONENT_MEDIA_TYPE} layer; this one has {}",
                layers
                    .iter()
                    .map(|l| l.media_type.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    let component = pull_blob(&reader, reference, layer, MAX_COMPONENT_BYTES).await?;
    let component_sha256 = sha256_hex(&component);

    let referrers = referrers(&reader, reference, &manifest_digest).await?;
    let candidates: Vec<_> = referrers
        .manifests
        .iter()
        .filter(|m| m.artifact_type.as_deref() == Some(SIGNATURE_MEDIA_TYPE))
        .take(MAX_SIGNATURES)
        .collect();
    if candidates.is_empty() {
        return Err(artifact(format!(
            "no Tend signature refers to its component ({manifest_digest}): neither the \
             registry's referrers API nor the referrers tag {} lists an artifact of type \
             {SIGNATURE_MEDIA_TYPE}. A pull accepts only signed skills; push it with `tend skill \
             push`, which pushes the signature with it",
            referrers_tag(&manifest_digest)
        )));
    }
    // Every listed signature must be about this manifest and these bytes: a referrers list is
    // not signed, so a hostile registry or tag may list anything.
    let mut signatures = Vec::new();
    let mut refused = Vec::new();
    for candidate in candidates {
        let at = with_digest(reference, &candidate.digest);
        let checked = async {
            let (sig, _) = pull_manifest(&reader, &at, "a signature artifact").await?;
            let points_at = sig.subject.as_ref().map(|s| s.digest.as_str());
            if points_at != Some(manifest_digest.as_str()) {
                return Err(artifact(format!(
                    "signature artifact {} refers to {}, not to this component's manifest {manifest_digest}",
                    candidate.digest,
                    points_at.unwrap_or("nothing")
                )));
            }
            let layer = match sig.layers.as_slice() {
                [l] if l.media_type == SIGNATURE_MEDIA_TYPE => l,
                _ => {
                    return Err(artifact(format!(
                        "signature artifact {} does not hold exactly one {SIGNATURE_MEDIA_TYPE} layer",
                        candidate.digest
                    )));
                }
            };
            let bytes = pull_blob(&reader, &at, layer, MAX_ENVELOPE_BYTES).await?;
            let envelope = Envelope::parse(&bytes)
                .map_err(|e| artifact(format!("signature artifact {}: {e}", candidate.digest)))?;
            if envelope.component_sha256 != component_sha256 {
                return Err(artifact(format!(
                    "signature artifact {} signs the component sha256:{}, not the one this tag \
                     holds (sha256:{component_sha256})",
                    candidate.digest, envelope.component_sha256
                )));
            }
            Ok(envelope)
        }
        .await;
        match checked {
            Ok(envelope) => signatures.push((candidate.digest.clone(), envelope)),
            Err(e) => refused.push(e.to_string()),
        }
    }
    if signatures.is_empty() {
        return Err(artifact(format!(
            "no usable signature: {}",
            refused.join("; ")
        )));
    }
    Ok(Pulled {
        component,
        manifest_digest,
        signatures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_parsed_and_named_when_wrong() {
        let r = parse_reference("oci://127.0.0.1:5000/tend/disk-usage:0.1.0").expect("parses");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "tend/disk-usage");
        assert_eq!(r.tag(), Some("0.1.0"));
        assert!(is_loopback(r.registry()));
        let (name, version) = named_skill(&r).expect("a skill reference");
        assert_eq!((name.as_str(), version.as_str()), ("disk-usage", "0.1.0"));
        for bad in ["oci://h/tend/disk-usage", "oci://h/tend/disk-usage:latest"] {
            let err = named_skill(&parse_reference(bad).expect("parses")).expect_err(bad);
            assert!(err.to_string().contains("tag"), "{err}");
        }
        assert!(!is_loopback("registry.example.com"));
        let err = parse_reference("127.0.0.1:5000/x:1").expect_err("no scheme");
        assert!(err.to_string().contains("oci://"), "{err}");
        let err = parse_reference("oci://host").expect_err("no repo");
        assert!(err.to_string().contains("no repository"), "{err}");
    }

    #[test]
    fn the_referrers_tag_is_the_digest_with_a_dash() {
        assert_eq!(referrers_tag("sha256:ab12"), "sha256-ab12");
    }

    #[test]
    fn the_world_of_a_non_component_is_unknown() {
        assert_eq!(component_world(b"not wasm"), None);
        // A core module's header is not a component's.
        assert_eq!(component_world(b"\0asm\x01\x00\x00\x00"), None);
        assert_eq!(
            component_world(b"\0asm\x0d\x00\x01\x00"),
            Some((vec![], vec![]))
        );
    }
}
