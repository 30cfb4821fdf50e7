/** `vmpod logs`: its arguments (the reading itself is in container-log.test.ts and the privileged CLI tests). */
import { describe, expect, it } from 'vitest';
import { parseSince, pickContainer } from '../../src/cli/commands/logs.js';

describe('vmpod logs (arguments)', () => {
  it('takes --since as RFC 3339 or a duration before now', () => {
    const now = Date.parse('2026-12-07T21:00:00Z');
    expect(parseSince('90s', now).toISOString()).toBe('2026-12-07T20:58:30.000Z');
    expect(parseSince('10m', now).toISOString()).toBe('2026-12-07T20:50:00.000Z');
    expect(parseSince('2h', now).toISOString()).toBe('2026-12-07T19:00:00.000Z');
    expect(parseSince('2026-12-07T20:00:00.5+01:00').toISOString()).toBe('2026-12-07T19:00:00.500Z');
    for (const bad of ['', 'yesterday', '10', '-5m', '2026-12-07']) expect(() => parseSince(bad, now)).toThrow(/--since/u);
  });

  it('picks the container named, else the namesake, else the only one', () => {
    expect(pickContainer('web', 'db', ['db', 'web'])).toBe('db');
    expect(pickContainer('web', undefined, ['db', 'web'])).toBe('web');
    expect(pickContainer('web', undefined, ['db'])).toBe('db');
    expect(() => pickContainer('web', undefined, ['a', 'b'])).toThrow(/web\/CONTAINER/u);
    expect(() => pickContainer('web', undefined, [])).toThrow(/--console/u);
    expect(() => pickContainer('web', 'x', ['web'])).toThrow(/does not exist/u);
  });
});
