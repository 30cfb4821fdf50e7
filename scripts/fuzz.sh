#!/usr/bin/env bash
# Fuzzes the guest agent's parsers with libFuzzer under ASan+UBSan (docs/testing.md, "Fuzzing the
# guest agent").
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   build, replay test/fuzz/regressions, fuzz each TARGET
#                                           SECONDS (default 30) from test/fuzz/corpus
#   scripts/fuzz.sh --build-only            build the fuzzers and the sanitized agent only
#   scripts/fuzz.sh --replay-only           build, then replay the regressions and the seed corpus
#
# Targets: frame json spec requests direct_stream mount net (default: all). One job at a time.
# The build is build/fuzz (clang-16, -DVMPOD_FUZZ=ON); it also makes the ASan+UBSan agent
# build/fuzz/asan/vmpod-agent. New corpus inputs go to build/fuzz/corpus/TARGET, crashes to
# build/fuzz/artifacts/TARGET (build/ is not tracked): a crash found there becomes a regression
# input by copying it to test/fuzz/regressions/TARGET/ with the fix. Exits non-zero, with the
# sanitizer report, when any input crashes, leaks, hits UB or breaks a harness invariant.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
build="${VMPOD_FUZZ_BUILD:-$root/build/fuzz}"
all_targets=(frame json spec requests direct_stream mount net)

mode=fuzz
seconds=30
targets=()
for arg in "$@"; do
  case "$arg" in
    --build-only) mode=build ;;
    --replay-only) mode=replay ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *[!0-9]*) targets+=("$arg") ;;
    *) seconds="$arg" ;;
  esac
done
((${#targets[@]})) || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target '$t' (${all_targets[*]})" >&2; exit 2; }
done

# Largest input per target: requests and specs are JSON of a few KiB; frames need room for a few
# headers and payloads; the rest are small objects or paths.
max_len() {
  case "$1" in
    frame) echo 65536 ;;
    json|spec|requests) echo 16384 ;;
    net) echo 8192 ;;
    mount) echo 4096 ;;
    direct_stream) echo 2048 ;;
  esac
}

for tool in clang-16 clang++-16 cmake; do
  command -v "$tool" >/dev/null || { echo "fuzz.sh: $tool is missing: run scripts/setup-host.sh (clang-16 libclang-rt-16-dev)" >&2; exit 2; }
done
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S "$root" -B "$build" -DVMPOD_FUZZ=ON -DCMAKE_C_COMPILER=clang-16 -DCMAKE_CXX_COMPILER=clang++-16 >/dev/null
fi
# Two cores are shared: a parallel build of two at most.
mkdir -p "$build"
if ! cmake --build "$build" -j2 --target fuzzers vmpod-agent-asan >"$build/build.log" 2>&1; then
  grep -E -A5 'error' "$build/build.log" | head -60 >&2
  echo "fuzz.sh: the build failed (log: $build/build.log)" >&2
  exit 1
fi
for t in "${targets[@]}"; do
  [[ -x "$build/native/fuzz/fuzz_$t" ]] || { echo "fuzz.sh: the build did not make fuzz_$t" >&2; exit 1; }
done
[[ "$mode" == build ]] && exit 0

# UB is not recoverable in these builds (-fno-sanitize-recover=all); print its stack anyway.
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
command -v llvm-symbolizer-16 >/dev/null && export ASAN_SYMBOLIZER_PATH="$(command -v llvm-symbolizer-16)"

logs="$build/logs"
mkdir -p "$logs"
failed=()
report() {  # the sanitizer's or harness's report out of a libFuzzer log
  local log="$1"
  if grep -qE '^==[0-9]+==ERROR|runtime error:|FUZZ INVARIANT BROKEN|^==[0-9]+== ERROR: libFuzzer' "$log"; then
    sed -n -E '/^==[0-9]+==ERROR|runtime error:|FUZZ INVARIANT BROKEN|^==[0-9]+== ERROR: libFuzzer/,$p' "$log" | head -120
  else
    tail -40 "$log"
  fi
}

printf '%-14s %8s %10s %8s %7s %7s %6s  %s\n' target seconds execs exec/s cov ft corpus result
for t in "${targets[@]}"; do
  bin="$build/native/fuzz/fuzz_$t"
  dict=()
  [[ -f test/fuzz/dict/$t.dict ]] && dict=("-dict=test/fuzz/dict/$t.dict")
  artifacts="$build/artifacts/$t/"
  work="$build/corpus/$t"
  mkdir -p "$artifacts" "$work"
  common=(-max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$artifacts" -print_final_stats=1 "${dict[@]}")

  # 1. Regressions: every input that once failed, replayed as it is.
  regressions=()
  if [[ -d test/fuzz/regressions/$t ]]; then
    while IFS= read -r -d '' f; do regressions+=("$f"); done < <(find "test/fuzz/regressions/$t" -type f ! -name '*.md' -print0 | sort -z)
  fi
  if ((${#regressions[@]})); then
    if ! "$bin" "${common[@]}" "${regressions[@]}" >"$logs/$t.regressions.log" 2>&1; then
      echo "fuzz.sh: $t: a regression input fails again:" >&2
      report "$logs/$t.regressions.log" >&2
      failed+=("$t (regression)")
      continue
    fi
  fi

  # 2. Fuzzing (or, with --replay-only, one pass over the seed corpus).
  if [[ "$mode" == replay ]]; then
    run=(-runs=0 "test/fuzz/corpus/$t")
  else
    run=(-max_total_time="$seconds" "$work" "test/fuzz/corpus/$t")
  fi
  status=0
  "$bin" "${common[@]}" "${run[@]}" >"$logs/$t.log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$logs/$t.log" | grep -E 'cov: [0-9]+' | tail -1 || true)
  cov=$(sed -n -E 's/.*cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -n -E 's/.*ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -n -E 's/.*corp: ([0-9]+).*/\1/p' <<<"$last")
  result=ok
  ((status == 0)) || result="FAILED (exit $status)"
  printf '%-14s %8s %10s %8s %7s %7s %6s  %s\n' "$t" "$([[ $mode == replay ]] && echo - || echo "$seconds")" \
    "${execs:--}" "${rate:--}" "${cov:--}" "${ft:--}" "${corp:--}" "$result"
  if ((status != 0)); then
    echo "fuzz.sh: $t failed; the input is under $artifacts; the full log is $logs/$t.log:" >&2
    report "$logs/$t.log" >&2
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
