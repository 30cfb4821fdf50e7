/**
 * Inter-process locks on files of the state directory, with flock(2): the kernel drops a lock
 * when its holder dies, so a crash never leaves a sandbox locked forever.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../native.js';
import { AbortError, TimeoutError } from '../errors.js';

/** A held lock; release it with {@link FileLock.release} or `await using`. */
export class FileLock implements AsyncDisposable {
  private constructor(
    private readonly handle: fs.FileHandle,
    /** The lock file. */
    readonly path: string,
  ) {}

  /**
   * Takes an exclusive (or shared) lock on `path`, creating the file if needed. Waits while
   * another process holds it, up to `timeoutMs`.
   */
  static async acquire(
    path: string,
    options: { exclusive?: boolean; timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<FileLock> {
    const { exclusive = true, timeoutMs = 30_000, signal } = options;
    const handle = await fs.open(path, 'a', 0o600);
    const deadline = Date.now() + timeoutMs;
    let delay = 1;
    try {
      while (!native().tryLock(handle.fd, exclusive)) {
        if (signal?.aborted) throw new AbortError(`waiting for the lock ${path}`, { cause: signal.reason });
        if (Date.now() >= deadline) throw new TimeoutError(`waiting for the lock ${path}`, timeoutMs);
        await sleep(delay);
        delay = Math.min(delay * 2, 50);
      }
    } catch (error) {
      await handle.close();
      throw error;
    }
    return new FileLock(handle, path);
  }

  /** The lock file's descriptor (-1 once released): a child process that inherits it holds the lock too. */
  get fd(): number {
    return this.handle.fd;
  }

  /** Releases the lock (closing the file releases it too). Idempotent. */
  async release(): Promise<void> {
    if (this.handle.fd < 0) return;
    await this.handle.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}
