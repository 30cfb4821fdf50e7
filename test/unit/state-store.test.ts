import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { CorruptStateError, StateStore } from '../../src/state/store.js';
import { FileLock } from '../../src/state/lock.js';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError, TimeoutError } from '../../src/errors.js';

interface Rec { id: string; n: number }
const check = (v: unknown, file: string): Rec => {
  const r = v as Rec;
  if (typeof r?.id !== 'string' || typeof r.n !== 'number') throw new CorruptStateError(file, 'bad record');
  return r;
};

let root: string;
beforeEach(async () => { root = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-store-')); });
afterEach(async () => { await fs.rm(root, { recursive: true, force: true }); });

describe('state store', () => {
  it('creates, writes atomically, reads back, lists and removes', async () => {
    const store = new StateStore<Rec>(root, check);
    await store.create('a');
    await expect(store.create('a')).rejects.toBeInstanceOf(AlreadyExistsError);
    await store.write({ id: 'a', n: 1 });
    await store.write({ id: 'a', n: 2 });
    expect(await store.read('a')).toEqual({ id: 'a', n: 2 });
    expect((await fs.readdir(store.dir('a'))).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    await store.create('b');
    expect(await store.ids()).toEqual(['a', 'b']);
    await store.remove('a');
    await expect(store.read('a')).rejects.toBeInstanceOf(NotFoundError);
    await store.remove('a');
  });
  it('rejects bad ids before touching the disk and reports corrupt records', async () => {
    const store = new StateStore<Rec>(root, check);
    await expect(store.create('../x')).rejects.toBeInstanceOf(InvalidArgumentError);
    await store.create('c');
    await fs.writeFile(path.join(store.dir('c'), 'state.json'), '{"id":');
    await expect(store.read('c')).rejects.toBeInstanceOf(CorruptStateError);
    await fs.writeFile(path.join(store.dir('c'), 'state.json'), '{"id":"c"}');
    await expect(store.read('c')).rejects.toThrow(/bad record/);
  });
  it('excludes another process while the lock is held, and frees it when the holder dies', async () => {
    const file = path.join(root, 'lock');
    // A child process takes the lock with flock(1)-like behaviour through our own addon.
    const addon = path.resolve('build/Release/vmpod.node');
    const child = spawn(process.execPath, ['-e', `
      const a = require(${JSON.stringify(addon)});
      const fd = require('fs').openSync(${JSON.stringify(file)}, 'a');
      if (!a.tryLock(fd, true)) process.exit(3);
      process.stdout.write('locked\\n');
      setInterval(() => {}, 1000);
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
    await expect(FileLock.acquire(file, { timeoutMs: 100 })).rejects.toBeInstanceOf(TimeoutError);
    child.kill('SIGKILL');
    const lock = await FileLock.acquire(file, { timeoutMs: 5_000 });
    await lock.release();
    await lock.release();
  });
});
