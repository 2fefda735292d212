//! `tend login URL`: check a token against an orchestrator, then save it as a named context
//! and make that context current.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::Value;

use super::config::{self, Context, Resolved};
use super::http::Client;
use crate::{Failure, exit};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    tend login https://tend.example.com                 (asks for the token, not echoed)\n  \
    tend login http://127.0.0.1:7080 --context dev < token.txt\n\n\
    The token is checked against the orchestrator first, then saved in the config file\n\
    ($TEND_CONFIG, else $XDG_CONFIG_HOME/tend/config.toml, else ~/.config/tend/config.toml;\n\
    0600, in a 0700 directory) as the context's token, and the context becomes current.")]
pub struct LoginArgs {
    /// The orchestrator's URL
    url: String,
    /// The API token [default: read from stdin, or asked for on a terminal]
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// The context's name [default: the URL's host]
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
}

/// A context name from a URL: its host and port, with `:` as `-`.
fn name_for(url: &str) -> String {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "default".into()
    } else {
        name
    }
}

/// The token from stdin: asked for without echo on a terminal, else its first line.
fn read_token(url: &str) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    let line = if stdin.is_terminal() {
        eprint!("API token for {url}: ");
        let _ = std::io::stderr().flush();
        // No echo while it is typed: `stty` on the terminal, restored after.
        let echo_off = std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success());
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        if echo_off {
            let _ = std::process::Command::new("stty")
                .arg("echo")
                .stdin(std::process::Stdio::inherit())
                .status();
        }
        eprintln!();
        read.map_err(|e| Failure::bad_input(format!("cannot read the token: {e}")))?;
        line
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::bad_input(format!("cannot read the token from stdin: {e}")))?;
        line
    };
    Ok(line.trim().to_string())
}

pub async fn login(args: LoginArgs) -> Result<u8, Failure> {
    let url = config::check_url(&args.url).map_err(Failure::bad_input)?;
    let name = args.context.clone().unwrap_or_else(|| name_for(&url));
    config::check_name(&name).map_err(|e| Failure::bad_input(format!("--context: {e}")))?;
    let path = config::config_path()?;
    // Read (and so check) the file before asking for anything.
    let mut file = config::load(&path)?;
    let token = match args.token.clone() {
        Some(t) => t,
        None => read_token(&url)?,
    };
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(Failure::bad_input(
            "no token given (pass --token TOKEN, or type or pipe it in)",
        ));
    }
    let client = Client::new(Resolved {
        url: url.clone(),
        token: token.clone(),
        context: None,
        config: path.clone(),
    })?;
    let status: Value = client.get("/api/v1/status").await?;
    file.contexts.insert(
        name.clone(),
        Context {
            url: url.clone(),
            token: Some(token),
        },
    );
    file.current = Some(name.clone());
    config::save(&path, &file)?;
    eprintln!(
        "logged in to {url} (orchestrator {}, target {}); context {name} saved in {} and current",
        status["version"].as_str().unwrap_or("?"),
        status["target"].as_str().unwrap_or("?"),
        path.display()
    );
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_context_is_named_after_its_host() {
        assert_eq!(super::name_for("http://127.0.0.1:7080"), "127.0.0.1-7080");
        assert_eq!(
            super::name_for("https://tend.example.com/"),
            "tend.example.com"
        );
    }
}
