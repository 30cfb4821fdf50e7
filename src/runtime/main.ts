#!/usr/bin/env node
/**
 * `vmpod-runtime`: a runc-compatible OCI runtime on vmpod (docs/oci-runtime.md). Every call pays
 * Node's start, so this file loads only what `state`, `list`, `features` and `--version` need
 * (the record, no addon, no sandbox code); the other commands import theirs on demand.
 *
 * @module
 */
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { helpText, parseRuntimeArgs, type RuntimeArgs } from './args.js';
import { RuntimeError, errorMessage, reportFailure, writeLog, type LogTarget } from './log.js';
import { DEFAULT_ROOT, OCI_VERSION, RuntimeRoot, checkId, ociState } from './state.js';

/** The log target from whatever global options could be read (also when parsing failed). */
function logTarget(argv: readonly string[], parsed: RuntimeArgs | undefined): LogTarget {
  const target: LogTarget = { format: 'text', debug: false };
  if (parsed) {
    const g = parsed.global;
    if (typeof g['log'] === 'string' && g['log'] !== '') target.file = g['log'];
    if (g['log-format'] === 'json') target.format = 'json';
    target.debug = g['debug'] === true;
    return target;
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!.replace(/^--?/u, '');
    if (a === 'log' && argv[i + 1] !== undefined) target.file = argv[i + 1]!;
    else if (a.startsWith('log=')) target.file = a.slice(4);
    else if (a === 'log-format' && argv[i + 1] === 'json') target.format = 'json';
    else if (a === 'log-format=json') target.format = 'json';
  }
  return target;
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return `vmpod-runtime version ${pkg.version}\nspec: ${OCI_VERSION}\n`;
}

/** Runs one command; resolves with the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  let args: RuntimeArgs | undefined;
  let log = logTarget(argv, undefined);
  try {
    args = parseRuntimeArgs(argv);
    log = logTarget(argv, args);
    const g = args.global;
    if (g['log-format'] !== undefined && g['log-format'] !== 'json' && g['log-format'] !== 'text') throw new RuntimeError(`invalid log-format: ${String(g['log-format'])}`);
    if (g['rootless'] === 'true') throw new RuntimeError('rootless mode is not supported: vmpod-runtime runs VMs as root (--rootless false or auto only)');
    if (g['version'] === true) {
      process.stdout.write(version());
      return 0;
    }
    if (!args.command || g['help'] === true) {
      process.stdout.write(helpText());
      return args.command || g['help'] === true ? 0 : 1;
    }
    if (args.options['help'] === true) {
      process.stdout.write(helpText(args.command));
      return 0;
    }
    const root = new RuntimeRoot(typeof g['root'] === 'string' ? g['root'] : DEFAULT_ROOT);
    writeLog(log, 'debug', `${args.command.name} ${args.positionals.join(' ')}`);
    switch (args.command.name) {
      case 'state': {
        const record = await root.read(checkId(args.positionals[0]));
        process.stdout.write(`${JSON.stringify(ociState(record), null, 2)}\n`);
        return 0;
      }
      case 'list':
        await list(root, args);
        return 0;
      case 'features': {
        const { features } = await import('./features.js');
        process.stdout.write(`${JSON.stringify(features(), null, 4)}\n`);
        return 0;
      }
      default:
        break;
    }
    const commands = await import('./commands.js');
    const ctx = { root, log };
    switch (args.command.name) {
      case 'create':
        (await commands.create(ctx, args)).unref();
        return 0;
      case 'run':
        return await commands.run(ctx, args);
      case 'start':
        await commands.start(ctx, args);
        return 0;
      case 'kill':
        await commands.kill(ctx, args);
        return 0;
      case 'delete':
        await commands.remove(ctx, args);
        return 0;
      case 'exec':
        await commands.exec(ctx, args);
        return 0;
      case 'ps':
        await commands.ps(ctx, args);
        return 0;
      case 'pause':
      case 'resume':
        await commands.pauseResume(ctx, args, args.command.name);
        return 0;
      case 'update':
        await commands.update(ctx, args);
        return 0;
      case 'spec':
        await commands.specCommand(args);
        return 0;
      default:
        throw new RuntimeError(`No help topic for '${args.command.name}'`);
    }
  } catch (error) {
    const message = errorMessage(error);
    const name = args?.command?.name;
    reportFailure(log, name === 'create' || name === 'run' ? `vmpod-runtime ${name} failed: ${message}` : message);
    return 1;
  }
}

async function list(root: RuntimeRoot, args: RuntimeArgs): Promise<void> {
  const format = typeof args.options['format'] === 'string' ? args.options['format'] : 'table';
  if (format !== 'table' && format !== 'json') throw new RuntimeError('invalid format option');
  const states = [];
  for (const id of await root.ids()) {
    try {
      states.push(ociState(await root.read(id)));
    } catch {
      // being created or removed
    }
  }
  if (args.options['quiet'] === true) {
    process.stdout.write(states.map((s) => `${s.id}\n`).join(''));
  } else if (format === 'json') {
    process.stdout.write(`${JSON.stringify(states)}\n`);
  } else {
    const rows = [['ID', 'PID', 'STATUS', 'BUNDLE', 'CREATED', 'OWNER'], ...states.map((s) => [s.id, String(s.pid), s.status, s.bundle, s.created, 'root'])];
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    process.stdout.write(rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]! + 3))).join('')).join('\n') + '\n');
  }
}

/** True when this file is the process's entry point (the bin), not a module imported by a test. */
function isEntryPoint(): boolean {
  try {
    return process.argv[1] !== undefined && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
      // A create's spawned monitor (unref'd) and its pipes must not keep this process alive.
      setImmediate(() => process.exit(code));
    },
    (error: unknown) => {
      process.stderr.write(`vmpod-runtime: internal error: ${errorMessage(error)}\n`);
      process.exit(1);
    },
  );
}
