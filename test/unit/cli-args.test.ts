import { describe, expect, it } from 'vitest';
import { parseArgs, type CommandSpec } from '../../src/cli/args.js';
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
  });
  it('rejects unknown options and missing values with a typed error', () => {
    expect(() => parseArgs(['--nope'], run)).toThrow(InvalidArgumentError);
    expect(() => parseArgs(['-x'], run)).toThrow(/unknown option/);
    expect(() => parseArgs(['--name'], run)).toThrow(/needs a value/);
    expect(() => parseArgs(['--rm=1'], run)).toThrow(/takes no value/);
  });
});
