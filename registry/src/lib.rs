//! # tend-registry — the trust stage
//!
//! Takes a component's bytes and its signature envelope and hands on a [`trust::Verified`]
//! artifact (manifest, digest, publisher and the reasons it is trusted) — or a
//! [`trust::VerifyError`] saying exactly why not. Nothing runs in Tend unless it passed here
//! (or the operator explicitly asked for `--insecure-unsigned` in local development).
//!
//! - [`keys`]: ed25519 publisher keys (PKCS#8 PEM private keys, `ed25519:<base64>` public keys,
//!   16-hex key ids).
//! - [`envelope`]: the canonical signed bytes and the envelope that carries them.
//! - [`trust`]: `trust.toml` — trusted keys per name prefix, revocations, rollback floors.

pub mod envelope;
pub mod keys;
pub mod trust;
