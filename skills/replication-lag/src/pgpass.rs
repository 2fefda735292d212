//! libpq's password file (`.pgpass`): `hostname:port:database:username:password` per line,
//! `*` in any of the first four fields matches anything, `\:` and `\\` stand for `:` and `\`,
//! lines starting with `#` are comments, and the first matching line wins.
//!
//! Passwords come only from here, never from the input: inputs are stored, audited and shown
//! to approvers.

use std::io::Read;

/// A password file larger than this is refused rather than read into memory.
const MAX_FILE_BYTES: u64 = 256 * 1024;

pub struct Entry {
    fields: [String; 4],
    password: String,
}

pub struct PassFile {
    entries: Vec<Entry>,
}

impl PassFile {
    /// Read and parse the file at `path` (granted through `capabilities.fs_read`).
    pub fn read(path: &str) -> Result<PassFile, String> {
        let file = std::fs::File::open(path).map_err(|e| {
            format!(
                "cannot read passfile {path}: {}",
                tend_sdk::files::explain_input(std::path::Path::new(path), &e)
            )
        })?;
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read passfile {path}: {e}"))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(format!(
                "passfile {path} is larger than {} KiB",
                MAX_FILE_BYTES / 1024
            ));
        }
        Ok(PassFile::parse(&text))
    }

    pub fn parse(text: &str) -> PassFile {
        let entries = text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        PassFile { entries }
    }

    /// The password of the first line matching this connection, as libpq picks it.
    pub fn lookup(&self, host: &str, port: u16, database: &str, user: &str) -> Option<&str> {
        let port = port.to_string();
        let wanted = [host, port.as_str(), database, user];
        self.entries
            .iter()
            .find(|e| {
                e.fields
                    .iter()
                    .zip(wanted)
                    .all(|(field, value)| field == "*" || field == value)
            })
            .map(|e| e.password.as_str())
    }
}

/// Split one line into its five fields, undoing `\:` and `\\`; a line with fewer fields is
/// ignored (as libpq does). The password runs from the fourth separator to the next unescaped
/// `:` or the end of the line.
fn parse_line(line: &str) -> Option<Entry> {
    let mut fields: Vec<String> = Vec::with_capacity(5);
    let mut current = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut current)),
            // libpq ends the password at an unescaped `:`.
            ':' => break,
            _ => current.push(c),
        }
    }
    if fields.len() < 4 {
        return None;
    }
    let password = current;
    let fields: [String; 4] = fields.try_into().ok()?;
    Some(Entry { fields, password })
}
