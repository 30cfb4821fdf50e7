/**
 * `buildGuestAssets()`: builds everything a sandbox boots into the cache directory, the library
 * side of `vmpod guest build`.
 *
 * The output is content-addressed: the id hashes every input (kernel package and its SHA-256,
 * busybox, the agent binary, the module list, the /init template, the rootfs files, the builder
 * version), so a build whose inputs did not change is skipped. A build happens in a scratch
 * directory and is renamed into place, then `current` is switched with a rename: a reader sees
 * the old assets or the new ones, never a half-written mix.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { AbortError, InvalidArgumentError } from '../errors.js';
import { packageRoot } from '../native.js';
import * as validate from '../validate.js';
import {
  defaultGuestCacheDir,
  MANIFEST_FORMAT,
  verifyGuestAssets,
  type AssetFile,
  type GuestAssets,
  type GuestBuildRequest,
  type GuestManifest,
} from './assets.js';
import { writeCpio, type CpioEntry } from './cpio.js';
import { GuestBuildError, type GuestBuildStep } from './errors.js';
import { run } from './exec.js';
import { sha256File } from './hash.js';
import { GUEST_AGENT_PATH, INIT_MARKER, renderInit } from './init.js';
import {
  DEFAULT_KERNEL_PACKAGE,
  downloadKernelPackage,
  extractVmlinux,
  parseKernelConfig,
  resolveKernelPackage,
  unpackKernelPackage,
  type KernelPackage,
} from './kernel.js';
import { featureModules, GUEST_FEATURES, guestFeatures, type GuestFeature } from './features.js';
import { DEFAULT_GUEST_MODULES, parseModuleIndex, resolveModules } from './modules.js';
import { ETC_FILES, builtinRootfsEntries, guestRootEntries } from './rootfs.js';

/**
 * The guest agent built assets carry by default: `build/Release/vmpod-agent` of this package, or
 * `$VMPOD_AGENT` (another build of it, e.g. the coverage one: docs/testing.md, "Coverage").
 */
export const DEFAULT_AGENT_BINARY = process.env['VMPOD_AGENT'] ?? path.join(packageRoot, 'build', 'Release', 'vmpod-agent');

/** Bumped whenever the builder's output changes for the same inputs (2: XZ kernels as vmlinux, `features`). */
export const BUILDER_VERSION = 2;

/** The kernel options a vmpod guest cannot do without (`=y`). */
export const REQUIRED_KERNEL_CONFIG: readonly string[] = [
  'CONFIG_BLK_DEV_INITRD',
  'CONFIG_DEVTMPFS',
  'CONFIG_TMPFS',
  'CONFIG_PROC_FS',
  'CONFIG_SYSFS',
  'CONFIG_UNIX',
  'CONFIG_CGROUPS',
  'CONFIG_NAMESPACES',
  'CONFIG_HUGETLBFS',
];

/** One progress report of {@link buildGuestAssets}. */
export interface GuestBuildProgress {
  readonly step: GuestBuildStep;
  /** A line for a human, e.g. `downloading linux-image-6.1.0-56-cloud-amd64 6.1.192-2`. */
  readonly message: string;
}

/** Options of {@link buildGuestAssets}. */
export interface BuildGuestAssetsOptions {
  /** Cache directory (default {@link defaultGuestCacheDir}: `$VMPOD_GUEST_CACHE`, else /var/cache/vmpod/guest). */
  readonly cacheDir?: string;
  /** The guest agent, a static binary (default {@link DEFAULT_AGENT_BINARY}). */
  readonly agent?: string;
  /** A statically linked busybox (default `/bin/busybox` from Debian's busybox-static). */
  readonly busybox?: string;
  /** The Debian kernel (meta)package to fetch (default `linux-image-cloud-amd64`). */
  readonly kernelPackage?: string;
  /** A local kernel .deb to use instead of `apt-get download`. */
  readonly kernelDeb?: string;
  /** Modules to load in the guest, in order (default {@link DEFAULT_GUEST_MODULES}). */
  readonly modules?: readonly string[];
  /** Modules to load after `modules`. */
  readonly extraModules?: readonly string[];
  /**
   * Features the guest must have (`'9p'`): the build loads the modules each needs (after
   * `extraModules`) or fails naming the kernel options it lacks. The manifest's `features`
   * lists what the build provides, asked or not.
   */
  readonly features?: readonly GuestFeature[];
  /** Run `apt-get update` when apt does not know the kernel package (default false). */
  readonly updateAptLists?: boolean;
  /** Build even when assets with the same inputs exist. */
  readonly force?: boolean;
  /** Called at each step, for a progress display. */
  readonly onProgress?: (progress: GuestBuildProgress) => void;
  readonly signal?: AbortSignal;
}

/** The outcome of {@link buildGuestAssets}. */
export interface GuestBuildResult {
  readonly assets: GuestAssets;
  /** False when assets with the same inputs already existed and the build was skipped. */
  readonly built: boolean;
}

/** Host tools the builder runs, and the Debian package of each. */
const TOOLS: Readonly<Record<string, string>> = {
  'apt-cache': 'apt',
  'apt-get': 'apt',
  'dpkg-deb': 'dpkg',
  lz4: 'lz4',
  xz: 'xz-utils',
  depmod: 'kmod',
};

async function findTool(name: string): Promise<boolean> {
  const dirs = (process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').concat(['/usr/sbin', '/sbin']);
  for (const dir of dirs) {
    if (dir && (await fs.access(path.join(dir, name), fsConstants.X_OK).then(() => true, () => false))) return true;
  }
  return false;
}

async function requireTools(names: readonly string[]): Promise<void> {
  const missing: string[] = [];
  for (const name of names) if (!(await findTool(name))) missing.push(`${name} (package ${TOOLS[name] ?? name})`);
  if (missing.length > 0) {
    throw new GuestBuildError('resolve', `missing host tools: ${missing.join(', ')}; run scripts/setup-host.sh`);
  }
}

/**
 * Checks that `file` can run in the guest, where there is no dynamic loader: a static x86-64
 * ELF (no PT_INTERP program header), or a `#!/bin/sh` script.
 */
export async function checkGuestExecutable(file: string, what: string, fix: string): Promise<void> {
  const st = await fs.stat(file).catch(() => undefined);
  if (st === undefined) throw new GuestBuildError('resolve', `${what} not found at ${file}: ${fix}`);
  if (!st.isFile() || (st.mode & 0o111) === 0) throw new GuestBuildError('resolve', `${what} at ${file} is not an executable file`);
  const handle = await fs.open(file, 'r');
  try {
    const head = Buffer.alloc(64);
    await handle.read(head, 0, 64, 0);
    if (head.toString('latin1', 0, 9) === '#!/bin/sh') return;
    if (head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || head.readUInt16LE(18) !== 62) {
      throw new GuestBuildError('resolve', `${what} at ${file} is neither an x86-64 ELF binary nor a #!/bin/sh script`);
    }
    const phoff = Number(head.readBigUInt64LE(32));
    const phentsize = head.readUInt16LE(54);
    const phnum = head.readUInt16LE(56);
    const table = Buffer.alloc(phentsize * phnum);
    await handle.read(table, 0, table.length, phoff);
    for (let i = 0; i < phnum; i++) {
      if (table.readUInt32LE(i * phentsize) === 3 /* PT_INTERP */) {
        throw new GuestBuildError('resolve', `${what} at ${file} is dynamically linked; the guest has no libc: link it statically`);
      }
    }
  } finally {
    await handle.close();
  }
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortError('guest build', { cause: signal.reason });
}

async function fileRecord(dir: string, name: string): Promise<AssetFile> {
  const full = path.join(dir, name);
  const handle = await fs.open(full, 'r');
  try {
    await handle.sync();
    return { name, size: (await handle.stat()).size, sha256: await sha256File(full) };
  } finally {
    await handle.close();
  }
}

/** Points `cacheDir/current` at `assets/<id>` with an atomic rename of a fresh symlink. */
async function setCurrent(cacheDir: string, id: string): Promise<void> {
  const temp = path.join(cacheDir, `.current-${process.pid}-${Date.now()}`);
  await fs.symlink(path.join('assets', id), temp);
  await fs.rename(temp, path.join(cacheDir, 'current'));
}

function assetsFrom(dir: string, manifest: GuestManifest): GuestAssets {
  return {
    dir,
    id: manifest.id,
    kernel: path.join(dir, manifest.files.kernel.name),
    initramfs: path.join(dir, manifest.files.initramfs.name),
    rootfsImage: undefined,
    manifest,
  };
}

/** Files the depmod run on the module subset needs besides the modules themselves. */
const MODULE_INDEX_INPUTS = ['modules.order', 'modules.builtin', 'modules.builtin.modinfo'];

/**
 * Copies the resolved modules into `LIB/modules/RELEASE` of a fresh tree and runs
 * `depmod -b TREE RELEASE` there, so `modprobe` works in the guest too.
 */
async function moduleTree(
  unpackedRoot: string,
  treeRoot: string,
  release: string,
  load: readonly string[],
  signal: AbortSignal | undefined,
): Promise<CpioEntry[]> {
  const from = path.join(unpackedRoot, 'lib', 'modules', release);
  const to = path.join(treeRoot, 'lib', 'modules', release);
  for (const modulePath of load) {
    await fs.mkdir(path.dirname(path.join(to, modulePath)), { recursive: true });
    await fs.copyFile(path.join(from, modulePath), path.join(to, modulePath));
  }
  const included = new Set(load);
  for (const name of MODULE_INDEX_INPUTS) {
    let text = await fs.readFile(path.join(from, name), 'utf8').catch(() => '');
    if (name === 'modules.order') text = text.split('\n').filter((l) => included.has(l.trim())).join('\n') + '\n';
    await fs.writeFile(path.join(to, name), text);
  }
  await run('depmod', ['-b', treeRoot, release], { signal });
  const entries: CpioEntry[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      const rel = path.relative(treeRoot, full);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile()) entries.push({ type: 'file', path: rel, mode: 0o644, source: full });
    }
  };
  await walk(to);
  return entries;
}

/** What the caller asked for, as the manifest keeps it (see {@link rebuildOptions}). */
function buildRequest(options: BuildGuestAssetsOptions): GuestBuildRequest {
  return {
    ...(options.kernelPackage === undefined ? {} : { kernelPackage: options.kernelPackage }),
    ...(options.kernelDeb === undefined ? {} : { kernelDeb: options.kernelDeb }),
    ...(options.modules === undefined ? {} : { modules: [...options.modules] }),
    ...(options.extraModules === undefined ? {} : { extraModules: [...options.extraModules] }),
    ...(options.features === undefined ? {} : { features: [...options.features] }),
  };
}

/**
 * The options that build assets like those of `manifest` again, e.g. when the agent changed:
 * the same kernel package (or local .deb), modules and features as were asked for, with
 * today's defaults for what was not. Builds older than the `request` field get the defaults.
 */
export function rebuildOptions(manifest: GuestManifest): BuildGuestAssetsOptions {
  const r = manifest.request;
  if (r === undefined) return {};
  return {
    ...(r.kernelPackage === undefined ? {} : { kernelPackage: r.kernelPackage }),
    ...(r.kernelDeb === undefined ? {} : { kernelDeb: r.kernelDeb }),
    ...(r.modules === undefined ? {} : { modules: r.modules }),
    ...(r.extraModules === undefined ? {} : { extraModules: r.extraModules }),
    ...(r.features === undefined ? {} : { features: r.features }),
  };
}

/**
 * Builds the guest assets (kernel, initramfs) into the cache directory, or returns the existing
 * ones when nothing changed. Equivalent, by hand, of:
 * ```
 * apt-get download linux-image-6.1.0-NN-cloud-amd64 && dpkg-deb -x *.deb pkg
 * lz4 -d <payload of pkg/boot/vmlinuz-*> vmlinux        # xz -d for an XZ payload
 * depmod -b pkg RELEASE    # then copy the needed modules, their dependencies, and depmod again
 * find . | sort | cpio -o -H newc --reproducible > initramfs.cpio
 * ```
 * Throws {@link GuestBuildError} naming the failed step and the fix.
 */
export async function buildGuestAssets(options: BuildGuestAssetsOptions = {}): Promise<GuestBuildResult> {
  let current: GuestBuildStep = 'resolve';
  const progress = (step: GuestBuildStep, message: string): void => {
    checkAborted(options.signal);
    current = step;
    options.onProgress?.({ step, message });
  };
  try {
    return await build(options, progress);
  } catch (cause) {
    if (cause instanceof GuestBuildError || cause instanceof AbortError || cause instanceof InvalidArgumentError) throw cause;
    throw new GuestBuildError(current, cause instanceof Error ? cause.message : String(cause), { cause });
  }
}

async function build(options: BuildGuestAssetsOptions, progress: (step: GuestBuildStep, message: string) => void): Promise<GuestBuildResult> {
  const { signal } = options;
  const cacheDir = validate.absolutePath(options.cacheDir ?? defaultGuestCacheDir(), 'cacheDir');
  const agent = validate.absolutePath(options.agent ?? DEFAULT_AGENT_BINARY, 'agent');
  const busybox = validate.absolutePath(options.busybox ?? '/bin/busybox', 'busybox');
  const kernelDeb = options.kernelDeb === undefined ? undefined : validate.absolutePath(options.kernelDeb, 'kernelDeb');
  const requested = [...(options.modules ?? DEFAULT_GUEST_MODULES), ...(options.extraModules ?? [])];
  for (const [i, name] of requested.entries()) {
    if (!/^[A-Za-z0-9_-]{1,64}$/u.test(name)) throw new InvalidArgumentError(`modules[${i}]`, `${JSON.stringify(name)} is not a module name`);
  }
  const features = [...new Set(options.features ?? [])].sort();
  for (const [i, feature] of features.entries()) {
    if (!GUEST_FEATURES.includes(feature)) throw new InvalidArgumentError(`features[${i}]`, `must be one of ${GUEST_FEATURES.join(', ')}`);
  }

  progress('resolve', 'checking inputs');
  await requireTools(kernelDeb === undefined ? ['apt-cache', 'apt-get', 'dpkg-deb', 'lz4', 'xz', 'depmod'] : ['dpkg-deb', 'lz4', 'xz', 'depmod']);
  await checkGuestExecutable(agent, 'the guest agent', 'build it with "npm run build:native" (it writes build/Release/vmpod-agent)');
  await checkGuestExecutable(busybox, 'busybox', 'install the Debian package busybox-static');
  let pkg: KernelPackage;
  if (kernelDeb === undefined) {
    pkg = await resolveKernelPackage(options.kernelPackage ?? DEFAULT_KERNEL_PACKAGE, {
      updateAptLists: options.updateAptLists ?? false,
      signal,
    });
  } else {
    const fields = (await run('dpkg-deb', ['-f', kernelDeb, 'Package', 'Version'], { signal })).split('\n');
    const field = (key: string): string => fields.find((l) => l.startsWith(`${key}: `))?.slice(key.length + 2).trim() ?? '';
    pkg = { name: field('Package'), version: field('Version'), sha256: await sha256File(kernelDeb) };
  }
  const [busyboxSha256, agentSha256] = [await sha256File(busybox), await sha256File(agent)];
  const recipe = {
    builderVersion: BUILDER_VERSION,
    kernelPackage: pkg,
    busyboxSha256,
    agentSha256,
    modules: requested,
    ...(features.length > 0 ? { features } : {}),
    // The templates themselves, so that editing them changes the id even without a version bump.
    init: renderInit({ kernelRelease: 'RELEASE', modules: ['MODULE'] }),
    etc: ETC_FILES,
  };
  const id = createHash('sha256').update(JSON.stringify(recipe)).digest('hex').slice(0, 32);
  const assetsDir = path.join(cacheDir, 'assets');
  const finalDir = path.join(assetsDir, id);

  if (options.force !== true) {
    const existing = await verifyGuestAssets(finalDir, 'full').catch(() => undefined);
    if (existing !== undefined) {
      await setCurrent(cacheDir, id);
      progress('done', `guest assets ${id} are up to date`);
      return { assets: assetsFrom(finalDir, existing), built: false };
    }
  }

  await fs.mkdir(path.join(cacheDir, 'tmp'), { recursive: true, mode: 0o755 });
  await fs.mkdir(assetsDir, { recursive: true, mode: 0o755 });
  const scratch = await fs.mkdtemp(path.join(cacheDir, 'tmp', 'build-'));
  try {
    let deb = kernelDeb;
    if (deb === undefined) {
      progress('download', `fetching ${pkg.name} ${pkg.version}`);
      deb = await downloadKernelPackage(pkg, path.join(cacheDir, 'debs'), signal);
    }
    progress('unpack', `unpacking ${path.basename(deb)}`);
    const unpacked = await unpackKernelPackage(deb, path.join(scratch, 'pkg'), signal);
    const config = parseKernelConfig(await fs.readFile(unpacked.config, 'utf8'));
    const missing = REQUIRED_KERNEL_CONFIG.filter((name) => config.get(name) !== 'y');
    if (missing.length > 0) {
      throw new GuestBuildError('unpack', `kernel ${unpacked.release} lacks ${missing.join(', ')} (built in, =y): use another kernel package`);
    }

    const out = path.join(scratch, 'out');
    await fs.mkdir(out, { mode: 0o755 });
    progress('kernel', `extracting vmlinux from vmlinuz-${unpacked.release}`);
    let kernelName = 'vmlinux';
    if (config.get('CONFIG_PVH') !== 'y' || !(await extractVmlinux(unpacked.bzImage, path.join(out, kernelName), scratch, signal))) {
      // Neither an LZ4 nor an XZ payload, or no PVH entry point: boot the bzImage as shipped (slower to start).
      kernelName = 'bzImage';
      await fs.copyFile(unpacked.bzImage, path.join(out, kernelName));
    }
    await fs.copyFile(unpacked.config, path.join(out, 'config'));

    const wanted = [...requested];
    for (const feature of features) {
      for (const name of featureModules(feature, config, unpacked.release)) if (!wanted.includes(name)) wanted.push(name);
    }
    progress('modules', `resolving ${wanted.length} modules with depmod`);
    await run('depmod', ['-b', unpacked.root, unpacked.release], { signal });
    const modulesDir = path.join(unpacked.root, 'lib', 'modules', unpacked.release);
    const index = parseModuleIndex(
      await fs.readFile(path.join(modulesDir, 'modules.dep'), 'utf8'),
      await fs.readFile(path.join(modulesDir, 'modules.builtin'), 'utf8').catch(() => ''),
    );
    const modules = resolveModules(index, wanted, unpacked.release);
    const moduleEntries = await moduleTree(unpacked.root, path.join(scratch, 'modules'), unpacked.release, modules.load, signal);

    progress('initramfs', `writing initramfs.cpio (${modules.load.length} modules)`);
    const applets = (await run(busybox, ['--list-full'], { signal })).split('\n').filter(Boolean);
    const entries: CpioEntry[] = [
      ...guestRootEntries(busybox, applets),
      ...builtinRootfsEntries(busybox, applets),
      ...moduleEntries,
      { type: 'file', path: GUEST_AGENT_PATH.slice(1), mode: 0o755, source: agent },
      { type: 'file', path: 'init', mode: 0o755, data: Buffer.from(renderInit({ kernelRelease: unpacked.release, modules: modules.load })) },
    ];
    await writeCpio(path.join(out, 'initramfs.cpio'), entries);

    progress('install', `installing guest assets ${id}`);
    const manifest: GuestManifest = {
      format: MANIFEST_FORMAT,
      id,
      builderVersion: BUILDER_VERSION,
      kernelRelease: unpacked.release,
      kernelFormat: kernelName === 'vmlinux' ? 'vmlinux' : 'bzImage',
      inputs: { kernelPackage: { ...pkg }, busyboxSha256, agentSha256, modules: requested, ...(features.length > 0 ? { features } : {}) },
      request: buildRequest(options),
      modules: { load: modules.load, builtin: modules.builtin },
      features: guestFeatures(config, modules.load),
      initMarker: INIT_MARKER,
      files: {
        kernel: await fileRecord(out, kernelName),
        initramfs: await fileRecord(out, 'initramfs.cpio'),
        config: await fileRecord(out, 'config'),
      },
    };
    const manifestText = `${JSON.stringify(manifest, null, 2)}\n`;
    await fs.writeFile(path.join(out, 'manifest.json'), manifestText, { mode: 0o644, flush: true });
    checkAborted(signal);

    await fs.rm(finalDir, { recursive: true, force: true }); // a damaged earlier copy (it failed the check)
    try {
      await fs.rename(out, finalDir);
    } catch (cause) {
      // Another build of the same inputs finished first: keep its (identical) output.
      if ((cause as NodeJS.ErrnoException).code !== 'ENOTEMPTY' && (cause as NodeJS.ErrnoException).code !== 'EEXIST') throw cause;
    }
    const installed = await verifyGuestAssets(finalDir, 'size');
    const previous = await fs.readlink(path.join(cacheDir, 'current')).catch(() => '');
    await setCurrent(cacheDir, id);
    // Keep the new build and the one it replaces (a sandbox may be starting from it); drop older ones.
    for (const name of await fs.readdir(assetsDir)) {
      if (name !== id && path.join('assets', name) !== previous) await fs.rm(path.join(assetsDir, name), { recursive: true, force: true });
    }
    progress('done', `built guest assets ${id} (kernel ${unpacked.release}, ${modules.load.length} modules)`);
    return { assets: assetsFrom(finalDir, installed), built: true };
  } finally {
    await fs.rm(scratch, { recursive: true, force: true });
  }
}
