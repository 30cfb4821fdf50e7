import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { waitForConsoleLine } from '../../src/hypervisor/console.js';
import { hostTscKhz, kvmUsable, tscKhz } from '../../src/hypervisor/host.js';
import { TimeoutError } from '../../src/errors.js';

let root: string;
beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-host-'));
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

function cpuinfo(flags: string, bogomips: string): void {
  fs.mkdirSync(path.join(root, 'proc'), { recursive: true });
  const cpu = (n: number): string => `processor\t: ${n}\ncpu MHz\t\t: 2596.146\nflags\t\t: fpu ${flags}\nbogomips\t: ${bogomips}\n`;
  fs.writeFileSync(path.join(root, 'proc', 'cpuinfo'), `${cpu(0)}\n${cpu(1)}\n`);
}

describe('hostTscKhz', () => {
  const roots = (): { proc: string; sys: string } => ({ proc: path.join(root, 'proc'), sys: path.join(root, 'sys') });

  it('derives the TSC frequency from bogomips on an invariant TSC', () => {
    cpuinfo('tsc constant_tsc nonstop_tsc tsc_known_freq', '5192.29');
    expect(hostTscKhz(roots())).toBe(2596145);
  });
  it('prefers sysfs tsc_freq_khz when the kernel exports it', () => {
    cpuinfo('constant_tsc nonstop_tsc', '5192.29');
    fs.mkdirSync(path.join(root, 'sys/devices/system/cpu/cpu0'), { recursive: true });
    fs.writeFileSync(path.join(root, 'sys/devices/system/cpu/cpu0/tsc_freq_khz'), '2596146\n');
    expect(hostTscKhz(roots())).toBe(2596146);
  });
  it('gives up without an invariant TSC or with garbage', () => {
    cpuinfo('tsc', '5192.29');
    expect(hostTscKhz(roots())).toBeUndefined();
    cpuinfo('constant_tsc nonstop_tsc', 'lots');
    expect(hostTscKhz(roots())).toBeUndefined();
    expect(hostTscKhz({ proc: path.join(root, 'none'), sys: path.join(root, 'none') })).toBeUndefined();
  });
  it('checks caller-supplied values', () => {
    expect(tscKhz(2_000_000)).toBe(2_000_000);
    expect(() => tscKhz(5)).toThrow(/TSC frequency/);
    expect(() => tscKhz(1.5e6 + 0.5)).toThrow(/TSC frequency/);
  });
  // This machine's answer depends on its CPU: each case is a test of its own, skipped (visibly)
  // where the CPU does not have it.
  const here = fs.readFileSync('/proc/cpuinfo', 'utf8').split('\n\n')[0] ?? '';
  const hereFlags = new Set((/^flags\s*:(.*)$/mu.exec(here)?.[1] ?? '').trim().split(/\s+/u));
  const invariantHere = hereFlags.has('constant_tsc') && hereFlags.has('nonstop_tsc');
  it.skipIf(!invariantHere)('reads this machine: its invariant TSC gives a frequency in range (skipped: no constant_tsc and nonstop_tsc here)', () => {
    const khz = hostTscKhz();
    expect(khz).toBeGreaterThanOrEqual(100_000);
    expect(khz).toBeLessThanOrEqual(20_000_000);
  });
  it.skipIf(invariantHere)('reads this machine: without an invariant TSC there is no frequency (skipped: this CPU has one)', () => {
    expect(hostTscKhz()).toBeUndefined();
  });
});

describe('kvmUsable', () => {
  it('is false without /dev/kvm, whatever QEMU says', async () => {
    await expect(kvmUsable('/bin/false', { dev: root })).resolves.toBe(false);
  });
});

describe('waitForConsoleLine', () => {
  it('finds a line appended later, across chunk boundaries, with CRLF', async () => {
    const log = path.join(root, 'console.log');
    fs.writeFileSync(log, 'booting\r\n[ 0.1] vmpod-in');
    const found = waitForConsoleLine(log, /^vmpod-init: ready$/u, { timeoutMs: 5000 });
    setTimeout(() => fs.appendFileSync(log, 'it: no\r\nvmpod-init: ready\r\nmore\n'), 50);
    await expect(found).resolves.toBe('vmpod-init: ready');
  });
  it('times out, stops when told, and skips what lies before an offset', async () => {
    const log = path.join(root, 'console.log');
    fs.writeFileSync(log, 'marker\n');
    await expect(waitForConsoleLine(log, 'marker', { timeoutMs: 100, offset: 7 })).rejects.toBeInstanceOf(TimeoutError);
    await expect(waitForConsoleLine(log, 'never', { timeoutMs: 5000, abortWhen: () => new Error('vm gone') })).rejects.toThrow('vm gone');
    await expect(waitForConsoleLine(path.join(root, 'absent'), 'x', { timeoutMs: 100 })).rejects.toBeInstanceOf(TimeoutError);
  });
  it('bounds a line without newline (hostile guest)', async () => {
    const log = path.join(root, 'console.log');
    fs.writeFileSync(log, 'x'.repeat(1 << 20));
    setTimeout(() => fs.appendFileSync(log, '\nok\n'), 50);
    await expect(waitForConsoleLine(log, /^ok$/u, { timeoutMs: 5000 })).resolves.toBe('ok');
  });
});
