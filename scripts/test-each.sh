#!/usr/bin/env bash
# Runs each test file on its own: one vitest process per file, so that no file can lean on what
# another one left behind. Prints one line per file (PASS/FAIL, seconds) and a summary; exits 1
# when any file failed.
#
#   scripts/test-each.sh                     every file of both projects
#   scripts/test-each.sh unit                every file of one project (unit or privileged)
#   scripts/test-each.sh test/unit/x.test.ts test/privileged/y.test.ts   the files given
#
# VMPOD_TEST_SEED=N makes each run shuffle the tests inside the file with seed N (see
# vitest.config.ts); the full output of each run is kept in a folder named at the end.
set -u
cd "$(dirname "$0")/.."

files=()
case "${1:-all}" in
  unit | privileged) mapfile -t files < <(find "test/$1" -name '*.test.ts' | sort) ;;
  all) mapfile -t files < <(find test/unit test/privileged -name '*.test.ts' | sort) ;;
  *) files=("$@") ;;
esac

logs=$(mktemp -d "${TMPDIR:-/tmp}/test-each-logs.XXXXXX")
failed=()
for file in "${files[@]}"; do
  case "$file" in
    test/unit/*) project=unit ;;
    test/privileged/*) project=privileged ;;
    *) echo "not a test file of either project: $file" >&2; exit 2 ;;
  esac
  log="$logs/$(echo "$file" | tr / _).log"
  start=$SECONDS
  if npx vitest run --project "$project" "$file" >"$log" 2>&1; then
    verdict=PASS
  else
    verdict=FAIL
    failed+=("$file")
  fi
  plain=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
  counts=$(grep -E '^ +Tests ' <<<"$plain" | tail -1 | sed -E 's/^ +Tests +//')
  # The privileged project's global teardown fails the run when something was left behind; on a
  # shared machine that may be another run's: say so, the log names it.
  grep -q 'left behind' <<<"$plain" && counts="$counts; global teardown: something left behind, see the log"
  printf '%s %4ds %s  (%s)\n' "$verdict" $((SECONDS - start)) "$file" "${counts:-no summary}"
done

echo "${#files[@]} files, ${#failed[@]} failed; logs in $logs"
for file in "${failed[@]}"; do echo "  failed: $file"; done
[ ${#failed[@]} -eq 0 ]
