/** `vmpod logs`: a container's output from its log, or a sandbox's console log. */
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Writable } from 'node:stream';
import { Sandbox } from '../../sandbox/sandbox.js';
import type { LogLine, LogOptions } from '../../container/log-file.js';
import { NotFoundError, VmpodError } from '../../errors.js';
import { PrintableDecoder } from '../../printable.js';
import { integerOption } from '../args.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { UsageError } from '../io.js';
import { parseTarget } from '../target.js';

/**
 * Copies the console log `file` from byte `offset` to `out` through `decoder` (the guest writes
 * what it likes to its console, escape sequences included: they are shown escaped). Resolves with
 * the offset reached; a missing file copies nothing.
 */
export async function copyLog(file: string, offset: number, out: Writable, decoder: PrintableDecoder): Promise<number> {
  const handle = await fs.promises.open(file, 'r').catch(() => undefined);
  if (!handle) return offset;
  try {
    for (;;) {
      const buffer = Buffer.allocUnsafe(64 * 1024);
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
      if (bytesRead === 0) break;
      offset += bytesRead;
      await write(out, decoder.write(buffer.subarray(0, bytesRead)));
    }
  } finally {
    await handle.close();
  }
  return offset;
}

async function write(out: Writable, data: string | Buffer): Promise<void> {
  if (data.length > 0 && !out.write(data)) await new Promise((resolve) => out.once('drain', resolve));
}

/** The states `logs --console -f` keeps following in: the VM is up, or on its way up or down. */
const FOLLOWED_STATES: ReadonlySet<string> = new Set(['starting', 'running', 'paused', 'stopping']);

const DURATION = /^(\d{1,9})(ms|s|m|h)$/u;
const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `--since`: an RFC 3339 time, or a duration before now (`90s`, `10m`, `2h`). */
export function parseSince(value: string, now = Date.now()): Date {
  const duration = DURATION.exec(value);
  if (duration) return new Date(now - Number(duration[1]) * UNIT_MS[duration[2]!]!);
  if (/^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d{1,9})?)?(Z|[+-]\d\d:\d\d)$/u.test(value)) {
    const date = new Date(value);
    if (Number.isFinite(date.getTime())) return date;
  }
  throw new UsageError(`--since ${JSON.stringify(value)}: give an RFC 3339 time (2026-12-07T21:00:00Z) or a duration such as 90s, 10m, 2h`);
}

/** The container whose log `logs ID` shows: the one named, else the sandbox's namesake, else its only one. */
export function pickContainer(sandbox: string, named: string | undefined, logged: readonly string[]): string {
  if (named !== undefined) {
    if (!logged.includes(named)) throw new NotFoundError('container log', `${sandbox}/${named}`);
    return named;
  }
  if (logged.includes(sandbox)) return sandbox;
  if (logged.length === 1) return logged[0]!;
  if (logged.length === 0) throw new VmpodError('ERR_VMPOD_NOT_FOUND', `sandbox "${sandbox}" has no container log; "vmpod logs --console ${sandbox}" shows its console`);
  throw new UsageError(`sandbox "${sandbox}" has the logs of ${logged.length} containers (${logged.join(', ')}): name one as ${sandbox}/CONTAINER`);
}

export const logs: Command = {
  words: ['logs'],
  summary: "print a container's output, or a sandbox's console log",
  usage: `Usage: vmpod logs [OPTIONS] ID[/CONTAINER]
       vmpod logs --console [--follow] ID

Prints what a container wrote, from its log (docs/logs.md): its stdout on stdout, its stderr on
stderr, in the order the host received them. Without /CONTAINER: the container named like the
sandbox (what "vmpod run" makes), else its only one. The logs of a stopped sandbox's containers
stay until the sandbox is deleted; a deleted container's log goes with it.

Options:
  -f, --follow          go on printing what the container writes, until its output ends
                        (with --console: until the VM is gone)
      --since TIME      only lines received from TIME on: RFC 3339 (2026-12-07T21:00:00Z)
                        or a duration before now (90s, 10m, 2h)
  -n, --tail N          only the last N lines
  -t, --timestamps      start each line with the time it was received (RFC 3339, ns)
      --console         the sandbox's console log instead: the guest kernel's messages, the
                        agent's log lines and the hypervisor's errors. Control characters the
                        guest wrote (escape sequences, a lone CR, bidi controls) are always shown
                        as escapes such as \\x1b, CR LF as a plain newline.`,
  spec: {
    options: [
      ...COMMON_OPTIONS,
      { long: 'follow', short: 'f', type: 'boolean' },
      { long: 'since', type: 'string' },
      { long: 'tail', short: 'n', type: 'string' },
      { long: 'timestamps', short: 't', type: 'boolean' },
      { long: 'console', type: 'boolean' },
    ],
  },
  async run(parsed) {
    const o = parsed.options;
    if (parsed.positionals.length !== 1) throw new UsageError('give exactly one sandbox id');
    const target = parseTarget(parsed.positionals[0]);
    if (o['console']) {
      if (target.container !== undefined) throw new UsageError('--console shows a sandbox\'s console: give its id without /CONTAINER');
      for (const option of ['since', 'tail', 'timestamps'] as const) {
        if (o[option] !== undefined) throw new UsageError(`--${option} is for container logs, not --console`);
      }
      return consoleLog(target.sandbox, o['follow'] === true);
    }
    const options: LogOptions = { follow: o['follow'] === true, timestamps: o['timestamps'] === true };
    if (typeof o['since'] === 'string') options.since = parseSince(o['since']);
    if (typeof o['tail'] === 'string') options.tail = integerOption('--tail', o['tail'], 0, Number.MAX_SAFE_INTEGER);
    const sandbox = await Sandbox.attach(target.sandbox);
    try {
      const id = pickContainer(target.sandbox, target.container, sandbox.loggedContainers());
      for await (const line of sandbox.logs(id, options, true) as AsyncIterable<LogLine>) {
        const data = options.timestamps ? Buffer.concat([Buffer.from(`${line.time} `), line.data]) : line.data;
        await write(line.stream === 'stderr' ? process.stderr : process.stdout, data);
      }
    } finally {
      sandbox.detach();
    }
    return 0;
  },
};

async function consoleLog(id: string, follow: boolean): Promise<number> {
  const info = (await Sandbox.list()).find((s) => s.id === id);
  if (!info) throw new NotFoundError('sandbox', id);
  const decoder = new PrintableDecoder();
  let offset = await copyLog(info.consoleLog, 0, process.stdout, decoder);
  if (follow) {
    // Until the VM is gone: a stopping guest still logs its shutdown, a paused one lives on. A
    // 'stopped' record comes after the log writer drained the VM's last output.
    while (FOLLOWED_STATES.has((await Sandbox.list()).find((s) => s.id === id)?.state ?? 'deleted')) {
      await sleep(250);
      offset = await copyLog(info.consoleLog, offset, process.stdout, decoder);
    }
    offset = await copyLog(info.consoleLog, offset, process.stdout, decoder);
  }
  await write(process.stdout, decoder.end());
  return 0;
}
