/**
 * The sandboxes under a state directory: where they are, what `list` reports of them, and how one
 * whose record cannot be read is removed all the same.
 *
 * @module
 */
import { isAlive } from '../host/process.js';
import { mountTable } from '../host/tree.js';
import { unmount } from '../devices/mount.js';
import { CorruptStateError, DEFAULT_STATE_DIR, StateStore } from '../state/store.js';
import { removeTree } from '../state/remove.js';
import * as validate from '../validate.js';
import { bootDirsOf, killStrays, sandboxFiles } from './boot.js';
import { checkRecord, type SandboxRecord } from './record.js';
import { VM_STATES } from './state-machine.js';
import type { SandboxInfo } from './types.js';

/** The state directory: `stateDir`, else `$VMPOD_STATE_DIR`, else `/run/vmpod`. */
export function stateRootOf(options: { stateDir?: string | undefined }): string {
  return validate.absolutePath(options.stateDir ?? process.env['VMPOD_STATE_DIR'] ?? DEFAULT_STATE_DIR, 'stateDir');
}

/** The record store of the sandboxes under `root`. */
export function storeAt(root: string): StateStore<SandboxRecord> {
  return new StateStore<SandboxRecord>(root, checkRecord);
}

/** Every sandbox with a readable record, its state checked against the live VM. */
export async function listSandboxes(store: StateStore<SandboxRecord>): Promise<SandboxInfo[]> {
  const infos: SandboxInfo[] = [];
  for (const id of await store.ids()) {
    const record = await store.read(id).catch(() => undefined);
    if (!record) continue; // no record yet, or unreadable: `vmpod delete` can still remove it
    let state = record.state;
    const vm = record.boot?.vm;
    if ((state === 'running' || state === 'paused') && (!vm || !isAlive(vm))) state = 'stopped';
    const info: SandboxInfo = {
      id,
      state,
      createdAt: record.createdAt,
      cpus: record.config.cpus,
      memoryMiB: record.config.memoryMiB,
      machine: record.config.machine,
      consoleLog: sandboxFiles(store.dir(id)).consoleLog,
    };
    if (vm && VM_STATES.has(state)) info.pid = vm.pid;
    infos.push(info);
  }
  return infos;
}

/**
 * Deletes a sandbox whose record cannot be read: its daemons (found by the folders their command
 * lines name), its mounts (everything mounted under its folder), its boot folders and its own
 * folder. What only the record knew (hugepage reservations, PCI drivers, CNI attachments, a
 * network namespace it made) cannot be found: the warnings it returns say so.
 */
export async function removeUnreadable(store: StateStore<SandboxRecord>, id: string, cause: CorruptStateError): Promise<string[]> {
  const dir = store.dir(id);
  const boots = await bootDirsOf(store.root, dir);
  await killStrays([dir, ...boots]);
  const inside = (await mountTable()).filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(`${dir}/`));
  // Deepest first; the folder is the host's, so its mount points are unmounted by path.
  for (const m of inside.sort((a, b) => b.mountPoint.length - a.mountPoint.length || b.id - a.id)) {
    await unmount(m.mountPoint, { detach: true, noFollow: true }).catch(() => undefined);
  }
  for (const boot of boots) await removeTree(boot);
  await store.remove(id);
  return [
    `sandbox "${id}": ${cause.message}`,
    `its processes, mounts and folders are removed; hugepage reservations, PCI driver bindings, CNI attachments and a network namespace it may have made (vmpod-${id}) could not be known from it: check them`,
  ];
}
