/**
 * Applying one image layer (its uncompressed tar stream) to a directory, as the OCI image spec's
 * layer document says, without ever writing outside that directory.
 *
 * The tar is parsed with tar-stream; everything is written by the addon (native/addon/layer.cc),
 * one call per entry, with every path resolved inside the root by `openat2(2)` and
 * `RESOLVE_IN_ROOT` (so `..` and absolute symlinks in the tree resolve as if the root were `/`, as
 * umoci and containerd do) and the final component never followed. Names are normalised first: a
 * `..` that would leave the root is a {@link LayerEscapeError}.
 *
 * Two modes:
 * - `flatten`: onto the tree the earlier layers made. `.wh.NAME` removes NAME; `.wh..wh..opq`
 *   removes what the lower layers put in its directory (what this layer wrote stays).
 * - `overlay`: into a directory of the layer's own, for stacking with overlayfs. `.wh.NAME`
 *   becomes a 0/0 character device NAME; `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its
 *   directory.
 *
 * @module
 */
import fsSync from 'node:fs';
import { Transform, type Readable } from 'node:stream';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import { AbortError, InvalidArgumentError, VmpodError } from '../errors.js';
import { native, type NativeLayerEntry, type NativeSystemError } from '../native.js';
import { isNativeSystemError, systemError } from '../native-call.js';
import { InvalidImageError, LayerEscapeError } from './errors.js';
import { openRoot } from './in-root.js';

const writev = promisify(fsSync.writev);
const fstat = promisify(fsSync.fstat);

/** How a layer is applied: see the module's description. */
export type LayerMode = 'flatten' | 'overlay';

/** Bounds on what a (possibly hostile) layer may ask for. */
export interface LayerLimits {
  /** Entries in one layer (default 4,000,000). */
  maxEntries: number;
  /** Bytes of an entry's name or link target (default 4096, PATH_MAX). */
  maxPathLength: number;
  /** Bytes of one xattr value (default 65536, the kernel's XATTR_SIZE_MAX). */
  maxXattrBytes: number;
  /** xattrs of one entry (default 128). */
  maxXattrs: number;
}

/** What {@link applyLayer} reports as it goes and at the end. */
export interface LayerCounts {
  /** Tar entries applied (whiteouts included). */
  entries: number;
  /** Bytes of file contents written. */
  bytes: number;
  /** Whiteouts (`.wh.NAME` and opaque ones). */
  whiteouts: number;
}

export interface ApplyLayerOptions {
  /** Default `flatten`. */
  mode?: LayerMode | undefined;
  /** Checked between entries: an aborted signal stops the layer with vmpod's AbortError. */
  signal?: AbortSignal | undefined;
  /** Called after each entry with the counts so far. */
  onProgress?: ((counts: LayerCounts) => void) | undefined;
  /** What the layer is, for errors (e.g. `layer 2 of oci:/images/app:1.0`). Default `layer`. */
  reference?: string | undefined;
  /** false: leave owners as created (a caller without CAP_CHOWN). Default true. */
  preserveOwnership?: boolean | undefined;
  /**
   * `overlay` mode: the directories of the layers below this one, the nearest first. A directory
   * the layer does not name but needs (a parent of an entry: umoci's `insert` writes no parents)
   * is made with the attributes (mode, owner, times) of the same directory in the nearest of them
   * that has it, as containerd does: overlayfs shows the top layer's directory, and one made with
   * defaults would hide the lower one's mode and owner. Without them: 0755, root, now.
   */
  parents?: readonly string[] | undefined;
  limits?: Partial<LayerLimits> | undefined;
}

const DEFAULT_LIMITS: LayerLimits = { maxEntries: 4_000_000, maxPathLength: 4096, maxXattrBytes: 65_536, maxXattrs: 128 };

/** Regular files up to this size go to the addon in one call with their bytes. */
const SMALL_FILE = 1 << 20;
/** Larger ones are written from Node in writes of about this size. */
const WRITE_CHUNK = 1 << 20;
/** Entries queued to the addon before waiting for the oldest (the worker runs them in order). */
const WINDOW = 64;

const TYPE = { file: 0, dir: 1, symlink: 2, hardlink: 3, char: 4, block: 5, fifo: 6 } as const;
const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';

/**
 * The paths a layer wrote, as a tree (each path's ancestors are linked in too, written or not),
 * so that what the layer wrote below a directory is found by walking that directory's part only.
 */
class Written {
  readonly #dir = new Map<string, boolean>();
  readonly #children = new Map<string, Set<string>>();

  set(path: string, dir: boolean): void {
    this.#dir.set(path, dir);
    let child = path;
    while (child !== '') {
      const slash = child.lastIndexOf('/');
      const parent = slash < 0 ? '' : child.slice(0, slash);
      let names = this.#children.get(parent);
      if (!names) this.#children.set(parent, (names = new Set()));
      const name = child.slice(slash + 1);
      if (names.has(name)) break;  // its ancestors are linked already
      names.add(name);
      child = parent;
    }
  }

  /** The layer wrote `path`, or something below it. */
  touches(path: string): boolean {
    return this.#dir.has(path) || this.#children.has(path);
  }

  get(path: string): boolean | undefined {
    return this.#dir.get(path);
  }

  /** The paths below `dir` (relative to it) that the layer wrote, and the directories leading to them. */
  below(dir: string): string[] {
    const out: string[] = [];
    const walk = (at: string, rel: string): void => {
      for (const name of this.#children.get(at) ?? []) {
        const r = rel === '' ? name : `${rel}/${name}`;
        out.push(r);
        walk(at === '' ? name : `${at}/${name}`, r);
      }
    };
    walk(dir, '');
    return out;
  }
}

/** The raw bytes of the xattr values of a pax header (tar-stream decodes values as UTF-8). */
const RAW_XATTRS = Symbol('vmpod.rawXattrs');

/**
 * The name split into components, `/` and `.` dropped, `..` applied; a `..` that would leave the
 * root throws. [] is the root itself.
 */
export function normaliseEntryName(raw: string): string[] {
  if (raw === '') throw new InvalidImageError('layer', 'an entry with an empty name');
  if (raw.includes('\0')) throw new LayerEscapeError(raw, 'a NUL byte in the name');
  const out: string[] = [];
  for (const part of raw.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length === 0) throw new LayerEscapeError(raw, 'a `..` that leaves the root');
      out.pop();
    } else {
      out.push(part);
    }
  }
  return out;
}

/** A pax time (`1700000000.123456789`) or a header's Date, as seconds and nanoseconds. */
function paxTime(text: string | undefined, fallback: Date): [number, number] {
  if (text !== undefined) {
    const m = /^(-?)(\d+)(?:\.(\d*))?$/u.exec(text.trim());
    if (m) {
      const sec = Number(m[2]) * (m[1] ? -1 : 1);
      const nsec = Number(((m[3] ?? '') + '000000000').slice(0, 9));
      if (Number.isSafeInteger(sec)) return m[1] && nsec > 0 ? [sec - 1, 1_000_000_000 - nsec] : [sec, nsec];
    }
  }
  const ms = fallback.getTime();
  const sec = Math.floor(ms / 1000);
  return [sec, (ms - sec * 1000) * 1_000_000];
}

/**
 * Keeps the raw bytes of a pax header's `SCHILY.xattr.*` values next to tar-stream's decoded pax
 * (which turns them into UTF-8 strings: a binary value such as security.capability would lose bytes).
 */
function parseRawXattrs(buf: Buffer): Map<string, Buffer> {
  const raw = new Map<string, Buffer>();
  let rest = buf;
  while (rest.length > 0) {
    const space = rest.indexOf(0x20);
    if (space <= 0) break;
    const len = Number(rest.subarray(0, space).toString('latin1'));
    if (!Number.isSafeInteger(len) || len <= space + 1 || len > rest.length) break;
    const record = rest.subarray(space + 1, len - 1);
    const eq = record.indexOf(0x3d);
    if (eq > 0) {
      const key = record.subarray(0, eq).toString('utf8');
      if (key.startsWith('SCHILY.xattr.')) raw.set(key.slice('SCHILY.xattr.'.length), Buffer.from(record.subarray(eq + 1)));
    }
    rest = rest.subarray(len);
  }
  return raw;
}

interface ExtractInternals {
  _header: { type: string } | null;
  _pax: Record<string | symbol, unknown> | null;
  _decodeLongHeader(buf: Buffer): void;
}

function makeExtract(): tar.Extract {
  const extract = tar.extract();
  // tar-stream's own pax decoding, then the raw xattr bytes kept under a symbol (Object.assign
  // with a global pax header copies it along).
  const internals = extract as unknown as ExtractInternals;
  const decode = internals._decodeLongHeader.bind(extract);
  internals._decodeLongHeader = (buf: Buffer): void => {
    decode(buf);
    if (internals._header?.type === 'pax-header' && internals._pax) internals._pax[RAW_XATTRS] = parseRawXattrs(buf);
  };
  return extract;
}

function bad(reference: string, entry: string, problem: string, cause?: unknown): InvalidImageError {
  return new InvalidImageError(reference, `entry ${JSON.stringify(entry)}: ${problem}`, cause === undefined ? {} : { cause });
}

/** The typed error for a failed native call on `entry`. */
function entryError(reference: string, entry: string, e: unknown): Error {
  if (!isNativeSystemError(e)) return e as Error;
  const n = e as NativeSystemError;
  if (n.syscall === 'hardlink') return new LayerEscapeError(entry, `${n.detail ?? 'a hardlink to something else than a regular file'} (${n.target ?? ''})`, { cause: n });
  return bad(reference, entry, (systemError(e) as Error).message, e);
}

/**
 * Applies the layer's tar stream (uncompressed, e.g. a verified stream from an ImageSource) to
 * `rootDir`, which must exist. Resolves with the counts. Rejects with {@link LayerEscapeError}
 * for an entry that would leave the root (a `..` name or link, a whiteout of `..`, a hardlink to a
 * directory or a symlink), {@link InvalidImageError} for a malformed tar, an entry that cannot be
 * applied or a limit passed, and vmpod's AbortError when `signal` aborts. On failure the tree is
 * left as far as it got (inside the root: the caller removes it).
 */
export async function applyLayer(stream: Readable, rootDir: string, options: ApplyLayerOptions = {}): Promise<LayerCounts> {
  // The source's errors are caught from the first moment: it may fail (a digest mismatch) while
  // the root is still being opened, before anything reads it. Until the tar parser is attached
  // they are kept, then they end the parse.
  let sourceError: Error | undefined = (stream as Readable & { errored?: Error | null }).errored ?? undefined;
  let forwardSourceError = (e: Error): void => {
    sourceError ??= e;
  };
  const onSourceError = (e: Error): void => {
    forwardSourceError(e);
  };
  stream.on('error', onSourceError);
  const refuse = (e: unknown): never => {
    stream.off('error', onSourceError);
    stream.destroy();
    throw e;
  };
  const mode = options.mode ?? 'flatten';
  if (mode !== 'flatten' && mode !== 'overlay') refuse(new InvalidArgumentError('mode', `must be "flatten" or "overlay", not ${JSON.stringify(mode)}`));
  const reference = options.reference ?? 'layer';
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  const chown = options.preserveOwnership ?? true;
  const signal = options.signal;
  if (signal?.aborted) refuse(new AbortError('applying a layer', { cause: signal.reason }));
  const n = native();
  const parentFds: number[] = [];
  let rootFd = -1;
  try {
    rootFd = await openRoot(rootDir);
    for (const dir of mode === 'overlay' ? options.parents ?? [] : []) parentFds.push(await openRoot(dir));
    if (sourceError) throw sourceError;
  } catch (e) {
    for (const fd of [rootFd, ...parentFds]) if (fd >= 0) n.closeFd(fd);
    refuse(e);
  }
  // overlay with parents: the directories this layer has (named, or made from a parent's).
  const known = new Set<string>(['']);
  const counts: LayerCounts = { entries: 0, bytes: 0, whiteouts: 0 };
  // Paths this layer wrote (flatten: an opaque whiteout or a whiteout keeps them).
  const written = new Written();
  // Directories already emptied of the lower layers' contents in this layer: a second opaque
  // whiteout of one has nothing left to remove (and would cost a walk of what the layer wrote).
  const pruned = new Set<string>();
  const dirTimes = new Map<string, [number, number, number, number]>();
  const inflight: Array<Promise<void>> = [];
  let failure: Error | undefined;

  const queue = (name: string, call: Promise<unknown>): void => {
    inflight.push(call.then(() => undefined, (e: unknown) => {
      failure ??= entryError(reference, name, e);
    }));
  };
  const settle = async (all: boolean): Promise<void> => {
    while (inflight.length > (all ? 0 : WINDOW - 1)) await inflight.shift();
    if (failure) throw failure;
  };

  const c = n.pathConstants;
  const ensureParents = async (parentParts: string[]): Promise<void> => {
    let at = '';
    for (const part of parentParts) {
      const up = at;
      at = at === '' ? part : `${at}/${part}`;
      if (known.has(at)) continue;
      known.add(at);
      for (const fd of parentFds) {
        let st: fsSync.BigIntStats;
        try {
          const f = await n.openAt(fd, at, c.O_PATH | c.O_NOFOLLOW, c.RESOLVE_IN_ROOT | c.RESOLVE_NO_MAGICLINKS);
          try {
            st = await fstat(f, { bigint: true });
          } finally {
            n.closeFd(f);
          }
        } catch {
          continue;  // not in that layer
        }
        if (st.isDirectory()) {
          const times: [number, number, number, number] = [
            Number(st.atimeNs / 1_000_000_000n), Number(st.atimeNs % 1_000_000_000n),
            Number(st.mtimeNs / 1_000_000_000n), Number(st.mtimeNs % 1_000_000_000n),
          ];
          queue(at, n.layerEntry(rootFd, {
            parent: up, name: part, type: TYPE.dir, mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid), chown, deferTimes: true,
          }));
          dirTimes.set(at, times);
        }
        break;  // the nearest layer that has the name decides (a file or a whiteout there: no directory to copy)
      }
    }
  };

  const extract = makeExtract();
  forwardSourceError = (e: Error): void => {
    extract.destroy(e);
  };
  const { stream: padded, source } = padToBlock();
  stream.pipe(padded).pipe(extract);
  // A file's data that the padding completed was cut short: its last bytes are not the layer's.
  const checkComplete = (h: tar.Header, raw: string): void => {
    const end = ((h as { byteOffset?: number }).byteOffset ?? 0) + h.size;
    if (source.ended && end > source.bytes) throw new InvalidImageError(reference, `not a valid tar stream: the data of ${JSON.stringify(raw)} is cut short`);
  };
  try {
    for await (const entry of extract) {
      if (signal?.aborted) throw new AbortError('applying a layer', { cause: signal.reason });
      const h = entry.header;
      const raw = h.name;
      if (++counts.entries > limits.maxEntries) throw new InvalidImageError(reference, `more than ${limits.maxEntries} entries`);
      if (Buffer.byteLength(raw) > limits.maxPathLength) throw bad(reference, raw.slice(0, 64), `a name longer than ${limits.maxPathLength} bytes`);
      const parts = normaliseEntryName(raw);
      const path = parts.join('/');
      const base = parts.at(-1) ?? '';
      const parentParts = parts.slice(0, -1);
      const parent = parentParts.join('/');
      const pax = (h.pax ?? {}) as Record<string, string> & { [RAW_XATTRS]?: Map<string, Buffer> };
      if (parentFds.length > 0) await ensureParents(parentParts);

      if (base.startsWith(WHITEOUT)) {
        counts.whiteouts++;
        for await (const _ of entry) { /* whiteouts carry no data */ }
        if (base === OPAQUE) {
          if (mode === 'overlay') {
            queue(raw, n.layerSetXattr(rootFd, parent, 'trusted.overlay.opaque', Buffer.from('y')));
          } else {
            if (!pruned.has(parent)) queue(raw, n.layerPrune(rootFd, parent, written.below(parent)));
            pruned.add(parent);
          }
        } else if (base.startsWith(`${WHITEOUT}${WHITEOUT}`)) {
          // Other `.wh..wh.` names are aufs metadata (e.g. .wh..wh.plnk): nothing to apply.
        } else {
          const hidden = base.slice(WHITEOUT.length);
          if (hidden === '' || hidden === '.' || hidden === '..') throw new LayerEscapeError(raw, `a whiteout of ${JSON.stringify(hidden)}`);
          const target = parent === '' ? hidden : `${parent}/${hidden}`;
          if (mode === 'overlay') {
            if (written.get(target) === false) {
              // A file of this layer: nothing of the lower layers to hide there.
            } else if (written.touches(target)) {
              // A directory this layer wrote into: an opaque one hides the lower layers' contents.
              queue(raw, n.layerSetXattr(rootFd, target, 'trusted.overlay.opaque', Buffer.from('y')));
            } else {
              queue(raw, n.layerEntry(rootFd, { parent, name: hidden, type: TYPE.char, mode: 0, uid: h.uid, gid: h.gid, chown, major: 0, minor: 0 }));
              written.set(target, false);
            }
          } else if (written.get(target) === false) {
            // A file of this layer: a whiteout hides only what the lower layers had.
          } else if (written.touches(target)) {
            // This layer wrote that directory or something in it: only what the lower layers had goes.
            if (!pruned.has(target)) queue(raw, n.layerPrune(rootFd, target, written.below(target)));
            pruned.add(target);
          } else {
            queue(raw, n.layerRemove(rootFd, parent, hidden));
          }
        }
        await settle(false);
        options.onProgress?.({ ...counts });
        continue;
      }

      const [mtimeSec, mtimeNsec] = paxTime(pax['mtime'], h.mtime);
      const [atimeSec, atimeNsec] = pax['atime'] !== undefined ? paxTime(pax['atime'], h.mtime) : [mtimeSec, mtimeNsec];
      const uid = pax['uid'] !== undefined ? Number(pax['uid']) : h.uid;
      const gid = pax['gid'] !== undefined ? Number(pax['gid']) : h.gid;
      if (!Number.isSafeInteger(uid) || uid < 0 || uid > 0xfffffffe || !Number.isSafeInteger(gid) || gid < 0 || gid > 0xfffffffe) {
        throw bad(reference, raw, `an owner out of range (${uid}:${gid})`);
      }
      const xattrs: Array<[string, Buffer]> = [];
      const rawXattrs = pax[RAW_XATTRS];
      for (const key of Object.keys(pax)) {
        if (!key.startsWith('SCHILY.xattr.')) continue;
        const name = key.slice('SCHILY.xattr.'.length);
        const value = rawXattrs?.get(name) ?? Buffer.from(pax[key] ?? '', 'utf8');
        if (value.length > limits.maxXattrBytes) throw bad(reference, raw, `xattr ${name} is larger than ${limits.maxXattrBytes} bytes`);
        if (name === '' || name.includes('\0')) throw bad(reference, raw, 'an xattr without a name');
        xattrs.push([name, value]);
      }
      if (xattrs.length > limits.maxXattrs) throw bad(reference, raw, `more than ${limits.maxXattrs} xattrs`);
      const spec: NativeLayerEntry = {
        parent: parts.length === 0 ? '' : parent,
        name: base,
        type: TYPE.file,
        mode: h.mode & 0o7777,
        uid,
        gid,
        chown,
        atimeSec,
        atimeNsec,
        mtimeSec,
        mtimeNsec,
        ...(xattrs.length > 0 ? { xattrs } : {}),
      };
      if (parts.length === 0 && h.type !== 'directory') throw bad(reference, raw, 'the root can only be a directory');

      switch (h.type) {
        case 'file':
        case 'contiguous-file': {
          if (h.size <= SMALL_FILE) {
            const chunks: Buffer[] = [];
            for await (const chunk of entry) chunks.push(chunk as Buffer);
            checkComplete(h, raw);
            spec.data = chunks;
            queue(raw, n.layerEntry(rootFd, spec));
          } else {
            await settle(true);
            let fd: number;
            try {
              fd = (await n.layerEntry(rootFd, { ...spec, open: true })) as number;
            } catch (e) {
              throw entryError(reference, raw, e);
            }
            try {
              let batch: Buffer[] = [];
              let batchBytes = 0;
              for await (const chunk of entry) {
                batch.push(chunk as Buffer);
                batchBytes += (chunk as Buffer).length;
                if (batchBytes >= WRITE_CHUNK) {
                  await writeAll(fd, batch);
                  batch = [];
                  batchBytes = 0;
                  if (signal?.aborted) throw new AbortError('applying a layer', { cause: signal.reason });
                }
              }
              if (batchBytes > 0) await writeAll(fd, batch);
              checkComplete(h, raw);
            } catch (e) {
              n.closeFd(fd);
              throw isNativeSystemError(e) || (e as { syscall?: unknown }).syscall ? bad(reference, raw, (e as Error).message, e) : e;
            }
            queue(raw, n.layerFinishFile(fd, spec));
          }
          counts.bytes += h.size;
          written.set(path, false);
          break;
        }
        case 'directory':
          spec.type = TYPE.dir;
          spec.deferTimes = true;
          for await (const _ of entry) { /* no data */ }
          queue(raw, n.layerEntry(rootFd, spec));
          dirTimes.set(path, [atimeSec, atimeNsec, mtimeSec, mtimeNsec]);
          known.add(path);
          written.set(path, true);
          break;
        case 'symlink': {
          const target = h.linkname ?? '';
          if (target === '' || target.includes('\0')) throw bad(reference, raw, 'a symlink without a target');
          if (Buffer.byteLength(target) > limits.maxPathLength) throw bad(reference, raw, `a link target longer than ${limits.maxPathLength} bytes`);
          for await (const _ of entry) { /* no data */ }
          // Stored verbatim (absolute targets too): a symlink's target is data, never followed here.
          queue(raw, n.layerEntry(rootFd, { ...spec, type: TYPE.symlink, link: target }));
          written.set(path, false);
          break;
        }
        case 'link': {
          const target = h.linkname ?? '';
          if (Buffer.byteLength(target) > limits.maxPathLength) throw bad(reference, raw, `a link target longer than ${limits.maxPathLength} bytes`);
          let linkParts: string[];
          try {
            linkParts = normaliseEntryName(target);
          } catch (e) {
            if (e instanceof LayerEscapeError) throw new LayerEscapeError(raw, `a hardlink to ${JSON.stringify(target)}, outside the root`);
            throw e;
          }
          if (linkParts.length === 0) throw new LayerEscapeError(raw, 'a hardlink to the root directory');
          for await (const _ of entry) { /* no data */ }
          queue(raw, n.layerEntry(rootFd, { ...spec, type: TYPE.hardlink, link: linkParts.join('/') }));
          written.set(path, false);
          break;
        }
        case 'character-device':
        case 'block-device':
        case 'fifo':
          for await (const _ of entry) { /* no data */ }
          queue(raw, n.layerEntry(rootFd, {
            ...spec,
            type: h.type === 'fifo' ? TYPE.fifo : h.type === 'block-device' ? TYPE.block : TYPE.char,
            major: h.devmajor ?? 0,
            minor: h.devminor ?? 0,
          }));
          written.set(path, false);
          break;
        default:
          throw bad(reference, raw, `an entry of a type vmpod does not apply (${String(h.type)})`);
      }
      await settle(false);
      options.onProgress?.({ ...counts });
    }
    await settle(true);
    if (dirTimes.size > 0) {
      const paths = [...dirTimes.keys()];
      try {
        await n.layerDirTimes(rootFd, paths, paths.flatMap((p) => dirTimes.get(p) ?? []));
      } catch (e) {
        throw entryError(reference, '(directory times)', e);
      }
    }
    return counts;
  } catch (e) {
    // Nothing may still be writing when the caller sees the failure.
    await Promise.allSettled(inflight);
    // The layer's stream is done with too (a verifying source holds a file open).
    stream.unpipe(padded);
    stream.destroy();
    padded.destroy();
    extract.destroy();
    // vmpod's own errors (the source's DigestMismatchError too) and system errors (they carry a
    // code) pass; what is left is tar-stream's: a malformed tar.
    if (e instanceof VmpodError || !(e instanceof Error) || (e as { code?: unknown }).code !== undefined) throw e;
    throw new InvalidImageError(reference, `not a valid tar stream: ${e.message}`, { cause: e });
  } finally {
    stream.off('error', onSourceError);
    n.closeFd(rootFd);
    for (const fd of parentFds) n.closeFd(fd);
  }
}

/**
 * Passes the tar through, and at its end adds the zeros that complete its last 512-byte block:
 * umoci 0.4's `insert` (Debian 12's) writes layers that stop right after the last file's data,
 * without its padding or the end-of-archive blocks, which Go's tar reader accepts and tar-stream
 * does not. A tar cut anywhere else still fails: a header is short, or the file's data ends past
 * the source's last byte (the caller checks that: `source` has the source's length once it ended).
 */
function padToBlock(): { stream: Transform; source: { bytes: number; ended: boolean } } {
  const source = { bytes: 0, ended: false };
  const stream = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      source.bytes += chunk.length;
      callback(null, chunk);
    },
    flush(callback) {
      source.ended = true;
      const rest = source.bytes % 512;
      callback(null, rest === 0 ? undefined : Buffer.alloc(512 - rest));
    },
  });
  return { stream, source };
}

async function writeAll(fd: number, chunks: Buffer[]): Promise<void> {
  let list = chunks;
  while (list.length > 0) {
    let written = (await writev(fd, list)).bytesWritten;
    const rest: Buffer[] = [];
    for (const chunk of list) {
      if (written >= chunk.length) {
        written -= chunk.length;
      } else {
        rest.push(chunk.subarray(written));
        written = 0;
      }
    }
    list = rest;
  }
}
