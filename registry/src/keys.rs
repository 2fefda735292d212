//! Publisher keys: ed25519, private keys as PKCS#8 PEM files (0600), public keys as
//! `ed25519:<base64>`, key ids as a short fingerprint.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
pub use ed25519_dalek::SigningKey;
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path} already exists; refusing to overwrite a key (remove it first if you mean it)")]
    Exists { path: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: not an ed25519 private key in PKCS#8 PEM form ({message})")]
    BadPrivateKey { path: String, message: String },
    #[error(
        "{path} is readable by others (mode {mode:o}); a private key must be 0600: chmod 600 {path}"
    )]
    Exposed { path: String, mode: u32 },
    #[error("{text:?} is not a public key: expected ed25519:<base64 of 32 bytes>")]
    BadPublicKey { text: String },
    #[error("cannot get randomness from the operating system: {0}")]
    Random(String),
}

/// A public key as written in trust policies: `ed25519:<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(pub VerifyingKey);

impl PublicKey {
    /// A short, stable fingerprint: the first 8 bytes of sha256(public key), in hex.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", B64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::BadPublicKey {
            text: text.to_string(),
        };
        let b64 = text.trim().strip_prefix("ed25519:").ok_or_else(bad)?;
        let bytes: [u8; 32] = B64
            .decode(b64)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(bad)?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| bad())
    }
}

/// A new random signing key.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Write a private key to a new file with mode 0600. Refuses to overwrite anything.
pub fn write_private_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let p = path.display().to_string();
    let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| KeyError::Io {
        path: p.clone(),
        message: e.to_string(),
    })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists { path: p.clone() },
            _ => KeyError::Io {
                path: p.clone(),
                message: e.to_string(),
            },
        })?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyError::Io {
            path: p,
            message: e.to_string(),
        })
}

/// Read a private key, refusing one that others can read.
pub fn read_private_key(path: &Path) -> Result<SigningKey, KeyError> {
    let p = path.display().to_string();
    let io = |e: std::io::Error| KeyError::Io {
        path: p.clone(),
        message: e.to_string(),
    };
    let mode = std::fs::metadata(path).map_err(io)?.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed { path: p, mode });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::BadPrivateKey {
        path: p,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_and_ids_are_stable() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = PublicKey(key.verifying_key());
        let text = public.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.parse::<PublicKey>().expect("parses"), public);
        assert_eq!(public.key_id().len(), 16);
        assert_eq!(public.key_id(), PublicKey(key.verifying_key()).key_id());
        for bad in ["", "ed25519:", "ed25519:AAAA", "rsa:abc", "ed25519:!!!"] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn private_key_file_is_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("publisher.key");
        let key = generate().expect("key");
        write_private_key(&path, &key).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            read_private_key(&path).expect("read").to_bytes(),
            key.to_bytes()
        );
        let again = write_private_key(&path, &generate().expect("key"));
        assert!(matches!(again, Err(KeyError::Exists { .. })));
        assert_eq!(
            read_private_key(&path).expect("read").to_bytes(),
            key.to_bytes()
        );
    }

    #[test]
    fn an_exposed_private_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        write_private_key(&path, &generate().expect("key")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_private_key(&path).expect_err("exposed");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
