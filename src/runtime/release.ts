/**
 * The VMs of the runtime's containers: one lock per sandbox (taken to boot or join it, and to
 * delete its last container), and the rule that a sandbox goes with the last runtime container
 * whose record names it.
 *
 * @module
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FileLock } from '../state/lock.js';
import { RuntimeRoot, type RuntimeRecord } from './state.js';

/** Takes the lock of sandbox `sandbox` (waiting while another create boots it). */
export async function sandboxLock(root: RuntimeRoot, sandbox: string): Promise<FileLock> {
  const file = root.sandboxLock(sandbox);
  await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  return FileLock.acquire(file, { timeoutMs: 30 * 60_000 });
}

/** Every readable container record of the root. */
export async function sandboxesOf(root: RuntimeRoot): Promise<RuntimeRecord[]> {
  const records: RuntimeRecord[] = [];
  for (const id of await root.ids()) {
    try {
      records.push(await root.read(id));
    } catch {
      // a folder being made or removed
    }
  }
  return records;
}

/**
 * Deletes sandbox `sandbox` (its VM and everything of it) unless a container other than
 * `exceptId` still names it; under the sandbox's lock, so that a container joining it at the
 * same time either finds it whole or boots a new one.
 */
export async function releaseSandbox(root: RuntimeRoot, sandbox: string, exceptId: string): Promise<boolean> {
  const lock = await sandboxLock(root, sandbox);
  try {
    const users = (await sandboxesOf(root)).filter((r) => r.sandbox === sandbox && r.id !== exceptId);
    if (users.length > 0) return false;
    const { Sandbox } = await import('../sandbox/sandbox.js');
    const { NotFoundError } = await import('../errors.js');
    try {
      await Sandbox.remove(sandbox, { stateDir: root.vmpodStateDir(), force: true });
    } catch (error) {
      if (!(error instanceof NotFoundError)) throw error;
    }
    return true;
  } finally {
    // The lock file stays: removing it while another process waits on it would let a third
    // lock a new file of the same name at the same time.
    await lock.release();
  }
}
