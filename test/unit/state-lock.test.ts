// FileLock (src/state/lock.ts) on its own: exclusive by default, shared on request, waits while
// another holder has it and gives up at its deadline or on abort, releases (idempotently, and
// through `await using`). flock(2) locks belong to an open file, so two acquisitions in this one
// process contend as two processes would.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AbortError, TimeoutError } from '../../src/errors.js';
import { FileLock } from '../../src/state/lock.js';

let dir: string;
let file: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-lock-'));
  file = path.join(dir, 'lock');
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('FileLock', () => {
  it('is exclusive by default: a second taker times out with an error naming the file', async () => {
    const held = await FileLock.acquire(file);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const second = FileLock.acquire(file, { timeoutMs: 30 });
    await expect(second).rejects.toBeInstanceOf(TimeoutError);
    await expect(second).rejects.toThrow(`waiting for the lock ${file} did not finish within 30 ms`);
    await expect(FileLock.acquire(file, { exclusive: false, timeoutMs: 0 })).rejects.toBeInstanceOf(TimeoutError);
    await held.release();
  });

  it('shares a shared lock, and keeps an exclusive taker out while it is held', async () => {
    const a = await FileLock.acquire(file, { exclusive: false, timeoutMs: 0 });
    const b = await FileLock.acquire(file, { exclusive: false, timeoutMs: 0 });
    await expect(FileLock.acquire(file, { timeoutMs: 0 })).rejects.toBeInstanceOf(TimeoutError);
    await a.release();
    await b.release();
    await (await FileLock.acquire(file, { timeoutMs: 0 })).release();
  });

  it('waits while the lock is held and takes it once released, well before its deadline', async () => {
    const held = await FileLock.acquire(file);
    const waiting = FileLock.acquire(file, { timeoutMs: 10_000 });
    let got = false;
    void waiting.then(() => (got = true), () => undefined);
    await new Promise((r) => setTimeout(r, 60));
    expect(got, 'taken while still held').toBe(false);
    await held.release();
    await (await waiting).release();
  });

  it('gives up on abort with an AbortError naming the file and carrying the reason', async () => {
    const held = await FileLock.acquire(file);
    const controller = new AbortController();
    const waiting = FileLock.acquire(file, { signal: controller.signal, timeoutMs: 10_000 });
    controller.abort('enough');
    const error = await waiting.then(
      () => expect.fail('taken while held'),
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(AbortError);
    expect((error as Error).message).toBe(`waiting for the lock ${file} was aborted`);
    expect((error as Error).cause).toBe('enough');
    await held.release();
  });

  it('releases idempotently, and through await using', async () => {
    const held = await FileLock.acquire(file);
    await held.release();
    await held.release();
    {
      await using scoped = await FileLock.acquire(file, { timeoutMs: 0 });
      expect(scoped.path).toBe(file);
      await expect(FileLock.acquire(file, { timeoutMs: 0 })).rejects.toBeInstanceOf(TimeoutError);
    }
    await (await FileLock.acquire(file, { timeoutMs: 0 })).release();
  });
});
