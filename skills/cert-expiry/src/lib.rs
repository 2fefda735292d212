//! cert-expiry: when do the X.509 certificates on this machine expire?
//!
//! Input (all optional): `{"paths": ["/etc/ssl/certs"], "warn_days": 30, "critical_days": 7}`.
//! `paths` are absolute files or directories (searched recursively for `*.pem`, `*.crt` and
//! `*.cert`; symlinked directories are not followed) under a directory the manifest grants
//! with `fs_read`; `warn_days` and `critical_days` are 0-3650 with
//! `critical_days <= warn_days`.
//!
//! Certificates are parsed in the sandbox (PEM, several per file, or a single DER
//! certificate). Output: overall `status`; `checked_at` (the guest's clock, RFC 3339);
//! `certificates` soonest expiry first, each with `file`, `index` (position in the file),
//! `subject`, `issuer`, `serial` (hex), `not_before` and `not_after` (RFC 3339, UTC),
//! `days_left` (whole days until `not_after`, rounded down; negative once expired), `expired`,
//! `not_yet_valid` and `status`: `critical` when expired or `days_left <= critical_days`,
//! `warn` when `days_left <= warn_days`, else `ok`. A file or PEM block that is not a valid
//! certificate is an entry in `errors`; paths that could not be read (outside the grant,
//! missing, a symlink leading outside the grant) are in `skipped` with the reason.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tend_sdk::{Diagnose, SkillError};
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;

const MAX_PATHS: usize = 32;
const MAX_FILES: usize = 2000;
const MAX_CERTS: usize = 2000;
const MAX_ERRORS: usize = 200;
const MAX_SKIPPED: usize = 50;
const MAX_DEPTH: usize = 8;
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
const MAX_DAYS: i64 = 3650;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_paths")]
    paths: Vec<String>,
    #[serde(default = "default_warn")]
    warn_days: i64,
    #[serde(default = "default_critical")]
    critical_days: i64,
}

fn default_paths() -> Vec<String> {
    vec!["/etc/ssl/certs".into()]
}
fn default_warn() -> i64 {
    30
}
fn default_critical() -> i64 {
    7
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Critical,
}

#[derive(Serialize)]
struct Certificate {
    file: String,
    index: usize,
    subject: String,
    issuer: String,
    serial: String,
    not_before: String,
    not_after: String,
    days_left: i64,
    expired: bool,
    not_yet_valid: bool,
    status: Status,
}

#[derive(Serialize)]
struct CertError {
    file: String,
    /// Position of the PEM block in the file; `null` when the whole file is unusable.
    index: Option<usize>,
    error: String,
}

#[derive(Serialize)]
struct Skipped {
    path: String,
    reason: String,
}

#[derive(Serialize)]
struct Output {
    status: Status,
    checked_at: String,
    warn_days: i64,
    critical_days: i64,
    files_scanned: usize,
    truncated: bool,
    certificates: Vec<Certificate>,
    errors: Vec<CertError>,
    skipped: Vec<Skipped>,
    skipped_not_listed: usize,
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (proleptic Gregorian, UTC).
fn rfc3339(ts: i64) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

use tend_sdk::files::{explain, explain_input};

fn is_cert_name(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["pem", "crt", "cert"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

struct Scan {
    now: i64,
    warn_days: i64,
    critical_days: i64,
    files: BTreeSet<PathBuf>,
    files_limited: bool,
    certificates: Vec<Certificate>,
    errors: Vec<CertError>,
    skipped: Vec<Skipped>,
    skipped_not_listed: usize,
    truncated: bool,
}

impl Scan {
    fn skip(&mut self, path: &Path, reason: String) {
        if self.skipped.len() < MAX_SKIPPED {
            self.skipped.push(Skipped {
                path: path.display().to_string(),
                reason,
            });
        } else {
            self.skipped_not_listed += 1;
        }
    }

    fn error(&mut self, file: &Path, index: Option<usize>, error: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(CertError {
                file: file.display().to_string(),
                index,
                error,
            });
        } else {
            self.truncated = true;
        }
    }

    fn add_file(&mut self, path: PathBuf) {
        if self.files.len() >= MAX_FILES {
            self.files_limited = true;
        } else {
            self.files.insert(path);
        }
    }

    /// Collect certificate files under `path`. A path named explicitly is taken whatever
    /// its extension; inside directories only `*.pem`, `*.crt` and `*.cert` are.
    fn collect(&mut self, path: &Path, depth: usize) {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if depth == 0 => return self.skip(path, explain_input(path, &e)),
            Err(e) => return self.skip(path, explain(&e)),
        };
        if meta.is_file() {
            return self.add_file(path.to_path_buf());
        }
        if !meta.is_dir() {
            return self.skip(path, "not a regular file or directory".into());
        }
        if depth > MAX_DEPTH {
            return self.skip(
                path,
                format!("deeper than {MAX_DEPTH} directories; not searched"),
            );
        }
        let mut children: Vec<_> = match fs::read_dir(path) {
            Ok(d) => d.flatten().collect(),
            Err(e) => return self.skip(path, explain(&e)),
        };
        children.sort_by_key(|e| e.file_name());
        for entry in children {
            let child = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                self.collect(&child, depth + 1);
            } else if !is_cert_name(&child) {
                continue;
            } else if kind.is_file() {
                self.add_file(child);
            } else if kind.is_symlink() {
                match fs::metadata(&child) {
                    Ok(m) if m.is_file() => self.add_file(child),
                    Ok(_) => {}
                    Err(e) => {
                        let target = fs::read_link(&child)
                            .map(|t| format!(" -> {}", t.display()))
                            .unwrap_or_default();
                        self.skip(
                            &child,
                            format!("symlink{target} not followed: {}", explain(&e)),
                        )
                    }
                }
            }
        }
    }

    fn judge(&self, days_left: i64, expired: bool) -> Status {
        if expired || days_left <= self.critical_days {
            Status::Critical
        } else if days_left <= self.warn_days {
            Status::Warn
        } else {
            Status::Ok
        }
    }

    fn add_cert(&mut self, file: &Path, index: usize, cert: &X509Certificate<'_>) {
        if self.certificates.len() >= MAX_CERTS {
            self.truncated = true;
            return;
        }
        let validity = cert.validity();
        let not_before = validity.not_before.timestamp();
        let not_after = validity.not_after.timestamp();
        let expired = self.now > not_after;
        let days_left = (not_after - self.now).div_euclid(86_400);
        self.certificates.push(Certificate {
            file: file.display().to_string(),
            index,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            not_before: rfc3339(not_before),
            not_after: rfc3339(not_after),
            days_left,
            expired,
            not_yet_valid: self.now < not_before,
            status: self.judge(days_left, expired),
        });
    }

    fn read_file(&mut self, path: &Path) {
        let data = match fs::File::open(path).and_then(|f| {
            let mut data = Vec::new();
            f.take(MAX_FILE_BYTES + 1).read_to_end(&mut data)?;
            Ok(data)
        }) {
            Ok(d) => d,
            Err(e) => return self.error(path, None, format!("cannot read: {}", explain(&e))),
        };
        if data.len() as u64 > MAX_FILE_BYTES {
            return self.error(
                path,
                None,
                format!(
                    "larger than {} MiB; not a certificate file",
                    MAX_FILE_BYTES >> 20
                ),
            );
        }
        let has_pem = data.windows(11).any(|w| w == b"-----BEGIN ");
        if !has_pem {
            // A `.crt` or `.cert` may hold one DER-encoded certificate.
            match x509_parser::parse_x509_certificate(&data) {
                Ok((_, cert)) => self.add_cert(path, 0, &cert),
                Err(e) => self.error(
                    path,
                    None,
                    format!("no PEM block and not a DER certificate: {e}"),
                ),
            }
            return;
        }
        let mut certs = 0;
        let mut other_labels = BTreeSet::new();
        for (index, block) in Pem::iter_from_buffer(&data).take(MAX_CERTS).enumerate() {
            match block {
                Ok(pem) if pem.label == "CERTIFICATE" || pem.label == "TRUSTED CERTIFICATE" => {
                    match pem.parse_x509() {
                        Ok(cert) => {
                            self.add_cert(path, index, &cert);
                            certs += 1;
                        }
                        Err(e) => self.error(
                            path,
                            Some(index),
                            format!("PEM block is not a valid X.509 certificate: {e}"),
                        ),
                    }
                }
                Ok(pem) => {
                    other_labels.insert(pem.label);
                }
                Err(e) => self.error(path, Some(index), format!("invalid PEM block: {e}")),
            }
        }
        if certs == 0 && !other_labels.is_empty() {
            let found: Vec<String> = other_labels.into_iter().collect();
            self.error(
                path,
                None,
                format!("no certificate in this file (found {})", found.join(", ")),
            );
        }
    }
}

struct CertExpiry;

impl Diagnose for CertExpiry {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, SkillError> {
        let days = 0..=MAX_DAYS;
        if !days.contains(&input.warn_days)
            || !days.contains(&input.critical_days)
            || input.critical_days > input.warn_days
        {
            return Err(SkillError::new(
                "invalid-input",
                format!("thresholds must satisfy 0 <= critical_days <= warn_days <= {MAX_DAYS}"),
            ));
        }
        tend_sdk::files::check_input_paths(&input.paths, MAX_PATHS)?;
        let now = match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(_) => {
                return Err(SkillError::new(
                    "unavailable",
                    "the clock is before 1970; cannot judge expiry",
                ));
            }
        };
        let mut scan = Scan {
            now,
            warn_days: input.warn_days,
            critical_days: input.critical_days,
            files: BTreeSet::new(),
            files_limited: false,
            certificates: Vec::new(),
            errors: Vec::new(),
            skipped: Vec::new(),
            skipped_not_listed: 0,
            truncated: false,
        };
        for p in &input.paths {
            scan.collect(Path::new(p), 0);
        }
        let files: Vec<PathBuf> = std::mem::take(&mut scan.files).into_iter().collect();
        for f in &files {
            scan.read_file(f);
        }
        if scan.files_limited {
            scan.truncated = true;
            tend_sdk::log::warn(&format!(
                "more than {MAX_FILES} certificate files; only the first {MAX_FILES} were read"
            ));
        }
        scan.certificates.sort_by(|a, b| {
            a.days_left
                .cmp(&b.days_left)
                .then_with(|| a.file.cmp(&b.file))
                .then_with(|| a.index.cmp(&b.index))
        });
        let status = scan
            .certificates
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok);
        tend_sdk::log::info(&format!(
            "{} certificates in {} files; {} errors",
            scan.certificates.len(),
            files.len(),
            scan.errors.len()
        ));
        Ok(Output {
            status,
            checked_at: rfc3339(now),
            warn_days: input.warn_days,
            critical_days: input.critical_days,
            files_scanned: files.len(),
            truncated: scan.truncated,
            certificates: scan.certificates,
            errors: scan.errors,
            skipped: scan.skipped,
            skipped_not_listed: scan.skipped_not_listed,
        })
    }
}

tend_sdk::export_diagnose!(CertExpiry);
