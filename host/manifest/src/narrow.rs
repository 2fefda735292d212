//! Narrowing at invocation time. An operator may give one invocation **less** than the signed
//! manifest grants — path grants narrowed to subdirectories, DNS names to some of those granted,
//! limits lowered — never more.
//! [`Manifest::narrowed`] is the one place that checks it: the orchestrator at submit, the
//! local worker and every agent just before a run, each from the manifest it verified. The
//! narrowed manifest is what the level is computed from, what the invocation digest binds,
//! what the approver is shown and what the runtime enforces.

use serde::{Deserialize, Serialize};

use crate::{Manifest, ManifestLimits, grant_path_problem};

/// What an operator asks for one invocation. Absent fields leave the manifest's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Narrowing {
    /// Read-only directories, each inside one of the manifest's `fs_read` (or `fs_write`)
    /// grants. `[]` grants none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_read: Option<Vec<String>>,
    /// Read-write directories, each inside one of the manifest's `fs_write` grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_write: Option<Vec<String>>,
    /// Lower limits: each at most the manifest's (or the default when it sets none).
    #[serde(default, skip_serializing_if = "ManifestLimits::is_unset")]
    pub limits: ManifestLimits,
    /// Names to look up, each one the manifest's `dns` grants (a name a granted `*.zone`
    /// covers, or a narrower `*.zone`). `[]` grants none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
}

/// Most paths one narrowed grant may list.
pub const MAX_NARROWED_PATHS: usize = 32;

/// The limits a skill runs under when its manifest sets none (before the host's maxima).
pub const DEFAULT_LIMITS: ManifestLimits = ManifestLimits {
    fuel: Some(1_000_000_000),
    memory_mib: Some(64),
    timeout_ms: Some(10_000),
    output_kib: Some(256),
};

impl ManifestLimits {
    /// No limit set.
    pub fn is_unset(&self) -> bool {
        *self == ManifestLimits::default()
    }

    fn named(&self) -> [(&'static str, Option<u64>); 4] {
        [
            ("fuel", self.fuel),
            ("memory_mib", self.memory_mib),
            ("timeout_ms", self.timeout_ms),
            ("output_kib", self.output_kib),
        ]
    }
}

impl Narrowing {
    pub fn is_empty(&self) -> bool {
        *self == Narrowing::default()
    }
}

/// Why a narrowing was refused: it would widen what the signed manifest grants, or it is
/// malformed. Nothing is recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarrowError {
    #[error(
        "grants.{field}: {path:?} is not inside any directory the signed manifest grants ({granted}): an invocation may narrow grants, never widen them"
    )]
    Widens {
        field: &'static str,
        path: String,
        granted: String,
    },
    #[error("grants.{field}: {path:?} is not a grant path: {why}")]
    BadPath {
        field: &'static str,
        path: String,
        why: String,
    },
    #[error("grants.{field}: at most {MAX_NARROWED_PATHS} paths")]
    TooMany { field: &'static str },
    #[error(
        "limits.{name}: {asked} is above the skill's {allowed}: an invocation may lower limits, never raise them"
    )]
    Raises {
        name: &'static str,
        asked: u64,
        allowed: u64,
    },
    #[error("limits.{name}: must be at least 1")]
    Zero { name: &'static str },
    #[error(
        "grants.dns: {name:?} is not a name the signed manifest grants ({granted}): an invocation may narrow grants, never widen them"
    )]
    WidensDns { name: String, granted: String },
    #[error("grants.dns: {why}")]
    BadName { why: String },
}

impl Manifest {
    /// This manifest as one invocation may use it under `narrowing`, or why that would widen
    /// it. An empty narrowing returns the manifest unchanged.
    pub fn narrowed(&self, narrowing: &Narrowing) -> Result<Manifest, NarrowError> {
        let mut out = self.clone();
        let caps = &self.capabilities;
        // A read may narrow a write grant too (reading is less than writing).
        let readable: Vec<&String> = caps.fs_read.iter().chain(&caps.fs_write).collect();
        let writable: Vec<&String> = caps.fs_write.iter().collect();
        if let Some(paths) = &narrowing.fs_read {
            out.capabilities.fs_read = inside("fs_read", paths, &readable)?;
        }
        if let Some(paths) = &narrowing.fs_write {
            out.capabilities.fs_write = inside("fs_write", paths, &writable)?;
        }
        if let Some(names) = &narrowing.dns {
            out.capabilities.dns = dns_within(names, &caps.dns)?;
        }
        let asked = narrowing.limits.named();
        let signed = self.limits.named();
        let defaults = DEFAULT_LIMITS.named();
        let mut lowered = [None; 4];
        for i in 0..4 {
            let (name, asked) = asked[i];
            let Some(asked) = asked else {
                lowered[i] = signed[i].1;
                continue;
            };
            let allowed = signed[i].1.or(defaults[i].1).unwrap_or(u64::MAX);
            if asked == 0 {
                return Err(NarrowError::Zero { name });
            }
            if asked > allowed {
                return Err(NarrowError::Raises {
                    name,
                    asked,
                    allowed,
                });
            }
            lowered[i] = Some(asked);
        }
        out.limits = ManifestLimits {
            fuel: lowered[0],
            memory_mib: lowered[1],
            timeout_ms: lowered[2],
            output_kib: lowered[3],
        };
        Ok(out)
    }
}

/// Each of `paths`, checked to be a normalised grant path inside one of `granted`.
fn inside(
    field: &'static str,
    paths: &[String],
    granted: &[&String],
) -> Result<Vec<String>, NarrowError> {
    if paths.len() > MAX_NARROWED_PATHS {
        return Err(NarrowError::TooMany { field });
    }
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        if let Some(why) = grant_path_problem(path) {
            return Err(NarrowError::BadPath {
                field,
                path: shorten(path),
                why,
            });
        }
        if !granted
            .iter()
            .any(|g| tend_policy::paths::within(path, g.as_str()))
        {
            return Err(NarrowError::Widens {
                field,
                path: shorten(path),
                granted: if granted.is_empty() {
                    "none".into()
                } else {
                    granted
                        .iter()
                        .map(|g| g.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        }
        if !out.contains(path) {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Each of `names`, checked to be a DNS grant that one of `granted` covers, in its normal form.
fn dns_within(names: &[String], granted: &[String]) -> Result<Vec<String>, NarrowError> {
    use crate::grant::DnsGrant;
    if names.len() > MAX_NARROWED_PATHS {
        return Err(NarrowError::TooMany { field: "dns" });
    }
    // The signed grants parsed when the manifest was validated; one that does not parse
    // covers nothing.
    let signed: Vec<DnsGrant> = granted
        .iter()
        .filter_map(|g| DnsGrant::parse(g).ok())
        .collect();
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let asked =
            DnsGrant::parse(name).map_err(|why| NarrowError::BadName { why: shorten(&why) })?;
        if !signed.iter().any(|g| g.covers(&asked)) {
            return Err(NarrowError::WidensDns {
                name: shorten(name),
                granted: if granted.is_empty() {
                    "none".into()
                } else {
                    granted.join(", ")
                },
            });
        }
        let normal = asked.to_string();
        if !out.contains(&normal) {
            out.push(normal);
        }
    }
    Ok(out)
}

fn shorten(path: &str) -> String {
    match path.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &path[..i]),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest::parse(
            r#"
[skill]
name = "clean-old-logs"
version = "1.0.0"
kind = "repair"
level = 1
description = "x"
[limits]
fuel = 1000
[capabilities]
fs_read = ["/var/log"]
fs_write = ["/var/log"]
"#,
            "skill.toml",
        )
        .expect("manifest")
    }

    #[test]
    fn narrowing_to_a_subdirectory_and_lower_limits_is_what_runs() {
        let m = manifest();
        let n = Narrowing {
            fs_read: Some(vec!["/var/log/nginx".into()]),
            fs_write: Some(vec!["/var/log/nginx".into()]),
            limits: ManifestLimits {
                fuel: Some(500),
                memory_mib: Some(16),
                ..ManifestLimits::default()
            },
            dns: None,
        };
        let got = m.narrowed(&n).expect("narrows");
        assert_eq!(got.capabilities.fs_write, vec!["/var/log/nginx"]);
        assert_eq!(got.limits.fuel, Some(500));
        assert_eq!(got.limits.memory_mib, Some(16));
        assert_eq!(got.limits.timeout_ms, None);
        assert_eq!(m.narrowed(&Narrowing::default()).expect("empty"), m);
    }

    #[test]
    fn widening_is_refused_with_the_reason() {
        let m = manifest();
        let cases: Vec<(Narrowing, &str)> = vec![
            (
                Narrowing {
                    fs_write: Some(vec!["/etc".into()]),
                    ..Narrowing::default()
                },
                "grants.fs_write: \"/etc\" is not inside any directory the signed manifest grants (/var/log)",
            ),
            (
                Narrowing {
                    fs_read: Some(vec!["/var/log/../../etc".into()]),
                    ..Narrowing::default()
                },
                "'.' or '..' component",
            ),
            (
                Narrowing {
                    fs_read: Some(vec!["/var/logs".into()]),
                    ..Narrowing::default()
                },
                "never widen",
            ),
            (
                Narrowing {
                    limits: ManifestLimits {
                        fuel: Some(1001),
                        ..ManifestLimits::default()
                    },
                    ..Narrowing::default()
                },
                "limits.fuel: 1001 is above the skill's 1000",
            ),
            (
                Narrowing {
                    limits: ManifestLimits {
                        memory_mib: Some(65),
                        ..ManifestLimits::default()
                    },
                    ..Narrowing::default()
                },
                "limits.memory_mib: 65 is above the skill's 64",
            ),
        ];
        for (n, want) in cases {
            let err = m.narrowed(&n).expect_err(want).to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    fn dns_manifest() -> Manifest {
        Manifest::parse(
            r#"
[skill]
name = "dns-check"
version = "1.0.0"
kind = "diagnose"
[capabilities]
dns = ["db.example.com", "*.internal.example.com"]
"#,
            "skill.toml",
        )
        .expect("manifest")
    }

    #[test]
    fn dns_narrows_to_names_the_manifest_grants() {
        let m = dns_manifest();
        let n = Narrowing {
            dns: Some(vec![
                "DB.example.com.".into(),
                "a.internal.example.com".into(),
                "*.eu.internal.example.com".into(),
                "db.example.com".into(),
            ]),
            ..Narrowing::default()
        };
        let got = m.narrowed(&n).expect("narrows");
        // In normal form, duplicates once.
        assert_eq!(
            got.capabilities.dns,
            [
                "db.example.com",
                "a.internal.example.com",
                "*.eu.internal.example.com"
            ]
        );
        let none = Narrowing {
            dns: Some(Vec::new()),
            ..Narrowing::default()
        };
        assert!(m.narrowed(&none).expect("none").capabilities.dns.is_empty());
    }

    #[test]
    fn dns_widening_is_refused_with_the_reason() {
        let m = dns_manifest();
        for (names, want) in [
            (
                vec!["evil.example.com"],
                "grants.dns: \"evil.example.com\" is not a name the signed manifest grants (db.example.com, *.internal.example.com): an invocation may narrow grants, never widen them",
            ),
            // The zone itself is not under it; a wider wildcard is wider.
            (vec!["internal.example.com"], "never widen"),
            (vec!["*.example.com"], "never widen"),
            (vec!["*.db.example.com"], "never widen"),
            (vec!["internal.example.com.evil"], "never widen"),
            (
                vec!["db.example.com", "secret.attacker.invalid"],
                "secret.attacker.invalid",
            ),
            (
                vec!["db..example.com"],
                "grants.dns: \"db..example.com\": has an empty label",
            ),
            (vec!["*.com"], "at least two labels"),
        ] {
            let n = Narrowing {
                dns: Some(names.iter().map(|s| s.to_string()).collect()),
                ..Narrowing::default()
            };
            let err = m.narrowed(&n).expect_err(want).to_string();
            assert!(err.contains(want), "{names:?}: {err}");
        }
        // A manifest without a dns grant cannot be given one.
        let n = Narrowing {
            dns: Some(vec!["localhost".into()]),
            ..Narrowing::default()
        };
        let err = manifest().narrowed(&n).expect_err("widens").to_string();
        assert!(err.contains("grants (none)"), "{err}");
    }
}
