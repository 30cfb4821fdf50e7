/** `vmpod logs`: the console log of a sandbox. */
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Sandbox } from '../../sandbox/sandbox.js';
import { NotFoundError } from '../../errors.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { UsageError } from '../io.js';
import { parseTarget } from '../target.js';

export const logs: Command = {
  words: ['logs'],
  summary: "print a sandbox's console log (guest kernel, agent, hypervisor)",
  usage: `Usage: vmpod logs [--follow] ID

Prints the sandbox's console log: the guest kernel's messages, the agent's log lines and the
hypervisor's own errors. --follow keeps printing while the sandbox runs.`,
  spec: { options: [...COMMON_OPTIONS, { long: 'follow', short: 'f', type: 'boolean' }] },
  async run(parsed) {
    if (parsed.positionals.length !== 1) throw new UsageError('give exactly one sandbox id');
    const id = parseTarget(parsed.positionals[0]).sandbox;
    const info = (await Sandbox.list()).find((s) => s.id === id);
    if (!info) throw new NotFoundError('sandbox', id);
    let offset = 0;
    const copy = async (): Promise<void> => {
      const handle = await fs.promises.open(info.consoleLog, 'r').catch(() => undefined);
      if (!handle) return;
      try {
        const buffer = Buffer.alloc(64 * 1024);
        for (;;) {
          const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
          if (bytesRead === 0) break;
          offset += bytesRead;
          if (!process.stdout.write(buffer.subarray(0, bytesRead))) await new Promise((r) => process.stdout.once('drain', r));
        }
      } finally {
        await handle.close();
      }
    };
    await copy();
    if (parsed.options['follow']) {
      while ((await Sandbox.list()).find((s) => s.id === id)?.state === 'running') {
        await sleep(250);
        await copy();
      }
      await copy();
    }
    return 0;
  },
};
