/**
 * A deterministic writer of the cpio "newc" format, the format the kernel unpacks as an
 * initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
 *
 * Equivalent of `find . | sort | cpio -o -H newc --reproducible --owner 0:0` with every mtime
 * set to 0: the same entries always give the same bytes.
 *
 * @module
 */
import fs from 'node:fs/promises';
import { InvalidArgumentError } from '../errors.js';

/** One entry of an archive. Paths are relative (`bin/sh`), without `.` or `..` components. */
export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; mode?: number; data: Buffer }
  /** A regular file whose content is read from `source` on the host when the archive is written. */
  | { type: 'file'; path: string; mode?: number; source: string }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'char'; path: string; mode?: number; major: number; minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const TRAILER = 'TRAILER!!!';

function checkPath(value: string, field: string): void {
  const parts = value.split('/');
  if (value.length === 0 || value.includes('\0') || parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a relative archive path without '.', '..' or empty parts`);
  }
}

/**
 * Sorts the entries by path, adds any missing parent directory (mode 0755) and rejects
 * duplicates. Returns the list in the order it will be written.
 */
export function normalizeEntries(entries: readonly CpioEntry[]): CpioEntry[] {
  const byPath = new Map<string, CpioEntry>();
  for (const [i, entry] of entries.entries()) {
    checkPath(entry.path, `entries[${i}].path`);
    if (byPath.has(entry.path)) {
      throw new InvalidArgumentError(`entries[${i}].path`, `duplicate archive path ${JSON.stringify(entry.path)}`);
    }
    byPath.set(entry.path, entry);
  }
  for (const entry of entries) {
    const parts = entry.path.split('/');
    for (let n = 1; n < parts.length; n++) {
      const parent = parts.slice(0, n).join('/');
      const existing = byPath.get(parent);
      if (existing === undefined) byPath.set(parent, { type: 'dir', path: parent });
      else if (existing.type !== 'dir') {
        throw new InvalidArgumentError('entries', `${JSON.stringify(parent)} is a parent of ${JSON.stringify(entry.path)} but not a directory`);
      }
    }
  }
  // A plain code-unit order puts every directory before its contents (a prefix sorts first).
  return [...byPath.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

function header(fields: {
  ino: number;
  mode: number;
  nlink: number;
  fileSize: number;
  rdevMajor: number;
  rdevMinor: number;
  name: string;
}): Buffer {
  const name = Buffer.from(`${fields.name}\0`);
  const hex = (n: number): string => n.toString(16).padStart(8, '0');
  const text =
    '070701' +
    hex(fields.ino) +
    hex(fields.mode) +
    hex(0) + // uid
    hex(0) + // gid
    hex(fields.nlink) +
    hex(0) + // mtime
    hex(fields.fileSize) +
    hex(0) + // devmajor
    hex(0) + // devminor
    hex(fields.rdevMajor) +
    hex(fields.rdevMinor) +
    hex(name.length) +
    hex(0); // check
  return Buffer.concat([Buffer.from(text, 'latin1'), name, padding(110 + name.length)]);
}

function padding(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

/** Serialises one entry (header, name, data, padding). */
async function encode(entry: CpioEntry, ino: number): Promise<Buffer[]> {
  switch (entry.type) {
    case 'dir':
      return [header({ ino, mode: S_IFDIR | (entry.mode ?? 0o755), nlink: 2, fileSize: 0, rdevMajor: 0, rdevMinor: 0, name: entry.path })];
    case 'symlink': {
      const data = Buffer.from(entry.target);
      return [
        header({ ino, mode: S_IFLNK | 0o777, nlink: 1, fileSize: data.length, rdevMajor: 0, rdevMinor: 0, name: entry.path }),
        data,
        padding(data.length),
      ];
    }
    case 'char':
      return [
        header({ ino, mode: S_IFCHR | (entry.mode ?? 0o600), nlink: 1, fileSize: 0, rdevMajor: entry.major, rdevMinor: entry.minor, name: entry.path }),
      ];
    case 'file': {
      const data = 'data' in entry ? entry.data : await fs.readFile(entry.source);
      if (data.length > 0xffffffff) throw new InvalidArgumentError(entry.path, 'file is larger than 4 GiB, the limit of the newc format');
      return [
        header({ ino, mode: S_IFREG | (entry.mode ?? 0o644), nlink: 1, fileSize: data.length, rdevMajor: 0, rdevMinor: 0, name: entry.path }),
        data,
        padding(data.length),
      ];
    }
  }
}

/**
 * Writes `entries` as an uncompressed newc archive to `file` (created or truncated, mode 0644).
 * Returns the archive's size in bytes.
 */
export async function writeCpio(file: string, entries: readonly CpioEntry[]): Promise<number> {
  const ordered = normalizeEntries(entries);
  const handle = await fs.open(file, 'w', 0o644);
  let size = 0;
  try {
    let ino = 1;
    for (const entry of ordered) {
      const parts = await encode(entry, ino++);
      const expected = parts.reduce((n, b) => n + b.length, 0);
      const { bytesWritten } = await handle.writev(parts);
      if (bytesWritten !== expected) throw new Error(`short write to ${file}`);
      size += bytesWritten;
    }
    const trailer = header({ ino: 0, mode: 0, nlink: 1, fileSize: 0, rdevMajor: 0, rdevMinor: 0, name: TRAILER });
    size += (await handle.write(trailer)).bytesWritten;
    // Padded to a 512-byte block as cpio(1) does; the kernel skips the zeros.
    const tail = padding512(size);
    if (tail.length > 0) size += (await handle.write(tail)).bytesWritten;
    await handle.sync();
  } finally {
    await handle.close();
  }
  return size;
}

function padding512(length: number): Buffer {
  return Buffer.alloc((512 - (length % 512)) % 512);
}
