/**
 * Guest assets on disk: the manifest written by {@link buildGuestAssets}, the check made before
 * each boot ({@link verifyGuestAssets}) and the lookup with user overrides
 * ({@link resolveGuestAssets}).
 *
 * Layout of the cache directory (default {@link DEFAULT_GUEST_CACHE_DIR}):
 * ```
 * debs/                 downloaded kernel packages (kept, checked by SHA-256)
 * assets/<id>/          one finished build: manifest.json, vmlinux, initramfs.cpio, config
 * current -> assets/<id>
 * ```
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import * as validate from '../validate.js';
import { GuestAssetsError } from './errors.js';
import { GUEST_FEATURES, type GuestFeature } from './features.js';
import { sha256File } from './hash.js';

/** Where the builder writes, and where the library looks, unless told otherwise. */
export const DEFAULT_GUEST_CACHE_DIR = '/var/cache/vmpod/guest';

/**
 * The cache directory of a call that names none: `$VMPOD_GUEST_CACHE` (what `vmpod run` and a
 * sandbox use as well), else {@link DEFAULT_GUEST_CACHE_DIR}.
 */
export function defaultGuestCacheDir(): string {
  return process.env['VMPOD_GUEST_CACHE'] ?? DEFAULT_GUEST_CACHE_DIR;
}

/** Version of the manifest's format. */
export const MANIFEST_FORMAT = 1;

/** A file of the asset directory, as the manifest records it. */
export interface AssetFile {
  /** Name inside the asset directory. */
  readonly name: string;
  readonly size: number;
  readonly sha256: string;
}

/** `manifest.json` of an asset directory. */
export interface GuestManifest {
  readonly format: typeof MANIFEST_FORMAT;
  /** Content hash of every input of the build (first 16 bytes of a SHA-256, hex). */
  readonly id: string;
  readonly builderVersion: number;
  /** `uname -r` of the guest kernel. */
  readonly kernelRelease: string;
  /** `vmlinux`: uncompressed ELF, booted through PVH; `bzImage`: the compressed image as shipped. */
  readonly kernelFormat: 'vmlinux' | 'bzImage';
  /** What went in. */
  readonly inputs: {
    readonly kernelPackage: { readonly name: string; readonly version: string; readonly sha256: string };
    readonly busyboxSha256: string;
    readonly agentSha256: string;
    readonly modules: readonly string[];
    /** Features asked for (builder version 2). */
    readonly features?: readonly GuestFeature[];
  };
  /** What the caller of the build asked for (builder version 2), to build alike again. */
  readonly request?: GuestBuildRequest;
  /** Modules in the initramfs, in the order /init loads them, and requested ones built in. */
  readonly modules: { readonly load: readonly string[]; readonly builtin: readonly string[] };
  /**
   * What the guest can do, from its kernel config and the modules /init loads (builder
   * version 2; absent in older builds: decide with `guestFeatures` from `config`).
   */
  readonly features?: readonly GuestFeature[];
  /** The line /init prints on the console right before it starts the agent. */
  readonly initMarker: string;
  readonly files: { readonly kernel: AssetFile; readonly initramfs: AssetFile; readonly config: AssetFile };
}

/** The options a build was given that decide what it makes (absent ones took the defaults). */
export interface GuestBuildRequest {
  readonly kernelPackage?: string;
  readonly kernelDeb?: string;
  readonly modules?: readonly string[];
  readonly extraModules?: readonly string[];
  readonly features?: readonly GuestFeature[];
}

/** Everything a boot needs, with absolute paths. */
export interface GuestAssets {
  /** The asset directory, or undefined when every file comes from user overrides. */
  readonly dir: string | undefined;
  /** The build's id, or undefined with user overrides. */
  readonly id: string | undefined;
  /** Kernel to boot (`-kernel`). */
  readonly kernel: string;
  /** Initramfs to boot (`-initrd`). */
  readonly initramfs: string;
  /** A user-supplied block image to use as the builtin container rootfs, if any. */
  readonly rootfsImage: string | undefined;
  /** The manifest of the asset directory (undefined when every file comes from overrides). */
  readonly manifest: GuestManifest | undefined;
}

const MAX_MANIFEST_SIZE = 1 << 20;

function bad(dir: string, message: string, cause?: unknown): GuestAssetsError {
  return new GuestAssetsError(dir, `${message}; rebuild them with "vmpod guest build"`, cause === undefined ? {} : { cause });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function checkFile(dir: string, value: unknown, field: string): AssetFile {
  if (
    !isRecord(value) ||
    typeof value['name'] !== 'string' ||
    !/^[A-Za-z0-9._-]+$/u.test(value['name']) ||
    typeof value['size'] !== 'number' ||
    !Number.isSafeInteger(value['size']) ||
    typeof value['sha256'] !== 'string' ||
    !/^[0-9a-f]{64}$/u.test(value['sha256'])
  ) {
    throw bad(dir, `manifest field files.${field} is malformed`);
  }
  return { name: value['name'], size: value['size'], sha256: value['sha256'] };
}

/** Reads and checks the shape of `DIR/manifest.json`. */
export async function readManifest(dir: string): Promise<GuestManifest> {
  let text: string;
  try {
    const handle = await fs.open(path.join(dir, 'manifest.json'), 'r');
    try {
      const { size } = await handle.stat();
      if (size > MAX_MANIFEST_SIZE) throw bad(dir, 'manifest.json is too large');
      text = await handle.readFile('utf8');
    } finally {
      await handle.close();
    }
  } catch (cause) {
    if (cause instanceof GuestAssetsError) throw cause;
    throw bad(dir, 'manifest.json cannot be read', cause);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw bad(dir, 'manifest.json is not valid JSON', cause);
  }
  if (!isRecord(value) || value['format'] !== MANIFEST_FORMAT) {
    throw bad(dir, `manifest.json has an unknown format (this vmpod reads format ${MANIFEST_FORMAT})`);
  }
  if (typeof value['id'] !== 'string' || !/^[0-9a-f]{32}$/u.test(value['id'])) throw bad(dir, 'manifest id is malformed');
  if (typeof value['kernelRelease'] !== 'string' || typeof value['initMarker'] !== 'string') {
    throw bad(dir, 'manifest lacks kernelRelease or initMarker');
  }
  if (value['kernelFormat'] !== 'vmlinux' && value['kernelFormat'] !== 'bzImage') throw bad(dir, 'manifest kernelFormat is malformed');
  const files = value['files'];
  if (!isRecord(files)) throw bad(dir, 'manifest lacks files');
  checkFile(dir, files['kernel'], 'kernel');
  checkFile(dir, files['initramfs'], 'initramfs');
  checkFile(dir, files['config'], 'config');
  const features = value['features'];
  if (features !== undefined && (!Array.isArray(features) || !features.every((f) => GUEST_FEATURES.includes(f as GuestFeature)))) {
    throw bad(dir, 'manifest features are malformed');
  }
  const request = value['request'];
  if (request !== undefined && !isRecord(request)) throw bad(dir, 'manifest request is malformed');
  return value as unknown as GuestManifest;
}

/** How thoroughly {@link verifyGuestAssets} checks the files. */
export type VerifyMode = 'full' | 'size';

/**
 * Files already hashed by this process, keyed by path and identity: a file with the same
 * inode, size, mtime and ctime has not changed (ctime cannot be set from user space).
 */
const verified = new Map<string, string>();

/**
 * Checks an asset directory before a boot: the manifest parses, and each file it lists exists,
 * is a regular file and has the recorded size and (mode `full`, the default) SHA-256. A file
 * hashed once by this process is not hashed again unless it changed.
 * Throws {@link GuestAssetsError} naming the first problem.
 */
export async function verifyGuestAssets(dir: string, mode: VerifyMode = 'full'): Promise<GuestManifest> {
  const manifest = await readManifest(dir);
  for (const file of Object.values(manifest.files)) {
    const full = path.join(dir, file.name);
    const st = await fs.lstat(full).catch((cause: unknown) => {
      throw bad(dir, `${file.name} is missing`, cause);
    });
    if (!st.isFile()) throw bad(dir, `${file.name} is not a regular file`);
    if (st.size !== file.size) throw bad(dir, `${file.name} has ${st.size} bytes, the manifest says ${file.size}`);
    if (mode === 'size') continue;
    const identity = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
    if (verified.get(full) === identity) continue;
    const got = await sha256File(full);
    if (got !== file.sha256) throw bad(dir, `${file.name} does not match its SHA-256 in the manifest`);
    verified.set(full, identity);
  }
  return manifest;
}

/** Options of {@link resolveGuestAssets}. */
export interface ResolveGuestAssetsOptions {
  /** The builder's cache directory (default {@link defaultGuestCacheDir}). */
  readonly cacheDir?: string;
  /** Boot this kernel (vmlinux or bzImage) instead of the built one. */
  readonly kernel?: string;
  /** Boot this initramfs instead of the built one (it must start an agent as the built one does). */
  readonly initramfs?: string;
  /** A block image (ext4, squashfs, erofs) to use as the builtin container rootfs. */
  readonly rootfsImage?: string;
  /** How the built assets are checked (default `full`). */
  readonly verify?: VerifyMode;
}

async function userFile(value: string, field: string, blockDeviceOk = false): Promise<string> {
  const file = validate.absolutePath(value, field);
  const st = await fs.stat(file).catch(() => undefined);
  if (st === undefined) throw new InvalidArgumentError(field, `${file} does not exist`);
  if (!st.isFile() && !(blockDeviceOk && st.isBlockDevice())) {
    throw new InvalidArgumentError(field, `${file} is not a regular file${blockDeviceOk ? ' or a block device' : ''}`);
  }
  return file;
}

/**
 * The assets a sandbox boots: the current build in the cache directory, checked against its
 * manifest, with any user override (kernel, initramfs, rootfs image) in place of a built file.
 * When both kernel and initramfs are overridden, no build is needed.
 */
export async function resolveGuestAssets(options: ResolveGuestAssetsOptions = {}): Promise<GuestAssets> {
  const kernel = options.kernel === undefined ? undefined : await userFile(options.kernel, 'kernel');
  const initramfs = options.initramfs === undefined ? undefined : await userFile(options.initramfs, 'initramfs');
  const rootfsImage = options.rootfsImage === undefined ? undefined : await userFile(options.rootfsImage, 'rootfsImage', true);
  if (kernel !== undefined && initramfs !== undefined) {
    return { dir: undefined, id: undefined, kernel, initramfs, rootfsImage, manifest: undefined };
  }
  const cacheDir = validate.absolutePath(options.cacheDir ?? defaultGuestCacheDir(), 'cacheDir');
  const current = path.join(cacheDir, 'current');
  const dir = await fs.realpath(current).catch(() => undefined);
  if (dir === undefined) {
    throw new GuestAssetsError(cacheDir, 'no guest assets have been built: run "vmpod guest build"');
  }
  const manifest = await verifyGuestAssets(dir, options.verify ?? 'full');
  return {
    dir,
    id: manifest.id,
    kernel: kernel ?? path.join(dir, manifest.files.kernel.name),
    initramfs: initramfs ?? path.join(dir, manifest.files.initramfs.name),
    rootfsImage,
    manifest,
  };
}
