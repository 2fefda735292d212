//! The trust policy (`trust.toml`): which publisher keys are trusted for which skill names,
//! what is revoked, and the lowest version accepted per skill (rollback protection).
//!
//! ```toml
//! [[publishers]]
//! name = "tend-builtin"
//! key = "ed25519:BASE64..."
//! prefixes = ["*"]                 # skill-name prefixes this key may sign; "*" is any
//!
//! [revoked]
//! keys = ["3f9a0c1b2d4e5f60"]      # key ids (or ed25519:... public keys)
//! digests = ["sha256:..."]
//!
//! [versions]                       # highest version seen per skill: older ones are refused
//! disk-usage = "0.1.0"
//!
//! [[approvers]]                    # people whose signed approvals this host counts
//! name = "alice"
//! key = "ed25519:BASE64..."
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};
use tend_manifest::Manifest;

use crate::envelope::{Envelope, sha256_hex, signed_bytes};
use crate::keys::PublicKey;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustPolicy {
    #[serde(default)]
    pub publishers: Vec<Publisher>,
    #[serde(default)]
    pub revoked: Revoked,
    /// Highest version seen per skill name; anything older is a downgrade.
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
    /// Approvers whose signatures this host counts, by the name it knows them under. An
    /// approval signed by any other key counts for nothing here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<Approver>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approver {
    pub name: String,
    /// `ed25519:<base64>`
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publisher {
    pub name: String,
    /// `ed25519:<base64>`
    pub key: String,
    /// Skill-name prefixes this key may sign (`"*"` for any name).
    pub prefixes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// Key ids or public keys.
    #[serde(default)]
    pub keys: Vec<String>,
    /// `sha256:<hex>` component digests.
    #[serde(default)]
    pub digests: Vec<String>,
}

impl Revoked {
    /// The `[revoked]` entries of `text`, each checked and normalised (lower-case hex), so that
    /// a malformed entry is an error naming its line instead of a revocation that silently
    /// never matches.
    fn checked(text: &str, origin: &str) -> Result<Revoked, TrustError> {
        #[derive(Deserialize)]
        struct View {
            #[serde(default)]
            revoked: Spans,
        }
        #[derive(Deserialize, Default)]
        struct Spans {
            #[serde(default)]
            keys: Vec<toml::Spanned<String>>,
            #[serde(default)]
            digests: Vec<toml::Spanned<String>>,
        }
        let view: View = toml::from_str(text).map_err(|e| TrustError::Parse {
            path: origin.to_string(),
            line: tend_manifest::toml_error_line(text, &e),
            message: e.message().trim().to_string(),
        })?;
        let refuse = |entry: &toml::Spanned<String>, message: String| TrustError::Parse {
            path: origin.to_string(),
            line: text.as_bytes()[..entry.span().start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1,
            message,
        };
        let mut revoked = Revoked::default();
        for entry in &view.revoked.digests {
            let value = entry.get_ref();
            let hex = value.strip_prefix("sha256:").ok_or_else(|| {
                refuse(
                    entry,
                    format!(
                        "revoked.digests: {value:?} is not a digest: write sha256:<64 hex digits>"
                    ),
                )
            })?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(refuse(
                    entry,
                    format!("revoked.digests: {value:?} is not sha256: followed by 64 hex digits"),
                ));
            }
            revoked
                .digests
                .push(format!("sha256:{}", hex.to_ascii_lowercase()));
        }
        for entry in &view.revoked.keys {
            let value = entry.get_ref();
            let key_id = value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit());
            if key_id {
                revoked.keys.push(value.to_ascii_lowercase());
            } else if value.starts_with("ed25519:") {
                let key = value
                    .parse::<PublicKey>()
                    .map_err(|e| refuse(entry, format!("revoked.keys: {value:?}: {e}")))?;
                revoked.keys.push(key.to_string());
            } else {
                return Err(refuse(
                    entry,
                    format!(
                        "revoked.keys: {value:?} is neither a key id (16 hex digits, as `tend key show` prints) nor a public key (ed25519:...); publisher names cannot be revoked, their keys can"
                    ),
                ));
            }
        }
        Ok(revoked)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read trust policy {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

/// Why an artifact is not trusted. Each names what was checked and what was found.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Malformed(String),
    #[error(
        "component digest sha256:{actual} does not match the signed sha256:{signed}: the component was changed after signing"
    )]
    DigestMismatch { signed: String, actual: String },
    #[error("component sha256:{digest} is revoked by the trust policy")]
    RevokedDigest { digest: String },
    #[error("signed by key {key_id}, which is not a trusted publisher key in the trust policy")]
    UnknownKey { key_id: String },
    #[error("key {key_id} ({publisher}) is revoked by the trust policy")]
    RevokedKey { key_id: String, publisher: String },
    #[error(
        "the signature by key {key_id} ({publisher}) does not verify: the manifest or digest was changed after signing, or the signature is corrupt"
    )]
    BadSignature { key_id: String, publisher: String },
    #[error("the signed manifest is invalid: {0}")]
    Manifest(String),
    #[error("{publisher} (key {key_id}) may sign skills named {prefixes}, not {name:?}")]
    OutsidePrefix {
        publisher: String,
        key_id: String,
        name: String,
        prefixes: String,
    },
    #[error("asked for {asked} but the component is signed as {signed}: refusing it")]
    NotRequested { asked: String, signed: String },
    #[error(
        "{name} {version} is older than {seen}, the highest version seen: refusing a downgrade (use --allow-downgrade to override; it is logged)"
    )]
    Downgrade {
        name: String,
        version: String,
        seen: String,
    },
}

/// A component whose signature verified against the trust policy, with the reasons it is
/// trusted. Only this type opens the way to the runtime.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    pub manifest_text: String,
    pub digest: String,
    pub publisher: String,
    pub key_id: String,
    /// Why it is trusted, in words.
    pub reasons: Vec<String>,
}

impl Verified {
    /// `sha256:<hex>` of the signed manifest's text: with the component digest, it names what
    /// a loaded skill is (a cache key that holds everything that changes behaviour).
    pub fn manifest_digest(&self) -> String {
        format!(
            "sha256:{}",
            crate::envelope::sha256_hex(self.manifest_text.as_bytes())
        )
    }

    /// What was pulled is what was asked for: the signed name and version must be exactly
    /// `name` and `version` (a registry that resolved `latest` names the version it chose).
    /// A registry or an OCI tag cannot pass one signed skill off as another, or as another
    /// version of itself.
    pub fn ensure_requested(&self, name: &str, version: &str) -> Result<(), VerifyError> {
        let signed = &self.manifest.skill;
        if signed.name == name && signed.version == version {
            return Ok(());
        }
        Err(VerifyError::NotRequested {
            asked: format!("{name} {version}"),
            signed: format!("{} {}", signed.name, signed.version),
        })
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Accept a version older than the highest seen (logged).
    pub allow_downgrade: bool,
}

impl TrustPolicy {
    pub fn from_file(path: &Path) -> Result<TrustPolicy, TrustError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TrustError::Read {
            path: p.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &p)
    }

    pub fn parse(text: &str, origin: &str) -> Result<TrustPolicy, TrustError> {
        let policy: TrustPolicy = toml::from_str(text).map_err(|e| TrustError::Parse {
            path: origin.to_string(),
            line: tend_manifest::toml_error_line(text, &e),
            message: e.message().trim().to_string(),
        })?;
        let invalid = |key: String, message: String| TrustError::Invalid {
            path: origin.to_string(),
            key,
            message,
        };
        for (i, p) in policy.publishers.iter().enumerate() {
            if let Err(e) = p.key.parse::<PublicKey>() {
                return Err(invalid(format!("publishers[{i}].key"), e.to_string()));
            }
            if p.prefixes.is_empty() {
                return Err(invalid(
                    format!("publishers[{i}].prefixes"),
                    "list the skill-name prefixes this key may sign (\"*\" for any)".into(),
                ));
            }
        }
        for (i, a) in policy.approvers.iter().enumerate() {
            if a.name.is_empty()
                || a.name.len() > 64
                || !a
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
            {
                return Err(invalid(
                    format!("approvers[{i}].name"),
                    format!(
                        "{:?} is not 1-64 letters, digits and ._@-",
                        a.name.chars().take(64).collect::<String>()
                    ),
                ));
            }
            let key = a
                .key
                .parse::<PublicKey>()
                .map_err(|e| invalid(format!("approvers[{i}].key"), e.to_string()))?;
            if let Some(j) = policy.approvers[..i]
                .iter()
                .position(|b| b.key.parse::<PublicKey>().ok().as_ref() == Some(&key))
            {
                return Err(invalid(
                    format!("approvers[{i}].key"),
                    format!("the same key as approvers[{j}]: one key is one person"),
                ));
            }
        }
        let mut policy = policy;
        policy.revoked = Revoked::checked(text, origin)?;
        for (name, v) in &policy.versions {
            if semver::Version::parse(v).is_err() {
                return Err(invalid(
                    format!("versions.{name}"),
                    format!("{v:?} is not a semantic version"),
                ));
            }
        }
        Ok(policy)
    }

    /// The approver keys this policy trusts, with the name of each (checked at parse), minus
    /// any key under `[revoked]`.
    pub fn approver_keys(&self) -> Vec<(String, ed25519_dalek::VerifyingKey)> {
        self.approvers
            .iter()
            .filter_map(|a| Some((a.name.clone(), a.key.parse::<PublicKey>().ok()?)))
            .filter(|(_, k)| {
                !self
                    .revoked
                    .keys
                    .iter()
                    .any(|r| *r == k.key_id() || *r == k.to_string())
            })
            .map(|(n, k)| (n, k.0))
            .collect()
    }

    /// Verify a component and its envelope. Checks, in order: envelope format, component
    /// digest, revoked digest, known key, revoked key, signature (`verify_strict`), manifest,
    /// name prefix, downgrade.
    pub fn verify(
        &self,
        component: &[u8],
        envelope: &Envelope,
        options: VerifyOptions,
    ) -> Result<Verified, VerifyError> {
        if envelope.format != crate::envelope::FORMAT {
            return Err(VerifyError::Malformed(format!(
                "unsupported signature format {:?}",
                envelope.format
            )));
        }
        let actual = sha256_hex(component);
        if actual != envelope.component_sha256 {
            return Err(VerifyError::DigestMismatch {
                signed: envelope.component_sha256.clone(),
                actual,
            });
        }
        let digest = format!("sha256:{actual}");
        if self.revoked.digests.iter().any(|d| d == &digest) {
            return Err(VerifyError::RevokedDigest { digest: actual });
        }
        let (publisher, public) = self
            .publishers
            .iter()
            .filter_map(|p| p.key.parse::<PublicKey>().ok().map(|k| (p, k)))
            .find(|(_, k)| k.key_id() == envelope.key_id)
            .ok_or_else(|| VerifyError::UnknownKey {
                key_id: envelope.key_id.clone(),
            })?;
        let key_id = public.key_id();
        if self
            .revoked
            .keys
            .iter()
            .any(|r| r == &key_id || r.parse::<PublicKey>().is_ok_and(|k| k == public))
        {
            return Err(VerifyError::RevokedKey {
                key_id,
                publisher: publisher.name.clone(),
            });
        }
        let bad_signature = || VerifyError::BadSignature {
            key_id: key_id.clone(),
            publisher: publisher.name.clone(),
        };
        let signature: [u8; 64] = B64
            .decode(&envelope.signature)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(bad_signature)?;
        public
            .0
            .verify_strict(
                &signed_bytes(
                    &envelope.manifest,
                    &envelope.component_sha256,
                    &envelope.key_id,
                ),
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| bad_signature())?;
        let manifest = Manifest::parse(&envelope.manifest, "signed manifest")
            .map_err(|e| VerifyError::Manifest(e.to_string()))?;
        let name = &manifest.skill.name;
        let prefix = publisher
            .prefixes
            .iter()
            .find(|p| p.as_str() == "*" || name.starts_with(p.as_str()))
            .ok_or_else(|| VerifyError::OutsidePrefix {
                publisher: publisher.name.clone(),
                key_id: key_id.clone(),
                name: name.to_string(),
                prefixes: format!("{:?}", publisher.prefixes),
            })?;
        let mut reasons = vec![
            format!("component digest {digest} matches the signed digest"),
            format!(
                "signature by key {key_id} verifies; the key belongs to trusted publisher {:?}",
                publisher.name
            ),
            if prefix == "*" {
                format!("{:?} may sign any skill name", publisher.name)
            } else {
                format!(
                    "{name:?} starts with {prefix:?}, a prefix {:?} may sign",
                    publisher.name
                )
            },
            "neither the key nor the digest is revoked".to_string(),
        ];
        let version = semver::Version::parse(&manifest.skill.version)
            .map_err(|e| VerifyError::Manifest(e.to_string()))?;
        if let Some(seen) = self.versions.get(name.as_str()) {
            let seen_v =
                semver::Version::parse(seen).map_err(|e| VerifyError::Manifest(e.to_string()))?;
            if version < seen_v {
                if !options.allow_downgrade {
                    return Err(VerifyError::Downgrade {
                        name: name.to_string(),
                        version: version.to_string(),
                        seen: seen.clone(),
                    });
                }
                tracing::warn!(skill = %name, %version, %seen, "downgrade allowed by explicit override");
                reasons.push(format!(
                    "DOWNGRADE from {seen} to {version} allowed by explicit override"
                ));
            } else {
                reasons.push(format!(
                    "version {version} is not older than {seen}, the highest seen"
                ));
            }
        }
        Ok(Verified {
            manifest_text: envelope.manifest.clone(),
            manifest,
            digest,
            publisher: publisher.name.clone(),
            key_id,
            reasons,
        })
    }
}

impl TrustPolicy {
    /// Check again, without re-hashing, that an artifact verified earlier is still acceptable:
    /// its digest and key are not revoked, its key is still a trusted publisher key, and its
    /// version is not below the rollback floor. For cache hits: a cache never outlives a
    /// revocation or a newer version seen since.
    pub fn recheck(
        &self,
        name: &str,
        version: &str,
        digest: &str,
        key_id: &str,
    ) -> Result<(), VerifyError> {
        if self.revoked.digests.iter().any(|d| d == digest) {
            return Err(VerifyError::RevokedDigest {
                digest: digest.trim_start_matches("sha256:").to_string(),
            });
        }
        let (publisher, public) = self
            .publishers
            .iter()
            .filter_map(|p| p.key.parse::<PublicKey>().ok().map(|k| (p, k)))
            .find(|(_, k)| k.key_id() == key_id)
            .ok_or_else(|| VerifyError::UnknownKey {
                key_id: key_id.to_string(),
            })?;
        if self
            .revoked
            .keys
            .iter()
            .any(|r| r == key_id || r.parse::<PublicKey>().is_ok_and(|k| k == public))
        {
            return Err(VerifyError::RevokedKey {
                key_id: key_id.to_string(),
                publisher: publisher.name.clone(),
            });
        }
        if let Some(seen) = self.versions.get(name) {
            let older = match (
                semver::Version::parse(version),
                semver::Version::parse(seen),
            ) {
                (Ok(v), Ok(s)) => v < s,
                (Err(e), _) | (_, Err(e)) => return Err(VerifyError::Manifest(e.to_string())),
            };
            if older {
                return Err(VerifyError::Downgrade {
                    name: name.to_string(),
                    version: version.to_string(),
                    seen: seen.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::envelope::sign;

    const MANIFEST: &str =
        "[skill]\nname = \"acme-disk\"\nversion = \"1.2.0\"\nkind = \"diagnose\"\n";
    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0 pretend component bytes";

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn public(n: u8) -> String {
        PublicKey(key(n).verifying_key()).to_string()
    }

    fn policy(extra: &str) -> TrustPolicy {
        let text = format!(
            "[[publishers]]\nname = \"acme\"\nkey = \"{}\"\nprefixes = [\"acme-\"]\n{extra}",
            public(1)
        );
        TrustPolicy::parse(&text, "trust.toml").expect("valid policy")
    }

    fn check(
        policy: &TrustPolicy,
        component: &[u8],
        env: &Envelope,
    ) -> Result<Verified, VerifyError> {
        policy.verify(component, env, VerifyOptions::default())
    }

    #[test]
    fn a_signed_component_from_a_trusted_key_verifies_with_reasons() {
        let env = sign(COMPONENT, MANIFEST, &key(1)).expect("sign");
        let v = check(&policy(""), COMPONENT, &env).expect("trusted");
        assert_eq!(v.publisher, "acme");
        assert_eq!(v.manifest.skill.name, "acme-disk");
        assert!(
            v.reasons
                .iter()
                .any(|r| r.contains("starts with \"acme-\"")),
            "{:?}",
            v.reasons
        );
    }

    #[test]
    fn every_attack_is_refused_with_its_reason() {
        let env = sign(COMPONENT, MANIFEST, &key(1)).expect("sign");
        let p = policy("");

        // One flipped byte in the component.
        let mut flipped = COMPONENT.to_vec();
        flipped[10] ^= 1;
        assert!(matches!(
            check(&p, &flipped, &env),
            Err(VerifyError::DigestMismatch { .. })
        ));

        // The manifest edited after signing: a capability added.
        let mut edited = env.clone();
        edited
            .manifest
            .push_str("[capabilities]\nfs_read = [\"/etc\"]\n");
        assert!(matches!(
            check(&p, COMPONENT, &edited),
            Err(VerifyError::BadSignature { .. })
        ));

        // The digest edited to match other bytes, signature left alone.
        let mut redigested = env.clone();
        redigested.component_sha256 = sha256_hex(&flipped);
        assert!(matches!(
            check(&p, &flipped, &redigested),
            Err(VerifyError::BadSignature { .. })
        ));

        // A valid signature by a key the policy does not know.
        let stranger = sign(COMPONENT, MANIFEST, &key(9)).expect("sign");
        assert!(matches!(
            check(&p, COMPONENT, &stranger),
            Err(VerifyError::UnknownKey { .. })
        ));

        // A trusted key used outside its name prefix.
        let other_name = MANIFEST.replace("acme-disk", "disk-usage");
        let outside = sign(COMPONENT, &other_name, &key(1)).expect("sign");
        let err = check(&p, COMPONENT, &outside).expect_err("outside prefix");
        assert!(matches!(err, VerifyError::OutsidePrefix { .. }));
        assert!(err.to_string().contains("\"disk-usage\""), "{err}");

        // A revoked key (by id and by public key) and a revoked digest.
        let id = PublicKey(key(1).verifying_key()).key_id();
        for revoked in [id.clone(), public(1)] {
            let p = policy(&format!("[revoked]\nkeys = [\"{revoked}\"]\n"));
            assert!(matches!(
                check(&p, COMPONENT, &env),
                Err(VerifyError::RevokedKey { .. })
            ));
        }
        let p2 = policy(&format!(
            "[revoked]\ndigests = [\"sha256:{}\"]\n",
            sha256_hex(COMPONENT)
        ));
        assert!(matches!(
            check(&p2, COMPONENT, &env),
            Err(VerifyError::RevokedDigest { .. })
        ));

        // A downgrade, refused unless explicitly allowed.
        let p3 = policy("[versions]\nacme-disk = \"1.3.0\"\n");
        let err = check(&p3, COMPONENT, &env).expect_err("downgrade");
        assert!(err.to_string().contains("--allow-downgrade"), "{err}");
        let ok = p3
            .verify(
                COMPONENT,
                &env,
                VerifyOptions {
                    allow_downgrade: true,
                },
            )
            .expect("override");
        assert!(ok.reasons.iter().any(|r| r.contains("DOWNGRADE")));

        // A corrupt or truncated signature.
        let mut corrupt = env.clone();
        corrupt.signature = corrupt.signature[..20].to_string();
        assert!(matches!(
            check(&p, COMPONENT, &corrupt),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn policy_errors_name_file_line_and_key() {
        let err = TrustPolicy::parse(
            "[[publishers]]\nname = \"a\"\nkey = \"x\"\nprefixes = [\"*\"]\n",
            "t.toml",
        )
        .expect_err("bad key")
        .to_string();
        assert!(err.starts_with("t.toml: publishers[0].key:"), "{err}");
        let err = TrustPolicy::parse("[revoked]\nkeyz = []\n", "t.toml")
            .expect_err("typo")
            .to_string();
        assert!(
            err.starts_with("t.toml:2:") && err.contains("unknown field `keyz`"),
            "{err}"
        );
        let err = TrustPolicy::parse(
            &format!(
                "[[publishers]]\nname = \"a\"\nkey = \"{}\"\nprefixes = []\n",
                public(1)
            ),
            "t.toml",
        )
        .expect_err("no prefixes")
        .to_string();
        assert!(err.contains("publishers[0].prefixes"), "{err}");
    }

    #[test]
    fn malformed_revocations_are_errors_naming_the_line_and_case_is_normalised() {
        let hex = sha256_hex(COMPONENT);
        for (entry, says) in [
            (format!("digests = [\"{hex}\"]"), "sha256:"),
            (format!("digests = [\"sha256:{}\"]", &hex[..40]), "64 hex"),
            ("digests = [\"sha256:xyz\"]".to_string(), "64 hex"),
            (
                "keys = [\"acme\"]".to_string(),
                "publisher names cannot be revoked",
            ),
            ("keys = [\"ed25519:AAAA\"]".to_string(), "ed25519:AAAA"),
        ] {
            let text = format!("# a comment\n[revoked]\n{entry}\n");
            let err = TrustPolicy::parse(&text, "t.toml")
                .expect_err(&entry)
                .to_string();
            assert!(
                err.starts_with("t.toml:3:") && err.contains(says),
                "{entry}: {err}"
            );
        }
        // Upper-case hex still revokes: entries are normalised when the file is read.
        let env = sign(COMPONENT, MANIFEST, &key(1)).expect("sign");
        let id = PublicKey(key(1).verifying_key())
            .key_id()
            .to_ascii_uppercase();
        let p = policy(&format!("[revoked]\nkeys = [\"{id}\"]\n"));
        assert!(matches!(
            check(&p, COMPONENT, &env),
            Err(VerifyError::RevokedKey { .. })
        ));
        let p = policy(&format!(
            "[revoked]\ndigests = [\"sha256:{}\"]\n",
            hex.to_ascii_uppercase()
        ));
        assert!(matches!(
            check(&p, COMPONENT, &env),
            Err(VerifyError::RevokedDigest { .. })
        ));
    }

    #[test]
    fn a_pull_gets_exactly_the_name_and_version_asked_for() {
        let env = sign(COMPONENT, MANIFEST, &key(1)).expect("sign");
        let v = check(&policy(""), COMPONENT, &env).expect("trusted");
        v.ensure_requested("acme-disk", "1.2.0")
            .expect("what was asked");
        for (name, version) in [
            ("acme-other", "1.2.0"),
            ("acme-disk", "1.1.0"),
            ("acme-disk", "1.2.0+x"),
        ] {
            let err = v
                .ensure_requested(name, version)
                .expect_err(name)
                .to_string();
            assert!(
                err.contains(&format!("{name} {version}")) && err.contains("acme-disk 1.2.0"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_cached_verification_is_rechecked_against_floors_and_revocations() {
        let env = sign(COMPONENT, MANIFEST, &key(1)).expect("sign");
        let v = check(&policy(""), COMPONENT, &env).expect("trusted");
        let again = |p: &TrustPolicy| p.recheck("acme-disk", "1.2.0", &v.digest, &v.key_id);
        again(&policy("")).expect("still trusted");
        let floor = policy("[versions]\nacme-disk = \"1.3.0\"\n");
        assert!(matches!(again(&floor), Err(VerifyError::Downgrade { .. })));
        let revoked = policy(&format!("[revoked]\ndigests = [\"{}\"]\n", v.digest));
        assert!(matches!(
            again(&revoked),
            Err(VerifyError::RevokedDigest { .. })
        ));
        let revoked = policy(&format!("[revoked]\nkeys = [\"{}\"]\n", v.key_id));
        assert!(matches!(
            again(&revoked),
            Err(VerifyError::RevokedKey { .. })
        ));
        assert!(matches!(
            again(&TrustPolicy::default()),
            Err(VerifyError::UnknownKey { .. })
        ));
    }
}
