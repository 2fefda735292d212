//! The client side of the registry: publish, resolve, list, and a pull that trusts nothing the
//! server says — the log must chain and still hold what this client saw before, the blob must
//! match its digest, and the signature must verify against the *local* trust policy.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;

use crate::envelope::{Envelope, sha256_hex};
use crate::local::LocalStore;
use crate::publog::verify_chain;
use crate::trust::{TrustPolicy, Verified, VerifyError, VerifyOptions};
use crate::wire::{Entry, ErrorBody, LogResponse, SIGNATURE_HEADER, SkillList};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the registry at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("registry refused ({status}, {code}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("registry sent something unreadable from {url}: {message}")]
    Garbled { url: String, message: String },
    #[error(
        "the registry served a blob whose sha256 is {actual}, not the {expected} it promised: refusing it"
    )]
    BlobMismatch { expected: String, actual: String },
    #[error("the registry's publication log does not check out: {0}")]
    Log(#[from] crate::publog::ChainError),
    #[error(
        "the registry's publication log does not check out: {name} {version} ({digest}) is not in the publication log at index {index} as the registry claims"
    )]
    NotInLog {
        name: String,
        version: String,
        digest: String,
        index: u64,
    },
    #[error("not trusted: {0}")]
    Untrusted(#[from] VerifyError),
    #[error(transparent)]
    Local(#[from] crate::local::LocalError),
    #[error("{0}")]
    BadRequest(String),
}

impl ClientError {
    /// True when the server or the artifact (not the user's request) is at fault.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ClientError::BlobMismatch { .. }
                | ClientError::Log(_)
                | ClientError::NotInLog { .. }
                | ClientError::Untrusted(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// What a pull hands on: verified bytes, already stored in the local skill store.
#[derive(Debug)]
pub struct Pulled {
    pub verified: Verified,
    pub component: Vec<u8>,
    pub entry: Entry,
}

impl RegistryClient {
    pub fn new(base: &str, token: Option<String>) -> Result<RegistryClient, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.into(),
                message: e.to_string(),
            })?;
        Ok(RegistryClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = rb.send().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            message: error_chain(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => ClientError::Api {
                status: status.as_u16(),
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: status.canonical_reason().unwrap_or("error").to_string(),
                message: text.chars().take(300).collect(),
            },
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::GET, path), path)
            .await?;
        resp.json().await.map_err(|e| ClientError::Garbled {
            url: format!("{}{path}", self.base),
            message: e.to_string(),
        })
    }

    /// Publish a signed component. Returns the entry and whether it is new (re-publishing the
    /// same bytes is a no-op).
    pub async fn publish(
        &self,
        component: Vec<u8>,
        envelope: &Envelope,
        name: &str,
        version: &str,
    ) -> Result<(Entry, bool), ClientError> {
        let path = format!("/api/v1/skills/{name}/{version}");
        let rb = self
            .request(reqwest::Method::PUT, &path)
            .header(SIGNATURE_HEADER, B64.encode(envelope.to_json()))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(component);
        let resp = self.send(rb, &path).await?;
        let created = resp.status() == StatusCode::CREATED;
        let entry = resp.json().await.map_err(|e| ClientError::Garbled {
            url: path,
            message: e.to_string(),
        })?;
        Ok((entry, created))
    }

    /// `version` is a semver or `latest`. Both are checked before they become part of a URL:
    /// they may come from a peer (an agent pulls what the orchestrator names).
    pub async fn resolve(&self, name: &str, version: &str) -> Result<Entry, ClientError> {
        tend_manifest::SkillName::parse(name)
            .map_err(|e| ClientError::BadRequest(e.to_string()))?;
        if version != "latest" && semver::Version::parse(version).is_err() {
            return Err(ClientError::BadRequest(format!(
                "{:?} is not a skill version (a semantic version or latest)",
                version.chars().take(80).collect::<String>()
            )));
        }
        self.get_json(&format!("/api/v1/skills/{name}/{version}"))
            .await
    }

    pub async fn list(&self, query: Option<&str>) -> Result<Vec<Entry>, ClientError> {
        let path = match query {
            Some(q) => format!("/api/v1/skills?q={}", urlencode(q)),
            None => "/api/v1/skills".to_string(),
        };
        Ok(self.get_json::<SkillList>(&path).await?.skills)
    }

    pub async fn log(&self) -> Result<LogResponse, ClientError> {
        self.get_json("/api/v1/log").await
    }

    /// Fetch a blob and refuse it unless its sha256 is `digest` (`sha256:<hex>`).
    pub async fn blob(&self, digest: &str) -> Result<Vec<u8>, ClientError> {
        let path = format!("/api/v1/blobs/{digest}");
        let resp = self
            .send(self.request(reqwest::Method::GET, &path), &path)
            .await?;
        let bytes = resp.bytes().await.map_err(|e| ClientError::Garbled {
            url: path,
            message: e.to_string(),
        })?;
        let actual = format!("sha256:{}", sha256_hex(&bytes));
        if actual != digest {
            return Err(ClientError::BlobMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes.to_vec())
    }

    /// Pull `name@version` (or `latest`): check the log, the blob, the signature against the
    /// local trust policy (with the versions this host has already seen as rollback floors),
    /// then store it locally and record the version as seen. Nothing is stored on any failure.
    pub async fn pull(
        &self,
        name: &str,
        version: &str,
        trust: &TrustPolicy,
        local: &LocalStore,
        options: VerifyOptions,
    ) -> Result<Pulled, ClientError> {
        let entry = self.resolve(name, version).await?;
        let log = self.log().await?;
        let checkpoint = local.checkpoint(&self.base)?;
        verify_chain(&log.entries, checkpoint.as_ref())?;
        let logged = log
            .entries
            .get((entry.log_index as usize).wrapping_sub(1))
            .filter(|e| {
                e.name == entry.name
                    && e.version == entry.version
                    && e.digest == entry.digest
                    && e.key_id == entry.key_id
            });
        if logged.is_none() {
            return Err(ClientError::NotInLog {
                name: entry.name.clone(),
                version: entry.version.clone(),
                digest: entry.digest.clone(),
                index: entry.log_index,
            });
        }
        let component = self.blob(&entry.digest).await?;
        let envelope = Envelope::parse(entry.envelope.as_bytes()).map_err(|e| {
            ClientError::Untrusted(VerifyError::Malformed(format!(
                "the registry's envelope for {name} {version}: {e}"
            )))
        })?;
        let verified = local
            .with_seen_floors(trust)?
            .verify(&component, &envelope, options)?;
        // `latest` is whatever the registry resolved it to, as its (checked) log records.
        let asked = if version == "latest" {
            entry.version.as_str()
        } else {
            version
        };
        verified.ensure_requested(name, asked)?;
        verified.ensure_requested(&entry.name, &entry.version)?;
        local.install(&component, &envelope, &verified)?;
        if let Some(head) = log.head {
            local.set_checkpoint(&self.base, &head)?;
        }
        Ok(Pulled {
            verified,
            component,
            entry,
        })
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// reqwest's top-level message hides the cause ("error sending request"); show the chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name or version from a peer never shapes the request: nothing is sent (the registry
    /// address here is unreachable, so a request would fail differently).
    #[tokio::test]
    async fn names_and_versions_are_checked_before_any_request() {
        let client = RegistryClient::new("http://127.0.0.1:9", None).expect("client");
        for (name, version) in [
            ("../../admin?x=", "1.0.0"),
            ("disk-usage", "../../log"),
            ("Disk", "1.0.0"),
            ("disk-usage", "1.0.0/../x"),
        ] {
            let err = client.resolve(name, version).await.expect_err(name);
            assert!(
                matches!(err, ClientError::BadRequest(_)),
                "{name} {version}: {err}"
            );
        }
        let err = client
            .resolve("disk-usage", "latest")
            .await
            .expect_err("unreachable");
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    }
}
