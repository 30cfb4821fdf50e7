/** `vmpod kill`: signal a container. */
import os from 'node:os';
import { integerOption } from '../args.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { UsageError } from '../io.js';
import { SIGNAL_NUMBER } from '../limits.js';
import { resolveContainer } from '../target.js';

/** `TERM`, `SIGTERM` or `15` -> a signal name or number; throws {@link UsageError}. */
export function parseSignal(value: string | undefined): NodeJS.Signals | number {
  if (value === undefined) return 'SIGTERM';
  if (/^[0-9]+$/u.test(value)) return integerOption('SIGNAL', value, SIGNAL_NUMBER.min, SIGNAL_NUMBER.max);
  const upper = value.toUpperCase();
  const name = (upper.startsWith('SIG') ? upper : `SIG${upper}`) as NodeJS.Signals;
  if (!Object.hasOwn(os.constants.signals, name)) {
    throw new UsageError(`SIGNAL ${JSON.stringify(value)}: expected a signal name (TERM, KILL, ...) or a decimal integer from ${SIGNAL_NUMBER.min} to ${SIGNAL_NUMBER.max}`);
  }
  return name;
}

export const kill: Command = {
  words: ['kill'],
  summary: 'send a signal to a container',
  usage: `Usage: vmpod kill [--all] ID[/CONTAINER] [SIGNAL]

Sends SIGNAL (default SIGTERM; a name such as KILL or a number from ${SIGNAL_NUMBER.min} to ${SIGNAL_NUMBER.max}) to the
container's init process, or with --all to every process in it.`,
  spec: { options: [...COMMON_OPTIONS, { long: 'all', short: 'a', type: 'boolean' }] },
  async run(parsed) {
    if (parsed.positionals.length > 2) throw new UsageError('too many arguments');
    const signal = parseSignal(parsed.positionals[1]);
    const { sandbox, container } = await resolveContainer(parsed.positionals[0], 'kill');
    try {
      await container.kill(signal, { all: parsed.options['all'] === true });
    } finally {
      sandbox.detach();
    }
    return 0;
  },
};
