/**
 * The CLI as a program, from its sources (Node with tsx's loader): exit codes of usage errors,
 * and error messages that reach the terminal escaped.
 * Nothing here gets as far as a VM: every command fails on its arguments (with a state
 * directory and guest cache of its own, and a kernel that does not exist, should one ever get
 * further).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const CLI = [process.execPath, '--import', 'tsx', path.resolve('src/cli/main.ts')];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-cli-main-'));
const stateDir = path.join(dir, 'state');
const guestCache = path.join(dir, 'guest');
fs.mkdirSync(stateDir);
fs.mkdirSync(guestCache);
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A `run` that cannot boot anything, whatever its other options. */
const RUN = ['run', '--rm', '--kernel', '/nonexistent/vmlinux', '--initramfs', '/nonexistent/initramfs'];

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function vmpod(args: string[]): Promise<Result> {
  const child = spawn(CLI[0]!, [...CLI.slice(1), ...args], {
    env: { ...process.env, VMPOD_STATE_DIR: stateDir, VMPOD_GUEST_CACHE: guestCache },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The first line of stderr. */
function firstLine(result: Result): string {
  return result.stderr.split('\n')[0]!;
}

describe('vmpod numeric options', () => {
  // One bad value per option here (each form of each option is in cli-args.test.ts): every
  // process costs a second of CPU.
  it('rejects what is not a plain decimal integer in range with exit code 2, before doing anything', async () => {
    const cases: [string[], string][] = [
      [[...RUN, '--memory', '1e3', '--', 'true'], 'vmpod: --memory "1e3": expected a decimal integer from 128 to 1048576'],
      [[...RUN, '--cpus', '1.5', '--', 'true'], 'vmpod: --cpus "1.5": expected a decimal integer from 1 to 64'],
      [
        [...RUN, '--guest-hugepages', '-3', '--', 'true'],
        'vmpod: --guest-hugepages "-3": expected a decimal integer from 1 to 64 (2 MiB pages; the guest keeps 128 MiB of --memory 256)',
      ],
      [[...RUN, '-u', '12abc', '--', 'true'], 'vmpod: --user UID "12abc": expected a decimal integer from 0 to 4294967294'],
      [['stop', '--timeout', 'abc', 'box'], 'vmpod: --timeout "abc": expected a decimal integer from 0 to 2147483'],
      [['kill', 'box', '015'], 'vmpod: SIGNAL "015": expected a decimal integer from 1 to 64'],
      [['exec', '-u', '1:-1', 'box', 'sh'], 'vmpod: --user GID "-1": expected a decimal integer from 0 to 4294967294'],
    ];
    const results = await Promise.all(cases.map(([args]) => vmpod(args)));
    results.forEach((result, i) => {
      const [args, message] = cases[i]!;
      expect({ args, code: result.code, line: firstLine(result), stdout: result.stdout }).toEqual({ args, code: 2, line: message, stdout: '' });
      expect(result.stderr).toContain('\nUsage: vmpod ');
    });
    expect(fs.readdirSync(stateDir)).toEqual([]);
  });

  it('gives exit code 2 for what the argument parser rejects as well', async () => {
    const [unknown, missing] = await Promise.all([vmpod([...RUN, '--nope']), vmpod(['stop', 'box', '--timeout'])]);
    expect([unknown.code, firstLine(unknown)]).toEqual([2, 'vmpod: --nope: unknown option']);
    expect([missing.code, firstLine(missing)]).toEqual([2, 'vmpod: --timeout: this option needs a value']);
  });
});

describe('vmpod error output', () => {
  it('escapes control characters in what it prints, whatever they came from', async () => {
    const title = '\x1b]0;pwned\x07';
    const [command, option, json] = await Promise.all([
      vmpod([`${title}\x1b[2J`]),
      vmpod([...RUN, `--cpus=\u009b2J\u202e`]),
      vmpod(['stop', '--json', '--timeout', `\x1b[2J\u009b`, 'box']),
    ]);
    expect([command.code, firstLine(command)]).toEqual([2, 'vmpod: unknown command "\\x1b]0;pwned\\x07\\x1b[2J"']);
    expect([option.code, firstLine(option)]).toEqual([2, 'vmpod: --cpus "\\u009b2J\\u202e": expected a decimal integer from 1 to 64']);
    expect(json.code).toBe(2);
    expect(json.stderr).toBe(
      '{"error":{"code":"ERR_VMPOD_USAGE","message":"--timeout \\"\\\\u001b[2J\\u009b\\": expected a decimal integer from 0 to 2147483"}}\n',
    );
    for (const result of [command, option, json]) expect(result.stderr).not.toMatch(/[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]/u);
  });
});
