//! Grant paths, classified by what they really reach.
//!
//! A grant is judged after normalisation (`/./root`, `//root` and `/a/../root` are `/root`;
//! `/proc/self/root/etc` is `/etc`) and by containment both ways: a grant gets the highest
//! floor of every sensitive root it is under **or contains** (`/etc` contains `/etc/shadow`,
//! `/var` contains `/var/lib`). Manifests refuse non-normalised paths outright; normalising
//! here as well means a path that slipped through is still judged by what it reaches.

use crate::Level;

/// One sensitive place and the floor it implies.
struct Sensitive {
    root: &'static str,
    level: Level,
    why: &'static str,
    /// Subtrees judged on their own (system-wide figures under `/proc`).
    except: &'static [&'static str],
}

const fn at(root: &'static str, level: Level, why: &'static str) -> Sensitive {
    Sensitive {
        root,
        level,
        why,
        except: &[],
    }
}

const PRIVATE: &str = "it may read private data";
const PROCESSES: &str = "it may read other processes' environment and command lines";
const DEVICES: &str = "device nodes give raw access to disks and memory";

/// What reading reaches. `/` itself is handled apart (the whole filesystem).
const READ: &[Sensitive] = &[
    at("/root", Level::L2, PRIVATE),
    at("/home", Level::L2, PRIVATE),
    at("/var/lib", Level::L2, PRIVATE),
    at("/var/backups", Level::L2, PRIVATE),
    at("/var/mail", Level::L2, PRIVATE),
    at("/var/spool", Level::L2, PRIVATE),
    at("/srv", Level::L2, PRIVATE),
    at("/etc/shadow", Level::L2, PRIVATE),
    at("/etc/shadow-", Level::L2, PRIVATE),
    at("/etc/gshadow", Level::L2, PRIVATE),
    at("/etc/gshadow-", Level::L2, PRIVATE),
    at("/etc/sudoers", Level::L2, PRIVATE),
    at("/etc/sudoers.d", Level::L2, PRIVATE),
    at("/etc/ssl/private", Level::L2, PRIVATE),
    at(
        "/etc/ssh",
        Level::L2,
        "it holds the host's private SSH keys",
    ),
    at("/run/secrets", Level::L2, PRIVATE),
    Sensitive {
        root: "/proc",
        level: Level::L2,
        why: PROCESSES,
        // System-wide figures and kernel settings, no per-process data.
        except: &["/proc/pressure", "/proc/sys"],
    },
    at("/proc/kcore", Level::L3, "it is the kernel's memory"),
    at(
        "/sys",
        Level::L2,
        "it exposes kernel and firmware state (e.g. EFI variables)",
    ),
    at("/dev", Level::L3, DEVICES),
];

const SYSTEM: &str = "writing system or user data directories can change anything";
const KERNEL: &str = "writing kernel settings or devices can change anything";

/// What writing reaches. `/` itself is handled apart.
const WRITE: &[Sensitive] = &[
    at("/etc", Level::L3, SYSTEM),
    at("/usr", Level::L3, SYSTEM),
    at("/bin", Level::L3, SYSTEM),
    at("/sbin", Level::L3, SYSTEM),
    at("/lib", Level::L3, SYSTEM),
    at("/lib32", Level::L3, SYSTEM),
    at("/lib64", Level::L3, SYSTEM),
    at("/libx32", Level::L3, SYSTEM),
    at("/boot", Level::L3, SYSTEM),
    at("/root", Level::L3, SYSTEM),
    at("/home", Level::L3, SYSTEM),
    at("/var/lib", Level::L3, SYSTEM),
    at(
        "/var/spool",
        Level::L3,
        "cron and mail spools run or deliver as other users",
    ),
    at("/var/backups", Level::L3, SYSTEM),
    at("/opt", Level::L3, SYSTEM),
    at("/srv", Level::L3, SYSTEM),
    at(
        "/run",
        Level::L3,
        "it holds the sockets and state of running services",
    ),
    at("/proc", Level::L3, KERNEL),
    at("/sys", Level::L3, KERNEL),
    at("/dev", Level::L3, KERNEL),
];

/// A grant path after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised {
    /// Absolute, no `.`/`..`/empty components, no trailing `/` (except `/` itself).
    pub path: String,
    /// It went through a process's view of the filesystem (`/proc/<pid>/root`, `cwd`, `fd`),
    /// which can reach anything.
    pub alias: bool,
}

/// Lexical normalisation of a grant path: `.`, empty components and `..` are resolved, and
/// `/proc/<self|thread-self|pid>/root/...` becomes the path it names. A relative path is
/// taken from `/` (it is refused at manifest validation anyway).
pub fn normalise(path: &str) -> Normalised {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut alias = false;
    // `/proc/<pid>/root/x` (and `/proc/<pid>/task/<tid>/root/x`) is `/x` as that process
    // sees it; `cwd`, `fd`, `map_files` and `exe` lead anywhere.
    loop {
        let process = match parts.as_slice() {
            ["proc", pid, "task", tid, rest @ ..] if is_process(pid) && is_process(tid) => rest,
            ["proc", pid, rest @ ..] if is_process(pid) => rest,
            _ => break,
        };
        match process {
            ["root", rest @ ..] => {
                alias = true;
                parts = rest.to_vec();
            }
            [link, ..] if ["cwd", "fd", "fdinfo", "map_files", "exe"].contains(link) => {
                alias = true;
                parts.clear();
                break;
            }
            _ => break,
        }
    }
    Normalised {
        path: format!("/{}", parts.join("/")),
        alias,
    }
}

fn is_process(part: &str) -> bool {
    part == "self"
        || part == "thread-self"
        || (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// `path` is `root` or inside it (by components, both normalised).
pub fn within(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The highest floor among the sensitive places `grant` is under or contains, with why (the
/// first such place in table order wins a tie).
fn highest(grant: &str, table: &[Sensitive]) -> Option<(Level, String)> {
    let mut best: Option<(Level, String)> = None;
    for s in table {
        let under = within(grant, s.root) && !s.except.iter().any(|e| within(grant, e));
        let contains = !under && within(s.root, grant);
        if !(under || contains) || best.as_ref().is_some_and(|(l, _)| *l >= s.level) {
            continue;
        }
        let why = if contains {
            format!("it contains {}, and {}", s.root, s.why)
        } else {
            s.why.to_string()
        };
        best = Some((s.level, why));
    }
    best
}

/// The floor of reading under `grant`, with why.
pub fn read_floor(grant: &str) -> (Level, String) {
    let n = normalise(grant);
    if n.path == "/" {
        let why = if n.alias {
            "a process's view of the filesystem reaches all of it"
        } else {
            "reading the whole filesystem is broad power"
        };
        return (Level::L3, why.to_string());
    }
    highest(&n.path, READ).unwrap_or((Level::L0, "reading is observing".to_string()))
}

/// The floor of writing under `grant`, with why.
pub fn write_floor(grant: &str) -> (Level, String) {
    let n = normalise(grant);
    if n.path == "/" {
        return (Level::L3, SYSTEM.to_string());
    }
    highest(&n.path, WRITE).unwrap_or((
        Level::L1,
        "writes under a granted directory are an adjustment".to_string(),
    ))
}
