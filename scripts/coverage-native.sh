#!/usr/bin/env bash
# Coverage of the native code with gcov (docs/testing.md, "Coverage"): the addon, the guest agent
# (run on the host by tests, and as PID 1 of the test VMs) and the console log writer.
#
#   scripts/coverage-native.sh build    configure and build build/coverage (-DVMPOD_COVERAGE=ON),
#                                       then forget any profile a former run left
#   eval "$(scripts/coverage-native.sh env)"
#                                       point the tests at those builds (VMPOD_ADDON, VMPOD_AGENT,
#                                       VMPOD_LOGGER), give the VMs their coverage port and the
#                                       coverage guest its own cache
#   npm test                            the suite, as always
#   scripts/coverage-native.sh report   merge, print, write coverage/native/, check the thresholds
#   scripts/coverage-native.sh reset    forget the profiles (a new measurement)
#
# The build directory is build/coverage, configured with plain cmake: build/ itself (cmake-js,
# Release) is left as it is. Needs gcc, cmake, ninja or make, gcov-tool (gcc) and gcovr.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/build/coverage
streams=$out/guest-streams
profiles=$out/guest-profile
report=$root/coverage/native

# Thresholds, in percent, a little under what the whole suite measured (docs/testing.md): the
# figures may only go up. component:lines:branches
# Measured 2026-12-07 (lines/branches): addon 94.5/66.6, agent host-run 72.4/46.7, in the VM
# 71.4/39.9, both 79.1/49.7, log writer 88.0/65.5 (50 lines: one line is 2 points). A second
# whole run (shuffled CI, 799 passed) measured the addon at 89.0/60.5: test workers' profiles
# were lost (address.cc and route.cc half counted, though their tests passed). The tests now
# flush the addon's profile after each file (test/native-coverage-setup.ts); the addon's
# threshold sits under the lower run until runs with the flush set it.
thresholds=(
  addon:88:59
  agent-host:70:44
  agent-vm:68:37
  agent:77:47
  logger:84:60
)

reset() {
  [[ -d $out ]] && find "$out" -name '*.gcda' -delete
  rm -rf "$streams" "$profiles"
  mkdir -p "$streams"
}

case "${1:-}" in
build)
  mkdir -p "$out"
  if [[ ! -f $out/CMakeCache.txt ]]; then
    generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    # What cmake-js passes for the addon (node-api-headers: no download), plus the coverage switch.
    cmake -S "$root" -B "$out" "${generator[@]}" --no-warn-unused-cli \
      -DVMPOD_COVERAGE=ON -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_JS_INC="$root/node_modules/node-api-headers/include;$root/node_modules/node-addon-api" \
      -DCMAKE_JS_SRC= -DCMAKE_JS_LIB= -DCMAKE_CXX_FLAGS=-DBUILDING_NODE_EXTENSION \
      -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$out/Release" >/dev/null
  fi
  cmake --build "$out" --target vmpod_addon vmpod-agent vmpod-logger -j "$(nproc)"
  reset
  ;;
env)
  for f in vmpod.node vmpod-agent vmpod-logger; do
    [[ -x $out/Release/$f || -f $out/Release/$f ]] || { echo "no $out/Release/$f: run $0 build" >&2; exit 1; }
  done
  mkdir -p "$streams"
  cat <<EOF
export VMPOD_ADDON=$out/Release/vmpod.node
export VMPOD_AGENT=$out/Release/vmpod-agent
export VMPOD_LOGGER=$out/Release/vmpod-logger
export VMPOD_NATIVE_COVERAGE=1
export VMPOD_GUEST_COVERAGE_DIR=$streams
export VMPOD_GUEST_CACHE=/var/cache/vmpod/coverage-guest
EOF
  ;;
reset)
  reset
  ;;
report)
  command -v gcovr >/dev/null || { echo "gcovr is missing (Debian package gcovr; scripts/setup-host.sh)" >&2; exit 1; }
  rm -rf "$profiles" "$report"
  mkdir -p "$profiles/runs" "$report"
  # 1. The streams the test VMs' agents sent: one folder of .gcda files per VM.
  node - "$streams" "$profiles/runs" <<'EOF'
const fs = require('node:fs');
const path = require('node:path');
const [streams, runs] = process.argv.slice(2);
let complete = 0, empty = 0, cut = 0, n = 0;
for (const name of fs.existsSync(streams) ? fs.readdirSync(streams).sort() : []) {
  const data = fs.readFileSync(path.join(streams, name));
  if (data.length === 0) { empty++; continue; }
  const dir = path.join(runs, String(++n));
  let at = 0, ended = false;
  while (at < data.length) {
    const nl = data.indexOf(10, at);
    if (nl < 0) break;
    const header = data.toString('latin1', at, nl);
    if (header === 'END') { ended = true; break; }
    const m = /^FILE (\d+) (\/[^\0]+\.gcda)$/u.exec(header);
    if (!m || m[2].split('/').includes('..') || nl + 1 + Number(m[1]) > data.length) break;
    const file = path.join(dir, m[2]);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, data.subarray(nl + 1, nl + 1 + Number(m[1])));
    at = nl + 1 + Number(m[1]);
  }
  if (ended) complete++;
  else { cut++; fs.rmSync(dir, { recursive: true, force: true }); }
}
console.log(`guest profiles: ${complete} VMs sent theirs, ${empty} sent none (not a coverage agent, or killed), ${cut} cut short (left out)`);
EOF
  # 2. Summed into one profile with gcov-tool; the notes files (.gcno) of the build next to it.
  merged=$profiles/merged
  for run in "$profiles"/runs/*; do
    [[ -d $run ]] || continue
    if [[ ! -d $merged ]]; then cp -a "$run" "$merged"; continue; fi
    gcov-tool merge -o "$profiles/next" "$merged" "$run" >/dev/null 2>>"$report/gcov-tool.log"
    rm -rf "$merged" && mv "$profiles/next" "$merged"
  done
  if [[ -s $report/gcov-tool.log ]]; then
    # Profiles of another build of the agent (rebuilt without a reset): their sum is wrong.
    echo "gcov-tool could not sum some guest profiles (another build of the agent? run '$0 reset' after a rebuild): $report/gcov-tool.log" >&2
  fi
  if [[ -d $merged ]]; then
    while IFS= read -r gcda; do
      note=${gcda#"$merged"}
      note=${note%.gcda}.gcno
      [[ -f $note ]] && cp "$note" "${gcda%.gcda}.gcno"
    done < <(find "$merged" -name '*.gcda')
  fi
  # 3. One gcovr report per component (C++ throw branches left out: every call that can throw has one).
  component() {
    local name=$1 filter=$2; shift 2
    gcovr --root "$root" --filter "$filter" --exclude-throw-branches --exclude-unreachable-branches \
      --json "$report/$name.json" --json-summary "$report/$name-summary.json" --txt "$report/$name.txt" "$@" >/dev/null
  }
  component addon 'native/addon/' "$out/native/CMakeFiles/vmpod_addon.dir"
  component logger 'native/logger/' "$out/native/CMakeFiles/vmpod-logger.dir"
  component agent-host 'native/agent/' "$out/native/CMakeFiles/vmpod-agent.dir"
  if [[ -d $merged ]]; then
    component agent-vm 'native/agent/' "$merged"
    component agent 'native/agent/' --add-tracefile "$report/agent-host.json" --add-tracefile "$report/agent-vm.json"
  else
    echo "no guest profile: agent-vm and agent are the host-run figures only" >&2
    component agent-vm 'native/agent/' "$profiles/runs"
    cp "$report/agent-host.json" "$report/agent.json"
    cp "$report/agent-host-summary.json" "$report/agent-summary.json"
  fi
  # 4. The table, and the thresholds.
  node - "$report" "${thresholds[@]}" <<'EOF'
const fs = require('node:fs');
const [dir, ...limits] = process.argv.slice(2);
const labels = { addon: 'addon', 'agent-host': 'agent, host-run', 'agent-vm': 'agent, in the VM', agent: 'agent, both', logger: 'log writer' };
let failed = 0;
console.log('native coverage (gcov)      lines                 branches              functions');
for (const limit of limits) {
  const [name, minLines, minBranches] = limit.split(':');
  const s = JSON.parse(fs.readFileSync(`${dir}/${name}-summary.json`, 'utf8'));
  const cell = (c, t, p) => `${p.toFixed(1).padStart(5)}% (${c}/${t})`.padEnd(22);
  const low = [];
  if (s.line_percent < Number(minLines)) low.push(`lines ${s.line_percent.toFixed(1)}% < ${minLines}%`);
  if (s.branch_percent < Number(minBranches)) low.push(`branches ${s.branch_percent.toFixed(1)}% < ${minBranches}%`);
  console.log(`${labels[name].padEnd(28)}${cell(s.line_covered, s.line_total, s.line_percent)}${cell(s.branch_covered, s.branch_total, s.branch_percent)}${cell(s.function_covered, s.function_total, s.function_percent)}${low.length ? `  BELOW THRESHOLD: ${low.join(', ')}` : ''}`);
  failed += low.length;
}
console.log(`thresholds (lines:branches): ${limits.join(' ')}; per file: coverage/native/*.txt`);
if (failed) process.exit(1);
EOF
  ;;
*)
  sed -n '2,16p' "$0" >&2
  exit 2
  ;;
esac
