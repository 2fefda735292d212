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

COMPONENTIZE_PY_VERSION=0.25.1

# Python skills: componentize-py from PyPI, pinned.
ensure_python_sdk() {
    if ! componentize-py --version 2>/dev/null | grep -q "$COMPONENTIZE_PY_VERSION"; then
        step "installing componentize-py $COMPONENTIZE_PY_VERSION"
        python3 -m pip install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
    fi
}

# JavaScript skills: componentize-js and rolldown from npm, as locked in sdk/js.
ensure_js_sdk() {
    local marker="$ROOT/sdk/js/node_modules/.package-lock.json"
    if [ ! -f "$marker" ] || [ "$ROOT/sdk/js/package-lock.json" -nt "$marker" ]; then
        step "installing the JavaScript SDK's packages (npm ci in sdk/js)"
        npm ci --prefix "$ROOT/sdk/js" --no-audit --no-fund --loglevel=error
    fi
}

# Build every catalog skill with `tend skill build` (each into skills/<name>/dist/, checked
# against its manifest and precompiled). $1: the tend binary.
build_catalog() {
    local tend="$1"
    step "building the skill catalog (skills/*) with tend skill build"
    for dir in "$ROOT"/skills/*/; do
        [ -f "$dir/skill.toml" ] || continue
        "$tend" skill build "$dir"
    done
}
