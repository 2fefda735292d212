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
//! - [`wire`]: what the HTTP API says, shared by server and client.
//!
//! Features: `server` (the service: axum, SQLite) and `oci` (the OCI client), both on by
//! default. An agent turns both off: it verifies, pulls over HTTP and keeps a local store.

pub mod client;
pub mod envelope;
pub mod keys;
pub mod local;
#[cfg(feature = "oci")]
pub mod oci;
pub mod publog;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
pub mod trust;
pub mod wire;
