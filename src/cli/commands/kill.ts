/** `vmpod kill`: signal a container. */
import os from 'node:os';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { UsageError } from '../io.js';
import { resolveContainer } from '../target.js';

/** `TERM`, `SIGTERM` or `15` -> a signal name or number. */
export function parseSignal(value: string | undefined): NodeJS.Signals | number {
  if (value === undefined) return 'SIGTERM';
  if (/^\d+$/u.test(value)) {
    const n = Number(value);
    if (n < 1 || n > 64) throw new UsageError(`signal ${value} is out of range (1-64)`);
    return n;
  }
  const name = (value.toUpperCase().startsWith('SIG') ? value.toUpperCase() : `SIG${value.toUpperCase()}`) as NodeJS.Signals;
  if (!(name in os.constants.signals)) throw new UsageError(`unknown signal ${value}`);
  return name;
}

export const kill: Command = {
  words: ['kill'],
  summary: 'send a signal to a container',
  usage: `Usage: vmpod kill [--all] ID[/CONTAINER] [SIGNAL]

Sends SIGNAL (default SIGTERM; a name such as KILL or a number) to the container's init
process, or with --all to every process in it.`,
  spec: { options: [...COMMON_OPTIONS, { long: 'all', short: 'a', type: 'boolean' }] },
  async run(parsed) {
    if (parsed.positionals.length > 2) throw new UsageError('too many arguments');
    const signal = parseSignal(parsed.positionals[1]);
    const { sandbox, container } = await resolveContainer(parsed.positionals[0]);
    try {
      await container.kill(signal, { all: parsed.options['all'] === true });
    } finally {
      sandbox.detach();
    }
    return 0;
  },
};
