/**
 * Sandboxes for benchmarks: a private temporary state directory (so nothing touches
 * /run/vmpod), and its removal with everything under it, even after a failure: sandboxes
 * deleted through the library, then any process still naming the directory killed, mounts
 * under it detached, and the directory removed.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Sandbox } from '../../src/sandbox/index.js';
import { mountPoints } from '../../src/state/remove.js';
import type { Cleanup } from './cleanup.js';
import { killAll, processesMentioning } from './proc.js';

const exec = promisify(execFile);

/** Deletes every sandbox under `stateDir`, kills and unmounts what is left, removes the directory. */
export async function removeStateDir(stateDir: string): Promise<void> {
  for (const info of await Sandbox.list({ stateDir }).catch(() => [])) {
    try {
      const sandbox = await Sandbox.attach(info.id, { stateDir, signal: AbortSignal.timeout(10_000) });
      await sandbox.delete({ force: true, signal: AbortSignal.timeout(20_000) });
    } catch (error) {
      process.stderr.write(`cleanup: sandbox ${info.id}: ${(error as Error).message}\n`);
    }
  }
  killAll(processesMentioning(stateDir));
  for (const point of (await mountPoints()).filter((m) => m.startsWith(`${stateDir}/`)).reverse()) {
    await exec('umount', ['-l', point]).catch(() => undefined);
  }
  if ((await mountPoints()).some((m) => m.startsWith(`${stateDir}/`))) {
    throw new Error(`mounts are left under ${stateDir}: not removing it`);
  }
  await fs.rm(stateDir, { recursive: true, force: true });
}

/**
 * A fresh state directory under /tmp (short, since sockets live in it), removed with
 * everything in it by `cleanup`.
 */
export async function benchStateDir(cleanup: Cleanup, prefix = 'vb-st-'): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  cleanup.add(`state dir ${dir}`, () => removeStateDir(dir));
  return dir;
}

/** Reads the kernel and initramfs a started sandbox booted, from its persisted record. */
export async function bootedGuest(sandbox: Sandbox): Promise<{ kernel: string; initramfs: string; kernelRelease?: string }> {
  const record = JSON.parse(await fs.readFile(path.join(sandbox.dir, 'state.json'), 'utf8')) as {
    guest?: { kernel: string; initramfs: string; kernelRelease?: string };
  };
  if (!record.guest) throw new Error(`sandbox ${sandbox.id} has no guest in its record: was it started?`);
  return record.guest;
}
