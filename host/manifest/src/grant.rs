//! The grant forms a manifest may write, parsed once: exec argument patterns, HTTP origins,
//! TCP `host:port` pairs and DNS names. The runtime enforces them; the manifest only checks
//! they parse.

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

/// One `dns` grant: a host name the skill may look up, or `*.zone` for every name under a zone.
///
/// Written in ASCII (an internationalised name as its `xn--` form, so the approver reads exactly
/// what is resolved, never a look-alike), letters, digits, `-` and `_` in labels of 1-63
/// characters, at most 253 in all. Case and one trailing dot do not matter: the grant is kept
/// lower-case without it. A wildcard is only `*.` in front of a zone of at least two labels
/// (`*.internal.example.com`, not `*.com` or `db.*.example.com`); it matches any name of one or
/// more labels under the zone, never the zone itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsGrant {
    /// Exactly this name.
    Name(String),
    /// Any name strictly under this zone (stored without the `*.`).
    Under(String),
}

/// Most characters a DNS name may have (without its trailing dot).
pub const MAX_DNS_NAME: usize = 253;

impl DnsGrant {
    pub fn parse(text: &str) -> Result<DnsGrant, String> {
        let (wild, rest) = match text.strip_prefix("*.") {
            Some(zone) => (true, zone),
            None => (false, text),
        };
        let bare = rest.trim_start_matches('[').trim_end_matches(']');
        let numeric = !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if bare.parse::<std::net::IpAddr>().is_ok() || numeric {
            return Err(format!(
                "{text:?} is an IP address: it needs no lookup (grant names only)"
            ));
        }
        let name = normalise_dns_name(rest).map_err(|why| format!("{text:?}: {why}"))?;
        if !wild {
            return Ok(DnsGrant::Name(name));
        }
        if !name.contains('.') {
            return Err(format!(
                "{text:?}: a wildcard must cover a zone of at least two labels (`*.internal.example.com`), never a whole top-level domain"
            ));
        }
        Ok(DnsGrant::Under(name))
    }

    /// Whether a guest may look up `name`, already normalised by [`normalise_dns_name`].
    pub fn matches(&self, name: &str) -> bool {
        match self {
            DnsGrant::Name(n) => n == name,
            DnsGrant::Under(zone) => name
                .strip_suffix(zone.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }

    /// Whether every name `other` grants is one this grant grants (for narrowing).
    pub fn covers(&self, other: &DnsGrant) -> bool {
        match other {
            DnsGrant::Name(n) => self.matches(n),
            DnsGrant::Under(zone) => match self {
                DnsGrant::Name(_) => false,
                DnsGrant::Under(mine) => zone == mine || self.matches(zone),
            },
        }
    }
}

impl std::fmt::Display for DnsGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsGrant::Name(n) => f.write_str(n),
            DnsGrant::Under(zone) => write!(f, "*.{zone}"),
        }
    }
}

/// A host name in the one form grants are matched in: ASCII, lower-case, without its trailing
/// dot, every label 1-63 of `[a-z0-9_-]` not starting or ending with `-`. Anything else (an
/// empty label, a space, `%`, a non-ASCII character a resolver might map to something else)
/// is refused with why, never guessed at.
pub fn normalise_dns_name(text: &str) -> Result<String, String> {
    let bare = text.strip_suffix('.').unwrap_or(text);
    if bare.is_empty() {
        return Err("empty name".into());
    }
    if !bare.is_ascii() {
        return Err(
            "not ASCII: write an internationalised name in its ASCII form (xn--...)".into(),
        );
    }
    if bare.len() > MAX_DNS_NAME {
        return Err(format!("longer than {MAX_DNS_NAME} characters"));
    }
    let name = bare.to_ascii_lowercase();
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label ('..' or a leading '.')".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "{c:?} is not allowed in a name (letters, digits, '-' and '_')"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> DnsGrant {
        DnsGrant::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn name(text: &str) -> String {
        normalise_dns_name(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn dns_names_are_matched_in_one_normal_form() {
        assert_eq!(
            grant("DB.Example.COM."),
            DnsGrant::Name("db.example.com".into())
        );
        assert_eq!(grant("db.example.com").to_string(), "db.example.com");
        assert_eq!(
            grant("*.Internal.Example.com.").to_string(),
            "*.internal.example.com"
        );
        assert_eq!(name("LOCALHOST."), "localhost");
        assert_eq!(name("xn--bcher-kva.example"), "xn--bcher-kva.example");
        assert_eq!(name("_sip._tcp.example.com"), "_sip._tcp.example.com");
        for bad in [
            "",
            ".",
            "a..b",
            "a b",
            "a%2eb",
            "bücher.example",
            "a/b",
            "a\u{0}b",
            "a:53",
        ] {
            assert!(normalise_dns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_wildcard_matches_names_under_its_zone_only() {
        let g = grant("*.internal.example.com");
        for yes in [
            "a.internal.example.com",
            "a.b.internal.example.com",
            // Under the zone, whatever its first labels spell.
            "evil.com.internal.example.com",
        ] {
            assert!(g.matches(&name(yes)), "{yes}");
        }
        for no in [
            "internal.example.com",
            "xinternal.example.com",
            "internal.example.com.evil",
            "a.internal.example.co",
            "example.com",
        ] {
            assert!(!g.matches(&name(no)), "{no}");
        }
        let exact = grant("db.example.com");
        assert!(exact.matches("db.example.com"));
        assert!(!exact.matches("a.db.example.com"));
        assert!(!exact.matches("db.example.com.evil"));
    }

    #[test]
    fn covering_is_containment() {
        let zone = grant("*.internal.example.com");
        assert!(zone.covers(&grant("*.internal.example.com")));
        assert!(zone.covers(&grant("*.eu.internal.example.com")));
        assert!(zone.covers(&grant("db.internal.example.com")));
        assert!(!zone.covers(&grant("internal.example.com")));
        assert!(!zone.covers(&grant("*.example.com")));
        let exact = grant("db.example.com");
        assert!(exact.covers(&grant("DB.example.com.")));
        assert!(!exact.covers(&grant("*.db.example.com")));
    }
}
