/**
 * The `Image` class: an OCI image opened from a layout or an archive, inspected, unpacked into
 * the image store (src/image/store.ts), turned into a runtime spec or a standalone bundle, and
 * handed to `sandbox.createContainer({ image })`.
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { OciSpec } from '../agent/messages.js';
import { InvalidArgumentError } from '../errors.js';
import type { FileLock } from '../state/lock.js';
import { writeFileAtomic } from '../state/atomic.js';
import type { ImageConfig } from './config.js';
import { InvalidImageError } from './errors.js';
import { readFileInRoot } from './in-root.js';
import { openImageSource } from './open.js';
import { imageRuntimeSpec, type RuntimeSpecOverrides } from './runtime-spec.js';
import type { ImageSource } from './source.js';
import { ImageStore, VIEW_ROOT, chainId, type ImageRecord } from './store.js';
import { applyLayer } from './unpack.js';

/** Where an image store is, for the calls that use one. */
export interface StoreOptions {
  /** The image store's folder (default `$VMPOD_IMAGE_DIR`, else `/var/lib/vmpod/images`). */
  store?: string;
}

/** An unpack's progress: layer `layer` of `layers` (from 1), `bytes` of its uncompressed stream read so far. */
export interface UnpackProgress {
  layer: number;
  layers: number;
  /** The layer's diff_id. */
  diffId: string;
  /** Uncompressed bytes applied so far (of this layer). */
  bytes: number;
  /** The layer blob's size as stored (compressed when it is). */
  blobSize: number;
  /** `unpacking` while bytes flow, `cached` for a layer the store had, `done` at its end. */
  phase: 'unpacking' | 'cached' | 'done';
}

/** Options of {@link Image.open}. */
export interface ImageOpenOptions extends StoreOptions {
  /** Cancels the open and, later, the unpacks of this image. */
  signal?: AbortSignal;
  /** Called as layers are unpacked (see {@link UnpackProgress}). */
  onProgress?: (progress: UnpackProgress) => void;
}

/** A layer as {@link Image.layers} lists it. */
export interface ImageLayerInfo {
  /** The blob's digest (undefined for a compressed layer of a Docker archive: the format names none). */
  digest: string | undefined;
  /** The blob's size as stored. */
  size: number;
  mediaType: string;
  /** The digest of its uncompressed tar: its identity in the store. */
  diffId: string;
  /** The store has it unpacked. */
  cached: boolean;
}

/** What an unpack did. */
export interface UnpackResult {
  /** Layers unpacked now. */
  unpacked: number;
  /** Layers the store had already. */
  reused: number;
}

/**
 * What a container of an image gets (see `sandbox.createContainer({ image })`): the view to
 * share, its runtime spec, and the store's shared lock, held until the container's record names
 * the image (then `release()`). Made by the sandbox; not something to call.
 */
export interface PreparedImage {
  chainId: string;
  store: string;
  /** The view's mount point (what is shared); the image's root is its {@link root} subfolder. */
  view: string;
  /** The folder of the view that is the image's root (`rootfs`). */
  root: string;
  spec: OciSpec;
  release(): Promise<void>;
}

/** How big /etc/passwd or /etc/group of an image may be to be read for a user name. */
const MAX_ID_FILE = 4 << 20;

/**
 * An OCI image from a local OCI layout (`oci:DIR[:REF]`), an OCI archive
 * (`oci-archive:FILE[:REF]`) or a Docker archive (`docker-archive:FILE[:NAME:TAG]`).
 *
 * ```ts
 * await using image = await Image.open('oci:/srv/images/app:1.0');
 * console.log(image.config.config.Cmd, image.layers.length);
 * const container = await sandbox.createContainer({ image });
 * ```
 */
export class Image implements AsyncDisposable {
  #source: ImageSource;
  #store: ImageStore;
  #onProgress: ((progress: UnpackProgress) => void) | undefined;
  #signal: AbortSignal | undefined;

  private constructor(source: ImageSource, store: ImageStore, options: ImageOpenOptions) {
    this.#source = source;
    this.#store = store;
    this.#onProgress = options.onProgress;
    this.#signal = options.signal;
  }

  /**
   * Opens image `reference` (the manifest picked by ref name through any indexes, for
   * linux/amd64; every JSON blob verified) and the store it is unpacked into. Fails with
   * ImageNotFoundError, DigestMismatchError or InvalidImageError (also for a diff_id that is not
   * sha256: the store is named by sha256). Nothing is unpacked yet.
   */
  static async open(reference: string, options: ImageOpenOptions = {}): Promise<Image> {
    if (typeof reference !== 'string' || reference.length === 0) throw new InvalidArgumentError('image', 'must be an image reference such as oci:/path/to/layout:tag');
    const store = await ImageStore.open(options.store);
    const source = await openImageSource(reference, options.signal ? { signal: options.signal } : {});
    // The store names layers and views by sha256 (its folders, the chain id).
    const other = source.layers.find((l) => !l.diffId.startsWith('sha256:'));
    if (other) {
      await source.close();
      throw new InvalidImageError(reference, `layer ${other.index + 1}'s diff_id ${other.diffId.split(':')[0]}: the image store takes sha256 diff_ids only`);
    }
    return new Image(source, store, options);
  }

  /** The reference it was opened from, as given. */
  get reference(): string {
    return this.#source.reference.text;
  }

  /** Its id in the store: the manifest's digest (a Docker archive's config digest: it stores no manifest). */
  get id(): string {
    return this.#source.manifestDigest ?? this.#source.configDigest;
  }

  /** The manifest's digest (undefined for a Docker archive). */
  get manifestDigest(): string | undefined {
    return this.#source.manifestDigest;
  }

  /** The config's digest (the image id `podman images --no-trunc` shows). */
  get configDigest(): string {
    return this.#source.configDigest;
  }

  /** The image config, parsed and checked. */
  get config(): ImageConfig {
    return this.#source.config;
  }

  /** `os/architecture[/variant]`, e.g. `linux/amd64`. */
  get platform(): string {
    const c = this.#source.config;
    return `${c.os}/${c.architecture}${c.variant ? `/${c.variant}` : ''}`;
  }

  /** The chain id of its layers: the name of its view in the store. */
  get chainId(): string {
    return chainId(this.#source.layers.map((l) => l.diffId));
  }

  /** The store it unpacks into. */
  get store(): string {
    return this.#store.dir;
  }

  /** How many layers this object unpacked and found in the store. */
  get counters(): Readonly<ImageStore['counters']> {
    return { ...this.#store.counters };
  }

  /** Its layers, base first, each with whether the store has it unpacked. */
  async layers(): Promise<ImageLayerInfo[]> {
    return Promise.all(
      this.#source.layers.map(async (l) => ({ digest: l.digest, size: l.size, mediaType: l.mediaType, diffId: l.diffId, cached: (await this.#store.layer(l.diffId)) !== undefined })),
    );
  }

  /** Every layer is unpacked in the store. */
  async cached(): Promise<boolean> {
    return (await this.layers()).every((l) => l.cached);
  }

  /**
   * Unpacks every layer the store lacks (each once, whatever other processes do at the same
   * time; see src/image/store.ts) and records the image in the store. `pull()` is the same call.
   */
  async unpack(): Promise<UnpackResult> {
    await using lock = await this.#store.lock(false, this.#signal);
    void lock;
    return this.#unpackLocked(this.#signal);
  }

  /** The same as {@link unpack} (the name container tools use for "get it into the local store"). */
  pull(): Promise<UnpackResult> {
    return this.unpack();
  }

  async #unpackLocked(signal: AbortSignal | undefined): Promise<UnpackResult> {
    const layers = this.#source.layers;
    const result: UnpackResult = { unpacked: 0, reused: 0 };
    for (const layer of layers) {
      const progress = (phase: UnpackProgress['phase'], bytes: number): void =>
        this.#onProgress?.({ layer: layer.index + 1, layers: layers.length, diffId: layer.diffId, bytes, blobSize: layer.size, phase });
      let last = 0;
      const done = await this.#store.ensureLayer(
        layer.diffId,
        async () => this.#source.openLayer(layer.index, signal ? { signal } : {}),
        async (stream, dir) => applyLayer(stream, dir, { mode: 'overlay', signal, reference: `layer ${layer.index + 1} of ${this.reference}` }),
        {
          source: this.reference,
          ...(signal ? { signal } : {}),
          onBytes: (bytes) => {
            // At most every MiB: a progress line per chunk would cost more than the unpack.
            if (bytes - last >= 1 << 20) {
              last = bytes;
              progress('unpacking', bytes);
            }
          },
        },
      );
      if (done.unpacked) result.unpacked++;
      else result.reused++;
      progress(done.unpacked ? 'done' : 'cached', done.record.size);
    }
    await this.#record();
    return result;
  }

  /** Writes (or refreshes) the image's record: its references, its last use. The caller holds the store's lock. */
  async #record(): Promise<void> {
    const now = new Date().toISOString();
    const old = await this.#store.image(this.id);
    const record: ImageRecord = {
      id: this.id,
      ...(this.manifestDigest === undefined ? {} : { manifestDigest: this.manifestDigest }),
      configDigest: this.configDigest,
      config: this.config.raw,
      diffIds: this.#source.layers.map((l) => l.diffId),
      chainId: this.chainId,
      platform: this.platform,
      references: [...new Set([...(old?.references ?? []), this.reference])],
      layerSizes: this.#source.layers.map((l) => l.size),
      createdAt: old?.createdAt ?? now,
      lastUsed: now,
    };
    await this.#store.writeImage(record);
    // A reference names one image: one that moved (a tag given to a new build) leaves the old record.
    for (const other of await this.#store.images()) {
      if (other.id !== this.id && other.references.includes(this.reference)) {
        await this.#store.writeImage({ ...other, references: other.references.filter((r) => r !== this.reference) });
      }
    }
  }

  /**
   * The host path of its read-only root filesystem: the `rootfs/` of its view (an overlayfs of
   * its layers in the store, shared by every container of the image), unpacking what is
   * missing first.
   */
  async view(): Promise<string> {
    await using lock = await this.#store.lock(false, this.#signal);
    void lock;
    await this.#unpackLocked(this.#signal);
    return path.join(await this.#store.ensureView(this.#source.layers.map((l) => l.diffId)), VIEW_ROOT);
  }

  /**
   * The runtime spec of a container of this image, as the image spec's conversion says
   * (Entrypoint ++ Cmd, Env with PATH, WorkingDir, User resolved from the image's /etc/passwd and
   * /etc/group, labels and StopSignal as annotations), with `overrides`. Reads the user files
   * from its view (unpacking first when needed).
   */
  async runtimeSpec(overrides: RuntimeSpecOverrides = {}): Promise<OciSpec> {
    return this.#specFrom(await this.view(), overrides);
  }

  async #specFrom(rootfs: string, overrides: RuntimeSpecOverrides): Promise<OciSpec> {
    const read = async (file: string): Promise<string | undefined> => (await readFileInRoot(rootfs, file, MAX_ID_FILE))?.toString('utf8');
    return imageRuntimeSpec(this.config, { ...overrides, passwd: await read('/etc/passwd'), group: await read('/etc/group'), reference: this.reference });
  }

  /**
   * Writes a standalone OCI bundle at `dir` (made if missing; it must be empty): `rootfs/` with
   * every layer applied in turn (whiteouts applied, not kept: what `umoci unpack` makes), and
   * `config.json`. Uses no store.
   */
  async bundle(dir: string, overrides: RuntimeSpecOverrides = {}): Promise<OciSpec> {
    const target = path.resolve(dir);
    await fs.mkdir(target, { recursive: true, mode: 0o755 });
    if ((await fs.readdir(target)).length > 0) throw new InvalidArgumentError('dir', `${target} is not empty`);
    const rootfs = path.join(target, 'rootfs');
    await fs.mkdir(rootfs, { mode: 0o755 });
    for (const layer of this.#source.layers) {
      const stream = this.#source.openLayer(layer.index, this.#signal ? { signal: this.#signal } : {});
      const counts = await applyLayer(stream, rootfs, { mode: 'flatten', signal: this.#signal, reference: `layer ${layer.index + 1} of ${this.reference}` });
      // (bytes: the file contents written, which is what a person waiting wants to see grow)
      this.#onProgress?.({ layer: layer.index + 1, layers: this.#source.layers.length, diffId: layer.diffId, bytes: counts.bytes, blobSize: layer.size, phase: 'done' });
    }
    const spec = await this.#specFrom(rootfs, overrides);
    await writeFileAtomic(path.join(target, 'config.json'), `${JSON.stringify(spec, null, 2)}\n`, 0o644);
    return spec;
  }

  /**
   * For `createContainer({ image })`: under the store's shared lock (which the result holds
   * until `release()`), unpacks what is missing, mounts the view and converts the config.
   * `signal` (the create's) cancels it, else the one given to {@link open}.
   *
   * @internal
   */
  async prepareForContainer(signal?: AbortSignal): Promise<PreparedImage> {
    const use = signal ?? this.#signal;
    const lock: FileLock = await this.#store.lock(false, use);
    try {
      await this.#unpackLocked(use);
      const view = await this.#store.ensureView(this.#source.layers.map((l) => l.diffId));
      const spec = await this.#specFrom(path.join(view, VIEW_ROOT), {});
      return { chainId: this.chainId, store: this.#store.dir, view, root: VIEW_ROOT, spec, release: () => lock.release() };
    } catch (error) {
      await lock.release();
      throw error;
    }
  }

  /** Closes the files the image holds open (an archive's). Idempotent. */
  async close(): Promise<void> {
    await this.#source.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** The images of a store, oldest use first. */
  static async list(options: StoreOptions = {}): Promise<ImageRecord[]> {
    return (await ImageStore.open(options.store)).images();
  }

  /** The stored image that `what` names (a reference it was opened from, its id or a prefix of it, its chain id). */
  static async inspect(what: string, options: StoreOptions = {}): Promise<ImageRecord> {
    return (await ImageStore.open(options.store)).find(what);
  }

  /**
   * Removes stored image `what` (see {@link inspect}); refused (InvalidStateError) while a
   * sandbox of `stateDir` has a container of it, and with `force` still while such a sandbox
   * runs or a share mounts its view. Its layers stay until {@link prune}.
   */
  static async remove(what: string, options: StoreOptions & { force?: boolean; stateDir?: string; signal?: AbortSignal } = {}): Promise<ImageRecord> {
    const { store, ...rest } = options;
    return (await ImageStore.open(store)).remove(what, rest);
  }

  /**
   * Removes every stored image no sandbox of `stateDir` uses, the layers no remaining image has,
   * unneeded views and what crashed unpacks left.
   */
  static async prune(options: StoreOptions & { stateDir?: string; signal?: AbortSignal } = {}): Promise<{ images: string[]; layers: string[]; leftovers: string[] }> {
    const { store, ...rest } = options;
    return (await ImageStore.open(store)).prune(rest);
  }
}
