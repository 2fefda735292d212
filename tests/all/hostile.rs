//! Guests that try to take more than they are given: CPU, time, memory, output, state.

use tend_runtime::{LimitOverrides, Outcome};

use crate::support::*;

/// A skill whose `run` never returns.
fn looping_skill(rt: &tend_runtime::Runtime) -> tend_runtime::LoadedSkill {
    rt.load(
        &wat_skill(&wat_module("", "(loop $l (br $l)) (unreachable)")),
        None,
    )
    .expect("load")
}

#[tokio::test]
async fn infinite_loop_runs_out_of_fuel() {
    let (rt, _dir) = runtime();
    let skill = looping_skill(&rt);
    let r = call_with(
        &rt,
        &skill,
        "{}",
        LimitOverrides {
            fuel: Some(5_000_000),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::OutOfFuel, "{:?}", r.error);
    assert_eq!(r.fuel_consumed, 5_000_000);
    assert_eq!(r.error.expect("error").code, "out-of-fuel");
}

#[tokio::test]
async fn spinning_with_ample_fuel_times_out() {
    let (rt, _dir) = runtime();
    let skill = looping_skill(&rt);
    let r = call_with(
        &rt,
        &skill,
        "{}",
        LimitOverrides {
            fuel: Some(u64::MAX),
            timeout_ms: Some(200),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Timeout, "{:?}", r.error);
    assert!(
        r.notes.iter().any(|n| n.contains("fuel clamped")),
        "{:?}",
        r.notes
    );
}

#[tokio::test]
async fn waiting_guest_times_out() {
    let (rt, _dir) = runtime();
    let skill = rt.load(&guest_bytes("hostile"), None).expect("load");
    let r = call_with(
        &rt,
        &skill,
        r#"{"do":"sleep"}"#,
        LimitOverrides {
            timeout_ms: Some(200),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Timeout, "{:?}", r.error);
    // It was stopped, not left sleeping: the report is back well before its hour is up.
    assert!(r.duration_us < 60_000_000);
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_limit() {
    let (rt, _dir) = runtime();
    let bomb = wat_module(
        "",
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (unreachable)",
    );
    let skill = rt.load(&wat_skill(&bomb), None).expect("load");
    let r = call_with(
        &rt,
        &skill,
        "{}",
        LimitOverrides {
            memory_mib: Some(8),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::MemoryLimit, "{:?}", r.error);
    assert!(
        r.peak_memory_bytes <= 8 * 1024 * 1024,
        "peak {}",
        r.peak_memory_bytes
    );
    assert!(
        r.peak_memory_bytes > 4 * 1024 * 1024,
        "peak {}",
        r.peak_memory_bytes
    );
}

#[tokio::test]
async fn huge_return_value_hits_the_output_limit() {
    let (rt, _dir) = runtime();
    let huge = wat_module(
        "",
        "(drop (memory.grow (i32.const 32))) (call $ok (i32.const 65536) (i32.const 2097152))",
    );
    let skill = rt.load(&wat_skill(&huge), None).expect("load");
    let r = call(&rt, &skill, "{}").await;
    assert_eq!(r.outcome, Outcome::OutputLimit, "{:?}", r.error);
    assert!(r.output.is_none());
    assert!(r.error.expect("error").message.contains("2097152 bytes"));
}

#[tokio::test]
async fn stdout_flood_is_truncated_not_buffered() {
    let (rt, _dir) = runtime();
    let skill = rt.load(&guest_bytes("hostile"), None).expect("load");
    let r = call_with(
        &rt,
        &skill,
        r#"{"do":"flood","bytes":20000000}"#,
        LimitOverrides {
            output_kib: Some(64),
            fuel: Some(10_000_000_000),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    assert_eq!(r.stdout.len(), 64 * 1024);
    assert!(
        r.stdout_dropped_bytes >= 20_000_000 - 64 * 1024,
        "{}",
        r.stdout_dropped_bytes
    );
    assert!(
        r.stderr.contains("flooded"),
        "stderr still captured: {:?}",
        r.stderr
    );
    assert!(r.notes.iter().any(|n| n.starts_with("stdout truncated")));
}

#[tokio::test]
async fn log_flood_is_bounded() {
    let (rt, _dir) = runtime();
    let skill = rt.load(&guest_bytes("hostile"), None).expect("load");
    let r = call(&rt, &skill, r#"{"do":"log","bytes":5000}"#).await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    assert_eq!(r.logs.len(), 1000);
    assert_eq!(r.logs_dropped, 4000);
    assert_eq!(r.logs[0].message, "line 0");
}

const COUNTER: &str = r#"
  (global $n (mut i32) (i32.const 0))
  (data (i32.const 1024) "{\"n\":0,\"m\":0}")"#;
const COUNT_BODY: &str = r#"
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (i32.store8 (i32.const 1029) (i32.add (i32.const 48) (global.get $n)))
    (i32.store8 (i32.const 1035) (i32.add (i32.const 48) (i32.load8_u (i32.const 2048))))
    (i32.store8 (i32.const 2048) (i32.const 1))
    (if (i32.ne (local.get $in_len) (i32.const 2)) (then unreachable))
    (call $ok (i32.const 1024) (i32.const 13))"#;

#[tokio::test]
async fn every_invocation_sees_fresh_state_even_after_a_trap() {
    let (rt, _dir) = runtime();
    assert!(rt.pooling(), "these checks are about reused pool slots");
    let skill = rt
        .load(&wat_skill(&wat_module(COUNTER, COUNT_BODY)), None)
        .expect("load");
    for round in 0..20 {
        let r = call(&rt, &skill, "{}").await;
        assert_eq!(r.outcome, Outcome::Ok, "round {round}: {:?}", r.error);
        assert_eq!(
            r.output,
            Some(serde_json::json!({"n": 1, "m": 0})),
            "round {round}: a global or memory survived"
        );
        // Same code, input that makes it trap after dirtying its global and memory.
        let r = call(&rt, &skill, "[1]").await;
        assert_eq!(r.outcome, Outcome::Trap, "round {round}");
        assert!(r.error.expect("error").message.contains("unreachable"));
    }
}

#[tokio::test]
async fn a_panicking_rust_guest_is_a_trap_and_the_next_call_works() {
    let (rt, _dir) = runtime();
    let skill = rt.load(&guest_bytes("hostile"), None).expect("load");
    let r = call(&rt, &skill, r#"{"do":"panic"}"#).await;
    assert_eq!(r.outcome, Outcome::Trap);
    assert!(r.stderr.contains("panics on purpose"), "{}", r.stderr);
    let r = call(&rt, &skill, r#"{"do":"calls"}"#).await;
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(r.output, Some(serde_json::json!({"calls": 1})));
}

#[tokio::test]
async fn a_skill_error_is_data_not_a_crash() {
    let (rt, _dir) = runtime();
    let skill = rt.load(&guest_bytes("trivial"), None).expect("load");
    let r = call(&rt, &skill, r#"{"fail":true}"#).await;
    assert_eq!(r.outcome, Outcome::SkillError);
    assert_eq!(r.error.expect("error").code, "asked-to-fail");
}

#[tokio::test]
async fn input_that_is_not_json_never_reaches_the_guest() {
    let (rt, _dir) = runtime();
    let skill = rt
        .load(&wat_skill(&wat_module(COUNTER, COUNT_BODY)), None)
        .expect("load");
    let r = call(&rt, &skill, "{not json").await;
    assert_eq!(r.outcome, Outcome::InvalidInput);
    assert_eq!(r.fuel_consumed, 0);
    assert_eq!(rt.stats().instantiations, 0);
}
