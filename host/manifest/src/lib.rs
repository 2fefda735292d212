//! # tend-manifest — what a skill says about itself
//!
//! `skill.toml`: what a skill is, the limits it asks for and the capabilities it may use.
//! Takes the text of a manifest and hands on a validated [`Manifest`] (or a [`ManifestError`]
//! naming the file, line and key). A leaf: the registry, the orchestrator, the agent and the
//! runtime all read manifests through this crate, and it pulls in no WebAssembly engine.
//!
//! Every table is `deny_unknown_fields`: a typo is an error that names the file, line and key,
//! never a silently ignored grant. Nothing is granted that is not listed under `[capabilities]`.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod grant;
mod name;
mod narrow;

pub use name::{NameError, SkillName};
pub use narrow::{DEFAULT_LIMITS, MAX_NARROWED_PATHS, NarrowError, Narrowing};

/// A parsed and validated skill manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub skill: SkillMeta,
    #[serde(default)]
    pub limits: ManifestLimits,
    #[serde(default)]
    pub capabilities: Capabilities,
    /// JSON Schema the input must satisfy, checked before the skill runs.
    #[serde(default)]
    pub input: Option<SchemaSection>,
    /// JSON Schema the skill promises its output satisfies (a mismatch is noted in the report).
    #[serde(default)]
    pub output: Option<SchemaSection>,
}

/// `[input]` / `[output]`: a JSON Schema written as TOML (`[input.schema]` with `type = "object"`,
/// `[input.schema.properties.x]`, ...). TOML tables are JSON objects, so any schema can be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSection {
    pub schema: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillMeta {
    /// `[a-z0-9-]+`, at most 64 characters.
    pub name: SkillName,
    /// Semantic version (`MAJOR.MINOR.PATCH` with optional pre-release).
    pub version: String,
    pub kind: SkillKind,
    /// Declared zero-trust level, 0 (observe) to 3 (critical).
    #[serde(default)]
    pub level: u8,
    #[serde(default)]
    pub description: String,
}

/// The world a skill targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SkillKind {
    Diagnose,
    Repair,
}

impl fmt::Display for SkillKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkillKind::Diagnose => "diagnose",
            SkillKind::Repair => "repair",
        })
    }
}

/// Ceilings the skill asks for. The host clamps each to its own maxima.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    pub fuel: Option<u64>,
    pub memory_mib: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub output_kib: Option<u64>,
}

/// Everything a skill may touch. Empty means nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Host directories the skill may read. Each is preopened read-only at the same path.
    #[serde(default)]
    pub fs_read: Vec<String>,
    /// Host directories the skill may read and write (repair skills only; the level this
    /// implies is decided by the policy stage).
    #[serde(default)]
    pub fs_write: Vec<String>,
    /// Programs the skill may run through `tend:skill/exec`, with argument patterns.
    #[serde(default)]
    pub exec: Vec<ExecGrant>,
    /// Units the skill may act on through the (future) `service` interface.
    #[serde(default)]
    pub services: ServiceGrants,
    /// Origins (`scheme://host[:port]`) the skill may send HTTP requests to.
    #[serde(default)]
    pub http: Vec<String>,
    /// `host:port` addresses the skill may open TCP connections to.
    #[serde(default)]
    pub tcp: Vec<String>,
    /// Host names the skill may look up through `wasi:sockets/ip-name-lookup` (exact names, or
    /// `*.zone` for every name under a zone), and nothing else: no connection anywhere.
    /// See [`grant::DnsGrant`]. Left out of serialised forms when empty, so manifests and
    /// grants written before it existed serialise as they did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// One allowlisted program. `args` are matched one to one: a literal must be equal,
/// `{name}` matches exactly one argument that does not start with `-` and holds only
/// `[A-Za-z0-9._@:/+=,-]`, and a final `{name...}` matches any number of such arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecGrant {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceGrants {
    #[serde(default)]
    pub restart: Vec<String>,
    #[serde(default)]
    pub reload: Vec<String>,
}

/// A manifest that could not be read, parsed or validated. The message names the file,
/// the line when known, and the key.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
    /// An invalid value whose line is known.
    #[error("{path}:{line}: {key}: {message}")]
    InvalidAt {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
}

impl Manifest {
    /// Read and validate a manifest file.
    pub fn from_file(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse and validate manifest text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            // A bad name fails deserialisation (`SkillName` checks itself); say which key.
            if let Some(err) = name_problem(text) {
                return ManifestError::Invalid {
                    path: origin.to_string(),
                    key: "skill.name".to_string(),
                    message: err.to_string(),
                };
            }
            let line = toml_error_line(text, &e);
            // toml's message starts with its own position banner; keep only the explanation.
            let message = e.message().trim().to_string();
            ManifestError::Parse {
                path: origin.to_string(),
                line,
                message,
            }
        })?;
        manifest.validate(origin)?;
        manifest.validate_grant_paths(text, origin)?;
        Ok(manifest)
    }

    /// The policy's view of what this manifest grants: the grants a job carries and an
    /// approval binds.
    pub fn grants(&self) -> tend_policy::Grants {
        let c = &self.capabilities;
        tend_policy::Grants {
            fs_read: c.fs_read.clone(),
            fs_write: c.fs_write.clone(),
            exec: c
                .exec
                .iter()
                .map(|e| tend_policy::ExecGrant {
                    program: e.program.clone(),
                    args: e.args.clone(),
                })
                .collect(),
            service_restart: c.services.restart.clone(),
            service_reload: c.services.reload.clone(),
            http: c.http.clone(),
            tcp: c.tcp.clone(),
            dns: c.dns.clone(),
        }
    }

    /// The level the publisher declared (validation refuses one above 3; were it ever out of
    /// range it would count as the highest).
    pub fn declared_level(&self) -> tend_policy::Level {
        tend_policy::Level::try_from(self.skill.level).unwrap_or(tend_policy::Level::L3)
    }

    /// Grant paths must be written in the one form the policy classifies: an alias or a
    /// spelling like `/./root` could otherwise be judged as one place and open another.
    fn validate_grant_paths(&self, text: &str, origin: &str) -> Result<(), ManifestError> {
        let c = &self.capabilities;
        for (key, paths) in [
            ("capabilities.fs_read", &c.fs_read),
            ("capabilities.fs_write", &c.fs_write),
        ] {
            for (i, p) in paths.iter().enumerate() {
                if let Some(why) = grant_path_problem(p) {
                    let key = format!("{key}[{i}]");
                    let message = format!("{p:?} is not a grant path Tend accepts: {why}");
                    return Err(match grant_path_line(text, &key) {
                        Some(line) => ManifestError::InvalidAt {
                            path: origin.to_string(),
                            line,
                            key,
                            message,
                        },
                        None => ManifestError::Invalid {
                            path: origin.to_string(),
                            key,
                            message,
                        },
                    });
                }
            }
        }
        Ok(())
    }

    fn validate(&self, origin: &str) -> Result<(), ManifestError> {
        let invalid = |key: &str, message: String| ManifestError::Invalid {
            path: origin.to_string(),
            key: key.to_string(),
            message,
        };
        let s = &self.skill;
        if !is_semver(&s.version) {
            return Err(invalid(
                "skill.version",
                format!("{:?} is not a semantic version like 1.2.3", s.version),
            ));
        }
        if s.level > 3 {
            return Err(invalid(
                "skill.level",
                format!(
                    "{} is out of range: levels are 0 (observe) to 3 (critical)",
                    s.level
                ),
            ));
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.fuel", l.fuel),
            ("limits.memory_mib", l.memory_mib),
            ("limits.timeout_ms", l.timeout_ms),
            ("limits.output_kib", l.output_kib),
        ] {
            if value == Some(0) {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        let c = &self.capabilities;
        if self.skill.kind == SkillKind::Diagnose
            && (!c.exec.is_empty()
                || !c.fs_write.is_empty()
                || !c.services.restart.is_empty()
                || !c.services.reload.is_empty())
        {
            return Err(invalid(
                "capabilities",
                "a diagnose skill may not be granted exec, fs_write or services; declare kind = \"repair\""
                    .into(),
            ));
        }
        for (i, grant) in c.exec.iter().enumerate() {
            if !grant.program.starts_with('/') {
                return Err(invalid(
                    &format!("capabilities.exec[{i}].program"),
                    format!(
                        "{:?} must be an absolute path (no PATH lookup)",
                        grant.program
                    ),
                ));
            }
            for (j, arg) in grant.args.iter().enumerate() {
                if let Err(message) = crate::grant::ArgPattern::parse(arg) {
                    return Err(invalid(
                        &format!("capabilities.exec[{i}].args[{j}]"),
                        message,
                    ));
                }
                let is_rest = arg.ends_with("...}");
                if is_rest && j + 1 != grant.args.len() {
                    return Err(invalid(
                        &format!("capabilities.exec[{i}].args[{j}]"),
                        "a '{name...}' pattern must be the last argument".into(),
                    ));
                }
            }
        }
        for (i, origin_url) in c.http.iter().enumerate() {
            if let Err(message) = crate::grant::HttpGrant::parse(origin_url) {
                return Err(invalid(&format!("capabilities.http[{i}]"), message));
            }
        }
        for (key, section) in [
            ("input.schema", &self.input),
            ("output.schema", &self.output),
        ] {
            if let Some(section) = section
                && let Err(e) = jsonschema::validator_for(&section.schema)
            {
                return Err(invalid(key, format!("not a valid JSON Schema: {e}")));
            }
        }
        for (i, addr) in c.tcp.iter().enumerate() {
            if let Err(message) = crate::grant::TcpGrant::parse(addr) {
                return Err(invalid(&format!("capabilities.tcp[{i}]"), message));
            }
        }
        for (i, name) in c.dns.iter().enumerate() {
            if let Err(message) = crate::grant::DnsGrant::parse(name) {
                return Err(invalid(&format!("capabilities.dns[{i}]"), message));
            }
        }
        Ok(())
    }
}

/// Why `path` is not a normalised absolute grant path, if it is not: relative, `.`/`..` or
/// empty components, a trailing `/`, control characters or surrounding spaces, or a path
/// through a process's view of the filesystem (`/proc/self/root/...`, `/proc/<pid>/cwd`).
pub fn grant_path_problem(path: &str) -> Option<String> {
    let problem = if !path.starts_with('/') {
        "it must be an absolute path"
    } else if path.len() > 4096 {
        "it is longer than 4096 bytes"
    } else if path.chars().any(char::is_control) {
        "it contains a control character"
    } else if path.trim() != path {
        "it starts or ends with white space"
    } else if path != "/" && path.ends_with('/') {
        "it ends with '/'"
    } else if path.contains("//") {
        "it has an empty component ('//')"
    } else if path.split('/').any(|c| c == "." || c == "..") {
        "it has a '.' or '..' component"
    } else if is_process_view(path) {
        return Some(
            "it goes through a process's view of the filesystem (/proc/<pid>/...), which can reach other places; grant the real path"
                .into(),
        );
    } else {
        return None;
    };
    Some(format!("{problem}; write it as a normalised absolute path"))
}

/// `/proc/self/...`, `/proc/thread-self/...` or `/proc/<pid>/...`.
fn is_process_view(path: &str) -> bool {
    let mut parts = path.split('/').skip(1);
    parts.next() == Some("proc")
        && parts.next().is_some_and(|p| {
            p == "self"
                || p == "thread-self"
                || (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The line of `capabilities.fs_read[i]` (or `fs_write`) in the manifest text.
fn grant_path_line(text: &str, key: &str) -> Option<usize> {
    #[derive(Deserialize)]
    struct Spans {
        #[serde(default)]
        capabilities: Option<CapSpans>,
    }
    #[derive(Deserialize)]
    struct CapSpans {
        #[serde(default)]
        fs_read: Vec<toml::Spanned<String>>,
        #[serde(default)]
        fs_write: Vec<toml::Spanned<String>>,
    }
    let spans: Spans = toml::from_str(text).ok()?;
    let caps = spans.capabilities?;
    let (list, index) = key.strip_prefix("capabilities.")?.split_once('[')?;
    let index: usize = index.strip_suffix(']')?.parse().ok()?;
    let value = match list {
        "fs_read" => caps.fs_read.get(index)?,
        "fs_write" => caps.fs_write.get(index)?,
        _ => return None,
    };
    let start = value.span().start.min(text.len());
    Some(
        text.as_bytes()[..start]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1,
    )
}

/// The name rule's complaint about `[skill] name`, if it is a string that breaks it.
fn name_problem(text: &str) -> Option<NameError> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let name = table.get("skill")?.get("name")?.as_str()?;
    SkillName::parse(name).err()
}

/// Whether `name` follows the skill-name rule (see [`SkillName`]).
pub fn is_skill_name(name: &str) -> bool {
    SkillName::parse(name).is_ok()
}

/// The 1-based line of `text` a TOML error points at (1 when it points nowhere).
pub fn toml_error_line(text: &str, err: &toml::de::Error) -> usize {
    err.span()
        .map(|span| {
            text.as_bytes()[..span.start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        })
        .unwrap_or(1)
}

fn is_semver(v: &str) -> bool {
    let (rest, build) = match v.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let idents_ok = |s: Option<&str>| {
        s.is_none_or(|s| {
            s.split('.').all(|id| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        })
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
        && idents_ok(pre)
        && idents_ok(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[skill]
name = "service-restart"
version = "1.0.0"
kind = "repair"
level = 2
description = "Restart a unit"

[limits]
fuel = 2_000_000_000
memory_mib = 64
timeout_ms = 10_000
output_kib = 256

[capabilities]
fs_read = ["/proc", "/var/log"]
exec = [{ program = "/usr/bin/systemctl", args = ["restart", "{unit}"] }]
services = { restart = ["nginx.service"] }
http = ["https://status.example.com"]
tcp = ["127.0.0.1:5432"]
"#;

    #[test]
    fn parses_the_design_example() {
        let m = Manifest::parse(GOOD, "skill.toml").expect("valid");
        assert_eq!(m.skill.name, "service-restart");
        assert_eq!(m.skill.kind, SkillKind::Repair);
        assert_eq!(m.limits.memory_mib, Some(64));
        assert_eq!(m.capabilities.exec[0].args, ["restart", "{unit}"]);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = GOOD.replace("output_kib = 256", "output_kib = 256\nnetwork = true");
        let err = Manifest::parse(&text, "skill.toml")
            .expect_err("must be refused")
            .to_string();
        assert!(err.starts_with("skill.toml:14:"), "{err}");
        assert!(err.contains("unknown field `network`"), "{err}");
    }

    #[test]
    fn wrong_type_names_line() {
        let text = GOOD.replace("memory_mib = 64", "memory_mib = \"lots\"");
        let err = Manifest::parse(&text, "skill.toml")
            .expect_err("must be refused")
            .to_string();
        assert!(err.starts_with("skill.toml:11:"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (from, to, key) in [
            (
                "name = \"service-restart\"",
                "name = \"Service Restart\"",
                "skill.name",
            ),
            ("version = \"1.0.0\"", "version = \"1.0\"", "skill.version"),
            ("level = 2", "level = 7", "skill.level"),
            ("fuel = 2_000_000_000", "fuel = 0", "limits.fuel"),
            (
                "program = \"/usr/bin/systemctl\"",
                "program = \"systemctl\"",
                "capabilities.exec[0].program",
            ),
            ("\"{unit}\"", "\"{unit\"", "capabilities.exec[0].args[1]"),
            (
                "https://status.example.com",
                "ftp://x",
                "capabilities.http[0]",
            ),
            ("127.0.0.1:5432", "127.0.0.1", "capabilities.tcp[0]"),
            (
                "tcp = [\"127.0.0.1:5432\"]",
                "tcp = [\"127.0.0.1:5432\"]\ndns = [\"db.example.com\", \"db..example.com\"]",
                "capabilities.dns[1]",
            ),
        ] {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "replacement {from} did not apply");
            let err = Manifest::parse(&text, "m.toml")
                .expect_err("must be refused")
                .to_string();
            assert!(err.starts_with(&format!("m.toml: {key}:")), "{key}: {err}");
        }
    }

    #[test]
    fn grant_paths_must_be_normalised_and_errors_name_line_and_key() {
        // `fs_read = ["/proc", "/var/log"]` is on line 16 of GOOD.
        for (bad, why) in [
            ("var/log", "must be an absolute path"),
            ("/proc/../etc", "'.' or '..' component"),
            ("/./root", "'.' or '..' component"),
            ("/root/.", "'.' or '..' component"),
            ("//root", "empty component"),
            ("/a//b", "empty component"),
            ("/var/log/", "ends with '/'"),
            ("/var/log ", "white space"),
            ("/var/log\\n", "control character"),
            ("/var/log\\u0000", "control character"),
            ("/proc/self/root/etc", "process's view of the filesystem"),
            ("/proc/1/root", "process's view of the filesystem"),
            ("/proc/thread-self/cwd", "process's view of the filesystem"),
        ] {
            let text = GOOD.replace("\"/var/log\"", &format!("\"{bad}\""));
            assert_ne!(text, GOOD);
            let err = Manifest::parse(&text, "m.toml")
                .expect_err("must be refused")
                .to_string();
            assert!(
                err.starts_with("m.toml:16: capabilities.fs_read[1]: "),
                "{bad}: {err}"
            );
            assert!(err.contains(why), "{bad}: {err}");
        }
        // fs_write too, on its own line.
        let text = GOOD.replace(
            "services = {",
            "fs_write = [\"/var/tmp\", \"/./etc\"]\nservices = {",
        );
        let err = Manifest::parse(&text, "m.toml")
            .expect_err("must be refused")
            .to_string();
        assert!(
            err.starts_with("m.toml:18: capabilities.fs_write[1]: \"/./etc\""),
            "{err}"
        );
        // Normalised paths, including /proc's system-wide files, are fine.
        for good in [
            "/",
            "/var/log",
            "/proc/pressure",
            "/proc/meminfo",
            "/home/a b",
        ] {
            let text = GOOD.replace("\"/var/log\"", &format!("\"{good}\""));
            Manifest::parse(&text, "m.toml").unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn schemas_are_toml_tables_and_are_checked() {
        let text = format!(
            "{GOOD}\n[input.schema]\ntype = \"object\"\nrequired = [\"unit\"]\n[input.schema.properties.unit]\ntype = \"string\"\n"
        );
        let m = Manifest::parse(&text, "m.toml").expect("valid");
        let schema = &m.input.expect("input").schema;
        assert_eq!(schema["properties"]["unit"]["type"], "string");
        let bad = format!("{GOOD}\n[input.schema]\ntype = 12\n");
        let err = Manifest::parse(&bad, "m.toml")
            .expect_err("must be refused")
            .to_string();
        assert!(
            err.starts_with("m.toml: input.schema: not a valid JSON Schema"),
            "{err}"
        );
    }

    #[test]
    fn diagnose_skill_cannot_hold_exec() {
        let text = GOOD.replace("kind = \"repair\"", "kind = \"diagnose\"");
        let err = Manifest::parse(&text, "m.toml")
            .expect_err("must be refused")
            .to_string();
        assert!(
            err.contains("diagnose skill may not be granted exec"),
            "{err}"
        );
    }

    #[test]
    fn semantic_versions() {
        for good in ["0.1.0", "1.2.3-rc.1", "1.2.3+build.5", "1.2.3-alpha-2+x"] {
            assert!(is_semver(good), "{good}");
        }
        for bad in [
            "1.0",
            "01.0.0",
            "1.0.0-",
            "1.0.0+",
            "1.0.0-a..b",
            "1.0.0-a b",
            "v1.0.0",
        ] {
            assert!(!is_semver(bad), "{bad}");
        }
    }

    #[test]
    fn minimal_manifest_grants_nothing() {
        let m = Manifest::parse(
            "[skill]\nname = \"x\"\nversion = \"0.1.0\"\nkind = \"diagnose\"\n",
            "m",
        )
        .expect("valid");
        assert_eq!(m.capabilities, Capabilities::default());
        assert_eq!(m.skill.level, 0);
    }

    #[test]
    fn dns_grants_parse_and_bad_names_name_the_key() {
        let text = GOOD.replace(
            "tcp = [\"127.0.0.1:5432\"]",
            "tcp = [\"127.0.0.1:5432\"]\ndns = [\"DB.Example.com.\", \"*.internal.example.com\", \"localhost\"]",
        );
        let m = Manifest::parse(&text, "m.toml").expect("valid");
        assert_eq!(
            m.capabilities.dns,
            ["DB.Example.com.", "*.internal.example.com", "localhost"]
        );
        assert_eq!(m.grants().dns, m.capabilities.dns);
        for (bad, why) in [
            ("", "empty name"),
            ("db..example.com", "empty label"),
            (".example.com", "empty label"),
            ("db example.com", "' ' is not allowed"),
            ("db%2eexample.com", "'%' is not allowed"),
            ("bücher.example", "xn--"),
            ("*", "'*' is not allowed"),
            ("*.com", "at least two labels"),
            ("*.com.", "at least two labels"),
            ("db.*.example.com", "'*' is not allowed"),
            ("**.example.com", "'*' is not allowed"),
            ("127.0.0.1", "is an IP address"),
            ("::1", "is an IP address"),
            ("[::1]", "is an IP address"),
            ("-db.example.com", "starts or ends with '-'"),
            ("db.example.com:53", "':' is not allowed"),
        ] {
            let text = GOOD.replace(
                "tcp = [\"127.0.0.1:5432\"]",
                &format!("dns = [\"localhost\", {bad:?}]"),
            );
            let err = Manifest::parse(&text, "m.toml").expect_err(bad).to_string();
            assert!(
                err.starts_with("m.toml: capabilities.dns[1]: "),
                "{bad}: {err}"
            );
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = format!("{}.example", "a".repeat(64));
        let text = GOOD.replace("tcp = [\"127.0.0.1:5432\"]", &format!("dns = [{long:?}]"));
        let err = Manifest::parse(&text, "m.toml")
            .expect_err("long label")
            .to_string();
        assert!(
            err.contains("capabilities.dns[0]") && err.contains("longer than 63"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_dns_grant_is_not_serialised() {
        // Manifests and grants from before `dns` existed serialise byte for byte as they did.
        let m = Manifest::parse(GOOD, "m.toml").expect("valid");
        let json = serde_json::to_value(&m.capabilities).expect("json");
        assert!(json.get("dns").is_none(), "{json}");
    }
}
