//! kill-runaway-process: not written yet.
use tend_sdk::{Repair, SkillError, serde_json::Value};

struct Skill;

impl Repair for Skill {
    type Input = Value;
    type Output = Value;
    type Plan = Value;
    fn plan(_input: Value) -> Result<Value, SkillError> {
        Err(SkillError::new("not-implemented", "kill-runaway-process is not written yet"))
    }
    fn run(_input: Value) -> Result<Value, SkillError> {
        Err(SkillError::new("not-implemented", "kill-runaway-process is not written yet"))
    }
}

tend_sdk::export_repair!(Skill);
