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
//! artifact without a signature is refused. Loopback registries (`localhost`, `127.0.0.1`,
//! `[::1]`) are spoken to over plain HTTP; every other host over HTTPS.

use std::collections::BTreeMap;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
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
    let client = client(reference).await;
    let kept = match pull_manifest(&client, reference, "its manifest").await {
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
    let listed = referrers(&client, reference, &subject.digest).await?;
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
    client: &Client,
    reference: &Reference,
    digest: &str,
) -> Result<OciImageIndex, OciError> {
    if let Ok(index) = client
        .pull_referrers(&with_digest(reference, digest), None)
        .await
    {
        return Ok(index);
    }
    let tag = referrers_tag(digest);
    match client
        .pull_manifest_raw(
            &with_tag(reference, &tag),
            &auth(),
            &[OCI_IMAGE_INDEX_MEDIA_TYPE],
        )
        .await
    {
        Ok((body, _)) => serde_json::from_slice(&body).map_err(|e| {
            registry_error(
                reference,
                format!("the referrers tag {tag} does not hold an image index: {e}"),
            )
        }),
        Err(e) if not_found(&e) => Ok(empty_index()),
        Err(e) => Err(registry_error(
            reference,
            format!("the referrers tag {tag}: {e}"),
        )),
    }
}

/// The registry says the manifest (or the repository) does not exist.
fn not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => {
            !envelope.errors.is_empty()
                && envelope.errors.iter().all(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
                    )
                })
        }
        _ => false,
    }
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
    let mut index = match client
        .pull_manifest_raw(&tagged, &auth(), &[OCI_IMAGE_INDEX_MEDIA_TYPE])
        .await
    {
        Ok((body, _)) => serde_json::from_slice::<OciImageIndex>(&body).map_err(|e| {
            registry_error(
                reference,
                format!("the referrers tag {tag} does not hold an image index: {e}"),
            )
        })?,
        Err(e) if not_found(&e) => empty_index(),
        Err(e) => {
            return Err(registry_error(
                reference,
                format!("the referrers tag {tag}: {e}"),
            ));
        }
    };
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
    client: &Client,
    reference: &Reference,
    what: &str,
) -> Result<(OciImageManifest, OciDescriptor), OciError> {
    let (body, _) = client
        .pull_manifest_raw(reference, &auth(), &[OCI_IMAGE_MEDIA_TYPE])
        .await
        .map_err(|e| registry_error(reference, e))?;
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
    client: &Client,
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
    let mut data = Vec::new();
    client
        .pull_blob(reference, layer, &mut data)
        .await
        .map_err(|e| registry_error(reference, e))?;
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
    let client = client(reference).await;
    let artifact = |message: String| OciError::Artifact {
        reference: reference.whole(),
        message,
    };
    let (manifest, held) = pull_manifest(&client, reference, "its manifest").await?;
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
    let component = pull_blob(&client, reference, layer, MAX_COMPONENT_BYTES).await?;
    let component_sha256 = sha256_hex(&component);

    let referrers = referrers(&client, reference, &manifest_digest).await?;
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
            let (sig, _) = pull_manifest(&client, &at, "a signature artifact").await?;
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
            let bytes = pull_blob(&client, &at, layer, MAX_ENVELOPE_BYTES).await?;
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
