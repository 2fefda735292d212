//! `tend skill inspect`: the world of a component — what it imports and exports — without
//! instantiating it.

use serde::Serialize;
use wasmtime::component::types::ComponentItem;

use crate::Runtime;
use crate::runtime::LoadError;

#[derive(Debug, Clone, Serialize)]
pub struct ComponentWorld {
    pub digest: String,
    pub size_bytes: usize,
    /// `diagnose`, `repair`, or `null` if it is not a Tend skill.
    pub skill_kind: Option<String>,
    pub imports: Vec<Item>,
    pub exports: Vec<Item>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub name: String,
    pub kind: &'static str,
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "func",
        ComponentItem::CoreFunc(_) => "core func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

/// Describe a component. Compiles it if it is not cached (it is not written to the cache).
pub fn inspect(runtime: &Runtime, bytes: &[u8]) -> Result<ComponentWorld, LoadError> {
    let component = runtime.compile_unchecked(bytes)?;
    let engine = runtime.engine();
    let ty = component.component_type();
    let imports: Vec<Item> = ty
        .imports(engine)
        .map(|(n, e)| Item {
            name: n.to_string(),
            kind: kind(&e.ty),
        })
        .collect();
    let exports: Vec<Item> = ty
        .exports(engine)
        .map(|(n, e)| Item {
            name: n.to_string(),
            kind: kind(&e.ty),
        })
        .collect();
    let has = |n: &str| exports.iter().any(|e| e.name == n && e.kind == "func");
    let skill_kind = match (has("run"), has("plan")) {
        (true, true) => Some("repair".to_string()),
        (true, false) => Some("diagnose".to_string()),
        _ => None,
    };
    Ok(ComponentWorld {
        digest: format!("sha256:{}", crate::cache::sha256_hex(bytes)),
        size_bytes: bytes.len(),
        skill_kind,
        imports,
        exports,
    })
}
