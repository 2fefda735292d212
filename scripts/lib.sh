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
SCHEMATHESIS_VERSION=4.32.5

# The API fuzzer the orchestrator tests run against its OpenAPI document.
ensure_schemathesis() {
    if ! schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
        step "installing schemathesis $SCHEMATHESIS_VERSION"
        python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
    fi
}

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
# The agent depends on the protocol crate, never on the orchestrator: its dependency tree must
# hold no HTTP server, no SQL and no orchestrator (wasmtime is expected: it runs skills).
# The same holds for the agent-only `tend` binary (`--no-default-features --features agent`).
check_agent_tree() {
    local tree bad=() what
    for what in "-p tend-agent" "-p tend-cli --no-default-features --features agent"; do
        # shellcheck disable=SC2086
        tree=$(cargo tree $what -e normal --prefix none | sed 's/ v.*//' | sort -u)
        for crate in axum sqlx sqlx-core utoipa oci-client tend-orchestrator; do
            if grep -qx "$crate" <<<"$tree"; then bad+=("$crate"); fi
        done
        if ((${#bad[@]})); then
            echo "cargo tree $what must not contain: ${bad[*]} (see: cargo tree $what -i ${bad[0]})" >&2
            return 1
        fi
        echo "cargo tree $what: no axum, sqlx, utoipa, OCI client or orchestrator"
    done
}

build_catalog() {
    local tend="$1"
    step "building the skill catalog (skills/*) with tend skill build"
    for dir in "$ROOT"/skills/*/; do
        [ -f "$dir/skill.toml" ] || continue
        "$tend" skill build "$dir"
    done
}

# Debian packages for servers the tests start (e.g. docker-registry), installed if missing.
ensure_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    step "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # policy-rc.d-style environments refuse to start services; we start our own on loopback.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null ||
        { $sudo apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null; }
}

# The built artifact of each catalog skill: skills/<name>/dist/<name>-<version>.wasm.
catalog_artifacts() {
    python3 - "$ROOT/skills" <<'PY'
import pathlib, sys, tomllib
for manifest in sorted(pathlib.Path(sys.argv[1]).glob("*/skill.toml")):
    skill = tomllib.loads(manifest.read_text())["skill"]
    print(manifest.parent / "dist" / f"{skill['name']}-{skill['version']}.wasm", manifest)
PY
}

# Sign every built catalog skill with $2 (a publisher key). $1: the tend binary.
sign_catalog() {
    local tend="$1" key="$2"
    step "signing the catalog with $key"
    catalog_artifacts | while read -r wasm manifest; do
        "$tend" skill sign "$wasm" --manifest "$manifest" --key "$key" >/dev/null
    done
}

# Start `tend registry serve` on a free loopback port in the background; sets REGISTRY_URL and
# REGISTRY_PID. $1: the tend binary, $2: data dir, $3: trust policy, $4: log file.
start_registry() {
    local tend="$1" data="$2" trust="$3" log="$4"
    # The log exists before the loop reads it (the background redirection may come later).
    : >"$log"
    "$tend" registry serve --listen 127.0.0.1:0 --data "$data" --trust "$trust" 2>"$log" &
    REGISTRY_PID=$!
    REGISTRY_URL=""
    for _ in $(seq 1 500); do
        REGISTRY_URL="$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$log" | head -1)"
        [ -n "$REGISTRY_URL" ] && return 0
        kill -0 "$REGISTRY_PID" 2>/dev/null || { cat "$log" >&2; return 1; }
        sleep 0.02
    done
    echo "the registry did not start; see $log" >&2
    return 1
}

# Pull-and-ready figures: sign and publish the catalog to a scratch registry, then pull each
# named skill 5 times cold (empty precompile cache, fresh host) and 5 times with the cache.
# $1: the tend binary; the rest: skill names.
bench_pull() {
    local tend="$1"; shift
    local scratch; scratch="$(mktemp -d)"
    "$tend" key gen --out "$scratch/key" >/dev/null
    local public
    public="$("$tend" key show "$scratch/key" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key"])')"
    printf '[[publishers]]\nname = "bench"\nkey = "%s"\nprefixes = ["*"]\n' "$public" >"$scratch/trust.toml"
    local token
    token="$("$tend" registry token create --data "$scratch/reg" --name bench --role publisher 2>/dev/null)"
    start_registry "$tend" "$scratch/reg" "$scratch/trust.toml" "$scratch/reg.log"
    catalog_artifacts | while read -r wasm manifest; do
        local sig="$scratch/$(basename "$wasm").sig"
        "$tend" skill sign "$wasm" --manifest "$manifest" --key "$scratch/key" --out "$sig" >/dev/null
        "$tend" skill publish "$wasm" --signature "$sig" --registry "$REGISTRY_URL" --token "$token" >/dev/null
    done
    printf '%-14s %-7s %9s %10s %14s %11s\n' skill mode "size MiB" "total ms" "fetch+verify" "precompile"
    for name in "$@"; do
        for mode in cold cached; do
            for _ in 1 2 3 4 5; do
                [ "$mode" = cold ] && rm -rf "$scratch/cache"
                rm -rf "$scratch/host"
                TEND_TRUST="$scratch/trust.toml" TEND_DATA_DIR="$scratch/host" TEND_CACHE_DIR="$scratch/cache" \
                    "$tend" skill pull "$name@latest" --registry "$REGISTRY_URL" --json | tr -d '\n'
                echo
            done | python3 "$ROOT/scripts/median_pull.py" "$name" "$mode"
        done
    done
    kill "$REGISTRY_PID" 2>/dev/null || true
    wait "$REGISTRY_PID" 2>/dev/null || true
    rm -rf "$scratch"
}

# A PostgreSQL server for the tests, on loopback only, with its own throwaway cluster (trust
# auth, no password: nothing but loopback can reach it). Idempotent: reuses a running one.
# Sets TEND_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port.
start_postgres() {
    ensure_debian_packages postgresql
    local bin port=55432 dir=/tmp/tend-test-postgres
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    export TEND_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port"
    if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
        return 0
    fi
    step "starting PostgreSQL on 127.0.0.1:$port for the tests ($dir)"
    local run=()
    if [ "$(id -u)" -eq 0 ]; then run=(runuser -u postgres --); fi
    rm -rf "$dir" && mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    "${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >/dev/null
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" start >/dev/null
}

# Benchmarks: a scratch dir $S with a publisher key and trust policy, a registry on loopback
# serving a signed L0 skill `echo` (the trivial fixture). $1: the tend binary.
bench_setup() {
    local tend="$1"
    S="$(mktemp -d)"
    export TEND_CACHE_DIR="$S/cache" TEND_DATA_DIR="$S/data" TEND_LOG=warn
    "$tend" key gen --out "$S/key" >/dev/null
    local public
    public="$("$tend" key show "$S/key" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key"])')"
    printf '[[publishers]]\nname = "bench"\nkey = "%s"\nprefixes = ["*"]\n' "$public" >"$S/trust.toml"
    export TEND_TRUST="$S/trust.toml"
    cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/trivial.wasm" "$S/echo.wasm"
    printf '[skill]\nname = "echo"\nversion = "1.0.0"\nkind = "diagnose"\nlevel = 0\n' >"$S/echo.toml"
    "$tend" skill sign "$S/echo.wasm" --manifest "$S/echo.toml" --key "$S/key" >/dev/null
    local token
    token="$("$tend" registry token create --data "$S/reg" --name bench --role publisher 2>/dev/null)"
    start_registry "$tend" "$S/reg" "$TEND_TRUST" "$S/reg.log"
    "$tend" skill publish "$S/echo.wasm" --registry "$REGISTRY_URL" --token "$token" >/dev/null
}

bench_cleanup() {
    [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null || true
    [ -n "${ORCH_PID:-}" ] && kill "$ORCH_PID" 2>/dev/null || true
    [ -n "${REGISTRY_PID:-}" ] && kill "$REGISTRY_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "${S:-}" ] && rm -rf "$S"
}

# Start `tend orchestrator serve` in the background; sets ORCH_PID, ORCH_URL, ORCH_ADMIN.
# $1: tend, $2: database URL, $3: label for its files; the rest go to `serve`.
start_orchestrator() {
    local tend="$1" database="$2" label="$3"
    shift 3
    "$tend" orchestrator serve --listen 127.0.0.1:0 --database "$database" --registry "$REGISTRY_URL" \
        --data-dir "$S/orch-$label" "$@" 2>"$S/orch-$label.log" &
    ORCH_PID=$!
    ORCH_URL=""
    for _ in $(seq 1 500); do
        ORCH_URL="$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$S/orch-$label.log" | head -1)"
        [ -n "$ORCH_URL" ] && break
        kill -0 "$ORCH_PID" 2>/dev/null || { cat "$S/orch-$label.log" >&2; return 1; }
        sleep 0.02
    done
    ORCH_ADMIN="$(sed -n 's/.*keep it secret): //p' "$S/orch-$label.log")"
}

WKG_VERSION=0.16.1

# wkg, the Bytecode Alliance's wasm package client (crates.io), pinned and installed once into a
# cache outside the tree: the OCI tests check that any wasm client pulls what Tend pushes, and
# that Tend refuses what such a client pushes unsigned. Exports TEND_TEST_WKG (the binary).
ensure_wkg() {
    local root="${TEND_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tend/tools}/wkg-$WKG_VERSION"
    export TEND_TEST_WKG="$root/bin/wkg"
    if ! "$TEND_TEST_WKG" --version >/dev/null 2>&1; then
        step "installing wkg $WKG_VERSION from crates.io into $root"
        # Its own scratch target dir: the workspace's target dir keeps the workspace's features.
        env -u CARGO_TARGET_DIR cargo install --locked --root "$root" wkg --version "$WKG_VERSION"
    fi
}

# The console's browser tests: Debian's chromium, driven by playwright-core from npm (pinned),
# installed into $CARGO_TARGET_DIR/console-node (no browser download: Debian's is used).
PLAYWRIGHT_CORE_VERSION=1.65.1
ensure_console_browser() {
    ensure_debian_packages chromium
    local dir="$CARGO_TARGET_DIR/console-node"
    if ! [ -f "$dir/node_modules/playwright-core/package.json" ] ||
        ! grep -q "\"version\": \"$PLAYWRIGHT_CORE_VERSION\"" "$dir/node_modules/playwright-core/package.json"; then
        step "installing playwright-core $PLAYWRIGHT_CORE_VERSION into $dir"
        mkdir -p "$dir"
        npm install --prefix "$dir" --no-audit --no-fund --no-save --loglevel=error \
            "playwright-core@$PLAYWRIGHT_CORE_VERSION"
    fi
}
