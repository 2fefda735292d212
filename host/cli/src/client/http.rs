//! One HTTP client for every command: the bearer token, `Tend-Trigger: cli` (so invocations
//! record that they came from the command line), and one mapping of answers to exit statuses:
//! the server's `{"error": {"code", "message"}}` printed plainly with the status; a 4xx the
//! user can fix exits 2, an unreachable server or a 5xx exits 4, and a 401 says to check the
//! token or context.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::config::{ConnArgs, Resolved};
use crate::{Failure, exit};

/// The header an API submission names its trigger in (`api` or `cli`).
pub const TRIGGER_HEADER: &str = "tend-trigger";

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Where the token came from, for the hint after a 401.
    context: Option<String>,
    config: std::path::PathBuf,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    /// The client for `--url`/`--token`/`--context`, `TEND_URL`/`TEND_TOKEN`, or the config
    /// file's current context.
    pub fn from_args(args: &ConnArgs) -> Result<Client, Failure> {
        Client::new(args.resolve()?)
    }

    pub fn new(to: Resolved) -> Result<Client, Failure> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            TRIGGER_HEADER,
            reqwest::header::HeaderValue::from_static("cli"),
        );
        let http = reqwest::Client::builder()
            .user_agent(concat!("tend/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Failure::host(format!("cannot start an HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: to.url,
            token: to.token,
            context: to.context,
            config: to.config,
        })
    }

    /// GET `path` (e.g. `/api/v1/invocations/ID`) and read the JSON answer as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send(self.http.get(self.endpoint(path))).await
    }

    /// POST `body` as JSON to `path` and read the JSON answer as `T`.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Failure> {
        self.send(self.http.post(self.endpoint(path)).json(body))
            .await
    }

    /// PUT `body` as JSON to `path` and read the JSON answer as `T`.
    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Failure> {
        self.send(self.http.put(self.endpoint(path)).json(body))
            .await
    }

    /// DELETE `path`; a success answers nothing worth reading.
    pub async fn delete(&self, path: &str) -> Result<(), Failure> {
        let _: serde_json::Value = self.send(self.http.delete(self.endpoint(path))).await?;
        Ok(())
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T, Failure> {
        let resp = rb.bearer_auth(&self.token).send().await.map_err(|e| {
            Failure::host(format!(
                "cannot reach the orchestrator at {}: {}",
                self.base,
                error_chain(&e)
            ))
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            Failure::host(format!(
                "the orchestrator at {} answered {status} but the body could not be read: {e}",
                self.base
            ))
        })?;
        if !status.is_success() {
            return Err(self.http_failure(status, &text));
        }
        // A success with no body (204) reads as `null`.
        let text = if text.trim().is_empty() {
            "null".to_string()
        } else {
            text
        };
        serde_json::from_str(&text).map_err(|e| {
            Failure::host(format!(
                "the orchestrator at {} answered {status} with what this client cannot read ({e}); is it an orchestrator of the same release?",
                self.base
            ))
        })
    }

    /// The server's error, worded for the person at the terminal.
    fn http_failure(&self, status: reqwest::StatusCode, body: &str) -> Failure {
        let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let error = parsed.as_ref().map(|v| &v["error"]);
        let message = error
            .and_then(|e| e["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                let snippet: String = body.trim().chars().take(300).collect();
                if snippet.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_string()
                } else {
                    snippet
                }
            });
        let mut text = format!("{message} (HTTP {})", status.as_u16());
        let reasons = parsed
            .as_ref()
            .and_then(|v| v["error"]["reasons"].as_array())
            .map(|r| r.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>())
            .unwrap_or_default();
        for reason in reasons {
            text.push_str(&format!("\n  - {reason}"));
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let from = match &self.context {
                Some(name) => format!(
                    "the token of context {name} in {} (renew it with `tend login {} --context {name}`)",
                    self.config.display(),
                    self.base
                ),
                None => "the token given with --token or TEND_TOKEN".to_string(),
            };
            text.push_str(&format!(
                "\nthe orchestrator at {} did not accept the token: check {from}",
                self.base
            ));
        }
        let code = if status.is_client_error() {
            exit::BAD_INPUT
        } else {
            exit::HOST_FAILURE
        };
        Failure {
            code,
            message: text,
        }
    }
}

/// An error with its causes (reqwest's own message alone says little: "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
