#!/usr/bin/env bash
# Runs the privileged tests that run the real agent on the host against its ASan+UBSan build
# (build/fuzz/asan/vmpod-agent, made by scripts/fuzz.sh): the tests pick it from $VMPOD_AGENT.
# Fails when a test fails, and when any agent process left a sanitizer report: the sanitized
# agent writes each report to build/fuzz/asan-reports/report.PID as well (native/fuzz/
# sanitizer_options.cc), however it was started (the stand-in hypervisor gives its agents a clean
# environment, and their stderr goes to a console log). Run as root.
#
#   scripts/test-sanitized-agent.sh [TEST FILE...]   (default: the files below)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
build="${VMPOD_FUZZ_BUILD:-$root/build/fuzz}"

# Every test file whose agent is a host process (test/privileged/agent-host.ts, the stand-in
# hypervisor). Not agent-vm.test.ts: it puts the agent into a guest initramfs, where only the
# static release build runs.
files=(
  test/privileged/agent-containers.test.ts
  test/privileged/agent-robustness.test.ts
  test/privileged/agent-direct-stdio.test.ts
  test/privileged/agent-network.test.ts
  test/privileged/agent-devices.test.ts
  test/privileged/agent-dumpable.test.ts
  test/privileged/sandbox/stand-in.test.ts
)
(($#)) && files=("$@")

if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S "$root" -B "$build" -DVMPOD_FUZZ=ON -DCMAKE_C_COMPILER=clang-16 -DCMAKE_CXX_COMPILER=clang++-16 >/dev/null
fi
if ! cmake --build "$build" -j2 --target vmpod-agent-asan >"$build/build-agent.log" 2>&1; then
  grep -E -A5 'error' "$build/build-agent.log" | head -60 >&2
  echo "test-sanitized-agent.sh: the build of the sanitized agent failed" >&2
  exit 1
fi
agent="$build/asan/vmpod-agent"
reports="$build/asan-reports"
mkdir -p "$reports"
find "$reports" -mindepth 1 -delete
command -v llvm-symbolizer-16 >/dev/null && export ASAN_SYMBOLIZER_PATH="$(command -v llvm-symbolizer-16)"

# The binary must be the sanitized one.
[[ "$(nm "$agent" 2>/dev/null | grep -c __asan_init)" != 0 ]] || { echo "test-sanitized-agent.sh: $agent is not an ASan build" >&2; exit 1; }

status=0
VMPOD_AGENT="$agent" npx vitest run --project privileged "${files[@]}" || status=$?

shopt -s nullglob
found=("$reports"/report.*)
if ((${#found[@]})); then
  echo "test-sanitized-agent.sh: the sanitized agent reported ${#found[@]} error(s):" >&2
  for f in "${found[@]}"; do
    echo "----- $f" >&2
    head -80 "$f" >&2
  done
  status=1
fi
if ((status != 0)); then
  echo "test-sanitized-agent.sh: FAILED" >&2
  exit "$status"
fi
echo "test-sanitized-agent.sh: ${#files[@]} test files passed against $agent, no sanitizer report"
