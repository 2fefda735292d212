//! `tend up`: one command to a working Tend on this machine, and again to the same one.
//!
//! Each test runs the real binary with its own data directory and HOME (so the person's
//! approver key and client config are its own), on free loopback ports, with a small catalog
//! (two skills copied from `skills/`, components built) so that it stays quick.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::support::{repo_root, tend};

/// A running `tend up` and what it printed until it was ready.
pub(crate) struct Up {
    child: Child,
    pub(crate) lines: mpsc::Receiver<String>,
    printed: Vec<String>,
}

impl Up {
    pub(crate) fn value(&self, key: &str) -> String {
        self.printed
            .iter()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(key)
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {key:?} in {:#?}", self.printed))
    }

    pub(crate) fn url(&self) -> String {
        self.value("console").trim_end_matches('/').to_string()
    }

    /// Ctrl-C: everything stops cleanly; returns the rest of what it printed.
    pub(crate) fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        let status = self.child.wait().expect("wait");
        let rest: Vec<String> = self.lines.try_iter().collect();
        assert_eq!(status.code(), Some(0), "tend up after Ctrl-C: {rest:#?}");
        rest
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Place {
    _tmp: tempfile::TempDir,
    pub(crate) home: PathBuf,
    pub(crate) dir: PathBuf,
    catalog: PathBuf,
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let name = e.file_name();
        if name == "target" || name == "dist" {
            continue;
        }
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).expect("copy");
        }
    }
}

/// A data directory, a HOME, and a catalog of disk-usage and clean-old-logs (sources first,
/// then the built components, so they are newer and not rebuilt).
pub(crate) fn place() -> Place {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let catalog = tmp.path().join("catalog");
    for skill in ["disk-usage", "clean-old-logs"] {
        let from = repo_root().join("skills").join(skill);
        copy_tree(&from, &catalog.join(skill));
        copy_tree(&from.join("dist"), &catalog.join(skill).join("dist"));
    }
    std::fs::create_dir_all(&home).expect("home");
    Place {
        dir: tmp.path().join("up"),
        home,
        catalog,
        _tmp: tmp,
    }
}

pub(crate) fn command(p: &Place, extra: &[&str]) -> Command {
    command_in(p, &p.dir, extra)
}

/// `tend up` as the place's person, with another `--dir`.
pub(crate) fn command_in(p: &Place, dir: &Path, extra: &[&str]) -> Command {
    let mut c = tend();
    c.env("HOME", &p.home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TEND_CONFIG")
        .env_remove("TEND_KEY")
        .env_remove("TEND_URL")
        .env_remove("TEND_TOKEN")
        .env_remove("TEND_CACHE_DIR")
        .args(["up", "--dir"])
        .arg(dir)
        .args(["--agent-name", "up-agent"])
        .args(extra);
    if !extra.contains(&"--catalog") {
        c.arg("--catalog").arg(&p.catalog);
    }
    if !extra.contains(&"--listen") {
        c.args(["--listen", "127.0.0.1:0"]);
    }
    if !extra.contains(&"--registry-listen") {
        c.args(["--registry-listen", "127.0.0.1:0"]);
    }
    c
}

/// Start `tend up` and read what it says until it is ready (or panic with all of it).
pub(crate) fn start(p: &Place) -> Up {
    let mut child = command(p, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tend up");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(300)) {
            Ok(line) => {
                let ready = line.starts_with("Ctrl-C stops Tend");
                printed.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => panic!("tend up did not get ready: {printed:#?}"),
        }
    }
    Up {
        child,
        lines,
        printed,
    }
}

/// The client, as the person who ran `tend up` (its context `up`).
fn client(p: &Place, args: &[&str]) -> (i32, String, String) {
    let o = tend()
        .env("HOME", &p.home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TEND_CONFIG")
        .env_remove("TEND_URL")
        .env_remove("TEND_TOKEN")
        .args(args)
        .output()
        .expect("tend");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn tend_up_starts_everything_once_and_reuses_it_after() {
    let p = place();
    let up = start(&p);
    let said = up.printed.join("\n");
    for want in [
        "first run",
        "made the local publisher key",
        "made your approver key",
        "published and precompiling clean-old-logs",
        "published and precompiling disk-usage",
        "enrolled the local agent up-agent",
        "healing policies, switched off",
    ] {
        assert!(said.contains(want), "{want:?} in {said}");
    }
    let token = up.value("admin token");
    assert!(token.starts_with("tend_"), "{token}");
    let url = up.url();

    // The client is logged in (context `up`); a diagnose skill runs on the local agent.
    let (code, out, err) = client(
        &p,
        &[
            "invoke",
            "disk-usage",
            "--target",
            "agent:up-agent",
            "--input",
            "{}",
            "--wait",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let inv: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(inv["state"], "succeeded", "{inv}");
    let id = inv["id"].as_str().expect("id").to_string();

    // The example healing policies are there, every one switched off.
    let policies: Value = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            reqwest::Client::new()
                .get(format!("{url}/api/v1/healing/policies"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await
        })
        .expect("policies");
    let text = policies["text"].as_str().expect("text");
    let config = tend_orchestrator::healing::parse(text, "served").expect("parses");
    assert!(config.policies.len() >= 5, "{text}");
    assert!(config.policies.iter().all(|p| !p.policy.enabled), "{text}");
    // `tend healing`: switch a policy on; a bad file or a stale version changes nothing.
    let (code, out, err) = client(&p, &["healing", "show", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["version"], 1, "{shown}");
    let text = shown["text"].as_str().expect("text");
    let first = text.find("enabled = false").expect("a policy switched off");
    let on = format!(
        "{}enabled = true{}",
        &text[..first],
        &text[first + "enabled = false".len()..]
    );
    let file = p.home.join("healing.toml");
    std::fs::write(&file, &on).expect("write");
    let set = |args: &[&str]| client(&p, &[&["healing", "set"], args].concat());
    let (code, out, err) = set(&[file.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("version 2 is in force"), "{err}");
    std::fs::write(
        &file,
        format!("{on}\n[[policy]]\nname = \"x\"\nmatch = {{}}\n"),
    )
    .expect("write");
    let (code, _, err) = set(&[file.to_str().expect("path")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("match"), "{err}");
    std::fs::write(&file, &on).expect("write");
    let (code, _, err) = set(&[file.to_str().expect("path"), "--replaces", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("version 2 is in force"), "{err}");
    let (_, out, _) = client(&p, &["healing", "show", "--json"]);
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["version"], 2, "nothing changed: {shown}");
    let config = tend_orchestrator::healing::parse(shown["text"].as_str().expect("text"), "v2")
        .expect("parses");
    assert_eq!(
        config.policies.iter().filter(|p| p.policy.enabled).count(),
        1
    );

    // An approver the admin registers counts on the local agent too: its trust policy follows.
    let key = p.home.join("rosa.key");
    let (code, out, err) = client(&p, &["key", "gen", "--out", key.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = client(
        &p,
        &[
            "approver",
            "add",
            "rosa",
            "--key",
            key.to_str().expect("path"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let trust = p.dir.join("trust.toml");
    let mut trusted = String::new();
    for _ in 0..300 {
        trusted = std::fs::read_to_string(&trust).expect("trust.toml");
        if trusted.contains("\"rosa\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let policy = tend_registry::trust::TrustPolicy::parse(&trusted, "trust.toml").expect("parses");
    let names: Vec<&str> = policy.approvers.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["admin", "rosa"], "{trusted}");
    assert_eq!(policy.publishers.len(), 1, "the publisher stays: {trusted}");

    let rest = up.stop().join("\n");
    assert!(rest.contains("Tend stopped"), "{rest}");
    assert!(rest.contains("restarting the local agent"), "{rest}");

    // Again: nothing is made or published twice, the token is not shown again, and what was
    // done before is still there.
    // A skill whose manifest changed without a new version: said, and the published one stays.
    let manifest = p.catalog.join("disk-usage/skill.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, format!("{text}\n# edited\n")).expect("edit");
    let wasm = p.catalog.join("disk-usage/dist/disk-usage-0.1.0.wasm");
    std::fs::File::options()
        .write(true)
        .open(&wasm)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .expect("the component stays newer than its sources");

    let again = start(&p);
    let said = again.printed.join("\n");
    assert!(
        said.contains("warning: disk-usage 0.1.0's manifest changed")
            && said.contains("raise the version"),
        "{said}"
    );
    for unwanted in ["first run:", "made ", "published", "enrolled", "tend_"] {
        assert!(!said.contains(unwanted), "{unwanted:?} in {said}");
    }
    let (code, out, err) = client(&p, &["status", &id, "--json"]);
    assert_eq!(code, 0, "the context follows the new address: {out}{err}");
    assert!(out.contains("\"succeeded\""), "{out}");
    again.stop();

    // --reset asks; without a terminal or --yes it deletes nothing.
    let o = command(&p, &["--reset"])
        .stdin(Stdio::null())
        .output()
        .expect("tend up --reset");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not resetting") && err.contains("--yes"),
        "{err}"
    );
    assert!(p.dir.join("orchestrator.db").exists());
}

#[test]
fn tend_up_says_which_port_is_taken_and_starts_nothing() {
    let p = place();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").to_string();
    let o = command(&p, &["--registry-listen", &port])
        .stdin(Stdio::null())
        .output()
        .expect("tend up");
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("cannot listen on {port}")), "{err}");
    assert!(!p.dir.exists(), "nothing was made");
}

/// The README's self-healing demo, as a person runs it against their `tend up`: a tmpfs fills
/// with rotated logs, Prometheus and Alertmanager (Debian's) report it, and Tend heals it
/// without a person (`scripts/demo-heal`, as root).
#[test]
fn the_self_healing_demo_heals_a_full_disk_on_a_running_tend_up() {
    let p = place();
    let up = start(&p);
    let o = Command::new(repo_root().join("scripts/demo-heal"))
        .env("HOME", &p.home)
        .env("TEND", crate::support::target_dir().join("debug/tend"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TEND_CONFIG")
        .env_remove("TEND_URL")
        .env_remove("TEND_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("scripts/demo-heal");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{said}");
    for want in [
        "resolved healed",
        "diagnosed  diagnosis: disk-usage",
        "runs without a person",
        "silenced",
        "put the healing policies back",
    ] {
        assert!(said.contains(want), "{want:?} in {said}");
    }
    let (_, out, _) = client(&p, &["healing", "show", "--json"]);
    let shown: Value = serde_json::from_str(&out).expect("json");
    let config = tend_orchestrator::healing::parse(shown["text"].as_str().expect("text"), "now")
        .expect("parses");
    assert!(
        config.policies.iter().all(|p| !p.policy.enabled),
        "put back: {shown}"
    );
    assert!(
        !Path::new("/var/log/tend-demo/app.log").exists(),
        "unmounted"
    );
    up.stop();
}
