/** `vmpod logs`: the console log of a sandbox. */
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Writable } from 'node:stream';
import { Sandbox } from '../../sandbox/sandbox.js';
import { NotFoundError } from '../../errors.js';
import { PrintableDecoder } from '../../printable.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { UsageError } from '../io.js';
import { parseTarget } from '../target.js';

/**
 * Copies the console log `file` from byte `offset` to `out`, through `decoder` when there is
 * one (for a terminal: the guest writes what it likes to its console, escape sequences
 * included), else byte for byte. Resolves with the offset reached; a missing file copies nothing.
 */
export async function copyLog(file: string, offset: number, out: Writable, decoder?: PrintableDecoder): Promise<number> {
  const handle = await fs.promises.open(file, 'r').catch(() => undefined);
  if (!handle) return offset;
  const write = async (data: string | Buffer): Promise<void> => {
    if (data.length > 0 && !out.write(data)) await new Promise((resolve) => out.once('drain', resolve));
  };
  try {
    for (;;) {
      // A new buffer each time: `out` may hold on to what it was given.
      const buffer = Buffer.allocUnsafe(64 * 1024);
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
      if (bytesRead === 0) break;
      offset += bytesRead;
      const chunk = buffer.subarray(0, bytesRead);
      await write(decoder ? decoder.write(chunk) : chunk);
    }
  } finally {
    await handle.close();
  }
  return offset;
}

/** The states `logs -f` keeps following in: the VM is up, or on its way up or down. */
const FOLLOWED_STATES: ReadonlySet<string> = new Set(['starting', 'running', 'paused', 'stopping']);

export const logs: Command = {
  words: ['logs'],
  summary: "print a sandbox's console log (guest kernel, agent, hypervisor)",
  usage: `Usage: vmpod logs [--follow] [--raw] ID

Prints the sandbox's console log: the guest kernel's messages, the agent's log lines and the
hypervisor's own errors. --follow keeps printing until the sandbox's VM is gone (stopped,
deleted), its shutdown messages included.

On a terminal, control characters the guest wrote (escape sequences, a lone CR, bidi
controls) are shown as escapes such as \\x1b instead of being acted on, and CR LF line ends
as plain newlines; into a pipe or a file the log is copied byte for byte. --raw copies it
byte for byte on a terminal too.`,
  spec: {
    options: [...COMMON_OPTIONS, { long: 'follow', short: 'f', type: 'boolean' }, { long: 'raw', type: 'boolean' }],
  },
  async run(parsed) {
    if (parsed.positionals.length !== 1) throw new UsageError('give exactly one sandbox id');
    const id = parseTarget(parsed.positionals[0]).sandbox;
    const info = (await Sandbox.list()).find((s) => s.id === id);
    if (!info) throw new NotFoundError('sandbox', id);
    const decoder = process.stdout.isTTY && parsed.options['raw'] !== true ? new PrintableDecoder() : undefined;
    let offset = await copyLog(info.consoleLog, 0, process.stdout, decoder);
    if (parsed.options['follow']) {
      // Until the VM is gone: a stopping guest still logs its shutdown, a paused one lives on. A
      // 'stopped' record comes after the log writer drained the VM's last output.
      while (FOLLOWED_STATES.has((await Sandbox.list()).find((s) => s.id === id)?.state ?? 'deleted')) {
        await sleep(250);
        offset = await copyLog(info.consoleLog, offset, process.stdout, decoder);
      }
      offset = await copyLog(info.consoleLog, offset, process.stdout, decoder);
    }
    if (decoder) process.stdout.write(decoder.end());
    return 0;
  },
};
