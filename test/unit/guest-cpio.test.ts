import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { normalizeEntries, writeCpio, type CpioEntry } from '../../src/guest/cpio.js';

interface Parsed {
  name: string;
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  rdevMajor: number;
  rdevMinor: number;
  data: Buffer;
}

/** An independent newc reader (the layout of the kernel's buffer-format.rst). */
function parseNewc(archive: Buffer): Parsed[] {
  const out: Parsed[] = [];
  let at = 0;
  const align = (n: number): number => (n + 3) & ~3;
  for (;;) {
    expect(archive.toString('latin1', at, at + 6)).toBe('070701');
    const field = (i: number): number => parseInt(archive.toString('latin1', at + 6 + i * 8, at + 14 + i * 8), 16);
    const nameSize = field(11);
    const fileSize = field(6);
    const name = archive.toString('latin1', at + 110, at + 110 + nameSize - 1);
    expect(archive[at + 110 + nameSize - 1]).toBe(0);
    const dataAt = align(at + 110 + nameSize);
    const entry: Parsed = {
      name,
      ino: field(0),
      mode: field(1),
      uid: field(2),
      gid: field(3),
      nlink: field(4),
      mtime: field(5),
      rdevMajor: field(9),
      rdevMinor: field(10),
      data: archive.subarray(dataAt, dataAt + fileSize),
    };
    at = align(dataAt + fileSize);
    if (name === 'TRAILER!!!') break;
    out.push(entry);
  }
  expect(archive.length % 512).toBe(0);
  expect(archive.subarray(at).every((b) => b === 0)).toBe(true);
  return out;
}

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-cpio-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('writeCpio', () => {
  it('writes a newc archive the kernel format describes: sorted, parents first, owners and mtimes zero', async () => {
    const source = path.join(dir, 'payload');
    fs.writeFileSync(source, 'hello from the host\n');
    const entries: CpioEntry[] = [
      { type: 'file', path: 'sbin/agent', mode: 0o755, source },
      { type: 'symlink', path: 'bin/sh', target: '/bin/busybox' },
      { type: 'char', path: 'dev/console', mode: 0o600, major: 5, minor: 1 },
      { type: 'file', path: 'init', mode: 0o755, data: Buffer.from('#!/bin/sh\n') },
      { type: 'dir', path: 'tmp', mode: 0o1777 },
    ];
    const file = path.join(dir, 'a.cpio');
    const size = await writeCpio(file, entries);
    const archive = fs.readFileSync(file);
    expect(size).toBe(archive.length);
    const parsed = parseNewc(archive);
    expect(parsed.map((e) => e.name)).toEqual(['bin', 'bin/sh', 'dev', 'dev/console', 'init', 'sbin', 'sbin/agent', 'tmp']);
    const byName = new Map(parsed.map((e) => [e.name, e]));
    expect(byName.get('bin')?.mode).toBe(0o040755);
    expect(byName.get('bin/sh')?.mode).toBe(0o120777);
    expect(byName.get('bin/sh')?.data.toString()).toBe('/bin/busybox');
    expect(byName.get('dev/console')).toMatchObject({ mode: 0o020600, rdevMajor: 5, rdevMinor: 1 });
    expect(byName.get('sbin/agent')?.mode).toBe(0o100755);
    expect(byName.get('sbin/agent')?.data.toString()).toBe('hello from the host\n');
    expect(byName.get('tmp')?.mode).toBe(0o041777);
    for (const e of parsed) expect([e.uid, e.gid, e.mtime]).toEqual([0, 0, 0]);
    expect(new Set(parsed.map((e) => e.ino)).size).toBe(parsed.length);
  });

  it('is deterministic: the same entries in another order give the same bytes', async () => {
    const entries: CpioEntry[] = [
      { type: 'file', path: 'a/b/c', data: Buffer.from('x') },
      { type: 'symlink', path: 'a/l', target: 'b/c' },
      { type: 'file', path: 'z', data: Buffer.alloc(1000, 7) },
    ];
    await writeCpio(path.join(dir, '1'), entries);
    await writeCpio(path.join(dir, '2'), [...entries].reverse());
    expect(fs.readFileSync(path.join(dir, '1')).equals(fs.readFileSync(path.join(dir, '2')))).toBe(true);
  });

  it.each([
    ['an absolute path', '/etc/passwd'],
    ['a .. component', 'a/../b'],
    ['an empty component', 'a//b'],
    ['a . component', './a'],
    ['an empty path', ''],
  ])('rejects %s', (_name, p) => {
    expect(() => normalizeEntries([{ type: 'dir', path: p }])).toThrow(InvalidArgumentError);
  });

  it('rejects duplicates and a file used as a directory', () => {
    expect(() => normalizeEntries([{ type: 'dir', path: 'a' }, { type: 'dir', path: 'a' }])).toThrow(/duplicate/);
    expect(() => normalizeEntries([{ type: 'file', path: 'a', data: Buffer.alloc(0) }, { type: 'dir', path: 'a/b' }])).toThrow(/not a directory/);
  });
});
