//! The signature envelope and the canonical bytes it signs (see docs/artifact-format.md).
//!
//! The signed message is fixed text, defined here once:
//!
//! ```text
//! tend-signature/v1
//! manifest-sha256 <hex sha256 of the manifest's exact bytes>
//! component-sha256 <hex sha256 of the component's bytes>
//! key-id <16 hex>
//! ```
//!
//! The manifest travels in the envelope as the exact text that was signed, so nothing is ever
//! re-serialised before verification.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tend_manifest::{Manifest, ManifestError};

use crate::keys::PublicKey;

/// Envelope format identifier; a new format is a new string.
pub const FORMAT: &str = "tend-signature/v1";

/// What travels beside a component: who signed which manifest for which component bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub format: String,
    pub key_id: String,
    /// Hex sha256 of the component.
    pub component_sha256: String,
    /// The manifest (skill.toml), byte for byte as signed.
    pub manifest: String,
    /// Base64 of the 64-byte ed25519 signature over [`signed_bytes`].
    pub signature: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The canonical message an envelope's signature covers.
pub fn signed_bytes(manifest: &str, component_sha256: &str, key_id: &str) -> Vec<u8> {
    format!(
        "{FORMAT}\nmanifest-sha256 {}\ncomponent-sha256 {component_sha256}\nkey-id {key_id}\n",
        sha256_hex(manifest.as_bytes())
    )
    .into_bytes()
}

/// Sign a component and its manifest. The manifest must be valid: nobody signs what Tend would
/// refuse to run.
pub fn sign(component: &[u8], manifest: &str, key: &SigningKey) -> Result<Envelope, ManifestError> {
    Manifest::parse(manifest, "manifest")?;
    let key_id = PublicKey(key.verifying_key()).key_id();
    let component_sha256 = sha256_hex(component);
    let signature = key.sign(&signed_bytes(manifest, &component_sha256, &key_id));
    Ok(Envelope {
        format: FORMAT.to_string(),
        key_id,
        component_sha256,
        manifest: manifest.to_string(),
        signature: B64.encode(signature.to_bytes()),
    })
}

impl Envelope {
    /// Parse envelope JSON, naming what is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, String> {
        let env: Envelope = serde_json::from_slice(bytes)
            .map_err(|e| format!("malformed signature envelope: {e}"))?;
        if env.format != FORMAT {
            return Err(format!(
                "unsupported signature format {:?} (this Tend reads {FORMAT})",
                env.format
            ));
        }
        Ok(env)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str =
        "[skill]\nname = \"disk-usage\"\nversion = \"0.1.0\"\nkind = \"diagnose\"\n";

    /// Fixed vectors: a fixed key, manifest and component give exactly these bytes and this
    /// signature (ed25519 is deterministic). A change here breaks every signature in the wild.
    #[test]
    fn canonical_form_fixed_vectors() {
        let key = SigningKey::from_bytes(&[1u8; 32]);
        let component = b"\0asm\x0d\0\x01\0";
        let env = sign(component, MANIFEST, &key).expect("sign");
        let got = (
            env.key_id.as_str(),
            env.component_sha256.as_str(),
            sha256_hex(MANIFEST.as_bytes()),
            env.signature.as_str(),
        );
        assert_eq!(
            got,
            (
                FIXED_KEY_ID,
                FIXED_COMPONENT_SHA256,
                FIXED_MANIFEST_SHA256.to_string(),
                FIXED_SIGNATURE
            )
        );
        assert_eq!(
            String::from_utf8(signed_bytes(MANIFEST, &env.component_sha256, &env.key_id))
                .expect("utf8"),
            format!(
                "tend-signature/v1\nmanifest-sha256 {FIXED_MANIFEST_SHA256}\ncomponent-sha256 {FIXED_COMPONENT_SHA256}\nkey-id {FIXED_KEY_ID}\n"
            )
        );
    }

    // Cross-checked with an independent implementation (Python `cryptography`, Ed25519 from
    // the raw 32-byte seed [1; 32]).
    const FIXED_KEY_ID: &str = "34750f98bd59fcfc";
    const FIXED_COMPONENT_SHA256: &str =
        "24eaf3439a60c96764c4f2c92a0a81b52bd4fe5d5b91f090184a0f6486b1bf29";
    const FIXED_MANIFEST_SHA256: &str =
        "57fc2a32db806dcdf1457cad86b26de0f13e224dce1d19208a9b609430cfdc77";
    const FIXED_SIGNATURE: &str =
        "nBSUB9ZC+Q4qrVTj/6W72JSfq9DWcIehlj/XUlRLciZUfOSVJYPlaVqmHhHIf7sTQuS2VigSoigeGT8c/dV3Cw==";

    #[test]
    fn envelope_parse_names_the_problem() {
        let key = SigningKey::from_bytes(&[2u8; 32]);
        let env = sign(b"component", MANIFEST, &key).expect("sign");
        let json = env.to_json();
        assert_eq!(Envelope::parse(json.as_bytes()).expect("parses"), env);
        let truncated = &json.as_bytes()[..json.len() / 2];
        assert!(
            Envelope::parse(truncated)
                .expect_err("truncated")
                .contains("malformed")
        );
        let other = json.replace(FORMAT, "tend-signature/v9");
        assert!(
            Envelope::parse(other.as_bytes())
                .expect_err("format")
                .contains("unsupported")
        );
        let extra = json.replacen('{', "{\"trusted\": true,", 1);
        assert!(
            Envelope::parse(extra.as_bytes())
                .expect_err("extra")
                .contains("unknown field")
        );
    }

    #[test]
    fn an_invalid_manifest_is_not_signed() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        assert!(sign(b"c", "[skill]\nname = \"x\"\n", &key).is_err());
    }
}
