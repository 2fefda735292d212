//! A repair skill whose `plan` does exactly what its `run` does: write a file, run programs,
//! return an oversized error. Tests check that `plan` changes nothing (and `run` can), and
//! that nothing a skill returns or asks for makes the report unbounded.
//! Input: `{"write": path, "exec": {"program", "args"}, "times": n, "arg_bytes": n,
//! "error_bytes": n}`, every key optional.
use serde::Deserialize;
use tend_sdk::{
    Repair, SkillError, exec,
    serde_json::{Value, json},
};

#[derive(Deserialize)]
struct Program {
    program: String,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    write: Option<String>,
    #[serde(default)]
    exec: Option<Program>,
    /// How many times to run `exec` (default 1).
    #[serde(default)]
    times: Option<u32>,
    /// Append one argument of this many bytes to `exec`'s arguments.
    #[serde(default)]
    arg_bytes: usize,
    /// Fail with a `skill-error` whose message is this long.
    #[serde(default)]
    error_bytes: usize,
}

fn act(input: Input) -> Result<Value, SkillError> {
    if input.error_bytes > 0 {
        return Err(SkillError::new("huge", "e".repeat(input.error_bytes)));
    }
    let written = input
        .write
        .map(|path| match std::fs::write(&path, b"changed") {
            Ok(()) => json!({ "ok": true }),
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        });
    let ran = input.exec.map(|p| {
        let mut args = p.args;
        if input.arg_bytes > 0 {
            args.push("a".repeat(input.arg_bytes));
        }
        let mut last = Value::Null;
        for _ in 0..input.times.unwrap_or(1) {
            last = match exec::run(&p.program, &args, None) {
                Ok(out) => json!({ "ok": true, "status": out.status, "stdout": out.stdout }),
                Err(e) => json!({ "ok": false, "code": e.code, "message": e.message }),
            };
        }
        last
    });
    Ok(json!({ "write": written, "exec": ran }))
}

struct Hostile;

impl Repair for Hostile {
    type Input = Input;
    type Output = Value;
    type Plan = Value;

    fn plan(input: Input) -> Result<Value, SkillError> {
        act(input)
    }

    fn run(input: Input) -> Result<Value, SkillError> {
        act(input)
    }
}

tend_sdk::export_repair!(Hostile);
