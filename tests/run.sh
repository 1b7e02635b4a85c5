#!/usr/bin/env bash
# The whole test suite, on a fresh machine: unit tests, property tests, the end-to-end suite (the real
# binary against the test API server, or a real cluster when MPSYNC_TEST_KUBECONFIG is set), and the
# offline checks of deploy/ and examples/. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."
# A failed run says how full the disks were: the file backend's tests fail on a full /tmp (ENOSPC).
trap 'status=$?; if [ "$status" -ne 0 ]; then echo "tests/run.sh: exit $status; disk space:" >&2; df -h . "${TMPDIR:-/tmp}" >&2 || true; fi' EXIT

# What the tests run besides cargo: sh, bash (terminal tests), awk, grep, date, timeout, seq, nohup
# (coreutils), unshare, setsid (util-linux) and python3 (the pty driver, the offline manifest checks).
# strace is optional (one test skips without it). Install any that are missing (Debian).
missing=()
for tool in sh bash awk grep date timeout seq nohup unshare setsid python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing test prerequisites: ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq bash coreutils gawk grep util-linux python3 python3-venv >/dev/null
fi

# The metaparticle Python client (metaparticle-sync 0.2.0 from PyPI, which needs six without declaring
# it), for the side-car's interoperability tests, and prometheus_client, whose parser reads /metrics, in
# a venv of its own: .venv-test (gitignored). Without them (no network, say) those tests say they skipped.
metaparticle_ready() {
  .venv-test/bin/python -c 'import importlib.metadata as m; assert m.version("metaparticle-sync") == "0.2.0"; m.version("six"); m.version("prometheus_client")' \
    >/dev/null 2>&1
}
if [ -z "${MPSYNC_TEST_PYTHON:-}" ]; then
  if metaparticle_ready || { python3 -m venv .venv-test && .venv-test/bin/pip install -q metaparticle-sync==0.2.0 six prometheus_client; }; then
    export MPSYNC_TEST_PYTHON="$PWD/.venv-test/bin/python"
  else
    echo "warning: cannot install metaparticle-sync into .venv-test; the side-car's Python client test will skip" >&2
  fi
fi

# Everything, the examples in examples/*.rs included (the end-to-end suite runs them).
cargo build --locked --all-targets
# The library without the CLI: a program that depends on mpsync with `default-features = false` and one
# backend (or `client`, the kube backend with mpsync's own client) gets no clap, signal-hook or
# supervisor, and picks the Kubernetes version of k8s-openapi itself (the environment variable stands in
# for that choice).
K8S_OPENAPI_ENABLED_VERSION=1.33 cargo check --locked --lib --no-default-features --features kube
K8S_OPENAPI_ENABLED_VERSION=1.33 cargo check --locked --lib --no-default-features --features file
K8S_OPENAPI_ENABLED_VERSION=1.33 cargo check --locked --lib --no-default-features --features client
# The library's documentation: no warnings, and its examples compile and pass.
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps
cargo test --locked --doc
# The offline checks of deploy/ and examples/ (the examples run against the binary just built).
MPSYNC_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/mpsync" bash deploy/check.sh
# Unit and property tests, then the end-to-end suite, whose summary closes the run. Tests run two at a
# time: each end-to-end test runs several processes of its own.
cargo test --locked --lib --test e2e -- --test-threads "${MPSYNC_TEST_THREADS:-2}"
