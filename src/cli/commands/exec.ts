/** `vmpod exec`: run a process in a running container. */
import { COMMON_OPTIONS, type Command } from '../command.js';
import { UsageError } from '../io.js';
import { PROCESS_OPTIONS, PROCESS_USAGE, attachStdio, processOverrides, shellExitCode } from '../process-options.js';
import { resolveContainer } from '../target.js';

export const exec: Command = {
  words: ['exec'],
  summary: 'run a command in a running container',
  usage: `Usage: vmpod exec [OPTIONS] ID[/CONTAINER] CMD [ARG...]

Runs CMD in the container (by default the one named like the sandbox, or its only one) and
exits with CMD's exit code.

Options:
${PROCESS_USAGE}`,
  spec: { options: [...COMMON_OPTIONS, ...PROCESS_OPTIONS], stopAfterPositionals: 1 },
  async run(parsed) {
    if (parsed.rest.length === 0) throw new UsageError('give the command to run after the id');
    const interactive = parsed.options['interactive'] === true;
    const tty = parsed.options['tty'] === true;
    const overrides = processOverrides(parsed); // usage errors before the sandbox is touched
    const { sandbox, container } = await resolveContainer(parsed.positionals[0], 'exec');
    try {
      const proc = await container.exec({
        ...overrides,
        stdio: { stdin: interactive, stdout: true, stderr: true },
      });
      const done = attachStdio(proc, { interactive, tty });
      const status = await proc.wait();
      await done();
      return shellExitCode(status);
    } finally {
      sandbox.detach();
    }
  },
};
