//! What an agent's enrolled [`Ceiling`] says about one skill, before its level is counted:
//! the publisher, the capability kinds the (narrowed) manifest uses, and the directories its
//! file grants reach. One pure function, called by the agent just before it admits a job and
//! by the orchestrator at submit, so the two can never disagree on these rules.

use tend_manifest::Manifest;

use crate::Ceiling;

/// Why a ceiling refuses a skill. The text is the refusal an agent reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CeilingRefusal {
    #[error("publisher {publisher:?} is not one this agent runs ({allowed:?})")]
    Publisher {
        publisher: String,
        allowed: Vec<String>,
    },
    #[error("the skill is granted {kind}, which this agent does not allow (allowed: {allowed:?})")]
    Capability {
        kind: &'static str,
        allowed: Vec<String>,
    },
    #[error("the skill is granted {path}, outside the paths this agent allows ({allowed:?})")]
    Path { path: String, allowed: Vec<String> },
}

/// The capability kinds `manifest` uses, in [`crate::CAPABILITY_KINDS`] order.
pub fn kinds_used(manifest: &Manifest) -> Vec<&'static str> {
    let caps = &manifest.capabilities;
    [
        ("fs_read", !caps.fs_read.is_empty()),
        ("fs_write", !caps.fs_write.is_empty()),
        ("exec", !caps.exec.is_empty()),
        (
            "services",
            !caps.services.restart.is_empty() || !caps.services.reload.is_empty(),
        ),
        ("http", !caps.http.is_empty()),
        ("tcp", !caps.tcp.is_empty()),
        ("dns", !caps.dns.is_empty()),
    ]
    .into_iter()
    .filter_map(|(kind, used)| used.then_some(kind))
    .collect()
}

impl Ceiling {
    /// Would this ceiling refuse `manifest` (already narrowed as the invocation asks) signed by
    /// `publisher` (its trust-policy name)? `None` when the level is all that is left to check.
    pub fn refuses(&self, publisher: &str, manifest: &Manifest) -> Option<CeilingRefusal> {
        if !self.publishers.is_empty() && !self.publishers.iter().any(|p| p == publisher) {
            return Some(CeilingRefusal::Publisher {
                publisher: publisher.to_string(),
                allowed: self.publishers.clone(),
            });
        }
        if let Some(kind) = kinds_used(manifest)
            .into_iter()
            .find(|kind| !self.capabilities.iter().any(|c| c == kind))
        {
            return Some(CeilingRefusal::Capability {
                kind,
                allowed: self.capabilities.clone(),
            });
        }
        if self.paths.is_empty() {
            return None;
        }
        let inside = |p: &str| {
            self.paths.iter().any(|root| {
                let (p, root) = (p.trim_end_matches('/'), root.trim_end_matches('/'));
                p == root
                    || p.strip_prefix(root)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        };
        let caps = &manifest.capabilities;
        caps.fs_read
            .iter()
            .chain(&caps.fs_write)
            .find(|p| !inside(p))
            .map(|p| CeilingRefusal::Path {
                path: p.clone(),
                allowed: self.paths.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(capabilities: &str) -> Manifest {
        let text = format!(
            "[skill]\nname = \"acme-x\"\nversion = \"1.0.0\"\nkind = \"repair\"\nlevel = 2\n[capabilities]\n{capabilities}"
        );
        Manifest::parse(&text, "test").expect("manifest")
    }

    fn ceiling(publishers: &[&str], capabilities: &[&str], paths: &[&str]) -> Ceiling {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Ceiling {
            max_level: 3,
            publishers: v(publishers),
            capabilities: v(capabilities),
            paths: v(paths),
            auto_heal: Vec::new(),
        }
    }

    #[test]
    fn a_ceiling_refuses_publishers_kinds_and_paths_with_the_agents_words() {
        let m = manifest(
            "fs_read = [\"/var/log/nginx\"]\nexec = [{ program = \"/usr/bin/systemctl\", args = [\"restart\", \"nginx\"] }]\n",
        );
        let all = ["fs_read", "exec"];
        assert_eq!(ceiling(&[], &all, &[]).refuses("acme", &m), None);
        assert_eq!(
            ceiling(&["other"], &all, &[])
                .refuses("acme", &m)
                .map(|r| r.to_string()),
            Some("publisher \"acme\" is not one this agent runs ([\"other\"])".into())
        );
        assert_eq!(
            ceiling(&["acme"], &["fs_read"], &[]).refuses("acme", &m),
            Some(CeilingRefusal::Capability {
                kind: "exec",
                allowed: vec!["fs_read".into()]
            })
        );
        // A path inside an allowed root (with or without a trailing slash) fits; a sibling
        // that shares a prefix does not.
        assert_eq!(ceiling(&[], &all, &["/var/log/"]).refuses("acme", &m), None);
        assert_eq!(
            ceiling(&[], &all, &["/var/log/ngin"])
                .refuses("acme", &m)
                .map(|r| r.to_string()),
            Some(
                "the skill is granted /var/log/nginx, outside the paths this agent allows ([\"/var/log/ngin\"])"
                    .into()
            )
        );
    }

    /// An agent runs a skill that looks names up only if it allows `dns`, like any kind.
    #[test]
    fn a_dns_grant_is_a_kind_an_agent_must_allow() {
        let m = manifest("dns = [\"db.example.com\"]\n");
        assert_eq!(kinds_used(&m), ["dns"]);
        assert_eq!(
            ceiling(&[], &["tcp"], &[])
                .refuses("acme", &m)
                .map(|r| r.to_string()),
            Some(
                "the skill is granted dns, which this agent does not allow (allowed: [\"tcp\"])"
                    .into()
            )
        );
        assert_eq!(ceiling(&[], &["dns"], &[]).refuses("acme", &m), None);
        assert!(crate::CAPABILITY_KINDS.contains(&"dns"));
    }

    #[test]
    fn the_kinds_a_manifest_uses_are_listed_in_order() {
        let m = manifest("tcp = [\"127.0.0.1:80\"]\nfs_write = [\"/tmp/x\"]\n");
        assert_eq!(kinds_used(&m), ["fs_write", "tcp"]);
        assert!(kinds_used(&manifest("")).is_empty());
    }
}
