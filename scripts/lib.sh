# Shared by scripts/*: one target dir for host and guests, and the toolchain pieces Tend needs.
# shellcheck shell=bash
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"

step() { printf '\n==> %s\n' "$*"; }

ensure_wasm_target() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        step "installing the wasm32-wasip2 Rust target"
        rustup target add wasm32-wasip2
    fi
}

build_catalog() {
    step "building the skill catalog (skills/) for wasm32-wasip2"
    cargo build --release --target wasm32-wasip2 --manifest-path "$ROOT/skills/Cargo.toml"
}
