#!/usr/bin/env bash
# The whole test suite, on a fresh machine: unit tests, property tests, the end-to-end suite (the real
# binary against the test API server, or a real cluster when MPSYNC_TEST_KUBECONFIG is set), and the
# offline checks of deploy/ and examples/. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests run besides cargo: sh, awk, grep, date, unshare (util-linux) and python3 (for the
# offline manifest checks). Install any that are missing (Debian).
missing=()
for tool in sh awk grep date unshare python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing test prerequisites: ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq coreutils gawk grep util-linux python3 python3-venv >/dev/null
fi

cargo build --locked --all-targets
# The offline checks of deploy/ and examples/ (the examples run against the binary just built).
MPSYNC_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/mpsync" bash deploy/check.sh
# Unit and property tests, then the end-to-end suite, whose summary closes the run. Tests run two at a
# time: each end-to-end test runs several processes of its own.
cargo test --locked --lib --test e2e -- --test-threads "${MPSYNC_TEST_THREADS:-2}"
