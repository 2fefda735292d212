//! `tend:skill/host` facts agree with the real machine.

use serde_json::Value;
use tend_runtime::Outcome;

use crate::support::*;

async fn facts() -> Value {
    let (rt, _dir) = runtime();
    let skill = rt.load(&guest_bytes("hostile"), None).expect("load");
    let r = call(&rt, &skill, r#"{"do":"facts"}"#).await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    r.output.expect("output")
}

#[tokio::test]
async fn facts_match_the_machine() {
    let f = facts().await;
    let st = rustix::fs::statvfs("/").expect("statvfs /");
    assert_eq!(
        f["root"]["total"].as_u64(),
        Some(st.f_blocks * st.f_frsize),
        "{f}"
    );
    assert_eq!(f["root"]["inodes_total"].as_u64(), Some(st.f_files));
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemTotal");
    assert_eq!(f["mem_total"].as_u64(), Some(total_kib * 1024));
    let uname = rustix::system::uname();
    assert_eq!(f["hostname"], uname.nodename().to_string_lossy().as_ref());
    assert_eq!(
        f["cpus"].as_u64(),
        Some(std::thread::available_parallelism().expect("cpus").get() as u64)
    );
    assert!(!f["procs"].as_array().expect("procs").is_empty());
}

#[tokio::test]
async fn unit_status_degrades_clearly_without_systemd() {
    let f = facts().await;
    if std::path::Path::new("/run/systemd/system").is_dir() {
        // With systemd, a missing unit is reported by systemctl as not-found.
        assert!(
            f["unit"]["active"].is_string() || f["unit"]["code"].is_string(),
            "{f}"
        );
    } else {
        assert_eq!(f["unit"]["code"], "unavailable", "{f}");
        assert!(
            f["unit"]["message"]
                .as_str()
                .expect("msg")
                .contains("systemd")
        );
    }
}
