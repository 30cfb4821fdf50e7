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
import { AlreadyExistsError, NotFoundError, VmpodError } from '../errors.js';

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

  /** Creates the folder of a new sandbox; {@link AlreadyExistsError} if the id is taken. */
  async create(id: string): Promise<string> {
    const dir = this.dir(id);
    await fs.mkdir(path.dirname(dir), { recursive: true, mode: 0o700 });
    try {
      await fs.mkdir(dir, { mode: 0o700 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new AlreadyExistsError('sandbox', id, { cause: error });
      throw error;
    }
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
    await writeFileAtomic(path.join(this.dir(record.id), 'state.json'), `${JSON.stringify(record, null, 2)}\n`);
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
