/**
 * An index of a tar file's entries (name → data offset and size), made by reading only the
 * headers, so that an archive of many GiB is read in place, range by range, and never into
 * memory or onto disk. Reads ustar, pax (`path`, `linkpath`, `size` records) and GNU long names
 * (`L`, `K`); refuses names that are absolute or hold `..`, and duplicate names.
 *
 * @module
 */
import type { FileHandle } from 'node:fs/promises';
import { printable } from './blob.js';

/** One entry of an indexed tar. */
export interface TarIndexEntry {
  /** Normalized name: no leading `./` or `/`, no trailing `/`, no `.` components. */
  name: string;
  type: 'file' | 'directory' | 'symlink' | 'hardlink' | 'other';
  /** Offset of the entry's data in the file. */
  offset: number;
  /** Size of its data (0 for what is no regular file). */
  size: number;
  /** A link's target as stored (symlinks, hardlinks). */
  linkname?: string;
}

/** Limits on what an archive may hold before it is refused. */
export const TAR_LIMITS = {
  /** Entries (a layout has a few per image). */
  entries: 100_000,
  /** A pax header or GNU long name's data. */
  extendedHeader: 1 << 20,
  /** A name's length. */
  name: 4096,
};

const BLOCK = 512;

/** Why a tar cannot be indexed; the caller words it for its image. */
export class TarIndexError extends Error {}

function field(block: Buffer, start: number, length: number): string {
  const raw = block.subarray(start, start + length);
  const end = raw.indexOf(0);
  return raw.subarray(0, end < 0 ? raw.length : end).toString('utf8');
}

function numeric(block: Buffer, start: number, length: number, what: string): number {
  const raw = block.subarray(start, start + length);
  if ((raw[0]! & 0x80) !== 0) {
    // GNU base-256: big-endian, the top bit of the first byte is the marker (negative is refused).
    if ((raw[0]! & 0x40) !== 0) throw new TarIndexError(`a negative ${what}`);
    let value = raw[0]! & 0x3f;
    for (let i = 1; i < raw.length; i++) {
      value = value * 256 + raw[i]!;
      if (value > Number.MAX_SAFE_INTEGER) throw new TarIndexError(`a ${what} too large`);
    }
    return value;
  }
  const text = raw.toString('latin1').replace(/[\0 ]+$/u, '').replace(/^ +/u, '');
  if (text === '') return 0;
  if (!/^[0-7]+$/u.test(text)) throw new TarIndexError(`a ${what} that is no octal number (${printable(text)})`);
  return parseInt(text, 8);
}

function checksumOk(block: Buffer): boolean {
  const stored = numeric(block, 148, 8, 'checksum');
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const byte = i >= 148 && i < 156 ? 0x20 : block[i]!;
    unsigned += byte;
    signed += byte > 127 ? byte - 256 : byte;
  }
  return stored === unsigned || stored === signed;
}

/** Parses pax records (`LEN key=value\n`...) into a map. */
function parsePax(data: Buffer): Map<string, string> {
  const records = new Map<string, string>();
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    if (space < 0) break;
    const length = Number(data.subarray(at, space).toString('latin1'));
    if (!Number.isSafeInteger(length) || length <= space - at || at + length > data.length) throw new TarIndexError('a malformed pax header');
    const record = data.subarray(space + 1, at + length - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq < 0) throw new TarIndexError('a malformed pax record');
    records.set(record.slice(0, eq), record.slice(eq + 1));
    at += length;
  }
  return records;
}

/**
 * Normalizes an entry name: `.` and empty components are dropped (`./a//b/` is `a/b`); an
 * absolute name or one with a `..` component is refused (undefined).
 */
export function normalizeEntryName(name: string): string | undefined {
  if (name.startsWith('/') || name.includes('\0')) return undefined;
  const parts: string[] = [];
  for (const part of name.split('/')) {
    if (part === '..') return undefined;
    if (part !== '' && part !== '.') parts.push(part);
  }
  return parts.join('/');
}

async function readExactly(handle: FileHandle, length: number, position: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buffer.subarray(0, done);
}

/** Indexes the tar in `handle` (of `fileSize` bytes); throws TarIndexError when it is malformed or hostile. */
export async function indexTar(handle: FileHandle, fileSize: number): Promise<Map<string, TarIndexEntry>> {
  const entries = new Map<string, TarIndexEntry>();
  let position = 0;
  let pax = new Map<string, string>();
  let longName: string | undefined;
  let longLink: string | undefined;
  for (;;) {
    const block = await readExactly(handle, BLOCK, position);
    if (block.length === 0 && position > 0 && entries.size > 0) return entries; // no end blocks (some writers): accept EOF between entries
    if (block.length < BLOCK) throw new TarIndexError(`a truncated header at offset ${position}`);
    if (block.every((b) => b === 0)) return entries;
    if (!checksumOk(block)) throw new TarIndexError(`a header with a bad checksum at offset ${position}`);
    const typeflag = String.fromCharCode(block[156]!);
    const magic = block.subarray(257, 263).toString('latin1');
    let size = numeric(block, 124, 12, 'size');
    if (pax.has('size')) {
      const paxSize = Number(pax.get('size'));
      if (!Number.isSafeInteger(paxSize) || paxSize < 0) throw new TarIndexError('a pax size that is no whole number');
      size = paxSize;
    }
    const dataOffset = position + BLOCK;
    if (dataOffset + size > fileSize) throw new TarIndexError(`entry data past the end of the file at offset ${position} (truncated?)`);
    const next = dataOffset + Math.ceil(size / BLOCK) * BLOCK;
    if (typeflag === 'x' || typeflag === 'L' || typeflag === 'K') {
      if (size > TAR_LIMITS.extendedHeader) throw new TarIndexError(`an extended header of ${size} bytes`);
      const data = await readExactly(handle, size, dataOffset);
      if (typeflag === 'x') pax = parsePax(data);
      else {
        const end = data.indexOf(0);
        const text = data.subarray(0, end < 0 ? data.length : end).toString('utf8');
        if (typeflag === 'L') longName = text;
        else longLink = text;
      }
      position = next;
      continue;
    }
    if (typeflag === 'g') {
      position = next; // global pax header: nothing in it changes where entries are
      continue;
    }
    let name = longName ?? pax.get('path');
    if (name === undefined) {
      name = field(block, 0, 100);
      const prefix = magic === 'ustar\0' ? field(block, 345, 155) : '';
      if (prefix !== '') name = `${prefix}/${name}`;
    }
    const linkname = longLink ?? pax.get('linkpath') ?? field(block, 157, 100);
    pax = new Map();
    longName = undefined;
    longLink = undefined;
    if (name.length > TAR_LIMITS.name) throw new TarIndexError(`an entry name longer than ${TAR_LIMITS.name}`);
    const normalized = normalizeEntryName(name);
    if (normalized === undefined) throw new TarIndexError(`an entry name that leaves the archive: ${printable(name)}`);
    const type = typeflag === '0' || typeflag === '\0' || typeflag === '7' ? 'file' : typeflag === '5' ? 'directory' : typeflag === '2' ? 'symlink' : typeflag === '1' ? 'hardlink' : 'other';
    if (normalized === '' && type === 'directory') {
      position = next;
      continue; // the archive's root, `./`
    }
    if (normalized === '') throw new TarIndexError('an entry with an empty name');
    const previous = entries.get(normalized);
    if (previous !== undefined && !(previous.type === 'directory' && type === 'directory')) {
      throw new TarIndexError(`two entries named ${printable(normalized)}`);
    }
    if (entries.size >= TAR_LIMITS.entries) throw new TarIndexError(`more than ${TAR_LIMITS.entries} entries`);
    const entry: TarIndexEntry = { name: normalized, type, offset: dataOffset, size: type === 'file' ? size : 0 };
    if (type === 'symlink' || type === 'hardlink') entry.linkname = linkname;
    entries.set(normalized, entry);
    position = next;
  }
}

/**
 * The regular file `name` names in an indexed tar, following hardlinks (to their entry) and
 * symlinks (relative to the link's folder, never out of the archive), at most 8 hops; undefined
 * when there is none.
 */
export function lookupFile(entries: Map<string, TarIndexEntry>, name: string): TarIndexEntry | undefined {
  let current = normalizeEntryName(name);
  for (let hops = 0; current !== undefined && hops <= 8; hops++) {
    const entry = entries.get(current);
    if (entry === undefined) return undefined;
    if (entry.type === 'file') return entry;
    if (entry.type === 'hardlink') current = normalizeEntryName(entry.linkname ?? '');
    else if (entry.type === 'symlink') {
      const target = entry.linkname ?? '';
      if (target.startsWith('/')) return undefined;
      const folder = current.includes('/') ? current.slice(0, current.lastIndexOf('/')) : '';
      current = resolveRelative(folder, target);
    } else return undefined;
  }
  return undefined;
}

/** `folder/target` with `..` resolved, or undefined when it leaves the archive's root. */
function resolveRelative(folder: string, target: string): string | undefined {
  const parts = folder === '' ? [] : folder.split('/');
  for (const part of target.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (parts.length === 0) return undefined;
      parts.pop();
    } else parts.push(part);
  }
  return parts.join('/');
}
