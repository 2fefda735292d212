//! Who is asking, as axum extractors, so a handler reads as the decision it makes:
//!
//! - [`Caller<R>`]: a person or script with a bearer token whose role is at least `R`
//!   ([`Viewer`], [`Operator`], [`Approver`], [`Admin`]) — or 401/403, audited.
//! - [`SignedAgent`]: an enrolled agent whose request is signed over the method, the path it
//!   was sent to and the body — or 401, audited. The path is read from the request, never
//!   retyped per route, so what is checked is what was signed.
//! - [`JobId`]: a job id in the path that the orchestrator could have made (404 otherwise,
//!   before anything is looked up).

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use axum::RequestExt as _;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use tend_http::{ApiError, ApiResult};
use tend_policy::Role;

use crate::agents::{self, Agent, SignedError};
use crate::api::AppState;
use crate::audit;
use crate::auth::{self, Actor};
use crate::protocol::{AGENT_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// The least role a route needs, as a type.
pub trait MinRole: Send + Sync + 'static {
    const ROLE: Role;
}

#[derive(Debug)]
pub struct Viewer;
#[derive(Debug)]
pub struct Operator;
#[derive(Debug)]
pub struct Approver;
#[derive(Debug)]
pub struct Admin;

impl MinRole for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl MinRole for Operator {
    const ROLE: Role = Role::Operator;
}
impl MinRole for Approver {
    const ROLE: Role = Role::Approver;
}
impl MinRole for Admin {
    const ROLE: Role = Role::Admin;
}

/// An authenticated caller whose role is at least `R::ROLE`.
#[derive(Debug)]
pub struct Caller<R: MinRole>(pub Actor, pub PhantomData<R>);

impl<R: MinRole> FromRequestParts<AppState> for Caller<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let what = route_of(&parts.method, &parts.extensions);
        let actor = authorize(state, &parts.headers, R::ROLE, &what).await?;
        Ok(Caller(actor, PhantomData))
    }
}

/// `METHOD /route/{template}`: what a caller asked for, as the audit trail names it (the
/// template, not the raw path, so nothing a caller typed reaches the subject).
fn route_of(method: &axum::http::Method, extensions: &axum::http::Extensions) -> String {
    let route = extensions
        .get::<MatchedPath>()
        .map_or("(unmatched)", MatchedPath::as_str);
    format!("{method} {route}")
}

/// The caller, at least `min` — or 401/403, audited (a refusal without a valid token is
/// recorded as `anonymous`). An expired or revoked token gets the same 401 as an unknown one;
/// the audit trail records why (see [`TokenCache`] for how often).
pub async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    min: Role,
    what: &str,
) -> ApiResult<Actor> {
    let token = tend_http::bearer_token(headers).ok().flatten();
    let found = match token {
        None => None,
        Some(t) => match state.tokens.get(t) {
            Cached::Valid(a) => Some(a),
            // Refused (and audited) moments ago on this replica: counted, not written again.
            Cached::Refused => {
                state.db.refusals.count(audit::Action::AuthRefused.as_str());
                return Err(unauthenticated("unknown token"));
            }
            Cached::Miss => match auth::authenticate(&state.db, t).await? {
                Ok(accepted) => {
                    let actor = accepted.actor.clone();
                    state.tokens.put(t, accepted);
                    Some(actor)
                }
                Err(auth::Refused::Unknown) => None,
                Err(auth::Refused::Dead {
                    why,
                    prefix,
                    name,
                    at_ms,
                }) => {
                    state.db.refusals.count(audit::Action::AuthRefused.as_str());
                    // Concurrent first refusals on this replica: one writes the event.
                    let Some(repeats) = state.tokens.put_refused(t) else {
                        return Err(unauthenticated("unknown token"));
                    };
                    audit::append(
                        &state.db,
                        audit::ANONYMOUS,
                        audit::Action::AuthRefused,
                        what,
                        serde_json::json!({
                            "why": why, "token": prefix, "name": name,
                            "since": crate::db::rfc3339(at_ms),
                            "refused_since_last_event": repeats,
                        }),
                    )
                    .await?;
                    return Err(unauthenticated("unknown token"));
                }
            },
        },
    };
    let Some(actor) = found else {
        let why = if token.is_some() {
            "unknown token"
        } else {
            "no token"
        };
        audit::refused(
            &state.db,
            audit::Action::AuthRefused,
            what,
            serde_json::json!({ "why": why }),
        )
        .await?;
        return Err(unauthenticated(why));
    };
    if actor.role < min {
        audit::append(
            &state.db,
            &actor.name,
            audit::Action::AuthForbidden,
            what,
            serde_json::json!({ "role": actor.role.as_str(), "needs": min.as_str() }),
        )
        .await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} has role {}; {what} needs {} or above",
                actor.name,
                actor.role.as_str(),
                min.as_str()
            ),
        ));
    }
    Ok(actor)
}

/// The one 401 of a missing, unknown, expired or revoked token: the caller learns nothing more.
fn unauthenticated(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        format!("{why}: send `Authorization: Bearer <token>` (tend token create)"),
    )
}

/// What the cache knows of a presented token.
#[derive(Debug)]
pub(crate) enum Cached {
    /// Accepted less than [`TokenCache::TTL`] ago (and not expired since).
    Valid(Actor),
    /// Refused as expired or revoked less than [`TokenCache::REFUSED_TTL`] ago: the refusal is
    /// in the audit trail already.
    Refused,
    /// Look it up.
    Miss,
}

#[derive(Debug)]
enum Entry {
    Valid {
        until: Instant,
        prefix: String,
        actor: Actor,
    },
    Refused {
        until: Instant,
        repeats: u64,
    },
}

/// Recently authenticated tokens, per replica, so a busy caller does not hash and look up its
/// token on every request: one lookup per token per replica per [`Self::TTL`] (500 ms). That
/// is also the bound on revocation: a revoke clears this replica's entries for the token at
/// once ([`Self::forget`]); another replica refuses it at its next lookup, within 500 ms. An
/// entry never outlives the token's expiry.
///
/// An expired or revoked token never works again, so its refusal is kept longer
/// ([`Self::REFUSED_TTL`], 60 s): it is audited once per token, replica and minute, with the
/// number of refusals left unwritten since the previous event, so a script still using a
/// revoked token cannot fill the audit trail.
#[derive(Debug, Default)]
pub struct TokenCache(std::sync::Mutex<std::collections::HashMap<String, Entry>>);

impl TokenCache {
    pub const TTL: Duration = Duration::from_millis(500);
    pub const REFUSED_TTL: Duration = Duration::from_secs(60);
    const MAX: usize = 10_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Entry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, token: &str) -> Cached {
        let now = Instant::now();
        match self.lock().get_mut(token) {
            Some(Entry::Valid { until, actor, .. }) if now < *until => Cached::Valid(actor.clone()),
            Some(Entry::Refused { until, repeats }) if now < *until => {
                *repeats += 1;
                Cached::Refused
            }
            _ => Cached::Miss,
        }
    }

    fn insert(&self, token: &str, entry: Entry) {
        let mut map = self.lock();
        if map.len() >= Self::MAX {
            let now = Instant::now();
            map.retain(|_, e| match e {
                Entry::Valid { until, .. } | Entry::Refused { until, .. } => now < *until,
            });
        }
        map.insert(token.to_string(), entry);
    }

    pub(crate) fn put(&self, token: &str, accepted: auth::Accepted) {
        let now = Instant::now();
        let mut until = now + Self::TTL;
        if let Some(at) = accepted.expires_ms {
            let left = u64::try_from(at - crate::db::now_ms()).unwrap_or(0);
            until = until.min(now + Duration::from_millis(left));
        }
        self.insert(
            token,
            Entry::Valid {
                until,
                prefix: accepted.prefix,
                actor: accepted.actor,
            },
        );
    }

    /// Remember that `token` is expired or revoked. `Some(n)`: write the refusal to the audit
    /// trail, `n` refusals having gone unwritten since its previous event here; `None`: another
    /// request just did (this one is counted).
    pub(crate) fn put_refused(&self, token: &str) -> Option<u64> {
        let now = Instant::now();
        let mut map = self.lock();
        let unwritten = match map.get_mut(token) {
            Some(Entry::Refused { until, repeats }) if now < *until => {
                *repeats += 1;
                return None;
            }
            Some(Entry::Refused { repeats, .. }) => *repeats,
            _ => 0,
        };
        drop(map);
        self.insert(
            token,
            Entry::Refused {
                until: now + Self::REFUSED_TTL,
                repeats: 0,
            },
        );
        Some(unwritten)
    }

    /// Forget every accepted entry of the token `prefix` (it was just revoked here).
    pub fn forget(&self, prefix: &str) {
        self.lock()
            .retain(|_, e| !matches!(e, Entry::Valid { prefix: p, .. } if p == prefix));
    }
}

/// A job id from the path: `inv_` and 16 hex digits, or 404 (not echoed, nothing looked up).
#[derive(Debug)]
pub struct JobId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_a_job())?;
        if crate::protocol::is_invocation_id(&id) {
            Ok(JobId(id))
        } else {
            Err(not_a_job())
        }
    }
}

fn not_a_job() -> ApiError {
    ApiError::not_found(
        "not_found",
        "no such job: a job id is inv_ and 16 hex digits",
    )
}

/// A body this small is read before the sender is looked up.
const SMALL_BODY: usize = 64 * 1024;

/// An enrolled agent's signed request and its body. The body is read only once the sender
/// names an enrolled agent (anyone else is refused on the headers alone), within the route's
/// body limit (413 beyond it).
#[derive(Debug)]
pub struct SignedAgent {
    pub agent: Agent,
    pub body: Bytes,
}

impl SignedAgent {
    /// The body as `T`, or 400 naming what was wrong.
    pub fn json<T: DeserializeOwned>(&self) -> ApiResult<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("request body: {e}")))
    }
}

impl FromRequest<AppState> for SignedAgent {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> ApiResult<Self> {
        let method = req.method().as_str().to_string();
        // Signed over the path as sent; audited under the route template.
        let path = req.uri().path().to_string();
        let route = route_of(req.method(), req.extensions());
        let at = Where {
            method: &method,
            path: &path,
            route: &route,
        };
        let headers = req.headers().clone();
        // A body that may be large (a job result: up to MAX_RESULT_BYTES) is read only for a
        // sender that names an enrolled agent: anyone else is refused (and audited) on the
        // headers alone. A small body (most agent requests) is read first, saving a lookup.
        let small = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n <= SMALL_BODY);
        if !small {
            let sender = header(&headers, AGENT_HEADER);
            if agents::get(&state.db, &sender).await?.is_none() {
                verify(state, &headers, &at, &[]).await?;
            }
        }
        let body = axum::body::to_bytes(req.into_limited_body(), usize::MAX)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("request body: {e}"),
                )
            })?;
        let agent = verify(state, &headers, &at, &body).await?;
        Ok(SignedAgent { agent, body })
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Where a signed request was sent: the method and path it is signed over, and the route
/// template it is audited under (nothing a caller typed reaches the audit subject).
struct Where<'a> {
    method: &'a str,
    path: &'a str,
    /// `METHOD /route/{template}` ([`route_of`]).
    route: &'a str,
}

/// The agent behind a signed request — or 401, audited.
async fn verify(
    state: &AppState,
    headers: &HeaderMap,
    at: &Where<'_>,
    body: &[u8],
) -> ApiResult<Agent> {
    let agent_id = header(headers, AGENT_HEADER);
    let verified = agents::verify_request(
        &state.db,
        &agents::SignedRequest {
            agent_id: &agent_id,
            timestamp: &header(headers, TIMESTAMP_HEADER),
            nonce: &header(headers, NONCE_HEADER),
            signature: &header(headers, SIGNATURE_HEADER),
            method: at.method,
            path: at.path,
            body,
        },
    )
    .await;
    match verified {
        Ok(agent) => Ok(agent),
        Err(SignedError::Db(e)) => Err(e.into()),
        Err(SignedError::Refused(why)) => {
            // Unauthenticated: recorded as `anonymous`; the claimed agent is detail (bounded).
            audit::refused(
                &state.db,
                audit::Action::AgentRequestRefused,
                at.route,
                serde_json::json!({ "why": why, "claimed_agent": agent_id }),
            )
            .await?;
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                format!("signed agent request refused: {why}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(expires_ms: Option<i64>) -> auth::Accepted {
        auth::Accepted {
            actor: Actor {
                name: "ops".into(),
                role: Role::Operator,
            },
            prefix: "0123456789ab".into(),
            expires_ms,
        }
    }

    #[test]
    fn the_token_cache_forgets_on_revoke_and_never_outlives_an_expiry() {
        let cache = TokenCache::default();
        cache.put("t", accepted(None));
        assert!(matches!(cache.get("t"), Cached::Valid(_)));
        cache.forget("0123456789ab");
        assert!(matches!(cache.get("t"), Cached::Miss));
        // Expired already: never served from the cache.
        cache.put("t", accepted(Some(crate::db::now_ms() - 1)));
        assert!(matches!(cache.get("t"), Cached::Miss));
    }

    #[test]
    fn a_dead_token_is_written_once_and_its_repeats_counted() {
        let cache = TokenCache::default();
        assert_eq!(cache.put_refused("t"), Some(0));
        assert_eq!(cache.put_refused("t"), None, "a concurrent first refusal");
        for _ in 0..3 {
            assert!(matches!(cache.get("t"), Cached::Refused));
        }
        // When the minute is over, the next event carries the count.
        if let Some(Entry::Refused { until, .. }) = cache.lock().get_mut("t") {
            *until = Instant::now();
        }
        assert!(matches!(cache.get("t"), Cached::Miss));
        assert_eq!(cache.put_refused("t"), Some(4));
    }
}
