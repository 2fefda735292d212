//! What an approval binds, and how a person signs it.
//!
//! The **invocation digest** is sha256 over `tend-invocation/v2\n` and the canonical JSON (keys
//! sorted at every depth, no white space) of everything that decides what would run, where,
//! for whom and how: skill, version, component and manifest digests, target and host list,
//! requester, input, the (narrowed) grants and limits, the plan that was shown and the end of
//! the approval window. Anyone can recompute it from the fields an invocation shows; an
//! approver's client does, and never signs a digest the server sends.
//!
//! An **approval** is an ed25519 signature by the approver's own key over
//! `tend-approval/v1\n<invocation digest>\n`. The orchestrator checks it against the key an
//! admin registered for the approver; the local worker and every agent check it again against
//! the approver keys in their own trust policy ([`approval_facts`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tend_manifest::ManifestLimits;

use crate::Approval;

/// Everything an approval binds, as the invocation shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Bound<'a> {
    pub skill: &'a str,
    pub version: &'a str,
    /// The export it runs: `run`, or `plan` for a repair's plan job.
    pub export: &'a str,
    /// `sha256:<hex>` of the component.
    pub digest: &'a str,
    /// `sha256:<hex>` of the signed manifest text.
    pub manifest_digest: &'a str,
    /// The key id of the publisher key that signed it (each host names publishers in its own
    /// trust policy, so the key, not the name, is bound).
    pub publisher_key: &'a str,
    pub target: &'a str,
    /// The agents it may run on when that is fixed at submit (a run across a pool lists each;
    /// an approval of a `pool:` invocation names its one host); empty when one runner of the
    /// target is chosen when it runs.
    pub hosts: &'a [String],
    pub requester: &'a str,
    pub input: &'a serde_json::Value,
    /// The grants it runs with: the signed manifest's, narrowed by the operator.
    pub grants: &'a tend_policy::Grants,
    /// The limits it runs with: the signed manifest's, lowered by the operator.
    pub limits: &'a ManifestLimits,
    /// A repair's plan as shown to the approver, if it has one.
    pub plan: Option<&'a serde_json::Value>,
    /// The end of the approval window (unix ms).
    pub expires_ms: i64,
}

/// The digest an approval binds (see the module docs). Fixed vectors in the tests.
pub fn invocation_digest(bound: &Bound<'_>) -> String {
    let value = serde_json::to_value(bound).unwrap_or_default();
    let mut text = String::from("tend-invocation/v2\n");
    canonical_json(&value, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// JSON with object keys sorted at every depth and no white space, whatever map order the
/// `serde_json` build keeps: both ends must produce the same bytes.
pub fn canonical_json(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The exact bytes an approver signs.
pub fn approval_message(invocation_digest: &str) -> Vec<u8> {
    format!("tend-approval/v1\n{invocation_digest}\n").into_bytes()
}

/// An approver's signature over `invocation_digest`: (`ed25519:<base64 public key>`,
/// `<base64 signature>`).
pub fn sign_approval(key: &SigningKey, invocation_digest: &str) -> (String, String) {
    let signature = key.sign(&approval_message(invocation_digest));
    (
        public_key_text(&key.verifying_key()),
        B64.encode(signature.to_bytes()),
    )
}

/// `ed25519:<base64>`, the form keys take in trust policies and on the wire.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("ed25519:{}", B64.encode(key.as_bytes()))
}

/// A key in `ed25519:<base64 of 32 bytes>` form.
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = B64
        .decode(text.strip_prefix("ed25519:")?)
        .ok()?
        .try_into()
        .ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Whether `signature` (base64) by `key` strict-verifies over `invocation_digest`.
pub fn approval_verifies(key: &VerifyingKey, signature: &str, invocation_digest: &str) -> bool {
    let Some(sig) = B64
        .decode(signature)
        .ok()
        .and_then(|v| <[u8; 64]>::try_from(v).ok())
    else {
        return false;
    };
    key.verify_strict(
        &approval_message(invocation_digest),
        &Signature::from_bytes(&sig),
    )
    .is_ok()
}

/// An approver key a host trusts, under the name it knows that person by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedApprover {
    pub name: String,
    pub key: VerifyingKey,
}

impl From<(String, VerifyingKey)> for TrustedApprover {
    /// A (name, key) pair from a trust policy's `[[approvers]]`.
    fn from((name, key): (String, VerifyingKey)) -> Self {
        TrustedApprover { name, key }
    }
}

/// The approvals in the form [`tend_policy::admit`] counts them, each signature checked here
/// against `trusted` (this host's own list). A verified approval carries the name `trusted`
/// gives its key — never the name it was announced with. An unreadable time reads as the end
/// of time, which is after any expiry, so such an approval never counts.
pub fn approval_facts(
    approvals: &[Approval],
    trusted: &[TrustedApprover],
) -> Vec<tend_policy::admit::Approval> {
    use tend_policy::admit::Signature as Checked;
    approvals
        .iter()
        .map(|a| {
            let (approver, signature) = match (&a.public_key, &a.signature) {
                (Some(key), Some(sig)) => {
                    match trusted
                        .iter()
                        .find(|t| Some(t.key) == parse_public_key(key))
                    {
                        None => (a.approver.clone(), Checked::UnknownKey),
                        Some(t) if approval_verifies(&t.key, sig, &a.invocation_digest) => {
                            (t.name.clone(), Checked::Verified)
                        }
                        Some(_) => (a.approver.clone(), Checked::Invalid),
                    }
                }
                _ => (a.approver.clone(), Checked::Missing),
            };
            tend_policy::admit::Approval {
                approver,
                invocation_digest: a.invocation_digest.clone(),
                at_ms: humantime::parse_rfc3339(&a.at)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(i64::MAX, |d| d.as_millis() as i64),
                signature,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound<'a>(
        input: &'a serde_json::Value,
        grants: &'a tend_policy::Grants,
        limits: &'a ManifestLimits,
    ) -> Bound<'a> {
        Bound {
            skill: "disk-usage",
            version: "1.0.0",
            export: "run",
            digest: "sha256:00",
            manifest_digest: "sha256:11",
            publisher_key: "3f9a0c1b2d4e5f60",
            target: "local",
            hosts: &[],
            requester: "alice",
            input,
            grants,
            limits,
            plan: None,
            expires_ms: 1_800_000_000_000,
        }
    }

    /// The canonical text is fixed: a change breaks every agent in the field and every
    /// approval given, so it must be a deliberate new version.
    #[test]
    fn the_invocation_digest_has_a_fixed_vector() {
        let input = serde_json::json!({"path": "/", "a": [1, {"z": true, "b": null}]});
        let (grants, limits) = (tend_policy::Grants::default(), ManifestLimits::default());
        let b = bound(&input, &grants, &limits);
        let mut text = String::new();
        canonical_json(&serde_json::to_value(&b).unwrap_or_default(), &mut text);
        assert_eq!(
            text,
            r#"{"digest":"sha256:00","expires_ms":1800000000000,"export":"run","grants":{"exec":[],"fs_read":[],"fs_write":[],"http":[],"service_reload":[],"service_restart":[],"tcp":[]},"hosts":[],"input":{"a":[1,{"b":null,"z":true}],"path":"/"},"limits":{"fuel":null,"memory_mib":null,"output_kib":null,"timeout_ms":null},"manifest_digest":"sha256:11","plan":null,"publisher_key":"3f9a0c1b2d4e5f60","requester":"alice","skill":"disk-usage","target":"local","version":"1.0.0"}"#
        );
        // sha256 of "tend-invocation/v2\n" + the text above, computed independently.
        assert_eq!(
            invocation_digest(&b),
            "704027a6e42c301307c57294ed6128a6a2cd378c62bb23fc3dc377815c87b235"
        );
        // Every bound field changes it.
        let other = serde_json::json!({"path": "/tmp"});
        assert_ne!(
            invocation_digest(&b),
            invocation_digest(&bound(&other, &grants, &limits))
        );
        let plan = serde_json::json!({"would": "restart nginx"});
        assert_ne!(
            invocation_digest(&b),
            invocation_digest(&Bound {
                plan: Some(&plan),
                ..b.clone()
            })
        );
        assert_ne!(
            invocation_digest(&b),
            invocation_digest(&Bound {
                requester: "bob",
                ..b.clone()
            })
        );
        let narrower = ManifestLimits {
            fuel: Some(5),
            ..ManifestLimits::default()
        };
        assert_ne!(
            invocation_digest(&b),
            invocation_digest(&bound(&input, &grants, &narrower))
        );
    }

    /// `dns` is bound like every grant; left out when empty, so the fixed vector above (and
    /// every approval given before `dns` existed) keeps its digest.
    #[test]
    fn a_dns_grant_is_bound_and_an_empty_one_changes_nothing() {
        let input = serde_json::json!({});
        let limits = ManifestLimits::default();
        let none = tend_policy::Grants::default();
        let empty = tend_policy::Grants {
            dns: Vec::new(),
            ..tend_policy::Grants::default()
        };
        let one = tend_policy::Grants {
            dns: vec!["db.example.com".into()],
            ..tend_policy::Grants::default()
        };
        let other = tend_policy::Grants {
            dns: vec!["*.example.com".into()],
            ..tend_policy::Grants::default()
        };
        let digest = |g| invocation_digest(&bound(&input, g, &limits));
        assert_eq!(digest(&none), digest(&empty));
        assert_ne!(digest(&none), digest(&one));
        assert_ne!(digest(&one), digest(&other));
        let mut text = String::new();
        canonical_json(
            &serde_json::to_value(bound(&input, &one, &limits)).unwrap_or_default(),
            &mut text,
        );
        assert!(
            text.contains(r#""grants":{"dns":["db.example.com"],"exec":[]"#),
            "{text}"
        );
    }

    /// An input (or a plan's output) crosses JSON text several times between the request and
    /// the runner: request body, database column, API answer to `tend approve`, the job an
    /// agent receives. Each end recomputes the digest from what it parsed, so a number must
    /// read back as exactly what was written, or an approved invocation no longer matches its
    /// approval (and `tend approve` calls the orchestrator a liar).
    #[test]
    fn a_digest_survives_every_trip_its_fields_make_through_json_text() {
        let (grants, limits) = (tend_policy::Grants::default(), ManifestLimits::default());
        // A number serde_json reads one ULP off (1.5777777777770001): what it then writes
        // reads back the same, so every end that parsed the text agrees. Then pseudo-random
        // 17-digit fractions.
        let mut texts = vec!["{\"x\": 1.5777777777770001}".to_string()];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            texts.push(format!(
                "{{\"x\": {}.{:016}}}",
                seed % 1000,
                seed % 10_000_000_000_000_000
            ));
        }
        for text in texts {
            let sent: serde_json::Value = serde_json::from_str(&text).expect("json");
            let stored: serde_json::Value = serde_json::from_str(&sent.to_string()).expect("json");
            let shown: serde_json::Value = serde_json::from_str(&stored.to_string()).expect("json");
            assert_eq!(
                invocation_digest(&bound(&sent, &grants, &limits)),
                invocation_digest(&bound(&shown, &grants, &limits)),
                "{text} read back as {shown}"
            );
        }
    }

    #[test]
    fn only_a_trusted_key_over_the_digest_counts_under_its_trusted_name() {
        let alice = SigningKey::from_bytes(&[7; 32]);
        let mallory = SigningKey::from_bytes(&[9; 32]);
        let trusted = [TrustedApprover {
            name: "alice".into(),
            key: alice.verifying_key(),
        }];
        let approval = |key: Option<&SigningKey>, signed: &str, stated: &str, name: &str| {
            let (public_key, signature) = match key {
                Some(k) => {
                    let (p, s) = sign_approval(k, signed);
                    (Some(p), Some(s))
                }
                None => (None, None),
            };
            Approval {
                approver: name.into(),
                invocation_digest: stated.into(),
                at: "2026-01-01T00:00:00Z".into(),
                public_key,
                signature,
            }
        };
        use tend_policy::admit::Signature as S;
        let facts = approval_facts(
            &[
                approval(Some(&alice), "d1", "d1", "someone-else"),
                approval(None, "d1", "d1", "bob"),
                approval(Some(&mallory), "d1", "d1", "alice"),
                approval(Some(&alice), "d0", "d1", "alice"),
            ],
            &trusted,
        );
        let got: Vec<(&str, S)> = facts
            .iter()
            .map(|f| (f.approver.as_str(), f.signature))
            .collect();
        assert_eq!(
            got,
            [
                ("alice", S::Verified),
                ("bob", S::Missing),
                ("alice", S::UnknownKey),
                ("alice", S::Invalid),
            ]
        );
        assert_eq!(
            String::from_utf8(approval_message("d1")).unwrap_or_default(),
            "tend-approval/v1\nd1\n"
        );
    }
}
