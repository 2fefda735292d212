//! Push and pull signed skills to and from any OCI registry (oci-client).
//!
//! An artifact is one OCI image manifest:
//!
//! - config: media type `application/vnd.wasm.config.v0+json` (the wasm OCI artifact layout),
//!   `{"architecture":"wasm","os":"wasip2","layerDigests":[<component digest>]}`;
//! - layer 1: the component, media type `application/wasm`;
//! - layer 2: the signature envelope, media type `application/vnd.tend.signature.v1+json`.
//!
//! The envelope travels as a layer (not an annotation) so it is content-addressed like the
//! component and its size is not bounded by annotation limits. Pull checks every blob against
//! its descriptor digest; trust is then decided by the caller's local trust policy, as for the
//! HTTP registry. Loopback registries (`localhost`, `127.0.0.1`, `[::1]`) are spoken to over
//! plain HTTP; every other host over HTTPS.

use std::collections::BTreeMap;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::envelope::{Envelope, sha256_hex};

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const COMPONENT_MEDIA_TYPE: &str = "application/wasm";
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.tend.signature.v1+json";

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

fn client(reference: &Reference) -> Client {
    let registry = reference.resolve_registry().to_string();
    let protocol = if is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        ..Default::default()
    })
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

/// Push a component and its envelope; returns the manifest URL.
pub async fn push(
    reference: &Reference,
    component: Vec<u8>,
    envelope: &Envelope,
) -> Result<String, OciError> {
    let digest = format!("sha256:{}", sha256_hex(&component));
    let manifest = Envelope::parse(envelope.to_json().as_bytes())
        .ok()
        .and_then(|e| tend_manifest::Manifest::parse(&e.manifest, "manifest").ok());
    let mut annotations = BTreeMap::new();
    if let Some(m) = &manifest {
        annotations.insert(
            "org.opencontainers.image.title".to_string(),
            m.skill.name.to_string(),
        );
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
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [digest],
    });
    let config = Config::new(
        serde_json::to_vec(&config).unwrap_or_default(),
        CONFIG_MEDIA_TYPE.to_string(),
        None,
    );
    let layers = [
        ImageLayer::new(component, COMPONENT_MEDIA_TYPE.to_string(), None),
        ImageLayer::new(
            envelope.to_json().into_bytes(),
            SIGNATURE_MEDIA_TYPE.to_string(),
            None,
        ),
    ];
    let manifest =
        oci_client::manifest::OciImageManifest::build(&layers, &config, Some(annotations));
    let response = client(reference)
        .push(reference, &layers, config, &auth(), Some(manifest))
        .await
        .map_err(|e| registry_error(reference, e))?;
    Ok(response.manifest_url)
}

/// Pull a component and its envelope. Every blob is checked against its descriptor's digest;
/// the caller decides trust.
pub async fn pull(reference: &Reference) -> Result<(Vec<u8>, Envelope), OciError> {
    let image = client(reference)
        .pull(
            reference,
            &auth(),
            vec![COMPONENT_MEDIA_TYPE, SIGNATURE_MEDIA_TYPE],
        )
        .await
        .map_err(|e| registry_error(reference, e))?;
    let artifact = |message: String| OciError::Artifact {
        reference: reference.whole(),
        message,
    };
    if image.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(artifact(format!(
            "config media type is {}, not {CONFIG_MEDIA_TYPE}: not a wasm artifact",
            image.config.media_type
        )));
    }
    let manifest = image
        .manifest
        .ok_or_else(|| artifact("the registry returned no manifest".into()))?;
    // Layers arrive in any order: pair each with its descriptor by media type (one of each).
    let one = |media: &str| -> Result<&ImageLayer, OciError> {
        let mut found = image.layers.iter().filter(|l| l.media_type == media);
        let mut described = manifest.layers.iter().filter(|d| d.media_type == media);
        let (layer, descriptor) = match (
            found.next(),
            found.next(),
            described.next(),
            described.next(),
        ) {
            (Some(l), None, Some(d), None) => (l, d),
            (None, ..) | (_, _, None, _) => return Err(artifact(format!("no {media} layer"))),
            _ => return Err(artifact(format!("more than one {media} layer"))),
        };
        let actual = format!("sha256:{}", sha256_hex(&layer.data));
        if actual != descriptor.digest {
            return Err(artifact(format!(
                "the registry served a {media} blob whose digest is {actual}, not the {} in its manifest",
                descriptor.digest
            )));
        }
        Ok(layer)
    };
    let component = one(COMPONENT_MEDIA_TYPE)?.data.to_vec();
    let envelope = Envelope::parse(&one(SIGNATURE_MEDIA_TYPE)?.data).map_err(artifact)?;
    Ok((component, envelope))
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
}
