import { describe, expect, it } from 'vitest';
import * as v from '../../src/validate.js';
import { InvalidArgumentError } from '../../src/errors.js';

function rejects(fn: () => unknown, pattern: RegExp): void {
  let error: unknown;
  try { fn(); } catch (e) { error = e; }
  expect(error).toBeInstanceOf(InvalidArgumentError);
  expect((error as InvalidArgumentError).code).toBe('ERR_VMPOD_INVALID_ARGUMENT');
  expect((error as Error).message).toMatch(pattern);
}

describe('validate', () => {
  it('accepts and rejects interface names like the kernel', () => {
    expect(v.interfaceName('eth0')).toBe('eth0');
    expect(v.interfaceName('a'.repeat(15))).toBe('a'.repeat(15));
    rejects(() => v.interfaceName('a'.repeat(16)), /16 bytes long \(max length is 15\)/);
    rejects(() => v.interfaceName('é'.repeat(8)), /16 bytes long/);
    rejects(() => v.interfaceName('a/b'), /contains '\/'/);
    rejects(() => v.interfaceName('a b'), /whitespace/);
    rejects(() => v.interfaceName(''), /non-empty/);
    rejects(() => v.interfaceName('..'), /not a valid/);
  });
  it('rejects namespace names with separators', () => {
    expect(v.netnsName('vmpod-1')).toBe('vmpod-1');
    rejects(() => v.netnsName('a/b'), /must not contain/);
    rejects(() => v.netnsName('..'), /must not contain/);
  });
  it('names a number that is not an integer as it was given (NaN, Infinity), not as JSON null', () => {
    expect(() => v.integer(Number.NaN, 'memoryMiB', 64, 1024)).toThrow('memoryMiB: NaN is not an integer in [64, 1024]');
    expect(() => v.integer(Number.POSITIVE_INFINITY, 'cpus', 1, 64)).toThrow('cpus: Infinity is not an integer in [1, 64]');
    expect(() => v.integer(1.5, 'cpus', 1, 64)).toThrow('cpus: 1.5 is not an integer in [1, 64]');
    expect(() => v.integer('2', 'cpus', 1, 64)).toThrow('cpus: "2" is not an integer in [1, 64]');
    expect(v.integer(2, 'cpus', 1, 64)).toBe(2);
  });
  it('checks ids', () => {
    expect(v.id('box-1.a_b')).toBe('box-1.a_b');
    rejects(() => v.id('a/b'), /not a valid id/);
    rejects(() => v.id('a..b'), /not a valid id/);
    rejects(() => v.id('-a'), /not a valid id/);
    rejects(() => v.id('x'.repeat(65)), /not a valid id/);
  });
  it('normalises MACs and parses CIDRs', () => {
    expect(v.macAddress('02:AB:cd:00:00:01')).toBe('02:ab:cd:00:00:01');
    rejects(() => v.macAddress('02:ab:cd:00:00'), /not a MAC/);
    expect(v.cidr('10.1.2.3/24')).toEqual({ address: '10.1.2.3', prefixLength: 24, family: 4 });
    expect(v.cidr('fd00::1/64')).toEqual({ address: 'fd00::1', prefixLength: 64, family: 6 });
    rejects(() => v.cidr('10.1.2.3/33'), /ADDRESS\/PREFIX/);
    rejects(() => v.cidr('10.1.2.3'), /ADDRESS\/PREFIX/);
    rejects(() => v.cidr('10.1.2/24'), /ADDRESS\/PREFIX/);
  });
  it('checks PCI addresses and paths', () => {
    expect(v.pciAddress('0000:3B:00.1')).toBe('0000:3b:00.1');
    rejects(() => v.pciAddress('3b:00.1'), /not a PCI address/);
    expect(v.absolutePath('/a/../b')).toBe('/b');
    rejects(() => v.absolutePath('rel/x'), /not an absolute path/);
  });
});
