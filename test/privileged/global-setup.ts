/**
 * The privileged project's last check: whatever a test file made and did not remove shows up
 * here, even when every file's own check passed or was skipped. It compares what exists after
 * the run with what existed before it (so other people's objects do not count): processes whose
 * command line names a test's temporary path, mounts under those paths, temporary files and
 * folders, network namespaces and host links with the tests' prefixes. Processes and links get
 * a few seconds to go (the kernel and QEMU take a moment).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';

const TMP = os.tmpdir();
/** Temporary names of the tests: vt<hex>..., vt-..., vmpod-... (see the fixtures). */
const TEST_NAME = /^(vt[0-9a-f]{4}|vt-|vmpod-)/u;
// The path must start there: at the start, or after a space, '=', ':' or ',' of a command line
// (`/var/tmp/vmpod-...`, say, is not a test's).
const TEST_PATH = new RegExp(`(?:^|[\\s=:,])${TMP.replaceAll('/', '\\/')}\\/(vt[0-9a-f]{4}|vt-|vmpod-)`, 'u');

function list(command: string, args: string[]): string[] {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n');
  } catch {
    return [];
  }
}

/** Everything of the tests' kinds that exists now, one string each. */
function snapshot(): Set<string> {
  const found = new Set<string>();
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/u.test(p) && Number(p) !== process.pid)) {
    let cmdline = '';
    try {
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
    } catch {
      continue;
    }
    if (TEST_PATH.test(cmdline) && !cmdline.includes('vitest')) found.add(`process ${pid}: ${cmdline.slice(0, 160)}`);
  }
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const point = line.split(' ')[4];
    if (point !== undefined && TEST_PATH.test(point)) found.add(`mount ${point}`);
  }
  for (const name of fs.readdirSync(TMP)) if (TEST_NAME.test(name)) found.add(`file ${TMP}/${name}`);
  for (const line of list('ip', ['netns', 'list'])) {
    const name = line.split(' ')[0] ?? '';
    if (TEST_NAME.test(name)) found.add(`netns ${name}`);
  }
  for (const line of list('ip', ['-o', 'link', 'show'])) {
    const name = /^\d+: ([^:@]+)/u.exec(line)?.[1] ?? '';
    if (/^(vt[0-9a-f]{4}|vm)/u.test(name)) found.add(`link ${name}`);
  }
  return found;
}

export default function setup(): (() => Promise<void>) | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const before = snapshot();
  return async () => {
    let left: string[] = [];
    for (let attempt = 0; attempt < 50; attempt++) {
      left = [...snapshot()].filter((x) => !before.has(x));
      if (left.length === 0) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    // vitest reports a teardown's error but still exits 0: set the exit code as well.
    process.exitCode = 1;
    throw new Error(`the privileged tests left behind:\n  ${left.join('\n  ')}`);
  };
}
