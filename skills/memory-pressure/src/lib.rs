//! memory-pressure: not written yet.
use tend_sdk::{Diagnose, SkillError, serde_json::Value};

struct Skill;

impl Diagnose for Skill {
    type Input = Value;
    type Output = Value;
    fn run(_input: Value) -> Result<Value, SkillError> {
        Err(SkillError::new("not-implemented", "memory-pressure is not written yet"))
    }
}

tend_sdk::export_diagnose!(Skill);
