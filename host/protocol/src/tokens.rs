//! API tokens on the wire: what an admin sends to create or rotate one ([`NewToken`],
//! [`RotateToken`]), what comes back once ([`CreatedToken`], the only answer that carries the
//! secret), and a token's record ([`TokenInfo`]: never its hash or secret). The orchestrator
//! serves them at `/api/v1/tokens`; the CLI client reads the same types.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Longest token name (bytes): it is the actor of everything the token does.
pub const MAX_TOKEN_NAME: usize = 64;

/// Longest lifetime a token may be given at creation (10 years).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);

/// `POST /api/v1/tokens`: a new token for `name` with `role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Who the token is for: the actor of everything it does (1-64 letters, digits and
    /// `- _ . @`).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.@-]{1,64}$"))]
    pub name: String,
    /// `viewer`, `operator`, `approver` or `admin`.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(viewer|operator|approver|admin)$")
    )]
    pub role: String,
    /// How long it lives, e.g. `30d`, `12h` (humantime); absent: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(example = "30d"))]
    pub expires_in: Option<String>,
}

/// `POST /api/v1/tokens/{prefix}/rotate`: the new token's lifetime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RotateToken {
    /// How long the new token lives (humantime); absent: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
}

/// A token just made: the secret is shown here once and never again (only its hash is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    /// `tend_<prefix>_<secret>`: send it as `Authorization: Bearer <token>`.
    pub token: String,
    /// The token's public handle (12 hex digits): list, revoke and rotate it by this.
    pub prefix: String,
    pub name: String,
    pub role: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; null: until revoked.
    pub expires_at: Option<String>,
}

/// A token's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    pub prefix: String,
    pub name: String,
    pub role: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; null: until revoked.
    pub expires_at: Option<String>,
    /// RFC 3339; null: not revoked.
    pub revoked_at: Option<String>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// `POST /api/v1/tokens/{prefix}/revoke`: the token's record, and whether it had been revoked
/// already (then nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevokedToken {
    #[serde(flatten)]
    pub token: TokenInfo,
    pub already_revoked: bool,
}

/// A token name: 1-64 letters, digits and `- _ . @` (it is recorded as the actor of what the
/// token does, in answers, logs and the audit trail).
pub fn check_token_name(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TOKEN_NAME
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(crate::field_error(
            field,
            format!(
                "{:?} is not a token name: 1-{MAX_TOKEN_NAME} letters, digits and - _ . @",
                crate::shorten(value)
            ),
        ))
    }
}

/// A lifetime such as `30d` or `12h` (humantime): more than zero, at most
/// [`MAX_TOKEN_LIFETIME`].
pub fn parse_lifetime(field: &str, value: &str) -> Result<Duration, FieldError> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| {
        crate::field_error(
            field,
            format!(
                "{:?} is not a duration such as 30d or 12h: {e}",
                crate::shorten(value)
            ),
        )
    })?;
    if d.is_zero() || d > MAX_TOKEN_LIFETIME {
        return Err(crate::field_error(
            field,
            format!(
                "{:?} is not between 1ms and {}",
                crate::shorten(value),
                humantime::format_duration(MAX_TOKEN_LIFETIME)
            ),
        ));
    }
    Ok(d)
}

/// Whether `prefix` has the form of a token prefix (12 lower-case hex digits).
pub fn is_token_prefix(prefix: &str) -> bool {
    prefix.len() == 12
        && prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_lifetimes_are_bounded() {
        assert!(check_token_name("name", "ci-bot@example.org").is_ok());
        for bad in ["", "a b", "x\ny", &"n".repeat(65)] {
            let e = check_token_name("name", bad).expect_err(bad);
            assert_eq!(e.field, "name");
        }
        assert_eq!(
            parse_lifetime("expires_in", "30d").expect("30d"),
            Duration::from_secs(30 * 86_400)
        );
        for bad in ["0s", "forever", "", "3651d"] {
            let e = parse_lifetime("expires_in", bad).expect_err(bad);
            assert_eq!(e.field, "expires_in");
        }
        assert!(is_token_prefix("0123456789ab"));
        assert!(!is_token_prefix("0123456789AB"));
        assert!(!is_token_prefix("../../etc"));
    }
}
