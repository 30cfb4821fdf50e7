#!/usr/bin/env node
/**
 * The `vmpod` command: a thin layer over the library for scripts and people. Each subcommand
 * lives in its own file under commands/; this file only picks one and maps errors to exit codes.
 *
 * @internal
 * @module
 */
import { readFile } from 'node:fs/promises';
import { parseArgs, type ParsedArgs } from './args.js';
import type { Command } from './command.js';
import { EXIT_USAGE, UsageError, reportError } from './io.js';
import { printable } from '../printable.js';
import { run } from './commands/run.js';
import { ps } from './commands/ps.js';
import { exec } from './commands/exec.js';
import { kill } from './commands/kill.js';
import { remove, stop } from './commands/lifecycle.js';
import { logs } from './commands/logs.js';
import { guestBuild } from './commands/guest.js';
import { networkAdd, networkCheck, networkList, networkRemove, networkRescan } from './commands/network.js';
import { events } from './commands/events.js';
import { pause, resume, update } from './commands/pause.js';
import { imageInspect, imageList, imagePrune, imageRemove } from './commands/image.js';

const COMMANDS: readonly Command[] = [run, ps, exec, kill, stop, remove, logs, guestBuild, networkAdd, networkRemove, networkList, networkRescan, networkCheck, events, imageList, imageInspect, imageRemove, imagePrune, pause, resume, update];

function help(): string {
  const width = Math.max(...COMMANDS.map((c) => c.words.join(' ').length));
  return `Usage: vmpod COMMAND [OPTIONS]

Runs OCI containers inside lightweight VMs.

Commands:
${COMMANDS.map((c) => `  ${c.words.join(' ').padEnd(width)}   ${c.summary}`).join('\n')}

Run "vmpod COMMAND --help" for a command's options, "vmpod --version" for the version.
Exit codes (docker's): run and exec exit with the process's code (128 + N if signal N killed
it); 2 a usage error, 125 vmpod failed, 126 the command cannot be executed, 127 not found.
Environment: VMPOD_STATE_DIR (default /run/vmpod), VMPOD_GUEST_CACHE (default /var/cache/vmpod/guest),
VMPOD_IMAGE_DIR (the image store, default /var/lib/vmpod/images).
`;
}

function findCommand(argv: readonly string[]): { command: Command; rest: string[] } | undefined {
  for (const command of [...COMMANDS].sort((a, b) => b.words.length - a.words.length)) {
    if (command.words.every((w, i) => argv[i] === w)) return { command, rest: argv.slice(command.words.length) };
  }
  return undefined;
}

/** This package's version, from its package.json (two levels above dist/cli or src/cli). */
async function packageVersion(): Promise<string> {
  const file = new URL('../../package.json', import.meta.url);
  return (JSON.parse(await readFile(file, 'utf8')) as { version: string }).version;
}

/** Runs the CLI on `argv` (without node and the script); resolves with the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    process.stdout.write(help());
    return argv.length === 0 ? EXIT_USAGE : 0;
  }
  if (argv[0] === '--version' || argv[0] === 'version') {
    process.stdout.write(`vmpod ${await packageVersion()}\n`);
    return 0;
  }
  const found = findCommand(argv);
  if (!found) {
    process.stderr.write(`${printable(`vmpod: unknown command "${argv.join(' ')}"`)}\n\n${help()}`);
    return EXIT_USAGE;
  }
  const json = found.rest.includes('--json');
  let parsed: ParsedArgs | undefined;
  try {
    parsed = parseArgs(found.rest, found.command.spec);
    if (parsed.options['help']) {
      process.stdout.write(`${found.command.usage}\n`);
      return 0;
    }
    return await found.command.run(parsed);
  } catch (error) {
    // What parseArgs rejects (an unknown option, a missing value) is a usage error too.
    const code = reportError(error, json, parsed === undefined);
    if (error instanceof UsageError || (error as { code?: string }).code === 'ERR_VMPOD_INVALID_ARGUMENT') {
      if (!json) process.stderr.write(`\n${found.command.usage}\n`);
    }
    return code;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Open handles (a VM we detached from, stdin) must not keep the CLI alive.
    setImmediate(() => process.exit(code));
  },
  (error: unknown) => {
    process.stderr.write(`${printable(`vmpod: internal error: ${(error as Error).stack ?? String(error)}`)}\n`);
    process.exit(125);
  },
);
