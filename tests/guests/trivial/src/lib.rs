//! The smallest useful skill: echoes its input. Used by tests and `tend bench`.
use tend_sdk::{
    Diagnose, SkillError,
    serde_json::{Value, json},
};

struct Trivial;

impl Diagnose for Trivial {
    type Input = Value;
    type Output = Value;
    fn run(input: Value) -> Result<Value, SkillError> {
        if input.get("fail").is_some() {
            return Err(SkillError::new(
                "asked-to-fail",
                "the input asked this skill to fail",
            ));
        }
        Ok(json!({ "ok": true, "echo": input }))
    }
}

tend_sdk::export_diagnose!(Trivial);
