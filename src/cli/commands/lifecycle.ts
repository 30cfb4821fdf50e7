/** `vmpod stop` and `vmpod delete`. */
import { Sandbox } from '../../sandbox/sandbox.js';
import { integerOption, type ParsedArgs } from '../args.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { UsageError } from '../io.js';
import { STOP_TIMEOUT_S } from '../limits.js';
import { parseTarget } from '../target.js';
import { printable } from '../../printable.js';
import { InvalidStateError } from '../../errors.js';

function oneId(positionals: string[]): string {
  if (positionals.length !== 1) throw new UsageError('give exactly one sandbox id');
  return parseTarget(positionals[0]).sandbox;
}

/** `stop`'s options as {@link Sandbox.stop} takes them; throws {@link UsageError}. */
export function stopOptions(o: ParsedArgs['options']): { timeoutMs?: number } {
  const timeout = o['timeout'];
  if (typeof timeout !== 'string') return {};
  return { timeoutMs: integerOption('--timeout', timeout, STOP_TIMEOUT_S.min, STOP_TIMEOUT_S.max) * 1000 };
}

export const stop: Command = {
  words: ['stop'],
  summary: 'stop a sandbox (its containers and its VM)',
  usage: `Usage: vmpod stop [--timeout SECONDS] ID

Asks the guest to stop every container and power off; after the timeout (default 10 s; 0 to
${STOP_TIMEOUT_S.max} s, 0 forces it off at once) the VM is forced off. The sandbox stays listed
(stopped) until "vmpod delete". Stopping a sandbox that does not run succeeds.`,
  spec: { options: [...COMMON_OPTIONS, { long: 'timeout', type: 'string' }] },
  async run(parsed) {
    const id = oneId(parsed.positionals);
    const options = stopOptions(parsed.options);
    const sandbox = await Sandbox.attach(id);
    await sandbox.stop(options);
    return 0;
  },
};

export const remove: Command = {
  words: ['delete'],
  summary: 'delete a sandbox and everything it made on the host',
  usage: `Usage: vmpod delete [--force] ID

Removes a stopped sandbox. With --force a running one is stopped first.`,
  spec: { options: [...COMMON_OPTIONS, { long: 'force', short: 'f', type: 'boolean' }] },
  async run(parsed) {
    const id = oneId(parsed.positionals);
    const warnings = await Sandbox.remove(id, { force: parsed.options['force'] === true }).catch((error: unknown) => {
      if (error instanceof InvalidStateError && error.to === 'deleting' && ['running', 'paused', 'starting', 'stopping'].includes(error.from)) {
        Object.assign(error, { hint: `"vmpod stop ${id}" stops it; "vmpod delete -f ${id}" stops and deletes it` });
      }
      throw error;
    });
    for (const warning of warnings) process.stderr.write(`vmpod: ${printable(warning)}\n`);
    return 0;
  },
};
