/**
 * The image store: unpacked layers, cached by diff_id and shared read-only by every container of
 * every image that has them, and one read-only overlayfs view per layer chain.
 *
 * Layout (default `/var/lib/vmpod/images`, or `$VMPOD_IMAGE_DIR`):
 *
 * ```
 * layers/HEX/rootfs/     a layer in overlay form (whiteouts as 0/0 character devices, opaque
 *                        directories by the trusted.overlay.opaque xattr), HEX its diff_id's digest
 * layers/HEX.json        what is known of it: diff_id, uncompressed size, entries, where it came from
 * layers/.tmp-HEX-RAND/  an unpack under way (or one a crash left: the next unpack of HEX, or prune, removes it)
 * images/HEX.json        an image, HEX its id's (its manifest digest): config, diff_ids, chain id, references, last use
 * views/HEX/             the mount point of the read-only overlay of chain id HEX's layers;
 *                        the image's root is its rootfs/
 * empty/rootfs/          an empty folder, the bottom layer of every view
 * locks/                 flock(2) files: store.lock (shared by users, exclusive for rm and prune), layer-HEX.lock
 * ```
 *
 * Each layer's tree is one level down, in `rootfs/`, and so is the image's root in a view: the
 * sandbox shares the view's mount, which the guest sees as a virtio-fs submount, and its
 * overlayfs refuses a submount's point as a lower layer until something walks through it
 * ("filesystem not supported"), while a folder inside it is fine (docs/images.md).
 *
 * A layer is unpacked once, under its own lock, into a temporary folder that is renamed into
 * place only when the whole layer was applied and its stream verified; its JSON is written
 * (atomically) after the rename and is what says "complete": a folder without it is a crash's
 * leftover and is unpacked again. Views are mounted once per chain and shared by every container
 * of that chain; a container's sandbox record names the chain it uses, and the mounts themselves
 * are checked too (a share bind of a view is another mount of its superblock), so that no layer
 * is ever removed from under a running container.
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { runAll } from '../cleanup.js';
import { InvalidArgumentError, InvalidStateError, NotFoundError } from '../errors.js';
import { mount } from '../devices/mount.js';
import { Dir, unmountAt } from '../host/tree.js';
import { isAlive, isProcessIdentity } from '../host/process.js';
import { FileLock } from '../state/lock.js';
import { writeFileAtomic, removeStaleTempFiles } from '../state/atomic.js';
import { removeTree } from '../state/remove.js';
import { DEFAULT_STATE_DIR } from '../state/store.js';
import * as validate from '../validate.js';

/** The store's folder when none is given and `$VMPOD_IMAGE_DIR` is unset. */
export const DEFAULT_IMAGE_STORE = '/var/lib/vmpod/images';

/** The folder of a layer, and of a view, that holds the tree. */
export const VIEW_ROOT = 'rootfs';

/** How long a store user waits for a lock held by another process (an unpack of a big layer holds one). */
const LOCK_WAIT_MS = 30 * 60_000;

const DIGEST = /^sha256:([0-9a-f]{64})$/u;

/** The hex part of a `sha256:` digest (InvalidArgumentError for anything else). */
export function digestHex(digest: string, field = 'digest'): string {
  const m = DIGEST.exec(digest);
  if (!m) throw new InvalidArgumentError(field, `${JSON.stringify(digest)} is not a sha256 digest`);
  return m[1]!;
}

/**
 * The chain id of a stack of layers, bottom first, as the image spec defines it:
 * `ChainID(L0) = DiffID(L0)`, `ChainID(L0|...|Ln) = sha256(ChainID(L0|...|Ln-1) + " " + DiffID(Ln))`.
 */
export function chainId(diffIds: readonly string[]): string {
  if (diffIds.length === 0) throw new InvalidArgumentError('diffIds', 'an image needs at least one layer');
  let chain = diffIds[0]!;
  digestHex(chain, 'diffIds[0]');
  for (let i = 1; i < diffIds.length; i++) {
    digestHex(diffIds[i]!, `diffIds[${i}]`);
    chain = `sha256:${createHash('sha256').update(`${chain} ${diffIds[i]}`).digest('hex')}`;
  }
  return chain;
}

/** What the store keeps about an unpacked layer (`layers/HEX.json`). */
export interface LayerRecord {
  diffId: string;
  /** Bytes of its uncompressed tar stream. */
  size: number;
  /** Entries of its tar stream, when the unpacker counted them. */
  entries?: number;
  /** The image reference it was first unpacked from. */
  source: string;
  /** ISO date. */
  unpackedAt: string;
}

/** What the store keeps about an image (`images/HEX.json`, HEX its id's). */
export interface ImageRecord {
  /**
   * The image's id in the store: its manifest's digest, or for a Docker archive (which stores no
   * manifest blob) its config's digest.
   */
  id: string;
  /** The manifest's digest (undefined for a Docker archive). */
  manifestDigest?: string;
  /** The config blob's digest and its parsed JSON. */
  configDigest: string;
  config: unknown;
  /** Layer diff_ids, bottom first. */
  diffIds: string[];
  /** {@link chainId} of `diffIds`: the name of its view. */
  chainId: string;
  /** `os/architecture`, e.g. `linux/amd64`. */
  platform: string;
  /** The references it was opened from (`oci:/images/app:1.0`, ...). */
  references: string[];
  /** Compressed size of each layer blob, bottom first. */
  layerSizes: number[];
  /** ISO dates. */
  createdAt: string;
  lastUsed: string;
}

/** Applies one layer's uncompressed tar stream to `dir` in overlay form; resolves with what it counted. */
export type LayerApplier = (stream: Readable, dir: string, signal?: AbortSignal) => Promise<{ entries?: number } | void>;

/** How many layers and views this store object made and reused (for tests and benchmarks). */
export interface StoreCounters {
  layersUnpacked: number;
  layersReused: number;
  viewsMounted: number;
  viewsReused: number;
}

/** A sandbox container that uses a chain's view, as its sandbox record says. */
export interface ImageUser {
  sandbox: string;
  container: string;
  /** The sandbox's VM is alive (its containers may run from the view). */
  running: boolean;
}

/** Refuses store paths that cannot be written in an overlayfs `lowerdir=` option. */
function checkStoreDir(dir: string): string {
  const abs = validate.absolutePath(dir, 'store');
  if (/[:,\\\n]/u.test(abs)) throw new InvalidArgumentError('store', `${abs}: an image store's path may not hold ':', ',', '\\' or a newline (overlayfs options)`);
  return abs;
}

/** The store folder: `store`, else `$VMPOD_IMAGE_DIR`, else {@link DEFAULT_IMAGE_STORE}. */
export function storeDirOf(store?: string): string {
  return checkStoreDir(store ?? process.env['VMPOD_IMAGE_DIR'] ?? DEFAULT_IMAGE_STORE);
}

function isMissing(error: unknown): boolean {
  return (error as NodeJS.ErrnoException).code === 'ENOENT';
}

async function readJson(file: string): Promise<unknown> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as unknown;
  } catch (error) {
    if (isMissing(error) || error instanceof SyntaxError) return undefined;
    throw error;
  }
}

function isImageRecord(v: unknown): v is ImageRecord {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as Partial<ImageRecord>;
  return (
    typeof r.id === 'string' &&
    DIGEST.test(r.id) &&
    typeof r.chainId === 'string' &&
    Array.isArray(r.diffIds) &&
    r.diffIds.every((d) => typeof d === 'string' && DIGEST.test(d)) &&
    Array.isArray(r.references) &&
    r.references.every((x) => typeof x === 'string')
  );
}

/** An image store on this host (see the module's description). */
export class ImageStore {
  /** What this object unpacked, mounted and reused. */
  readonly counters: StoreCounters = { layersUnpacked: 0, layersReused: 0, viewsMounted: 0, viewsReused: 0 };

  private constructor(
    /** The store's folder. */
    readonly dir: string,
  ) {}

  /** Opens (creating its folders, mode 0700, when missing) the store at `store`, `$VMPOD_IMAGE_DIR` or the default. */
  static async open(store?: string): Promise<ImageStore> {
    const dir = storeDirOf(store);
    for (const sub of ['layers', 'images', 'views', 'empty/rootfs', 'locks']) await fs.mkdir(path.join(dir, sub), { recursive: true, mode: 0o700 });
    await fs.chmod(path.join(dir, 'empty/rootfs'), 0o755);
    return new ImageStore(dir);
  }

  /** The folder of layer `diffId` (whether or not it is unpacked); its tree is in `rootfs/`. */
  layerDir(diffId: string): string {
    return path.join(this.dir, 'layers', digestHex(diffId, 'diffId'));
  }

  /** The mount point of the view of chain `chain`; the image's root is its `rootfs/` ({@link VIEW_ROOT}). */
  viewDir(chain: string): string {
    return path.join(this.dir, 'views', digestHex(chain, 'chainId'));
  }

  /** Takes the store's lock: shared while using images (unpack, mount, create a container), exclusive to remove. */
  lock(exclusive: boolean, signal?: AbortSignal): Promise<FileLock> {
    return FileLock.acquire(path.join(this.dir, 'locks', 'store.lock'), { exclusive, timeoutMs: LOCK_WAIT_MS, ...(signal ? { signal } : {}) });
  }

  /** The record of layer `diffId` when it is completely unpacked. */
  async layer(diffId: string): Promise<LayerRecord | undefined> {
    const dir = this.layerDir(diffId);
    const record = (await readJson(`${dir}.json`)) as LayerRecord | undefined;
    if (record?.diffId !== diffId) return undefined;
    const stat = await fs.lstat(dir).catch(() => undefined);
    return stat?.isDirectory() ? record : undefined;
  }

  /**
   * Makes sure layer `diffId` is unpacked: under the layer's lock, a complete layer is reused;
   * otherwise what a crash left is removed and `open()`'s stream (uncompressed, verified by its
   * source: it must fail on a mismatch) is applied by `apply` into a temporary folder's `rootfs/`, renamed
   * into place, and recorded. The caller holds the store's lock (shared).
   */
  async ensureLayer(
    diffId: string,
    open: () => Promise<Readable>,
    apply: LayerApplier,
    options: { source: string; signal?: AbortSignal; onBytes?: (bytes: number) => void },
  ): Promise<{ unpacked: boolean; record: LayerRecord }> {
    const hex = digestHex(diffId, 'diffId');
    const signal = options.signal;
    await using lock = await FileLock.acquire(path.join(this.dir, 'locks', `layer-${hex}.lock`), { timeoutMs: LOCK_WAIT_MS, ...(signal ? { signal } : {}) });
    void lock;
    const found = await this.layer(diffId);
    if (found) {
      this.counters.layersReused++;
      return { unpacked: false, record: found };
    }
    const layers = path.join(this.dir, 'layers');
    // Leftovers of a crashed unpack of this layer: a temp folder, a folder without its record.
    await this.#removeLayerLeftovers(hex);
    const temp = path.join(layers, `.tmp-${hex}-${randomBytes(4).toString('hex')}`);
    await fs.mkdir(path.join(temp, VIEW_ROOT), { recursive: true, mode: 0o755 });
    let size = 0;
    let entries: number | undefined;
    try {
      const stream = await open();
      const counter = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          size += chunk.length;
          options.onBytes?.(size);
          done(null, chunk);
        },
      });
      const applying = apply(counter, path.join(temp, VIEW_ROOT), signal);
      // The applier must read the stream to its end: a stream that fails (digest mismatch) fails the unpack.
      const [, applied] = await Promise.all([pipeline(stream, counter, ...(signal ? [{ signal }] : [])), applying]);
      if (applied && typeof applied.entries === 'number') entries = applied.entries;
      signal?.throwIfAborted();
      await fs.rename(temp, path.join(layers, hex));
    } catch (error) {
      await removeTree(temp).catch((cleanup: unknown) => Object.assign(error as Error, { cleanupError: cleanup }));
      throw error;
    }
    const record: LayerRecord = {
      diffId,
      size,
      ...(entries === undefined ? {} : { entries }),
      source: options.source,
      unpackedAt: new Date().toISOString(),
    };
    await writeFileAtomic(path.join(layers, `${hex}.json`), `${JSON.stringify(record, null, 2)}\n`, 0o600);
    this.counters.layersUnpacked++;
    return { unpacked: true, record };
  }

  /** Removes a layer's temp folders and a folder that has no record (the caller holds the layer's lock). */
  async #removeLayerLeftovers(hex: string): Promise<void> {
    const layers = path.join(this.dir, 'layers');
    const names = await fs.readdir(layers);
    for (const name of names.filter((n) => n.startsWith(`.tmp-${hex}-`))) await removeTree(path.join(layers, name));
    if (!names.includes(`${hex}.json`) && names.includes(hex)) await removeTree(path.join(layers, hex));
  }

  /** The mount of chain `chain`'s view, when mounted. */
  async #viewMount(chain: string): Promise<{ id: number; dev: string } | undefined> {
    const point = this.viewDir(chain);
    const text = await fs.readFile('/proc/self/mountinfo', 'utf8');
    let found: { id: number; dev: string } | undefined;
    for (const line of text.split('\n')) {
      const f = line.split(' ');
      if (f.length > 5 && f[4] === point) found = { id: Number(f[0]), dev: f[2]! }; // the last one is on top
    }
    return found;
  }

  /**
   * The read-only view of the layers `diffIds` (bottom first, each unpacked): an overlayfs
   * `lowerdir=TOP:...:BOTTOM:EMPTY` with no upper layer at `views/CHAIN`, mounted unless it is
   * already. The caller holds the store's lock (shared).
   */
  async ensureView(diffIds: readonly string[]): Promise<string> {
    const chain = chainId(diffIds);
    const point = this.viewDir(chain);
    await using lock = await FileLock.acquire(path.join(this.dir, 'locks', `view-${digestHex(chain)}.lock`), { timeoutMs: LOCK_WAIT_MS });
    void lock;
    if (await this.#viewMount(chain)) {
      this.counters.viewsReused++;
      return point;
    }
    for (const d of diffIds) if (!(await this.layer(d))) throw new NotFoundError('unpacked layer', d);
    // Top first, as overlayfs wants; an empty folder at the bottom, so that a one-layer image is
    // an overlay too (its whiteouts hidden, its mounts told apart by their superblock).
    const lower = [...diffIds].reverse().map((d) => this.layerDir(d));
    lower.push(path.join(this.dir, 'empty'));
    // (Every lower folder has rootfs/, so the image's root is always a merged folder.)
    const data = `lowerdir=${lower.join(':')}`;
    if (data.length > 4000) throw new InvalidArgumentError('layers', `${diffIds.length} layers make an overlayfs option longer than a page: too many layers for this store's path`);
    await fs.mkdir(point, { recursive: true, mode: 0o755 });
    await mount(point, { source: 'vmpod-image', fstype: 'overlay', flags: ['ro', 'nosuid'], data });
    this.counters.viewsMounted++;
    return point;
  }

  /** Reads the record of image `id` (undefined when missing or unreadable). */
  async image(id: string): Promise<ImageRecord | undefined> {
    const v = await readJson(path.join(this.dir, 'images', `${digestHex(id, 'id')}.json`));
    return isImageRecord(v) ? v : undefined;
  }

  /** Writes an image record atomically. */
  async writeImage(record: ImageRecord): Promise<void> {
    await writeFileAtomic(path.join(this.dir, 'images', `${digestHex(record.id)}.json`), `${JSON.stringify(record, null, 2)}\n`, 0o600);
  }

  /** Every image record of the store, oldest use first. */
  async images(): Promise<ImageRecord[]> {
    const names = await fs.readdir(path.join(this.dir, 'images')).catch((e: unknown) => (isMissing(e) ? [] : Promise.reject(e)));
    const out: ImageRecord[] = [];
    for (const n of names) {
      if (!/^[0-9a-f]{64}\.json$/u.test(n)) continue;
      const v = await readJson(path.join(this.dir, 'images', n));
      if (isImageRecord(v)) out.push(v);
    }
    return out.sort((a, b) => a.lastUsed.localeCompare(b.lastUsed));
  }

  /**
   * The image `what` names: its id (`sha256:...`, or a unique prefix of its hex of at least 12),
   * its chain id, or a reference it was opened from. {@link NotFoundError} when none.
   */
  async find(what: string): Promise<ImageRecord> {
    const all = await this.images();
    const hex = what.startsWith('sha256:') ? what.slice(7) : what;
    const byRef = all.filter((r) => r.references.includes(what));
    if (byRef.length === 1) return byRef[0]!;
    if (/^[0-9a-f]{12,64}$/u.test(hex)) {
      const byDigest = all.filter((r) => r.id.slice(7).startsWith(hex));
      if (byDigest.length === 1) return byDigest[0]!;
      if (byDigest.length > 1) throw new InvalidArgumentError('image', `${what} names ${byDigest.length} images: give more of the digest`);
      const byChain = all.filter((r) => r.chainId.slice(7) === hex);
      if (byChain.length === 1) return byChain[0]!;
    }
    if (byRef.length > 1) throw new InvalidArgumentError('image', `${what} names ${byRef.length} images: give a digest`);
    throw new NotFoundError('image', what);
  }

  /**
   * The containers of the sandboxes under `stateDir` whose records name chain `chain` of store
   * `store` (any store when not given; see `ContainerEntry.image`), and whether their VM is alive.
   */
  static async usersOf(chain: string, stateDir?: string, store?: string): Promise<ImageUser[]> {
    const root = validate.absolutePath(stateDir ?? process.env['VMPOD_STATE_DIR'] ?? DEFAULT_STATE_DIR, 'stateDir');
    const sandboxes = path.join(root, 'sandboxes');
    const ids = await fs.readdir(sandboxes).catch((e: unknown) => (isMissing(e) ? [] : Promise.reject(e)));
    const users: ImageUser[] = [];
    for (const id of ids) {
      const record = (await readJson(path.join(sandboxes, id, 'state.json'))) as
        | { containers?: Record<string, { image?: { chainId?: string; store?: string } }>; boot?: { vm?: unknown } }
        | undefined;
      if (!record || typeof record.containers !== 'object' || record.containers === null) continue;
      const vm = record.boot?.vm;
      const running = isProcessIdentity(vm) && isAlive(vm);
      for (const [cid, entry] of Object.entries(record.containers)) {
        if (entry?.image?.chainId === chain && (store === undefined || entry.image.store === undefined || entry.image.store === store)) users.push({ sandbox: id, container: cid, running });
      }
    }
    return users;
  }

  /**
   * How many other mounts share the superblock of chain `chain`'s view (share binds of it for
   * containers, in any sandbox): a lower folder must not be touched while there is one.
   */
  async #viewBinds(chain: string): Promise<number> {
    const view = await this.#viewMount(chain);
    if (!view) return 0;
    const text = await fs.readFile('/proc/self/mountinfo', 'utf8');
    return text.split('\n').filter((line) => {
      const f = line.split(' ');
      return f.length > 5 && f[2] === view.dev && Number(f[0]) !== view.id;
    }).length;
  }

  /** Unmounts chain `chain`'s view (by fd and mount id), then removes its mount point. */
  async #unmountView(chain: string): Promise<void> {
    const point = this.viewDir(chain);
    for (let view = await this.#viewMount(chain); view; view = await this.#viewMount(chain)) {
      const views = await Dir.open(path.dirname(point));
      try {
        await unmountAt(views, path.basename(point), view.id, point);
      } finally {
        views.close();
      }
    }
    await fs.rmdir(point).catch((e: unknown) => (isMissing(e) ? undefined : Promise.reject(e)));
  }

  /**
   * Removes image `what` (see {@link find}): its record, and its view when no other image has
   * the same chain. Refused ({@link InvalidStateError}) while a sandbox's record names its chain;
   * with `force`, while a running sandbox does or a mount of its view is still in use. Its layers
   * stay until {@link prune}. Resolves with the record removed.
   */
  async remove(what: string, options: { force?: boolean; stateDir?: string; signal?: AbortSignal } = {}): Promise<ImageRecord> {
    await using lock = await this.lock(true, options.signal);
    void lock;
    const record = await this.find(what);
    const users = await ImageStore.usersOf(record.chainId, options.stateDir, this.dir);
    const blocking = options.force ? users.filter((u) => u.running) : users;
    if (blocking.length > 0) {
      const names = blocking.map((u) => `${u.container} in sandbox ${u.sandbox}`).join(', ');
      throw new InvalidStateError(`image ${record.id}`, 'in use', 'removed', {
        message: `image ${record.references[0] ?? record.id} is in use by ${names}`,
        hint: options.force ? 'its sandboxes are running: delete those containers first' : 'delete those containers first (or --force when none of them runs)',
      });
    }
    const sameChain = (await this.images()).filter((r) => r.chainId === record.chainId && r.id !== record.id);
    if (sameChain.length === 0) {
      const binds = await this.#viewBinds(record.chainId);
      if (binds > 0) {
        throw new InvalidStateError(`image ${record.id}`, 'in use', 'removed', {
          message: `image ${record.references[0] ?? record.id}: its view is still mounted ${binds} more time(s) (a container's share)`,
          hint: 'delete the containers that use it first',
        });
      }
      await this.#unmountView(record.chainId);
    }
    await fs.rm(path.join(this.dir, 'images', `${digestHex(record.id)}.json`), { force: true });
    return record;
  }

  /**
   * Removes what nothing needs: every image no sandbox record names and whose view no share
   * holds, the views of no remaining image, layers no remaining image has, leftovers of crashed
   * unpacks and stale temp files. Never a view that is still mounted elsewhere, nor a layer under
   * a mounted view. Resolves with what it removed.
   */
  async prune(options: { stateDir?: string; signal?: AbortSignal } = {}): Promise<{ images: string[]; layers: string[]; leftovers: string[] }> {
    await using lock = await this.lock(true, options.signal);
    void lock;
    const removed = { images: [] as string[], layers: [] as string[], leftovers: [] as string[] };
    const all = await this.images();
    const keep: ImageRecord[] = [];
    for (const record of all) {
      const users = await ImageStore.usersOf(record.chainId, options.stateDir, this.dir);
      if (users.length > 0 || (await this.#viewBinds(record.chainId)) > 0) keep.push(record);
      else {
        await fs.rm(path.join(this.dir, 'images', `${digestHex(record.id)}.json`), { force: true });
        removed.images.push(record.id);
      }
    }
    const keptChains = new Set(keep.map((r) => digestHex(r.chainId)));
    const keptLayers = new Set(keep.flatMap((r) => r.diffIds.map((d) => digestHex(d))));
    const steps: [string, () => Promise<unknown>][] = [];
    // Views of no kept image (mounted or a bare mount point).
    for (const name of await fs.readdir(path.join(this.dir, 'views'))) {
      if (keptChains.has(name) || !/^[0-9a-f]{64}$/u.test(name)) continue;
      steps.push([`view ${name}`, () => this.#unmountView(`sha256:${name}`)]);
    }
    await runAll(steps, 'could not prune the image store\'s views');
    // Layers no kept image has, and the leftovers of crashed unpacks: only when no view mounts them.
    const mounted = await mountedLowerDirs();
    const layers = path.join(this.dir, 'layers');
    for (const name of await fs.readdir(layers)) {
      const temp = /^\.tmp-([0-9a-f]{64})-[0-9a-f]+$/u.exec(name);
      const hex = temp?.[1] ?? /^([0-9a-f]{64})(\.json)?$/u.exec(name)?.[1];
      if (hex === undefined || keptLayers.has(hex)) continue;
      if (mounted.has(path.join(layers, hex))) continue;
      await using layerLock = await FileLock.acquire(path.join(this.dir, 'locks', `layer-${hex}.lock`), { timeoutMs: LOCK_WAIT_MS });
      void layerLock;
      const full = path.join(layers, name);
      if (name.endsWith('.json')) await fs.rm(full, { force: true });
      else await removeTree(full);
      if (temp) removed.leftovers.push(name);
      else if (!name.endsWith('.json')) removed.layers.push(`sha256:${hex}`);
    }
    await removeStaleTempFiles(layers);
    await removeStaleTempFiles(path.join(this.dir, 'images'));
    return removed;
  }
}

/** The lower folders of every overlayfs mounted in this mount namespace. */
async function mountedLowerDirs(): Promise<Set<string>> {
  const dirs = new Set<string>();
  const text = await fs.readFile('/proc/self/mountinfo', 'utf8');
  for (const line of text.split('\n')) {
    const sep = line.indexOf(' - overlay ');
    if (sep < 0) continue;
    const superOptions = line.slice(sep).split(' ')[3] ?? '';
    const lower = /(?:^|,)lowerdir=([^,]*)/u.exec(superOptions)?.[1];
    if (lower) for (const d of lower.split(':')) dirs.add(d.replace(/\\040/gu, ' '));
  }
  return dirs;
}
