import { describe, expect, it } from 'vitest';
import { integerOption, parseArgs, type CommandSpec } from '../../src/cli/args.js';
import { UsageError } from '../../src/cli/io.js';
import { CPUS, MEMORY_MIB, SIGNAL_NUMBER, STOP_TIMEOUT_S, USER_ID, guestHugepages, memoryMiB } from '../../src/cli/limits.js';
import { processOverrides } from '../../src/cli/process-options.js';
import { run as runCommand, runSandboxConfig } from '../../src/cli/commands/run.js';
import { stop, stopOptions } from '../../src/cli/commands/lifecycle.js';
import { parseSignal } from '../../src/cli/commands/kill.js';
import { exec as execCommand } from '../../src/cli/commands/exec.js';
import { checkOverrides } from '../../src/container/spec.js';
import { resolveSandboxConfig } from '../../src/sandbox/config.js';
import { InvalidArgumentError } from '../../src/errors.js';

const run: CommandSpec = {
  options: [
    { long: 'rm', type: 'boolean' },
    { long: 'interactive', short: 'i', type: 'boolean' },
    { long: 'tty', short: 't', type: 'boolean' },
    { long: 'name', type: 'string' },
    { long: 'volume', short: 'v', type: 'string', multiple: true },
  ],
};
const exec: CommandSpec = { options: run.options, stopAfterPositionals: 1 };

describe('cli argument parser', () => {
  it('parses grouped short flags, values and the command after --', () => {
    const parsed = parseArgs(['--rm', '-it', '--name', 'web', '-v', '/a:/b', '-v/c:/d:ro', '/bundle', '--', 'ls', '-l'], run);
    expect(parsed.options).toEqual({ rm: true, interactive: true, tty: true, name: 'web', volume: ['/a:/b', '/c:/d:ro'] });
    expect(parsed.positionals).toEqual(['/bundle']);
    expect(parsed.rest).toEqual(['ls', '-l']);
    expect(parsed.sawSeparator).toBe(true);
  });
  it('accepts --name=value and no positional at all', () => {
    const parsed = parseArgs(['--name=x', '--', 'uname', '-a'], run);
    expect(parsed.options['name']).toBe('x');
    expect(parsed.positionals).toEqual([]);
    expect(parsed.rest).toEqual(['uname', '-a']);
  });
  it('stops option parsing after the fixed positionals (exec ID CMD...)', () => {
    const parsed = parseArgs(['-i', 'box', 'ls', '-l', '--rm'], exec);
    expect(parsed.options).toEqual({ interactive: true });
    expect(parsed.positionals).toEqual(['box']);
    expect(parsed.rest).toEqual(['ls', '-l', '--rm']);
    // A separator right after the id ends the options; one later is the command's.
    const separated = parseArgs(['box', '--', 'ls', '--', '-l'], exec);
    expect(separated.positionals).toEqual(['box']);
    expect(separated.rest).toEqual(['ls', '--', '-l']);
    expect(separated.sawSeparator).toBe(true);
    expect(parseArgs(['-i', '--', 'box', 'ls'], exec).rest).toEqual(['box', 'ls']);
  });
  it('rejects unknown options and missing values with a typed error', () => {
    expect(() => parseArgs(['--nope'], run)).toThrow(InvalidArgumentError);
    expect(() => parseArgs(['-x'], run)).toThrow(/unknown option/);
    expect(() => parseArgs(['--name'], run)).toThrow(/needs a value/);
    expect(() => parseArgs(['--rm=1'], run)).toThrow(/takes no value/);
  });
});

/** What `Number()` or `parseInt` turn into a number but the CLI must refuse, for any option. */
const BAD_FORMS = [
  '', ' ', 'abc', '1e3', '1E3', '0x100', '0X10', '0o17', '0b101', '1.5', '2.0', '.5', '5.', ' 12', '12 ', '\t12', '12\n',
  '12abc', 'abc12', '-3', '+12', '-0', '012', '00', 'Infinity', '-Infinity', 'NaN', '1_000', '1,000', '٣', '１２',
  '99999999999999999999', '9'.repeat(400),
];

/** Every numeric option of the CLI, with the range docs/cli.md gives it. */
const NUMERIC_OPTIONS: { name: string; min: number; max: number; parse: (value: string) => unknown }[] = [
  { name: '--cpus', min: 1, max: 64, parse: (v) => runSandboxConfig(parseArgs(['--cpus', v], runCommand.spec).options).config.cpus },
  { name: '--memory', min: 128, max: 1048576, parse: (v) => runSandboxConfig(parseArgs([`--memory=${v}`], runCommand.spec).options).config.memoryMiB },
  {
    name: '--guest-hugepages',
    min: 1,
    max: 64, // with the default 256 MiB: (256 - 128) / 2
    parse: (v) => runSandboxConfig(parseArgs(['--guest-hugepages', v], runCommand.spec).options).config.volumes,
  },
  { name: '--timeout', min: 0, max: 2147483, parse: (v) => stopOptions(parseArgs(['--timeout', v, 'box'], stop.spec).options).timeoutMs },
  { name: 'SIGNAL', min: 1, max: 64, parse: (v) => parseSignal(v) },
  { name: '--user UID', min: 0, max: 4294967294, parse: (v) => processOverrides(parseArgs(['-u', v], execCommand.spec)).user },
  { name: '--user GID', min: 0, max: 4294967294, parse: (v) => processOverrides(parseArgs(['-u', `0:${v}`], execCommand.spec)).user },
];

describe('integerOption', () => {
  it('accepts plain decimal integers within the range, the bounds included', () => {
    expect(integerOption('--n', '0', 0, 10)).toBe(0);
    expect(integerOption('--n', '10', 0, 10)).toBe(10);
    expect(integerOption('--n', '7', 0, 10)).toBe(7);
    expect(integerOption('--n', '4294967294', 0, 2 ** 32 - 2)).toBe(4294967294);
  });

  it('rejects every other form, and values out of range, with a usage error naming option, value and range', () => {
    for (const value of [...BAD_FORMS, '11', '1000']) {
      let error: unknown;
      try {
        integerOption('--n', value, 0, 10);
      } catch (e) {
        error = e;
      }
      expect(error, JSON.stringify(value)).toBeInstanceOf(UsageError);
      expect((error as Error).message).toBe(`--n ${JSON.stringify(value)}: expected a decimal integer from 0 to 10`);
    }
    expect(() => integerOption('--n', '1', 2, 3, 'why')).toThrow('--n "1": expected a decimal integer from 2 to 3 (why)');
  });
});

describe('the numeric options of the commands', () => {
  for (const option of NUMERIC_OPTIONS) {
    it(`${option.name}: ${option.min} to ${option.max}, digits only`, () => {
      expect(() => option.parse(String(option.min))).not.toThrow();
      expect(() => option.parse(String(option.max))).not.toThrow();
      const outside = [String(option.max + 1), ...(option.min > 0 ? [String(option.min - 1)] : [])];
      for (const value of [...BAD_FORMS, ...outside]) {
        let error: unknown;
        try {
          option.parse(value);
        } catch (e) {
          error = e;
        }
        expect(error, `${option.name} ${JSON.stringify(value)}`).toBeInstanceOf(UsageError);
        expect((error as Error).message).toContain(JSON.stringify(value));
        // Signal names are allowed too: a word that is none says so.
        if (option.name !== 'SIGNAL' || /^[0-9]+$/u.test(value)) {
          expect((error as Error).message).toContain(`${option.name} ${JSON.stringify(value)}: expected a decimal integer from ${option.min} to ${option.max}`);
        } else {
          expect((error as Error).message).toContain(`from ${option.min} to ${option.max}`);
        }
      }
    });
  }

  it('gives the values as numbers', () => {
    const { config, mounts } = runSandboxConfig(parseArgs(['--cpus', '2', '-m', '1024', '--guest-hugepages', '8'], runCommand.spec).options);
    expect(config).toMatchObject({ cpus: 2, memoryMiB: 1024, volumes: [{ kind: 'hugepages', name: 'hugepages', sizeMiB: 16 }] });
    expect(mounts).toEqual([{ volume: 'hugepages', destination: '/dev/hugepages' }]);
    expect(stopOptions(parseArgs(['--timeout', '0', 'box'], stop.spec).options)).toEqual({ timeoutMs: 0 });
    expect(stopOptions(parseArgs(['--timeout', '30', 'box'], stop.spec).options)).toEqual({ timeoutMs: 30_000 });
    expect(stopOptions(parseArgs(['box'], stop.spec).options)).toEqual({});
    expect(parseSignal('9')).toBe(9);
    expect(parseSignal('kill')).toBe('SIGKILL');
    expect(parseSignal('SIGUSR1')).toBe('SIGUSR1');
    expect(processOverrides(parseArgs(['-u', '1000'], execCommand.spec)).user).toEqual({ uid: 1000, gid: 1000 });
    expect(processOverrides(parseArgs(['-u', '1000:0'], execCommand.spec)).user).toEqual({ uid: 1000, gid: 0 });
    expect(() => processOverrides(parseArgs(['-u', '1:2:3'], execCommand.spec))).toThrow(UsageError);
    expect(() => processOverrides(parseArgs(['-u', '1:'], execCommand.spec))).toThrow('--user GID "": expected a decimal integer');
  });

  it('--run-as and --shared-fs-user: numeric ids, checked by the sandbox config', () => {
    const config = (argv: string[]) => runSandboxConfig(parseArgs(argv, runCommand.spec).options).config;
    expect(config(['--run-as', '65534:65534'])).toMatchObject({ runAs: { uid: 65534, gid: 65534 } });
    expect(config(['--shared-fs-user', '200000:200000'])).toMatchObject({ sharedFsUser: { uid: 200000, gid: 200000 } });
    expect(config(['--shared-fs-user', '200000:200000:1000'])).toMatchObject({ sharedFsUser: { uid: 200000, gid: 200000, count: 1000 } });
    expect(() => config(['--run-as', '65534'])).toThrow('--run-as "65534": give UID:GID');
    expect(() => config(['--run-as', '1:2:3'])).toThrow(UsageError);
    expect(() => config(['--run-as', 'nobody:1'])).toThrow('--run-as UID "nobody": expected a decimal integer');
    expect(() => config(['--shared-fs-user', '1:2:0'])).toThrow('--shared-fs-user COUNT "0": expected a decimal integer from 1');
    const resolved = (argv: string[]) => resolveSandboxConfig({ ...config(argv), stateDir: '/nonexistent', guest: { cacheDir: '/nonexistent' } });
    expect(resolved(['--run-as', '65534:65534', '--shared-fs-user', '200000:200000']).sharedFsUser).toEqual({ uid: 200000, gid: 200000, count: 65536 });
    // What only the library knows is its to refuse: the same ids for both, root for virtiofsd.
    expect(() => resolved(['--run-as', '200000:200000', '--shared-fs-user', '200000:200000'])).toThrow(InvalidArgumentError);
    expect(() => resolved(['--shared-fs-user', '0:0'])).toThrow(InvalidArgumentError);
  });

  it('--guest-hugepages: at most what leaves the guest 128 MiB of --memory', () => {
    const pages = (memory: string, n: string): unknown =>
      runSandboxConfig(parseArgs(['--memory', memory, '--guest-hugepages', n], runCommand.spec).options).config.volumes;
    expect(pages('1024', '448')).toEqual([{ kind: 'hugepages', name: 'hugepages', sizeMiB: 896 }]);
    expect(() => pages('1024', '449')).toThrow('--guest-hugepages "449": expected a decimal integer from 1 to 448');
    expect(() => pages('1048576', '524224')).not.toThrow();
    expect(() => pages('1048576', '524225')).toThrow(UsageError);
    expect(() => pages('130', '1')).not.toThrow();
    expect(() => pages('129', '1')).toThrow(/no room for hugepages/u);
  });

  it('--hugepages needs guest RAM that is a whole number of 2 MiB pages', () => {
    expect(runSandboxConfig(parseArgs(['--hugepages', '--memory', '258'], runCommand.spec).options).config.hugepages).toEqual({ backRam: true });
    expect(() => runSandboxConfig(parseArgs(['--hugepages', '--memory', '257'], runCommand.spec).options)).toThrow(/multiple of 2 MiB/u);
  });

  it("accepts nothing the library rejects: the ranges are the sandbox config's and the process overrides'", () => {
    const config = (argv: string[]): ReturnType<typeof resolveSandboxConfig> =>
      resolveSandboxConfig({ ...runSandboxConfig(parseArgs(argv, runCommand.spec).options).config, stateDir: '/nonexistent', guest: { cacheDir: '/nonexistent' } });
    for (const argv of [
      ['--cpus', String(CPUS.min)],
      ['--cpus', String(CPUS.max)],
      ['--memory', String(MEMORY_MIB.min)],
      ['--memory', String(MEMORY_MIB.max)],
      ['--memory', '256', '--guest-hugepages', String(guestHugepages(256).max)],
      ['--memory', String(MEMORY_MIB.max), '--guest-hugepages', String(guestHugepages(MEMORY_MIB.max).max)],
      ['--memory', '258', '--hugepages'],
    ]) {
      expect(() => config(argv), argv.join(' ')).not.toThrow();
    }
    // One past the CLI's bounds, the library says no as well: the CLI's bounds are not too tight.
    expect(() => resolveSandboxConfig({ cpus: CPUS.max + 1 })).toThrow(InvalidArgumentError);
    expect(() => resolveSandboxConfig({ cpus: CPUS.min - 1 })).toThrow(InvalidArgumentError);
    expect(() => resolveSandboxConfig({ memoryMiB: MEMORY_MIB.max + 1 })).toThrow(InvalidArgumentError);
    expect(() => resolveSandboxConfig({ memoryMiB: MEMORY_MIB.min - 1 })).toThrow(InvalidArgumentError);
    // With --machine microvm the least is microvm's, the library's too.
    expect(config(['--machine', 'microvm', '--memory', String(memoryMiB('microvm').min)]).memoryMiB).toBe(memoryMiB('microvm').min);
    expect(() => runSandboxConfig(parseArgs(['--machine', 'microvm', '--memory', String(memoryMiB('microvm').min - 1)], runCommand.spec).options)).toThrow(
      `--memory "${memoryMiB('microvm').min - 1}": expected a decimal integer from ${memoryMiB('microvm').min} to ${MEMORY_MIB.max} (with --machine microvm)`,
    );
    expect(() => resolveSandboxConfig({ machine: 'microvm', memoryMiB: memoryMiB('microvm').min - 1 })).toThrow(InvalidArgumentError);
    // The library's rule for guest hugepages (it checks it when `hugepages` is given).
    expect(() => resolveSandboxConfig({ memoryMiB: 256, hugepages: { backRam: false, guestPages: guestHugepages(256).max + 1 } })).toThrow(
      InvalidArgumentError,
    );
    expect(() => checkOverrides({ user: { uid: USER_ID.max, gid: USER_ID.max } })).not.toThrow();
    expect(() => checkOverrides({ user: { uid: USER_ID.max + 1, gid: 0 } })).toThrow(InvalidArgumentError);
    expect(SIGNAL_NUMBER).toEqual({ min: 1, max: 64 });
    expect(STOP_TIMEOUT_S.max * 1000).toBeLessThanOrEqual(2 ** 31 - 1);
  });
});
