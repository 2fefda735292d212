//! Reading system facts from the real machine: /proc, statvfs, /etc/os-release, systemctl.
//!
//! Parsers take text so they can be tested with fixed samples; the readers feed them the
//! live files. A missing file degrades to `None`/empty, never to a panic.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bindings::host::{
    Filesystem, LoadInfo, MemoryInfo, Pressure, PressureResource, Process, ProcessSort, SystemInfo,
    UnitInfo,
};

fn read(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

fn uptime_seconds() -> f64 {
    read("/proc/uptime")
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

pub fn system() -> SystemInfo {
    let uname = rustix::system::uname();
    let text = |c: &std::ffi::CStr| c.to_string_lossy().into_owned();
    let uptime = uptime_seconds();
    SystemInfo {
        hostname: text(uname.nodename()),
        kernel_release: text(uname.release()),
        kernel_version: text(uname.version()),
        arch: text(uname.machine()),
        os_name: read("/etc/os-release").and_then(|s| parse_os_release_pretty_name(&s)),
        uptime_seconds: uptime,
        boot_time: (now_unix() - uptime).max(0.0) as u64,
    }
}

pub fn parse_os_release_pretty_name(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
}

pub fn cpu_count() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

pub fn load() -> LoadInfo {
    parse_loadavg(&read("/proc/loadavg").unwrap_or_default(), cpu_count())
}

pub fn parse_loadavg(text: &str, cpu_count: u32) -> LoadInfo {
    let mut f = text.split_whitespace();
    let mut num = || f.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let (one, five, fifteen) = (num(), num(), num());
    let (runnable, total) = text
        .split_whitespace()
        .nth(3)
        .and_then(|t| t.split_once('/'))
        .map(|(r, t)| (r.parse().unwrap_or(0), t.parse().unwrap_or(0)))
        .unwrap_or((0, 0));
    LoadInfo {
        one,
        five,
        fifteen,
        cpu_count,
        runnable_tasks: runnable,
        total_tasks: total,
    }
}

pub fn pressure(resource: PressureResource) -> Option<Pressure> {
    let name = match resource {
        PressureResource::Cpu => "cpu",
        PressureResource::Memory => "memory",
        PressureResource::Io => "io",
    };
    parse_pressure(&read(format!("/proc/pressure/{name}"))?)
}

pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let line = |kind: &str| -> Option<HashMap<&str, &str>> {
        let l = text.lines().find(|l| l.starts_with(kind))?;
        Some(
            l.split_whitespace()
                .skip(1)
                .filter_map(|kv| kv.split_once('='))
                .collect(),
        )
    };
    let f = |m: &HashMap<&str, &str>, k: &str| m.get(k).and_then(|v| v.parse::<f64>().ok());
    let u = |m: &HashMap<&str, &str>, k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
    let some = line("some")?;
    let full = line("full");
    Some(Pressure {
        some_avg10: f(&some, "avg10")?,
        some_avg60: f(&some, "avg60")?,
        some_avg300: f(&some, "avg300")?,
        some_total_us: u(&some, "total")?,
        full_avg10: full.as_ref().and_then(|m| f(m, "avg10")),
        full_avg60: full.as_ref().and_then(|m| f(m, "avg60")),
        full_avg300: full.as_ref().and_then(|m| f(m, "avg300")),
        full_total_us: full.as_ref().and_then(|m| u(m, "total")),
    })
}

pub fn memory() -> MemoryInfo {
    let oom = read("/proc/vmstat").and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
    });
    let mut info = parse_meminfo(&read("/proc/meminfo").unwrap_or_default());
    info.pressure = pressure(PressureResource::Memory);
    info.oom_kills = oom;
    info
}

pub fn parse_meminfo(text: &str) -> MemoryInfo {
    let map: HashMap<&str, u64> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kib: u64 = v.split_whitespace().next()?.parse().ok()?;
            Some((k.trim(), kib * 1024))
        })
        .collect();
    let g = |k: &str| map.get(k).copied().unwrap_or(0);
    MemoryInfo {
        total_bytes: g("MemTotal"),
        available_bytes: g("MemAvailable"),
        free_bytes: g("MemFree"),
        buffers_bytes: g("Buffers"),
        cached_bytes: g("Cached"),
        swap_total_bytes: g("SwapTotal"),
        swap_free_bytes: g("SwapFree"),
        pressure: None,
        oom_kills: None,
    }
}

/// Filesystem types that describe no storage and are skipped.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "rpc_pipefs",
    "nsfs",
    "efivarfs",
    "selinuxfs",
];

pub fn filesystems() -> Vec<Filesystem> {
    let mounts = read("/proc/self/mounts").unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (device, mount_point, fs_type, read_only) in parse_mounts(&mounts) {
        if PSEUDO_FS.contains(&fs_type.as_str()) || !seen.insert(mount_point.clone()) {
            continue;
        }
        let Ok(st) = rustix::fs::statvfs(mount_point.as_str()) else {
            continue;
        };
        let frsize = if st.f_frsize > 0 {
            st.f_frsize
        } else {
            st.f_bsize
        };
        let total = st.f_blocks.saturating_mul(frsize);
        if total == 0 {
            continue;
        }
        out.push(Filesystem {
            device,
            mount_point,
            fs_type,
            read_only,
            total_bytes: total,
            used_bytes: st
                .f_blocks
                .saturating_sub(st.f_bfree)
                .saturating_mul(frsize),
            available_bytes: st.f_bavail.saturating_mul(frsize),
            inodes_total: st.f_files,
            inodes_used: st.f_files.saturating_sub(st.f_ffree),
            inodes_free: st.f_ffree,
        });
    }
    out
}

/// `(device, mount point, type, read-only)` per line of /proc/self/mounts, octal escapes decoded.
pub fn parse_mounts(text: &str) -> Vec<(String, String, String, bool)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let device = unescape_mount(f.next()?);
            let mount = unescape_mount(f.next()?);
            let fs_type = f.next()?.to_string();
            let ro = f.next()?.split(',').any(|o| o == "ro");
            Some((device, mount, fs_type, ro))
        })
        .collect()
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Fields of /proc/<pid>/stat that matter here.
#[derive(Debug, PartialEq)]
pub struct ProcStat {
    pub name: String,
    pub state: String,
    pub ppid: u32,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub threads: u32,
    pub start_ticks: u64,
    pub rss_pages: u64,
}

pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    // The name is in parentheses and may itself contain spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        name,
        state: rest.first()?.to_string(),
        ppid: field(4)? as u32,
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        threads: field(20)? as u32,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

fn users() -> HashMap<u32, String> {
    read("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

/// What every process reading needs once: page size, uptime, boot time and user names.
struct ProcContext {
    page: u64,
    uptime: f64,
    boot: f64,
    users: HashMap<u32, String>,
}

impl ProcContext {
    fn new() -> Self {
        let uptime = uptime_seconds();
        ProcContext {
            page: rustix::param::page_size() as u64,
            uptime,
            boot: now_unix() - uptime,
            users: users(),
        }
    }

    fn read(&self, pid: u32) -> Option<Process> {
        const TICKS: f64 = 100.0; // USER_HZ is 100 on every Linux ABI Tend supports.
        let dir = Path::new("/proc").join(pid.to_string());
        let stat = parse_proc_stat(&read(dir.join("stat"))?)?;
        let uid = read(dir.join("status"))
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("Uid:")?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
            })
            .unwrap_or(u32::MAX);
        let cpu_secs = (stat.utime_ticks + stat.stime_ticks) as f64 / TICKS;
        let started_secs = stat.start_ticks as f64 / TICKS;
        let alive = (self.uptime - started_secs).max(0.01);
        Some(Process {
            pid,
            ppid: stat.ppid,
            name: stat.name,
            uid,
            user: self.users.get(&uid).cloned(),
            state: stat.state,
            cpu_percent: (cpu_secs / alive * 100.0 * 100.0).round() / 100.0,
            cpu_time_ms: (cpu_secs * 1000.0) as u64,
            rss_bytes: stat.rss_pages * self.page,
            threads: stat.threads,
            start_time: (self.boot + started_secs).max(0.0) as u64,
        })
    }
}

pub fn process(pid: u32) -> Option<Process> {
    ProcContext::new().read(pid)
}

pub fn processes(sort: ProcessSort, limit: u32) -> Vec<Process> {
    let ctx = ProcContext::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<Process> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| ctx.read(pid)) // a process that exited meanwhile is skipped
        .collect();
    match sort {
        ProcessSort::Cpu => out.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent)),
        ProcessSort::Rss => out.sort_by_key(|p| std::cmp::Reverse(p.rss_bytes)),
    }
    out.truncate(limit.min(200) as usize);
    out
}

/// Whether this machine runs systemd as its init (the test `sd_booted()` uses).
pub fn systemd_available() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// A unit name systemctl would accept, without anything a shell or option parser could see.
pub fn valid_unit_name(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:\\".contains(&b))
}

pub fn parse_unit_show(unit: &str, text: &str) -> UnitInfo {
    let map: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let s = |k: &str| map.get(k).map(|v| v.to_string()).unwrap_or_default();
    let nonzero_u32 = |k: &str| map.get(k).and_then(|v| v.parse::<u32>().ok());
    UnitInfo {
        name: unit.to_string(),
        load_state: s("LoadState"),
        active_state: s("ActiveState"),
        sub_state: s("SubState"),
        main_pid: nonzero_u32("MainPID").filter(|p| *p != 0),
        restarts: nonzero_u32("NRestarts"),
        active_enter_timestamp_us: map
            .get("ActiveEnterTimestampMonotonic")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v != 0)
            .map(|mono| {
                let boot_us = (now_unix() - uptime_seconds()) * 1e6;
                (boot_us + mono as f64) as u64
            }),
        last_result: map.get("Result").map(|v| v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg() {
        let l = parse_loadavg("0.52 0.58 0.59 3/467 12345\n", 2);
        assert_eq!((l.one, l.five, l.fifteen), (0.52, 0.58, 0.59));
        assert_eq!((l.runnable_tasks, l.total_tasks, l.cpu_count), (3, 467, 2));
    }

    #[test]
    fn psi_with_and_without_full() {
        let p = parse_pressure(
            "some avg10=1.50 avg60=0.20 avg300=0.00 total=1234\nfull avg10=0.10 avg60=0.00 avg300=0.00 total=99\n",
        )
        .expect("psi");
        assert_eq!(p.some_avg10, 1.5);
        assert_eq!(p.full_total_us, Some(99));
        let cpu = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").expect("psi");
        assert_eq!(cpu.full_avg10, None);
    }

    #[test]
    fn meminfo_in_bytes() {
        let m =
            parse_meminfo("MemTotal:       16384 kB\nMemAvailable:    8192 kB\nSwapTotal: 0 kB\n");
        assert_eq!(m.total_bytes, 16384 * 1024);
        assert_eq!(m.available_bytes, 8192 * 1024);
        assert_eq!(m.swap_total_bytes, 0);
    }

    #[test]
    fn stat_with_spaces_and_parens_in_name() {
        let text = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 9000 1000000 512 18446744073709551615";
        let s = parse_proc_stat(text).expect("parses");
        assert_eq!(s.name, "my (odd) proc");
        assert_eq!(s.state, "S");
        assert_eq!((s.ppid, s.utime_ticks, s.stime_ticks), (1, 250, 50));
        assert_eq!((s.threads, s.start_ticks, s.rss_pages), (3, 9000, 512));
    }

    #[test]
    fn mounts_unescape_spaces() {
        let m = parse_mounts("/dev/sda1 /mnt/my\\040disk ext4 ro,relatime 0 0\n");
        assert_eq!(m[0].1, "/mnt/my disk");
        assert!(m[0].3);
    }

    #[test]
    fn unit_names() {
        assert!(valid_unit_name("nginx.service"));
        assert!(valid_unit_name("getty@tty1.service"));
        assert!(!valid_unit_name("--help"));
        assert!(!valid_unit_name("a;b"));
        assert!(!valid_unit_name(""));
    }

    #[test]
    fn unit_show() {
        let u = parse_unit_show(
            "nginx.service",
            "LoadState=loaded\nActiveState=failed\nSubState=failed\nMainPID=0\nNRestarts=4\nResult=exit-code\n",
        );
        assert_eq!(u.active_state, "failed");
        assert_eq!(u.main_pid, None);
        assert_eq!(u.restarts, Some(4));
        assert_eq!(u.last_result.as_deref(), Some("exit-code"));
    }

    #[test]
    fn live_facts_are_plausible() {
        let m = memory();
        assert!(m.total_bytes > 0 && m.available_bytes <= m.total_bytes);
        assert!(load().cpu_count >= 1);
        assert!(!system().hostname.is_empty());
        assert!(filesystems().iter().any(|f| f.mount_point == "/"));
        let me = process(std::process::id()).expect("this process");
        assert_eq!(me.pid, std::process::id());
        assert!(me.rss_bytes > 0);
        assert!(process(u32::MAX).is_none());
        let p = processes(ProcessSort::Rss, 5);
        assert!(!p.is_empty() && p.len() <= 5);
        assert!(p.windows(2).all(|w| w[0].rss_bytes >= w[1].rss_bytes));
    }
}
