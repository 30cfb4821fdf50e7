/**
 * The state directory: one folder per sandbox holding its persisted record, its lock, its
 * sockets and logs. Records are written atomically, so a crash at any moment leaves either the
 * previous record or the new one, and `delete` can always finish what was started.
 *
 * Layout (default root /run/vmpod, a tmpfs: VMs do not survive a host reboot, nor should state):
 * ```
 * <root>/sandboxes/<id>/state.json   the SandboxRecord
 * <root>/sandboxes/<id>/lock         flock(2) taken for every read-modify-write
 * <root>/sandboxes/<id>/...          qmp.sock, agent-N.sock, console.log, shared/, ...
 * ```
 *
 * Folders are root's 0700, except for a sandbox whose shared filesystem is served by an
 * unprivileged virtiofsd (`sharedFsUser`): that daemon must reach `<id>/shared` by path, so the
 * root and `sandboxes/` are 0711 (others may pass, not list) and the sandbox folder is 0710 of
 * the daemon's group, so that no other host user reaches its share (where the sources it binds
 * are visible, whatever the modes of the folders above them): {@link makeReachable}.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic, removeStaleTempFiles } from './atomic.js';
import { afterRecordWrite, beforeRecordWrite } from '../failpoint.js';
import { FileLock } from './lock.js';
import { removeTree, type StillMountedError } from './remove.js';
import * as validate from '../validate.js';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError, SystemError, VmpodError } from '../errors.js';

/** Default root of the state directory. */
export const DEFAULT_STATE_DIR = '/run/vmpod';

/** A persisted record was unreadable or not what this version of vmpod writes. */
export class CorruptStateError extends VmpodError {
  constructor(file: string, problem: string, options: { cause?: unknown } = {}) {
    super('ERR_VMPOD_CORRUPT_STATE', `${file}: ${problem}`, options);
  }
}

/** Access to the sandboxes under one state root. `R` is the record type (see src/sandbox). */
export class StateStore<R extends { id: string }> {
  /** @param root state root, e.g. /run/vmpod. @param check validates a parsed record. */
  constructor(
    readonly root: string,
    private readonly check: (value: unknown, file: string) => R,
  ) {}

  /** Folder of sandbox `id`. */
  dir(id: string): string {
    return path.join(this.root, 'sandboxes', validate.id(id));
  }

  /**
   * Creates the folder of a new sandbox; {@link AlreadyExistsError} if the id is taken. With
   * `reachableBy` (the ids of an unprivileged daemon that must reach into it), the folders made
   * above it are 0711 and the sandbox folder is 0710 of that group ({@link makeReachable}).
   */
  async create(id: string, options: { reachableBy?: { uid: number; gid: number } } = {}): Promise<string> {
    const dir = this.dir(id);
    const first = await fs.mkdir(path.dirname(dir), { recursive: true, mode: 0o700 });
    if (options.reachableBy && first !== undefined) {
      // Each folder made just now, from the first down to sandboxes/ (the mode given to mkdir is cut by the umask).
      for (let made = path.dirname(dir); ; made = path.dirname(made)) {
        await fs.chmod(made, 0o711);
        if (made === first || made === path.dirname(made)) break;
      }
    }
    try {
      await fs.mkdir(dir, { mode: 0o700 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new AlreadyExistsError('sandbox', id, { cause: error });
      throw error;
    }
    if (options.reachableBy) await openSandboxDir(dir, options.reachableBy.gid);
    return dir;
  }

  /** Takes the sandbox's lock (exclusive by default). */
  async lock(id: string, options: { exclusive?: boolean; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<FileLock> {
    const dir = this.dir(id);
    try {
      await fs.access(dir);
    } catch (error) {
      throw new NotFoundError('sandbox', id, { cause: error });
    }
    return FileLock.acquire(path.join(dir, 'lock'), options);
  }

  /** Writes the record atomically. Callers hold the lock. */
  async write(record: R): Promise<void> {
    beforeRecordWrite();
    const file = path.join(this.dir(record.id), 'state.json');
    try {
      await writeFileAtomic(file, `${JSON.stringify(record, null, 2)}\n`);
    } catch (error) {
      // A full state directory (or quota) is the host's condition, not a bug: say so, typed.
      const e = error as NodeJS.ErrnoException;
      if (e.code === 'ENOSPC' || e.code === 'EDQUOT') {
        throw new SystemError('write', Math.abs(e.errno ?? 0), e.code, `the state directory ${this.root} is full: cannot write ${file}`, { cause: error });
      }
      throw error;
    }
    afterRecordWrite();
  }

  /** Reads and validates the record; {@link NotFoundError} when the sandbox has none. */
  async read(id: string): Promise<R> {
    const file = path.join(this.dir(id), 'state.json');
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError('sandbox', id, { cause: error });
      throw error;
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (cause) {
      throw new CorruptStateError(file, 'not valid JSON', { cause });
    }
    return this.check(value, file);
  }

  /** Ids of every sandbox folder (including ones whose record is missing after a crash). */
  async ids(): Promise<string[]> {
    let names: string[];
    try {
      names = await fs.readdir(path.join(this.root, 'sandboxes'));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    return names.filter((n) => {
      try {
        validate.id(n);
        return true;
      } catch {
        return false;
      }
    }).sort();
  }

  /**
   * Removes the sandbox's folder, sockets and logs included. Idempotent. Refuses (with
   * {@link StillMountedError}) while anything is mounted inside it.
   */
  async remove(id: string): Promise<void> {
    const dir = this.dir(id);
    await removeStaleTempFiles(dir);
    await removeTree(dir);
  }
}

/** The sandbox folder `dir` becomes 0710 of group `gid`, and `sandboxes/` above it passable by others (o+x, not o+r). */
async function openSandboxDir(dir: string, gid: number): Promise<void> {
  const parent = path.dirname(dir);
  const mode = (await fs.stat(parent)).mode & 0o7777;
  if ((mode & 0o011) !== 0o011) await fs.chmod(parent, mode | 0o011);
  await fs.chown(dir, process.getuid?.() ?? 0, gid);
  await fs.chmod(dir, 0o710);
}

/**
 * Lets an unprivileged daemon of host ids `uid`:`gid` (no other groups) reach into sandbox folder
 * `dir` (`<root>/sandboxes/<id>`) by path, as an unprivileged virtiofsd must reach the share it
 * exports: the sandbox folder becomes root's 0710 of group `gid` (that group alone passes; it
 * lists nothing, and the files in it are 0600), `sandboxes/` gains o+x (0711). These two are
 * vmpod's own; the state root and the folders above it are not changed, only checked: each must
 * let `uid`:`gid` pass (by its mode bits: owner, group, or others' x), else an
 * {@link InvalidArgumentError} (field `stateDir`) names the first that does not. Idempotent.
 */
export async function makeReachable(dir: string, ids: { uid: number; gid: number }): Promise<void> {
  await openSandboxDir(dir, ids.gid);
  const chain: string[] = [];
  for (let at = path.dirname(path.dirname(dir)); ; at = path.dirname(at)) {
    chain.unshift(at);
    if (at === path.dirname(at)) break;
  }
  for (const folder of chain) {
    const stat = await fs.stat(folder);
    const bit = stat.uid === ids.uid ? 0o100 : stat.gid === ids.gid ? 0o010 : 0o001;
    if ((stat.mode & bit) === 0) {
      throw new InvalidArgumentError(
        'stateDir',
        `${folder} (mode ${(stat.mode & 0o7777).toString(8).padStart(4, '0')}, owner ${stat.uid}:${stat.gid}) does not let uid ${ids.uid} gid ${ids.gid} pass: ` +
          `the unprivileged virtiofsd of sharedFsUser must reach ${dir}/shared; make it searchable (chmod o+x, e.g. 0711) or use a stateDir whose folders are`,
      );
    }
  }
}
