//! The skill-name rule, written once: 1-64 characters of `[a-z0-9-]`, not starting or ending
//! with `-`. A name becomes registry paths, OCI references, file names and audit text, so it
//! is checked wherever it enters — a manifest, a request, a command line — by this one type.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A skill name that follows the rule. Build one with [`SkillName::parse`]; deserialising
/// checks it too, so a `SkillName` field can never hold anything else.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SkillName(String);

/// Why a text is not a skill name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid skill name: use 1-64 characters of [a-z0-9-], not starting or ending with '-'"
)]
pub struct NameError(pub String);

impl SkillName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(name: &str) -> Result<SkillName, NameError> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if ok {
            Ok(SkillName(name.to_string()))
        } else {
            // Quote at most a little of a long or hostile text.
            let shown: String = name.chars().take(Self::MAX_LEN + 8).collect();
            Err(NameError(shown))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SkillName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        SkillName::parse(&value)
    }
}

impl From<SkillName> for String {
    fn from(value: SkillName) -> Self {
        value.0
    }
}

impl std::str::FromStr for SkillName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SkillName::parse(s)
    }
}

impl std::ops::Deref for SkillName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SkillName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A valid name is one plain path component (no `/`, no `.` or `..`), so it may name a folder.
impl AsRef<std::path::Path> for SkillName {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl PartialEq<str> for SkillName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SkillName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for SkillName {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl fmt::Display for SkillName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for good in ["a", "disk-usage", "x9", &"a".repeat(64)] {
            assert!(SkillName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a/b",
            "../x",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            let err = SkillName::parse(bad).expect_err(bad);
            assert!(
                err.to_string().contains("is not a valid skill name"),
                "{err}"
            );
        }
    }

    #[test]
    fn deserialising_checks_the_rule() {
        let ok: SkillName = serde_json::from_str("\"disk-usage\"").expect("valid");
        assert_eq!(ok, "disk-usage");
        let err = serde_json::from_str::<SkillName>("\"../etc\"").expect_err("invalid");
        assert!(
            err.to_string().contains("is not a valid skill name"),
            "{err}"
        );
    }
}
