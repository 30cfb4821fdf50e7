/**
 * The command line of `vmpod-runtime`, parsed as runc (Go's flag package under urfave/cli) parses
 * its own: global options before the command, each command's options before its positionals
 * (for `exec`, everything after the container id is the command to run), `-name` and `--name`
 * alike, `--name value` or `--name=value`, boolean flags also as `--name=true|false`, single
 * letters as runc has them (`-b`, `-d`, `-t`, ...).
 *
 * @module
 */
import { RuntimeError } from './log.js';

/** One option. */
export interface RuntimeOption {
  long: string;
  short?: string;
  type: 'boolean' | 'string';
  multiple?: boolean;
  /** Shown in the command's help. */
  help: string;
}

/** One command: its options and positionals. */
export interface RuntimeCommandSpec {
  name: string;
  summary: string;
  /** e.g. `<container-id>` */
  args: string;
  options: readonly RuntimeOption[];
  /** Positionals it takes (at least, at most); `rest`: after them, everything is kept as is (exec's command). */
  positionals: [number, number];
  rest?: boolean;
}

const CONSOLE = { long: 'console-socket', type: 'string', help: 'unix socket that receives the terminal master fd (SCM_RIGHTS)' } as const;
const PID_FILE = { long: 'pid-file', type: 'string', help: 'file to write the pid of the container monitor to' } as const;
const CREATE_OPTIONS: RuntimeOption[] = [
  { long: 'bundle', short: 'b', type: 'string', help: 'the bundle directory (default: the current directory)' },
  CONSOLE,
  PID_FILE,
  { long: 'no-pivot', type: 'boolean', help: 'accepted; no effect (the rootfs is the guest\'s)' },
  { long: 'no-new-keyring', type: 'boolean', help: 'accepted; no effect' },
  { long: 'preserve-fds', type: 'string', help: 'extra fds to pass (only 0: host fds cannot enter the VM)' },
];

/** Every command `vmpod-runtime` has. */
export const RUNTIME_COMMANDS: readonly RuntimeCommandSpec[] = [
  { name: 'create', summary: 'create a container (its VM booted, the process not started)', args: '<container-id>', options: CREATE_OPTIONS, positionals: [1, 1] },
  { name: 'start', summary: 'start the process of a created container', args: '<container-id>', options: [], positionals: [1, 1] },
  {
    name: 'run', summary: 'create and start a container (and wait for it unless --detach)', args: '<container-id>', positionals: [1, 1],
    options: [...CREATE_OPTIONS, { long: 'detach', short: 'd', type: 'boolean', help: 'return once started' }, { long: 'keep', type: 'boolean', help: 'do not delete the container after it exits' }],
  },
  { name: 'state', summary: 'print the OCI state of a container (JSON)', args: '<container-id>', options: [], positionals: [1, 1] },
  {
    name: 'kill', summary: 'send a signal (default SIGTERM) to the container\'s init', args: '<container-id> [signal]', positionals: [1, 2],
    options: [{ long: 'all', short: 'a', type: 'boolean', help: 'to every process of the container' }],
  },
  {
    name: 'delete', summary: 'delete a container (and its VM with the last container in it)', args: '<container-id>', positionals: [1, 1],
    options: [{ long: 'force', short: 'f', type: 'boolean', help: 'kill it first if it runs' }],
  },
  {
    name: 'exec', summary: 'run a process in a running container', args: '<container-id> [command [args...]]', positionals: [1, 1], rest: true,
    options: [
      { long: 'process', short: 'p', type: 'string', help: 'a runtime-spec Process JSON file' },
      { long: 'detach', short: 'd', type: 'boolean', help: 'return once started' },
      PID_FILE,
      { long: 'tty', short: 't', type: 'boolean', help: 'give the process a terminal' },
      CONSOLE,
      { long: 'cwd', type: 'string', help: 'working directory in the container' },
      { long: 'env', short: 'e', type: 'string', multiple: true, help: 'KEY=VALUE (repeatable)' },
      { long: 'user', short: 'u', type: 'string', help: 'UID[:GID]' },
      { long: 'additional-gids', short: 'g', type: 'string', multiple: true, help: 'additional gid (repeatable)' },
      { long: 'preserve-fds', type: 'string', help: 'extra fds to pass (only 0)' },
      { long: 'no-new-privs', type: 'boolean', help: 'accepted' },
      { long: 'cap', short: 'c', type: 'string', multiple: true, help: 'accepted, ignored' },
      { long: 'apparmor', type: 'string', help: 'accepted, ignored' },
      { long: 'process-label', type: 'string', help: 'accepted, ignored' },
      { long: 'cgroup', type: 'string', multiple: true, help: 'accepted, ignored' },
    ],
  },
  {
    name: 'ps', summary: 'the host processes of a container (its monitor: the container\'s own run in the VM)', args: '<container-id>', positionals: [1, 1],
    options: [{ long: 'format', short: 'f', type: 'string', help: 'table or json' }],
  },
  {
    name: 'list', summary: 'the containers of this --root', args: '', positionals: [0, 0],
    options: [{ long: 'format', short: 'f', type: 'string', help: 'table or json' }, { long: 'quiet', short: 'q', type: 'boolean', help: 'ids only' }],
  },
  { name: 'pause', summary: 'pause a container', args: '<container-id>', options: [], positionals: [1, 1] },
  { name: 'resume', summary: 'resume a paused container', args: '<container-id>', options: [], positionals: [1, 1] },
  {
    name: 'update', summary: 'update a container\'s resource limits', args: '<container-id>', positionals: [1, 1],
    options: [
      { long: 'resources', short: 'r', type: 'string', help: 'a LinuxResources JSON file, or - for stdin' },
      { long: 'memory', short: 'm', type: 'string', help: 'memory limit in bytes' },
      { long: 'cpu-quota', type: 'string', help: 'CPU CFS quota (microseconds)' },
      { long: 'cpu-period', type: 'string', help: 'CPU CFS period (microseconds)' },
      { long: 'cpu-shares', type: 'string', help: 'CPU shares' },
      { long: 'pids-limit', type: 'string', help: 'maximum number of pids' },
    ],
  },
  { name: 'features', summary: 'print what this runtime supports (runtime-spec features JSON)', args: '', options: [], positionals: [0, 0] },
  {
    name: 'spec', summary: 'write a default config.json into the bundle', args: '', positionals: [0, 0],
    options: [{ long: 'bundle', short: 'b', type: 'string', help: 'where to write it (default: the current directory)' }, { long: 'rootless', type: 'boolean', help: 'refused' }],
  },
];

/** The global options. */
export const GLOBAL_OPTIONS: readonly RuntimeOption[] = [
  { long: 'root', type: 'string', help: 'state directory (default /run/vmpod-runtime)' },
  { long: 'log', type: 'string', help: 'append errors (and --debug lines) to this file' },
  { long: 'log-format', type: 'string', help: 'json or text (default text)' },
  { long: 'debug', type: 'boolean', help: 'debug lines in the log' },
  { long: 'systemd-cgroup', type: 'boolean', help: 'accepted; no effect (the container\'s cgroups are the guest\'s)' },
  { long: 'rootless', type: 'string', help: 'true|false|auto: only false or auto as root (a VM needs root here)' },
  { long: 'criu', type: 'string', help: 'accepted; checkpointing is not supported' },
  { long: 'help', short: 'h', type: 'boolean', help: 'help' },
  { long: 'version', short: 'v', type: 'boolean', help: 'the version' },
];

/** The parsed options (`true` for flags, a string, or strings for `multiple`). */
export type Options = Record<string, boolean | string | string[]>;

/** A parsed command line. */
export interface RuntimeArgs {
  global: Options;
  command?: RuntimeCommandSpec;
  options: Options;
  positionals: string[];
  /** exec's command. */
  rest: string[];
}

/**
 * Parses options from `argv[i]` on; stops at the first positional when `stopAtPositional`, else
 * collects positionals. Returns the index reached.
 */
function parseOptions(argv: readonly string[], start: number, specs: readonly RuntimeOption[], out: Options, positionals: string[], stopAtPositional: boolean): number {
  let i = start;
  for (; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') return i + 1;
    if (!arg.startsWith('-') || arg === '-') {
      if (stopAtPositional) return i;
      positionals.push(arg);
      continue;
    }
    const body = arg.replace(/^--?/u, '');
    const eq = body.indexOf('=');
    const name = eq < 0 ? body : body.slice(0, eq);
    const spec = specs.find((o) => o.long === name || o.short === name);
    if (!spec) throw new RuntimeError(`flag provided but not defined: -${name}`);
    let value: string | true;
    if (spec.type === 'boolean') {
      if (eq >= 0) {
        const text = body.slice(eq + 1);
        if (text !== 'true' && text !== 'false') throw new RuntimeError(`invalid boolean value "${text}" for -${name}`);
        if (text === 'false') {
          delete out[spec.long];
          continue;
        }
      }
      value = true;
    } else if (eq >= 0) {
      value = body.slice(eq + 1);
    } else {
      const next = argv[++i];
      if (next === undefined) throw new RuntimeError(`flag needs an argument: -${name}`);
      value = next;
    }
    if (spec.multiple) out[spec.long] = [...((out[spec.long] as string[] | undefined) ?? []), String(value)];
    else out[spec.long] = value;
  }
  return i;
}

/** Parses `argv` (without node and the script). Throws RuntimeError on a usage error. */
export function parseRuntimeArgs(argv: readonly string[]): RuntimeArgs {
  const global: Options = {};
  const i = parseOptions(argv, 0, GLOBAL_OPTIONS, global, [], true);
  const name = argv[i];
  if (name === undefined) return { global, options: {}, positionals: [], rest: [] };
  const command = RUNTIME_COMMANDS.find((c) => c.name === name);
  if (!command) throw new RuntimeError(`No help topic for '${name}'`);
  const options: Options = {};
  const positionals: string[] = [];
  let rest: string[] = [];
  const withHelp = [...command.options, { long: 'help', short: 'h', type: 'boolean', help: 'help' } as const];
  if (command.rest) {
    const j = parseOptions(argv, i + 1, withHelp, options, positionals, true);
    if (j < argv.length) positionals.push(argv[j]!);
    rest = argv.slice(j + 1);
    // `exec ID -- CMD`: the separator belongs to us.
    if (rest[0] === '--') rest = rest.slice(1);
  } else {
    parseOptions(argv, i + 1, withHelp, options, positionals, false);
  }
  if (options['help']) return { global, command, options, positionals, rest };
  const [min, max] = command.positionals;
  if (positionals.length < min) {
    throw new RuntimeError(min === 1 && command.args.startsWith('<container-id>') ? `"${command.name}" requires a minimum of 1 argument` : `"${command.name}" requires ${min} arguments`);
  }
  if (positionals.length > max) throw new RuntimeError(`"${command.name}" requires a maximum of ${max} argument${max === 1 ? '' : 's'}`);
  return { global, command, options, positionals, rest };
}

/** The text of `vmpod-runtime --help`, or of one command's. */
export function helpText(command?: RuntimeCommandSpec): string {
  const line = (o: RuntimeOption): string => `   --${o.long}${o.short ? `, -${o.short}` : ''}${o.type === 'string' ? ' value' : ''}`.padEnd(34) + o.help;
  if (command) {
    return `NAME:\n   vmpod-runtime ${command.name} - ${command.summary}\n\nUSAGE:\n   vmpod-runtime ${command.name} [command options] ${command.args}\n\nOPTIONS:\n${command.options.map(line).join('\n')}\n`;
  }
  return `NAME:
   vmpod-runtime - a runc-compatible OCI runtime that runs each container in a lightweight VM (vmpod)

USAGE:
   vmpod-runtime [global options] command [command options] [arguments...]

COMMANDS:
${RUNTIME_COMMANDS.map((c) => `   ${c.name.padEnd(10)}${c.summary}`).join('\n')}

GLOBAL OPTIONS:
${GLOBAL_OPTIONS.map(line).join('\n')}

See docs/oci-runtime.md.
`;
}
