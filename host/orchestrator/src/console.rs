//! The web console: one HTML page, one JavaScript module and one stylesheet, embedded in the
//! binary and served by the orchestrator at `/` and `/console/…` — no separate server, no build
//! step, nothing fetched from elsewhere. The page signs in with a bearer token (kept in the
//! tab's `sessionStorage`, sent as an `Authorization` header: no cookie, so no CSRF surface) and
//! reads the same `/api/v1` as the CLI.
//!
//! Everything the page shows from the API (skill output, alert labels, logs, names, reasons)
//! is untrusted: the script only ever puts it in text nodes, with control and direction
//! characters made visible, and every console response carries a Content-Security-Policy
//! that allows this origin's script and style only ([`CSP`]), so even a mistake could not run
//! an injected script.
//!
//! Approvals are signed in the browser (WebCrypto Ed25519, a non-extractable key kept in
//! IndexedDB) over the invocation digest the page recomputes from the fields it shows — the
//! canonical JSON of [`tend_protocol::invocation_digest`], ported to the script and checked
//! against the fixed vectors in `tests/browser/digest-vectors.json` from both sides.
//!
//! The small read-only APIs the pages need live here too: `GET /api/v1/whoami`,
//! `GET /api/v1/skills` and `GET /api/v1/audit/verify`.

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiResult, AppState, ErrorBody};
use crate::audit;
use crate::extract::{Caller, Viewer};

const INDEX_HTML: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const APP_CSS: &str = include_str!("../console/app.css");

/// The console's Content-Security-Policy: script, style, images and API calls from this origin
/// only; no inline script or style, no `eval`, no plugins, no forms posting elsewhere, no
/// framing (against clickjacking an approval) and no `<base>` rewriting.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes (pages, assets and the APIs only the console needs).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/favicon.ico",
            get(|| async { with_headers(StatusCode::NO_CONTENT.into_response()) }),
        )
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/skills", get(skills))
        .route("/api/v1/audit/verify", get(audit_verify))
}

/// The headers every console response carries.
fn with_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-cache"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The policy of every response that is not a console page (API answers, errors, 404s):
/// nothing the API returns is a page, so nothing in it may load, run or be framed.
pub const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Headers for every response the orchestrator sends, added where a handler did not set its
/// own: no MIME sniffing (an error that echoes a hostile id stays text), no framing, no
/// referrer, a CSP that allows nothing, and `Cache-Control: no-store` — API answers hold
/// tokens (`token create`), approvals and audit data, which no browser or proxy cache keeps.
pub async fn every_response(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, API_CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    with_headers(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Bytes of the console's HTML, script and stylesheet (what a first visit downloads).
pub fn page_weight() -> usize {
    INDEX_HTML.len() + APP_JS.len() + APP_CSS.len()
}

/// Who the token belongs to: the console shows only what the role may do.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub name: String,
    /// `viewer`, `operator`, `approver` or `admin`.
    pub role: String,
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "console", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
pub async fn whoami(Caller(who, ..): Caller<Viewer>) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: who.name.clone(),
        role: format!("{:?}", who.role).to_lowercase(),
    })
}

/// A skill as this orchestrator resolves it from its registry.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkillView {
    pub name: String,
    /// The latest release (the one described here).
    pub version: String,
    /// Every published version, oldest first.
    pub versions: Vec<String>,
    pub kind: String,
    pub description: String,
    /// `sha256:<hex>` of the latest release's component.
    pub digest: String,
    /// The publisher as the orchestrator's trust policy names the key (empty when untrusted).
    pub publisher: String,
    pub key_id: String,
    /// Why this orchestrator trusts it, or why not.
    pub trust: String,
    pub trusted: bool,
    /// The level the publisher declared.
    pub declared_level: u8,
    /// The level its grants imply at least (the higher of the two is what the policy starts
    /// from), with the reasons.
    pub effective_level: u8,
    pub level_reasons: Vec<String>,
    /// What its signed manifest grants (absent when it does not verify here).
    #[schema(value_type = Option<Object>)]
    pub grants: Option<tend_policy::Grants>,
    #[schema(value_type = Option<Object>)]
    pub limits: Option<tend_manifest::ManifestLimits>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkillList {
    pub skills: Vec<SkillView>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SkillsQuery {
    /// Only the skill of this exact name (the approval page asks for one)
    name: Option<String>,
}

/// The registry's skills, each latest release pulled and verified against this orchestrator's
/// trust policy as a submission would be (and then cached), with its publisher, level and
/// grants. One that does not verify is listed as untrusted, with why.
#[utoipa::path(get, path = "/api/v1/skills", tag = "console", security(("bearer" = [])), params(SkillsQuery),
    responses((status = 200, body = SkillList), (status = 401, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn skills(
    State(state): State<AppState>,
    _: Caller<Viewer>,
    Query(q): Query<SkillsQuery>,
) -> ApiResult<Json<SkillList>> {
    let (latest, log) = state.catalog.listing().await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "registry_unavailable",
            format!("the registry could not list its skills: {e}"),
        )
    })?;
    let mut skills = Vec::with_capacity(latest.len());
    for entry in latest
        .into_iter()
        .filter(|e| q.name.as_ref().is_none_or(|n| *n == e.name))
    {
        let versions = log
            .iter()
            .filter(|(n, _)| *n == entry.name)
            .map(|(_, v)| v.clone())
            .collect();
        let mut view = SkillView {
            name: entry.name.clone(),
            version: entry.version.clone(),
            versions,
            kind: entry.kind.clone(),
            description: entry.description.clone(),
            digest: entry.digest.clone(),
            publisher: String::new(),
            key_id: entry.key_id.clone(),
            trust: String::new(),
            trusted: false,
            declared_level: entry.level,
            effective_level: entry.level,
            level_reasons: Vec::new(),
            grants: None,
            limits: None,
        };
        match state
            .catalog
            .resolve(&entry.name, Some(&entry.version))
            .await
        {
            Ok(r) => {
                let grants = r.manifest.grants();
                let declared = r.manifest.declared_level();
                let mut effective = declared;
                let mut reasons = vec![tend_policy::Reason::Declared { level: declared }];
                for reason in tend_policy::capability_floors(&grants) {
                    if let tend_policy::Reason::CapabilityFloor { level, .. } = &reason {
                        effective = effective.max(*level);
                    }
                    reasons.push(reason);
                }
                let prefixes = state
                    .catalog
                    .trust()
                    .publishers
                    .iter()
                    .find(|p| p.name == r.publisher)
                    .map(|p| p.prefixes.join(", "))
                    .unwrap_or_default();
                view.trust = format!(
                    "signed by key {}, which this orchestrator's trust policy trusts as publisher {} for names {}; signature, digest and publication log verified",
                    r.key_id,
                    r.publisher,
                    if prefixes.is_empty() {
                        "it lists".to_string()
                    } else {
                        format!("starting with {prefixes}")
                    }
                );
                view.trusted = true;
                view.publisher = r.publisher.clone();
                view.key_id = r.key_id.clone();
                view.digest = r.digest.clone();
                view.declared_level = u8::from(declared);
                view.effective_level = u8::from(effective);
                view.level_reasons = reasons.iter().map(ToString::to_string).collect();
                view.grants = Some(grants);
                view.limits = Some(r.manifest.limits.clone());
            }
            Err(e) => view.trust = format!("not usable here: {e}"),
        }
        skills.push(view);
    }
    Ok(Json(SkillList { skills }))
}

/// The audit chain recomputed by the orchestrator.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditVerification {
    /// Whether every event's hash matches its content and follows the one before.
    pub ok: bool,
    /// Events checked (when it verified).
    pub events: i64,
    pub head: audit::Head,
    /// What is wrong, naming the first bad event (when it did not verify).
    pub problem: Option<String>,
    /// Old (v1) events whose fields hold line breaks: their hashes match, but that form cannot
    /// tell them from re-split fields.
    pub ambiguous_v1: Vec<i64>,
}

/// Recompute the whole audit chain (what `tend orchestrator audit verify` does) and say whether
/// it holds, or which event is the first that does not. Anchor `head` elsewhere to notice a
/// rewritten history.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = AuditVerification), (status = 401, body = ErrorBody)))]
pub async fn audit_verify(
    State(state): State<AppState>,
    _: Caller<Viewer>,
) -> ApiResult<Json<AuditVerification>> {
    let head = audit::head(&state.db).await?;
    Ok(Json(match audit::verify(&state.db).await? {
        Ok(report) => AuditVerification {
            ok: true,
            events: report.events,
            head: report.head,
            problem: None,
            ambiguous_v1: report.ambiguous_v1,
        },
        Err(problem) => AuditVerification {
            ok: false,
            events: 0,
            head,
            problem: Some(problem),
            ambiguous_v1: Vec::new(),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One fixed vector shared with the console's script (tests/browser/digest-vectors.json):
    /// the bound fields, their canonical text and the digest.
    #[derive(Debug, Deserialize)]
    struct Vector {
        name: String,
        bound: OwnedBound,
        canonical: String,
        digest: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct OwnedBound {
        skill: String,
        version: String,
        export: String,
        digest: String,
        manifest_digest: String,
        publisher_key: String,
        target: String,
        hosts: Vec<String>,
        requester: String,
        input: serde_json::Value,
        grants: tend_policy::Grants,
        limits: tend_manifest::ManifestLimits,
        plan: Option<serde_json::Value>,
        expires_ms: i64,
    }

    /// The script and the protocol crate must produce the same bytes for the same fields: the
    /// browser test checks the script against these constants, this test checks Rust.
    #[test]
    fn the_console_digest_vectors_match_the_protocol() {
        let text = include_str!("../../../tests/browser/digest-vectors.json");
        let vectors: Vec<Vector> = serde_json::from_str(text).expect("vectors");
        assert!(vectors.len() >= 4);
        for v in &vectors {
            let b = &v.bound;
            let bound = tend_protocol::Bound {
                skill: &b.skill,
                version: &b.version,
                export: &b.export,
                digest: &b.digest,
                manifest_digest: &b.manifest_digest,
                publisher_key: &b.publisher_key,
                target: &b.target,
                hosts: &b.hosts,
                requester: &b.requester,
                input: &b.input,
                grants: &b.grants,
                limits: &b.limits,
                plan: b.plan.as_ref(),
                expires_ms: b.expires_ms,
            };
            let mut canonical = String::new();
            tend_protocol::canonical_json(
                &serde_json::to_value(&bound).expect("value"),
                &mut canonical,
            );
            assert_eq!(canonical, v.canonical, "{}", v.name);
            assert_eq!(
                tend_protocol::invocation_digest(&bound),
                v.digest,
                "{}",
                v.name
            );
        }
    }

    #[test]
    fn every_console_asset_carries_the_policy_and_no_inline_code() {
        for (ct, body) in [
            ("text/html; charset=utf-8", INDEX_HTML),
            ("text/javascript; charset=utf-8", APP_JS),
        ] {
            let r = asset(ct, body);
            assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
        }
        // The page loads its one script and stylesheet and holds no inline script or style.
        assert!(INDEX_HTML.contains(r#"<script type="module" src="/console/app.js">"#));
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("style="));
        // The script never parses data as markup.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
    }
}
