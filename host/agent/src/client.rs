//! Signed, outbound-only requests to the orchestrator.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use tend_protocol::sign_request;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the orchestrator at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("orchestrator answered {status} to {path}: {body}")]
    Status {
        status: u16,
        path: String,
        body: String,
    },
}

#[derive(Clone)]
pub struct Client {
    base: String,
    agent_id: String,
    key: SigningKey,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

/// The signing headers for one request (public so tests can replay one on purpose).
pub fn sign(
    key: &SigningKey,
    agent_id: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let ts = tend_protocol::now_ms();
    let mut nonce = [0u8; 16];
    let _ = getrandom::fill(&mut nonce);
    let nonce = hex::encode(nonce);
    sign_request(key, agent_id, method, path, ts, &nonce, body)
}

impl Client {
    pub fn new(base: &str, agent_id: &str, key: SigningKey) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent_id: agent_id.to_string(),
            key,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// POST a signed JSON body; `Ok(None)` for 204.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, ClientError> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let mut rb = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes.clone());
        for (name, value) in sign(&self.key, &self.agent_id, "POST", path, &bytes) {
            rb = rb.header(name, value);
        }
        let resp = rb.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            message: tend_registry::client::error_chain(&e),
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ClientError::Status {
                status: status.as_u16(),
                path: path.to_string(),
                body: text,
            });
        }
        Ok(Some(
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        ))
    }
}
