//! Where the client talks to, and with which token: `--url`/`--token` flags, else
//! `TEND_URL`/`TEND_TOKEN`, else the current context of the config file
//! (`$TEND_CONFIG`, else `$XDG_CONFIG_HOME/tend/config.toml`, else `~/.config/tend/config.toml`):
//!
//! ```toml
//! current = "prod"
//! [contexts.prod]
//! url = "https://tend.example.com"
//! token = "tend_..."
//! ```
//!
//! A context's token is only ever sent to that context's URL: `--url` pointing elsewhere does
//! not take the token along. The file is written whole (temp file + rename), 0600, in a
//! directory made 0700; a token is never printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Failure, out};

/// The config file as a person writes it.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One orchestrator and the token to use with it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Never shows the token (a `{:?}` in a log or a panic message would).
impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where the config file is: `$TEND_CONFIG`, `$XDG_CONFIG_HOME/tend/config.toml`, or
/// `$HOME/.config/tend/config.toml`.
pub fn config_path() -> Result<PathBuf, Failure> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(path) = var("TEND_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    if let Some(xdg) = var("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(xdg).join("tend/config.toml"));
    }
    if let Some(home) = var("HOME") {
        return Ok(PathBuf::from(home).join(".config/tend/config.toml"));
    }
    Err(Failure::bad_input(
        "no place for the client's config file: set TEND_CONFIG, XDG_CONFIG_HOME or HOME",
    ))
}

/// Read the config file; a missing file is an empty config. A file that does not parse is an
/// error naming the file and the line.
pub fn load(path: &Path) -> Result<ConfigFile, Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => {
            return Err(Failure::bad_input(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let file: ConfigFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        Failure::bad_input(format!(
            "{}{}: {}",
            path.display(),
            line.map(|l| format!(":{l}")).unwrap_or_default(),
            e.message().trim_end()
        ))
    })?;
    for (name, ctx) in &file.contexts {
        check_name(name).map_err(|e| Failure::bad_input(format!("{}: {e}", path.display())))?;
        check_url(&ctx.url)
            .map_err(|e| Failure::bad_input(format!("{}: context {name}: {e}", path.display())))?;
    }
    Ok(file)
}

/// Write the config file whole: a 0600 temp file beside it, renamed over it, in a directory
/// created 0700. A failure leaves the old file as it was.
pub fn save(path: &Path, file: &ConfigFile) -> Result<(), Failure> {
    let cannot =
        |e: &dyn std::fmt::Display| Failure::host(format!("cannot write {}: {e}", path.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir).map_err(|e| cannot(&e))?;
    }
    let text = toml::to_string(file).map_err(|e| cannot(&e))?;
    // NamedTempFile is created 0600 on unix.
    let mut tmp = tempfile::Builder::new()
        .prefix(".config.toml.")
        .tempfile_in(&dir)
        .map_err(|e| cannot(&e))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(|e| cannot(&e))?;
    tmp.as_file().sync_all().map_err(|e| cannot(&e))?;
    tmp.persist(path).map_err(|e| cannot(&e.error))?;
    Ok(())
}

/// A context name: 1-64 letters, digits and `- _ .`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a context name: 1-64 letters, digits and - _ .",
            name.chars().take(80).collect::<String>()
        ))
    }
}

/// An orchestrator URL: `http://` or `https://`, a host, and no trailing path but `/`.
pub fn check_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host)
            if !host.trim_end_matches('/').is_empty() && !url.contains(char::is_whitespace) =>
        {
            Ok(url.trim_end_matches('/').to_string())
        }
        _ => Err(format!(
            "{:?} is not an orchestrator URL (http://HOST:PORT or https://HOST)",
            url.chars().take(200).collect::<String>()
        )),
    }
}

/// The flags every command that talks to an orchestrator takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// The orchestrator's URL [default: the context's]
    #[arg(long, env = "TEND_URL", value_name = "URL")]
    pub url: Option<String>,
    /// An API token [default: the context's]
    #[arg(long, env = "TEND_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A context of the config file other than the current one
    #[arg(long, env = "TEND_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
}

/// Where to talk to, resolved.
pub struct Resolved {
    pub url: String,
    pub token: String,
    /// The context it came from, to name in a hint after a 401.
    pub context: Option<String>,
    pub config: PathBuf,
}

impl ConnArgs {
    /// Flags and environment first, then the config file.
    pub fn resolve(&self) -> Result<Resolved, Failure> {
        let path = config_path()?;
        let file = load(&path)?;
        let chosen = self.context.clone().or_else(|| file.current.clone());
        let context = match &chosen {
            Some(name) => match file.contexts.get(name) {
                Some(ctx) => Some((name.clone(), ctx.clone())),
                None => {
                    return Err(Failure::bad_input(format!(
                        "no context {name:?} in {} (see `tend context list`, or `tend login URL --context {name}`)",
                        path.display()
                    )));
                }
            },
            None => None,
        };
        let flag_url = self.url.as_deref().filter(|u| !u.is_empty());
        let (url, from_context) = match (flag_url, &context) {
            (Some(url), ctx) => {
                let url = check_url(url).map_err(Failure::bad_input)?;
                // The context's token goes only to the context's own server.
                let same = ctx
                    .as_ref()
                    .filter(|(_, c)| c.url.trim_end_matches('/') == url);
                (url, same.cloned())
            }
            (None, Some((name, ctx))) => (
                check_url(&ctx.url).map_err(Failure::bad_input)?,
                Some((name.clone(), ctx.clone())),
            ),
            (None, None) => {
                return Err(Failure::bad_input(format!(
                    "no orchestrator configured: run `tend login URL` (it asks for a token and saves a context in {}), \
                     or pass --url URL --token TOKEN, or set TEND_URL and TEND_TOKEN",
                    path.display()
                )));
            }
        };
        let token = self
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| from_context.as_ref().and_then(|(_, c)| c.token.clone()));
        let Some(token) = token else {
            return Err(Failure::bad_input(format!(
                "no token for {url}: pass --token TOKEN, set TEND_TOKEN, or run `tend login {url}`"
            )));
        };
        Ok(Resolved {
            url,
            token,
            context: from_context.map(|(n, _)| n),
            config: path,
        })
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum ContextCommand {
    /// The contexts of the config file (the current one marked *); tokens are never shown
    List {
        /// Print them as JSON (without tokens)
        #[arg(long)]
        json: bool,
    },
    /// Make NAME the current context
    Use { name: String },
    /// Remove context NAME (and its token) from the config file
    Remove { name: String },
}

pub fn context(cmd: ContextCommand) -> Result<u8, Failure> {
    let path = config_path()?;
    let mut file = load(&path)?;
    match cmd {
        ContextCommand::List { json } => {
            if json {
                let list: Vec<_> = file
                    .contexts
                    .iter()
                    .map(|(name, c)| {
                        serde_json::json!({
                            "name": name, "url": c.url, "has_token": c.token.is_some(),
                            "current": file.current.as_deref() == Some(name.as_str()),
                        })
                    })
                    .collect();
                out(&serde_json::Value::Array(list).to_string());
            } else if file.contexts.is_empty() {
                eprintln!(
                    "no contexts in {} (add one with `tend login URL`)",
                    path.display()
                );
            } else {
                let rows = file
                    .contexts
                    .iter()
                    .map(|(name, c)| {
                        vec![
                            if file.current.as_deref() == Some(name.as_str()) {
                                "*".to_string()
                            } else {
                                String::new()
                            },
                            name.clone(),
                            c.url.clone(),
                            if c.token.is_some() { "yes" } else { "no" }.to_string(),
                        ]
                    })
                    .collect();
                out(super::output::table(&["CURRENT", "NAME", "URL", "TOKEN"], rows).trim_end());
            }
            Ok(0)
        }
        ContextCommand::Use { name } => {
            if !file.contexts.contains_key(&name) {
                return Err(Failure::bad_input(format!(
                    "no context {name:?} in {} (see `tend context list`)",
                    path.display()
                )));
            }
            file.current = Some(name.clone());
            save(&path, &file)?;
            eprintln!("current context: {name}");
            Ok(0)
        }
        ContextCommand::Remove { name } => {
            if file.contexts.remove(&name).is_none() {
                return Err(Failure::bad_input(format!(
                    "no context {name:?} in {} (see `tend context list`)",
                    path.display()
                )));
            }
            if file.current.as_deref() == Some(name.as_str()) {
                file.current = None;
            }
            save(&path, &file)?;
            eprintln!("removed context {name}");
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_with_an_unknown_key_names_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "current = \"prod\"\n[contexts.prod]\nurl = \"http://x\"\ntokne = \"t\"\n",
        )
        .expect("write");
        let e = load(&path).err().expect("refused");
        assert!(
            e.message.contains("config.toml:4") && e.message.contains("tokne"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_saved_config_reads_back_and_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("new/tend/config.toml");
        let mut file = ConfigFile::default();
        file.contexts.insert(
            "prod".into(),
            Context {
                url: "https://tend.example.com".into(),
                token: Some("secret".into()),
            },
        );
        file.current = Some("prod".into());
        save(&path, &file).expect("save");
        let back = load(&path).expect("load");
        assert_eq!(back.current.as_deref(), Some("prod"));
        assert_eq!(back.contexts["prod"].token.as_deref(), Some("secret"));
        assert!(!format!("{:?}", back.contexts["prod"]).contains("secret"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().expect("dir")), 0o700);
        }
    }

    #[test]
    fn urls_and_names_are_checked() {
        assert_eq!(
            check_url("http://127.0.0.1:7080/").as_deref(),
            Ok("http://127.0.0.1:7080")
        );
        assert!(check_url("127.0.0.1:7080").is_err());
        assert!(check_url("http://").is_err());
        assert!(check_name("prod-1.eu").is_ok());
        assert!(check_name("a b").is_err());
        assert!(check_name("").is_err());
    }
}
