/**
 * The CLI's exit codes follow docker's convention (docs/cli.md, "Exit codes"), and its error
 * output says what to do: tested on the functions every command reports errors through.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { EXIT_CANNOT_EXECUTE, EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_USAGE, UsageError, exitCodeOf, formatError } from '../../src/cli/io.js';
import { shellExitCode } from '../../src/cli/process-options.js';
import { ExecFailedError, InvalidArgumentError, NotFoundError, VmpodError } from '../../src/errors.js';
import { AgentError } from '../../src/agent/errors.js';
import { execFailure } from '../../src/container/spec.js';

describe('vmpod exit codes', () => {
  it('are 2 for usage errors, 127 and 126 for a command that cannot run, 125 for the rest', () => {
    expect([EXIT_USAGE, EXIT_FAILURE, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND]).toEqual([2, 125, 126, 127]);
    expect(exitCodeOf(new UsageError('--memory "abc": expected a decimal integer'))).toBe(2);
    // What the argument parser throws is a usage error when the caller says so.
    expect(exitCodeOf(new InvalidArgumentError('--nope', 'unknown option'), true)).toBe(2);
    const missing = execFailure(new AgentError('StartContainer', 'NOT_FOUND', 'web: executable "nosuch" not found in $PATH (/bin)', 'ENOENT'), 'container "web"');
    expect(exitCodeOf(missing)).toBe(127);
    const denied = execFailure(new AgentError('Exec', 'INTERNAL', 'web/exec-1: exec /etc: Permission denied', 'EACCES'), 'container "web"');
    expect(exitCodeOf(denied)).toBe(126);
    expect(exitCodeOf(new ExecFailedError('x', 'not-executable', 'x'))).toBe(126);
    expect(exitCodeOf(new NotFoundError('sandbox', 'nosuch'))).toBe(125);
    expect(exitCodeOf(new InvalidArgumentError('memoryMiB', 'too small'))).toBe(125);
    expect(exitCodeOf(new Error('anything'))).toBe(125);
  });

  it('of a process that ran are its own, 128 + N when signal N killed it', () => {
    expect(shellExitCode({ exitCode: 3, signal: 0 })).toBe(3);
    expect(shellExitCode({ exitCode: 0, signal: 9 })).toBe(137);
    expect(shellExitCode({ exitCode: 0, signal: 15 })).toBe(143);
  });
});

describe('vmpod error output', () => {
  it('of a command that was not found names the command, not the RPC (which stays in the causes)', () => {
    const missing = execFailure(new AgentError('StartContainer', 'NOT_FOUND', 'web: executable "nosuch" not found in $PATH (/bin)', 'ENOENT'), 'container "web" in sandbox "web"');
    const text = formatError(missing, false);
    expect(text.split('\n')[0]).toBe('vmpod: container "web" in sandbox "web": command "nosuch" not found in $PATH (/bin)');
    expect(text.split('\n')[0]).not.toContain('StartContainer');
    expect(text).toContain('\n  caused by: StartContainer: ');
  });

  it('ends with the hint a command attached to the error (what to do next)', () => {
    const error = Object.assign(new VmpodError('ERR_VMPOD_INVALID_STATE', 'cannot delete sandbox "web": it is running; stop it first, or delete with force'), {
      hint: '"vmpod stop web" stops it; "vmpod delete -f web" stops and deletes it',
    });
    expect(formatError(error, false)).toBe(
      'vmpod: cannot delete sandbox "web": it is running; stop it first, or delete with force\n  "vmpod stop web" stops it; "vmpod delete -f web" stops and deletes it\n',
    );
  });
});

describe('vmpod exec and kill of a sandbox that does not run', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-cli-codes-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  function vmpod(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const child = spawn(process.execPath, ['--import', 'tsx', path.resolve('src/cli/main.ts'), ...args], {
      env: { ...process.env, VMPOD_STATE_DIR: dir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    return new Promise((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  // A sandbox made and never started (a record only: no VM is needed to see the answer).
  it('fail at once (125) naming the command and what to do, not the guest they cannot talk to', async () => {
    await Sandbox.create({ stateDir: dir, id: 'idle' });
    const [exec, kill] = await Promise.all([vmpod(['exec', 'idle', 'true']), vmpod(['kill', 'idle'])]);
    expect(exec).toEqual({ code: 125, stdout: '', stderr: 'vmpod: sandbox "idle" has not been started: exec needs it running; start it first\n' });
    expect(kill).toEqual({ code: 125, stdout: '', stderr: 'vmpod: sandbox "idle" has not been started: kill needs it running; start it first\n' });
  });
});
