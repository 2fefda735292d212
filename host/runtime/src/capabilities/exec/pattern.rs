use crate::manifest::ExecGrant;
pub use tend_manifest::grant::ArgPattern;

/// An argument a placeholder accepts: not an option, and nothing a shell or parser could
/// give a second meaning to.
fn safe_value(arg: &str) -> bool {
    !arg.is_empty()
        && !arg.starts_with('-')
        && arg.len() <= 1024
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@:/+=,-".contains(&b))
}

fn matches(patterns: &[ArgPattern], args: &[String]) -> bool {
    match patterns.split_first() {
        None => args.is_empty(),
        Some((ArgPattern::Rest(_), _)) => args.iter().all(|a| safe_value(a)),
        Some((p, rest_p)) => {
            let Some((a, rest_a)) = args.split_first() else {
                return false;
            };
            let ok = match p {
                ArgPattern::Literal(l) => l == a,
                ArgPattern::One(_) => safe_value(a),
                ArgPattern::Rest(_) => unreachable!("handled above"),
            };
            ok && matches(rest_p, rest_a)
        }
    }
}

/// The exec grants of one skill, parsed once.
#[derive(Debug, Clone, Default)]
pub struct ExecPolicy {
    grants: Vec<(String, Vec<ArgPattern>)>,
    /// Set when this invocation may run no program at all (a repair's `plan`), with why.
    refuse_all: Option<&'static str>,
}

/// A short, bounded rendering of a skill-chosen program or argument list for a message.
fn preview(text: &str) -> String {
    let mut end = text.len().min(256);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}... ({} bytes)", &text[..end], text.len())
    } else {
        text.to_string()
    }
}

fn preview_args(args: &[String]) -> String {
    let shown: Vec<String> = args
        .iter()
        .take(8)
        .map(|a| format!("{:?}", preview(a)))
        .collect();
    let more = if args.len() > 8 {
        format!(", ... {} more", args.len() - 8)
    } else {
        String::new()
    };
    format!("[{}{more}]", shown.join(", "))
}

impl ExecPolicy {
    pub fn new(grants: &[ExecGrant]) -> Self {
        ExecPolicy {
            grants: grants
                .iter()
                .map(|g| {
                    let patterns = g
                        .args
                        .iter()
                        .filter_map(|a| ArgPattern::parse(a).ok())
                        .collect();
                    (g.program.clone(), patterns)
                })
                .collect(),
            refuse_all: None,
        }
    }

    /// The same grants, refusing every call: `plan` must not change anything, so it runs
    /// no program (its calls are still recorded, as refused).
    pub fn for_plan(&self) -> ExecPolicy {
        ExecPolicy {
            grants: self.grants.clone(),
            refuse_all: Some(
                "a repair's `plan` must not change anything, so it may not run programs",
            ),
        }
    }

    /// `Ok(())` if some grant allows this exact call, else the reason in words.
    pub fn check(&self, program: &str, args: &[String]) -> Result<(), String> {
        if let Some(why) = self.refuse_all {
            return Err(format!("exec of {} refused: {why}", preview(program)));
        }
        let for_program: Vec<_> = self.grants.iter().filter(|(p, _)| p == program).collect();
        let program = preview(program);
        if for_program.is_empty() {
            return Err(if self.grants.is_empty() {
                format!("exec of {program} denied: the manifest grants no programs")
            } else {
                format!("exec of {program} denied: not in the manifest's exec allowlist")
            });
        }
        if for_program.iter().any(|(_, pats)| matches(pats, args)) {
            Ok(())
        } else {
            Err(format!(
                "exec of {program} denied: arguments {} match no granted pattern",
                preview_args(args)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ExecPolicy {
        ExecPolicy::new(&[
            ExecGrant {
                program: "/usr/bin/systemctl".into(),
                args: vec!["restart".into(), "{unit}".into()],
            },
            ExecGrant {
                program: "/usr/bin/journalctl".into(),
                args: vec!["-u".into(), "{unit}".into(), "{extra...}".into()],
            },
        ])
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn allows_exactly_the_pattern() {
        let p = policy();
        assert!(
            p.check("/usr/bin/systemctl", &s(&["restart", "nginx.service"]))
                .is_ok()
        );
        assert!(
            p.check("/usr/bin/journalctl", &s(&["-u", "nginx", "today"]))
                .is_ok()
        );
        assert!(p.check("/usr/bin/journalctl", &s(&["-u", "nginx"])).is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        let p = policy();
        for (prog, args) in [
            ("/bin/sh", s(&["-c", "id"])),
            ("systemctl", s(&["restart", "nginx"])),
            ("/usr/bin/systemctl", s(&["stop", "nginx"])),
            ("/usr/bin/systemctl", s(&["restart", "--force"])),
            ("/usr/bin/systemctl", s(&["restart", "a;reboot"])),
            ("/usr/bin/systemctl", s(&["restart", "nginx", "extra"])),
            ("/usr/bin/systemctl", s(&["restart"])),
            ("/usr/bin/journalctl", s(&["-u", "nginx", "--rotate"])),
        ] {
            assert!(
                p.check(prog, &args).is_err(),
                "{prog} {args:?} should be refused"
            );
        }
    }

    #[test]
    fn pattern_syntax() {
        assert_eq!(
            ArgPattern::parse("{unit}"),
            Ok(ArgPattern::One("unit".into()))
        );
        assert_eq!(
            ArgPattern::parse("{a...}"),
            Ok(ArgPattern::Rest("a".into()))
        );
        assert!(ArgPattern::parse("{Unit}").is_err());
        assert!(ArgPattern::parse("x{unit}").is_err());
        assert!(ArgPattern::parse("{unit").is_err());
    }
}
