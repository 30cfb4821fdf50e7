/**
 * Access to sysfs under an injectable root, so that every device function runs the same against
 * the real `/sys` and against a generated tree in a test (as Kata's tests do).
 *
 * Reads trim the trailing newline. {@link Sysfs.write} is one `write(2)` on a file opened
 * `O_WRONLY|O_TRUNC` (as `echo >` does) without `O_CREAT`: sysfs attributes take a whole value
 * per write, and a missing attribute must fail (ENOENT) rather than be created.
 *
 * @module
 */
import fs from 'node:fs/promises';
import { constants } from 'node:fs';
import path from 'node:path';
import { SystemError } from '../errors.js';
import { systemErrorFrom } from './errors.js';

/** A sysfs tree: `/sys` on a real host, any directory in tests. */
export class Sysfs {
  /** Absolute path of the tree's root. */
  readonly root: string;

  constructor(root = '/sys') {
    this.root = path.resolve(root);
  }

  /** Absolute path of `rel` (relative to the root, e.g. `bus/pci/devices`). */
  path(rel: string): string {
    return path.join(this.root, rel);
  }

  /** Contents of an attribute, trailing whitespace removed. Throws SystemError (e.g. ENOENT). */
  async read(rel: string): Promise<string> {
    try {
      return (await fs.readFile(this.path(rel), 'utf8')).trimEnd();
    } catch (cause) {
      throw systemErrorFrom(`read ${this.path(rel)}`, cause);
    }
  }

  /** Like {@link read}, but undefined when the attribute does not exist. */
  async readOptional(rel: string): Promise<string | undefined> {
    try {
      return (await fs.readFile(this.path(rel), 'utf8')).trimEnd();
    } catch (cause) {
      if (isMissing(cause)) return undefined;
      throw systemErrorFrom(`read ${this.path(rel)}`, cause);
    }
  }

  /** A decimal (or `0x` hex) integer attribute; undefined when the attribute does not exist. */
  async readInt(rel: string): Promise<number | undefined> {
    const text = await this.readOptional(rel);
    if (text === undefined) return undefined;
    const value = Number(text.trim());
    if (text.trim() === '' || !Number.isInteger(value)) {
      throw new SystemError(`read ${this.path(rel)}`, 22, 'EINVAL', `not an integer: ${JSON.stringify(text)}`);
    }
    return value;
  }

  /** Last component of a symlink's target (`driver` -> `ixgbe`), or undefined when there is no link. */
  async linkName(rel: string): Promise<string | undefined> {
    try {
      return path.basename(await fs.readlink(this.path(rel)));
    } catch (cause) {
      if (isMissing(cause)) return undefined;
      throw systemErrorFrom(`readlink ${this.path(rel)}`, cause);
    }
  }

  /** Entries of a directory, sorted; empty when it does not exist. */
  async list(rel: string): Promise<string[]> {
    try {
      return (await fs.readdir(this.path(rel))).sort();
    } catch (cause) {
      if (isMissing(cause)) return [];
      throw systemErrorFrom(`readdir ${this.path(rel)}`, cause);
    }
  }

  /** Real subdirectories of a directory (symlinks such as `driver` or `subsystem` excluded), sorted. */
  async subdirectories(rel: string): Promise<string[]> {
    try {
      const entries = await fs.readdir(this.path(rel), { withFileTypes: true });
      return entries.filter((e) => e.isDirectory()).map((e) => e.name).sort();
    } catch (cause) {
      if (isMissing(cause)) return [];
      throw systemErrorFrom(`readdir ${this.path(rel)}`, cause);
    }
  }

  /** Whether the path exists (following symlinks). */
  async exists(rel: string): Promise<boolean> {
    try {
      await fs.stat(this.path(rel));
      return true;
    } catch (cause) {
      if (isMissing(cause)) return false;
      throw systemErrorFrom(`stat ${this.path(rel)}`, cause);
    }
  }

  /** Writes `value` to an existing attribute in a single write(2). Throws SystemError with the kernel's errno. */
  async write(rel: string, value: string): Promise<void> {
    const file = this.path(rel);
    let handle: fs.FileHandle | undefined;
    try {
      handle = await fs.open(file, constants.O_WRONLY | constants.O_TRUNC);
      const data = Buffer.from(value);
      const { bytesWritten } = await handle.write(data, 0, data.length);
      if (bytesWritten !== data.length) {
        throw Object.assign(new Error(`short write (${bytesWritten} of ${data.length} bytes)`), { code: 'EIO', errno: -5 });
      }
    } catch (cause) {
      throw systemErrorFrom(`write ${file}`, cause);
    } finally {
      await handle?.close();
    }
  }
}

/** Options of every device function: the sysfs tree to act on (default `/sys`). */
export interface SysfsOptions {
  /** A {@link Sysfs} or the path of its root. */
  sysfs?: Sysfs | string | undefined;
}

/** The {@link Sysfs} an options object designates. */
export function sysfsOf(options: SysfsOptions = {}): Sysfs {
  const s = options.sysfs;
  return s instanceof Sysfs ? s : new Sysfs(s ?? '/sys');
}

function isMissing(cause: unknown): boolean {
  const code = (cause as NodeJS.ErrnoException)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}
