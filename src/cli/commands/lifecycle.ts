/** `vmpod stop` and `vmpod delete`. */
import { Sandbox } from '../../sandbox/sandbox.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { UsageError } from '../io.js';
import { parseTarget } from '../target.js';

function oneId(positionals: string[]): string {
  if (positionals.length !== 1) throw new UsageError('give exactly one sandbox id');
  return parseTarget(positionals[0]).sandbox;
}

export const stop: Command = {
  words: ['stop'],
  summary: 'stop a sandbox (its containers and its VM)',
  usage: `Usage: vmpod stop [--timeout SECONDS] ID

Asks the guest to stop every container and power off; after the timeout (default 10 s) the VM
is forced off. The sandbox stays listed (stopped) until "vmpod delete".`,
  spec: { options: [...COMMON_OPTIONS, { long: 'timeout', type: 'string' }] },
  async run(parsed) {
    const sandbox = await Sandbox.attach(oneId(parsed.positionals));
    const timeout = parsed.options['timeout'];
    await sandbox.stop(typeof timeout === 'string' ? { timeoutMs: Number(timeout) * 1000 } : {});
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
    const sandbox = await Sandbox.attach(oneId(parsed.positionals));
    await sandbox.delete({ force: parsed.options['force'] === true });
    return 0;
  },
};
