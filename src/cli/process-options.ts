/**
 * Options shared by `vmpod run` and `vmpod exec` (the container process: env, cwd, user,
 * stdin, terminal), and the wiring of a container process's stdio to this terminal.
 *
 * @internal
 * @module
 */
import { finished } from 'node:stream/promises';
import type { Readable, Writable } from 'node:stream';
import { integerOption, type OptionSpec, type ParsedArgs } from './args.js';
import type { ProcessOverrides } from '../container/spec.js';
import { UsageError } from './io.js';
import { USER_ID } from './limits.js';

export const PROCESS_OPTIONS: readonly OptionSpec[] = [
  { long: 'interactive', short: 'i', type: 'boolean' },
  { long: 'tty', short: 't', type: 'boolean' },
  { long: 'env', short: 'e', type: 'string', multiple: true },
  { long: 'workdir', short: 'w', type: 'string' },
  { long: 'user', short: 'u', type: 'string' },
];

export const PROCESS_USAGE = `  -i, --interactive     keep stdin open and send it to the process
  -t, --tty             allocate a pseudo-terminal
  -e, --env KEY=VALUE   set an environment variable (repeatable)
  -w, --workdir DIR     working directory inside the container
  -u, --user UID[:GID]  run as this numeric user (and group), 0-${USER_ID.max}`;

/** The process overrides the options ask for. */
export function processOverrides(parsed: ParsedArgs): ProcessOverrides {
  const o = parsed.options;
  const overrides: ProcessOverrides = {};
  if (parsed.rest.length > 0) overrides.args = parsed.rest;
  if (o['env']) overrides.env = o['env'] as string[];
  if (o['workdir']) overrides.cwd = o['workdir'] as string;
  if (o['tty']) overrides.terminal = true;
  if (typeof o['user'] === 'string') {
    const parts = o['user'].split(':');
    if (parts.length > 2) throw new UsageError(`--user ${JSON.stringify(o['user'])}: give a numeric UID or UID:GID`);
    const uid = integerOption('--user UID', parts[0]!, USER_ID.min, USER_ID.max);
    const gid = parts[1] === undefined ? uid : integerOption('--user GID', parts[1], USER_ID.min, USER_ID.max);
    overrides.user = { uid, gid };
  }
  return overrides;
}

/** A process whose stdio the CLI connects to its own. */
export interface Attachable {
  readonly stdin: Writable | null;
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  resizeTty(size: { rows: number; cols: number }): Promise<void>;
}

/**
 * Connects the process's streams to this process's stdin/stdout/stderr (raw terminal mode and
 * window-size forwarding with a tty). Returns a function that resolves once all output has been
 * written out, and undoes the terminal changes.
 */
export function attachStdio(proc: Attachable, options: { interactive: boolean; tty: boolean }): () => Promise<void> {
  const outputs: Promise<void>[] = [];
  if (proc.stdout) {
    proc.stdout.pipe(process.stdout, { end: false });
    outputs.push(finished(proc.stdout).catch(() => undefined));
  }
  if (proc.stderr) {
    proc.stderr.pipe(process.stderr, { end: false });
    outputs.push(finished(proc.stderr).catch(() => undefined));
  }
  const stdinIsTty = process.stdin.isTTY === true;
  let onResize: (() => void) | undefined;
  if (options.tty && process.stdout.isTTY) {
    onResize = () => {
      void proc.resizeTty({ rows: process.stdout.rows || 24, cols: process.stdout.columns || 80 }).catch(() => undefined);
    };
    process.stdout.on('resize', onResize);
    onResize();
  }
  if (options.interactive && proc.stdin) {
    if (options.tty && stdinIsTty) process.stdin.setRawMode(true);
    process.stdin.pipe(proc.stdin);
    proc.stdin.on('error', () => undefined);
  }
  return async () => {
    await Promise.all(outputs);
    if (onResize) process.stdout.off('resize', onResize);
    if (options.interactive) {
      process.stdin.unpipe();
      if (options.tty && stdinIsTty) process.stdin.setRawMode(false);
      process.stdin.pause();
    }
  };
}

/** The exit code a shell would report for an exit status. */
export function shellExitCode(status: { exitCode: number; signal: number }): number {
  return status.signal > 0 ? 128 + status.signal : status.exitCode;
}
