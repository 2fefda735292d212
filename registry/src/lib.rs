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
//! - [`store`] + [`server`]: the registry service — SQLite index, content-addressed blobs,
//!   publisher tokens, immutable versions and the hash-chained [`publog`].
//! - [`client`]: publish, list, and a pull that re-checks everything the server says.
//! - [`local`]: the host's store of pulled skills and the versions it has seen.
//! - [`oci`]: push/pull to any OCI registry with the wasm media types.

pub mod client;
pub mod envelope;
pub mod keys;
pub mod local;
pub mod oci;
pub mod publog;
pub mod server;
pub mod store;
pub mod trust;
