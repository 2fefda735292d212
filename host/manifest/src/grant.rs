//! The grant forms a manifest may write, parsed once: exec argument patterns, HTTP origins and
//! TCP `host:port` pairs. The runtime enforces them; the manifest only checks they parse.

/// One argument pattern of an exec grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgPattern {
    /// Must be equal.
    Literal(String),
    /// `{name}`: exactly one safe argument.
    One(String),
    /// `{name...}`: any number (including zero) of safe arguments; last only.
    Rest(String),
}

impl ArgPattern {
    pub fn parse(text: &str) -> Result<ArgPattern, String> {
        if let Some(inner) = text.strip_prefix('{') {
            let Some(inner) = inner.strip_suffix('}') else {
                return Err(format!(
                    "{text:?}: a placeholder must look like {{name}} or {{name...}}"
                ));
            };
            let (name, rest) = match inner.strip_suffix("...") {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(format!("{text:?}: placeholder names use [a-z0-9_]"));
            }
            Ok(if rest {
                ArgPattern::Rest(name.to_string())
            } else {
                ArgPattern::One(name.to_string())
            })
        } else if text.contains(['{', '}']) {
            Err(format!(
                "{text:?}: a literal argument may not contain '{{' or '}}'; a placeholder is a whole argument"
            ))
        } else {
            Ok(ArgPattern::Literal(text.to_string()))
        }
    }
}

/// One granted origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl HttpGrant {
    pub fn parse(text: &str) -> Result<HttpGrant, String> {
        let (https, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{text:?} must start with http:// or https://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!(
                "{text:?} must be an origin (scheme://host[:port]) without path, query or credentials"
            ));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{text:?}: bad port {p:?}"))?,
            ),
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?}: missing host"));
        }
        Ok(HttpGrant {
            https,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// One `host:port` TCP grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpGrant {
    pub host: String,
    pub port: u16,
}

impl TcpGrant {
    pub fn parse(text: &str) -> Result<TcpGrant, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} must be host:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}: port must be 1-65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(format!("{text:?}: bad host"));
        }
        Ok(TcpGrant {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}
