//! The publication log: every accepted publication, hash-chained, so that a client can tell
//! when a registry dropped, swapped or reordered an entry.
//!
//! Each entry's hash is `sha256(prev_hash ‖ canonical entry)`, hex, where `prev_hash` of the
//! first entry is 64 zeros and the canonical entry is fixed text, defined here once:
//!
//! ```text
//! tend-publication/v1
//! index <n, from 1>
//! name <skill name>
//! version <semver>
//! digest sha256:<hex>
//! key-id <16 hex>
//! published-at <RFC 3339, seconds, UTC>
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub index: u64,
    pub name: String,
    pub version: String,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    pub key_id: String,
    pub published_at: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The canonical text of an entry (everything but the hashes).
pub fn canonical(
    index: u64,
    name: &str,
    version: &str,
    digest: &str,
    key_id: &str,
    published_at: &str,
) -> String {
    format!(
        "tend-publication/v1\nindex {index}\nname {name}\nversion {version}\ndigest {digest}\nkey-id {key_id}\npublished-at {published_at}\n"
    )
}

pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

impl LogEntry {
    /// Build the next entry after `prev_hash`.
    pub fn next(
        index: u64,
        prev_hash: &str,
        name: &str,
        version: &str,
        digest: &str,
        key_id: &str,
        published_at: &str,
    ) -> LogEntry {
        let hash = chain_hash(
            prev_hash,
            &canonical(index, name, version, digest, key_id, published_at),
        );
        LogEntry {
            index,
            name: name.into(),
            version: version.into(),
            digest: digest.into(),
            key_id: key_id.into(),
            published_at: published_at.into(),
            prev_hash: prev_hash.into(),
            hash,
        }
    }

    fn recomputed(&self) -> String {
        chain_hash(
            &self.prev_hash,
            &canonical(
                self.index,
                &self.name,
                &self.version,
                &self.digest,
                &self.key_id,
                &self.published_at,
            ),
        )
    }
}

/// A point in the log a client has seen before: it must still be there, unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub index: u64,
    pub hash: String,
}

/// Why a publication log is not to be believed; each names the first entry that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error(
        "publication log entry {expected} is missing or out of order (found index {found} there)"
    )]
    OutOfOrder { expected: u64, found: u64 },
    #[error(
        "publication log entry {index} ({name} {version}) does not link to entry {}: an entry was dropped, inserted or swapped",
        index - 1
    )]
    Unlinked {
        index: u64,
        name: String,
        version: String,
    },
    #[error(
        "publication log entry {index} ({name} {version}) was altered: its hash does not match its content"
    )]
    Altered {
        index: u64,
        name: String,
        version: String,
    },
    #[error(
        "publication log entry {index} differs from the one this client saw before: the registry rewrote its history"
    )]
    Rewritten { index: u64 },
    #[error(
        "the publication log has {len} entries, fewer than the {seen} this client saw before: the registry dropped entries"
    )]
    Truncated { len: usize, seen: u64 },
}

/// Check a whole log: indexes 1..=n in order, each entry linked to the one before and hashing
/// to what it claims, and (if given) still containing `checkpoint`. The error names the first
/// entry that is wrong.
pub fn verify_chain(
    entries: &[LogEntry],
    checkpoint: Option<&Checkpoint>,
) -> Result<(), ChainError> {
    let mut prev = GENESIS.to_string();
    for (i, e) in entries.iter().enumerate() {
        let expected = i as u64 + 1;
        if e.index != expected {
            return Err(ChainError::OutOfOrder {
                expected,
                found: e.index,
            });
        }
        if e.prev_hash != prev {
            return Err(ChainError::Unlinked {
                index: e.index,
                name: e.name.clone(),
                version: e.version.clone(),
            });
        }
        if e.recomputed() != e.hash {
            return Err(ChainError::Altered {
                index: e.index,
                name: e.name.clone(),
                version: e.version.clone(),
            });
        }
        prev = e.hash.clone();
    }
    if let Some(cp) = checkpoint {
        match entries.get((cp.index as usize).wrapping_sub(1)) {
            Some(e) if e.hash == cp.hash => {}
            Some(_) => return Err(ChainError::Rewritten { index: cp.index }),
            None => {
                return Err(ChainError::Truncated {
                    len: entries.len(),
                    seen: cp.index,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> Vec<LogEntry> {
        let mut out: Vec<LogEntry> = Vec::new();
        for (i, (name, version)) in [("a", "1.0.0"), ("b", "0.1.0"), ("a", "1.1.0")]
            .into_iter()
            .enumerate()
        {
            let prev = out.last().map_or(GENESIS.to_string(), |e| e.hash.clone());
            out.push(LogEntry::next(
                i as u64 + 1,
                &prev,
                name,
                version,
                "sha256:00",
                "0011223344556677",
                "2026-11-24T00:00:00Z",
            ));
        }
        out
    }

    #[test]
    fn fixed_vector() {
        let e = &log()[0];
        assert_eq!(
            canonical(
                1,
                "a",
                "1.0.0",
                "sha256:00",
                "0011223344556677",
                "2026-11-24T00:00:00Z"
            ),
            "tend-publication/v1\nindex 1\nname a\nversion 1.0.0\ndigest sha256:00\nkey-id 0011223344556677\npublished-at 2026-11-24T00:00:00Z\n"
        );
        // sha256("000…0" ‖ canonical), computed independently with Python's hashlib.
        assert_eq!(
            e.hash,
            "7cd8a02c9ff65695889bc8452a091b20df17e70104c292cefbf13188d8d04f8b"
        );
    }

    #[test]
    fn a_good_log_verifies_and_every_tampering_is_named() {
        let good = log();
        verify_chain(&good, None).expect("good log");
        let cp = Checkpoint {
            index: 2,
            hash: good[1].hash.clone(),
        };
        verify_chain(&good, Some(&cp)).expect("checkpoint present");

        let mut dropped = good.clone();
        dropped.remove(1);
        assert!(
            verify_chain(&dropped, None)
                .expect_err("dropped")
                .to_string()
                .contains("entry 2")
        );

        let mut swapped = good.clone();
        swapped.swap(1, 2);
        assert!(verify_chain(&swapped, None).is_err());

        let mut altered = good.clone();
        altered[1].digest = "sha256:ff".into();
        let err = verify_chain(&altered, None)
            .expect_err("altered")
            .to_string();
        assert!(err.contains("entry 2") && err.contains("altered"), "{err}");

        // A registry that rewrote the whole chain consistently is caught by the checkpoint.
        let mut rewritten = good.clone();
        rewritten.truncate(1);
        let err = verify_chain(&rewritten, Some(&cp))
            .expect_err("truncated")
            .to_string();
        assert!(err.contains("dropped"), "{err}");
    }
}
