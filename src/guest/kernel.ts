/**
 * The guest kernel: a Debian kernel package resolved with apt-cache, fetched with
 * `apt-get download` (never installed into the host's /boot), unpacked with `dpkg-deb -x`,
 * and the uncompressed ELF `vmlinux` extracted from its bzImage (LZ4 or XZ payload) for a fast
 * PVH boot.
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { GuestBuildError } from './errors.js';
import { run } from './exec.js';
import { CommandError } from './errors.js';
import { sha256File } from './hash.js';

/** The Debian metapackage vmpod boots by default: the small, fast-booting cloud kernel. */
export const DEFAULT_KERNEL_PACKAGE = 'linux-image-cloud-amd64';

/** A concrete kernel package, as apt knows it. */
export interface KernelPackage {
  /** e.g. `linux-image-6.1.0-56-cloud-amd64`. */
  readonly name: string;
  /** e.g. `6.1.192-2`. */
  readonly version: string;
  /** SHA-256 of the .deb, from apt's package lists (or of the local file). */
  readonly sha256: string;
}

const PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+$/u;

/** Parses the first stanza of `apt-cache show` output into its fields. */
function parseStanza(text: string): Map<string, string> {
  const fields = new Map<string, string>();
  let last = '';
  for (const line of text.split('\n')) {
    if (line === '') {
      if (fields.size > 0) break;
      continue;
    }
    if (line.startsWith(' ') && last) {
      fields.set(last, `${fields.get(last) ?? ''}\n${line.trim()}`);
      continue;
    }
    const colon = line.indexOf(':');
    if (colon > 0) {
      last = line.slice(0, colon);
      fields.set(last, line.slice(colon + 1).trim());
    }
  }
  return fields;
}

async function aptShow(name: string, signal: AbortSignal | undefined): Promise<Map<string, string> | undefined> {
  try {
    const fields = parseStanza(await run('apt-cache', ['show', '--no-all-versions', name], { signal }));
    return fields.has('Version') ? fields : undefined;
  } catch (cause) {
    if (cause instanceof CommandError) return undefined;
    throw cause;
  }
}

/** Options of {@link resolveKernelPackage}. */
export interface ResolveKernelOptions {
  /** Run `apt-get update` when apt does not know the package (default false: fail with the fix). */
  readonly updateAptLists?: boolean;
  readonly signal?: AbortSignal | undefined;
}

/**
 * Resolves a kernel (meta)package to the versioned package apt would install:
 * `linux-image-cloud-amd64` -> `linux-image-6.1.0-56-cloud-amd64` 6.1.192-2, with its SHA-256.
 * Equivalent of `apt-cache depends linux-image-cloud-amd64` then `apt-cache show`.
 */
export async function resolveKernelPackage(name: string, options: ResolveKernelOptions = {}): Promise<KernelPackage> {
  if (!PACKAGE_NAME.test(name)) {
    throw new GuestBuildError('resolve', `${JSON.stringify(name)} is not a Debian package name`);
  }
  let fields = await aptShow(name, options.signal);
  if (fields === undefined && options.updateAptLists === true) {
    await run('apt-get', ['update', '-qq'], { signal: options.signal, env: { ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' } });
    fields = await aptShow(name, options.signal);
  }
  if (fields === undefined) {
    throw new GuestBuildError(
      'resolve',
      `apt does not know the package ${name}: its package lists are missing or stale; run "apt-get update" (or build with updateAptLists: true / "vmpod guest build --apt-update")`,
    );
  }
  // A metapackage depends on exactly one versioned image package: follow it once.
  const image = (fields.get('Depends') ?? '')
    .split(',')
    .map((d) => d.trim().split(/[\s|(]/u)[0] ?? '')
    .find((d) => d.startsWith('linux-image-') && d !== name);
  if (image !== undefined) {
    const concrete = await aptShow(image, options.signal);
    if (concrete === undefined) {
      throw new GuestBuildError('resolve', `${name} depends on ${image}, which apt cannot show: run "apt-get update"`);
    }
    fields = concrete;
  }
  const pkg = fields.get('Package') ?? '';
  const version = fields.get('Version') ?? '';
  const sha256 = fields.get('SHA256') ?? '';
  if (!PACKAGE_NAME.test(pkg) || version === '' || !/^[0-9a-f]{64}$/u.test(sha256)) {
    throw new GuestBuildError('resolve', `apt-cache show ${image ?? name} gave no usable Package/Version/SHA256 fields`);
  }
  return { name: pkg, version, sha256 };
}

/**
 * Returns the path of the package's .deb in `debDir`, fetching it with `apt-get download`
 * unless a copy with the right SHA-256 is already there.
 */
export async function downloadKernelPackage(pkg: KernelPackage, debDir: string, signal?: AbortSignal): Promise<string> {
  await fs.mkdir(debDir, { recursive: true, mode: 0o755 });
  const file = path.join(debDir, `${pkg.name}_${pkg.version.replaceAll(':', '%3a')}_amd64.deb`);
  if ((await sha256File(file).catch(() => '')) === pkg.sha256) return file;
  const scratch = await fs.mkdtemp(path.join(debDir, '.download-'));
  try {
    // As root, apt's download sandbox user (_apt) may not be able to write here: stay root.
    await run('apt-get', ['download', '-q', '-o', 'APT::Sandbox::User=root', `${pkg.name}=${pkg.version}`], {
      cwd: scratch,
      signal,
    });
    const [deb] = (await fs.readdir(scratch)).filter((f) => f.endsWith('.deb'));
    if (deb === undefined) throw new GuestBuildError('download', `apt-get download ${pkg.name}=${pkg.version} produced no .deb`);
    const got = await sha256File(path.join(scratch, deb));
    if (got !== pkg.sha256) {
      throw new GuestBuildError('download', `${deb} has SHA-256 ${got}, apt's lists say ${pkg.sha256}`);
    }
    await fs.rename(path.join(scratch, deb), file);
    return file;
  } finally {
    await fs.rm(scratch, { recursive: true, force: true });
  }
}

/** What {@link unpackKernelPackage} found in a kernel package. */
export interface UnpackedKernel {
  /** `uname -r`, e.g. `6.1.0-56-cloud-amd64`. */
  readonly release: string;
  /** The bzImage (`boot/vmlinuz-RELEASE`). */
  readonly bzImage: string;
  /** The kernel's build configuration (`boot/config-RELEASE`). */
  readonly config: string;
  /** The unpack root: modules live in `lib/modules/RELEASE`. */
  readonly root: string;
}

/** Unpacks a kernel .deb into `dir` (`dpkg-deb -x`) and locates its image, config and modules. */
export async function unpackKernelPackage(deb: string, dir: string, signal?: AbortSignal): Promise<UnpackedKernel> {
  await run('dpkg-deb', ['-x', deb, dir], { signal });
  const releases = await fs.readdir(path.join(dir, 'lib', 'modules')).catch(() => [] as string[]);
  const [release] = releases;
  if (release === undefined || releases.length !== 1) {
    throw new GuestBuildError('unpack', `${path.basename(deb)} should hold exactly one lib/modules/RELEASE directory, found ${releases.length}`);
  }
  const bzImage = path.join(dir, 'boot', `vmlinuz-${release}`);
  const config = path.join(dir, 'boot', `config-${release}`);
  for (const f of [bzImage, config]) {
    if (!(await fs.stat(f).catch(() => undefined))?.isFile()) {
      throw new GuestBuildError('unpack', `${path.basename(deb)} has no ${path.relative(dir, f)}`);
    }
  }
  return { release, bzImage, config, root: dir };
}

/** Parses a kernel .config into `CONFIG_NAME -> value` (`y`, `m`, a number or a quoted string). */
export function parseKernelConfig(text: string): Map<string, string> {
  const config = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/u.exec(line);
    if (m?.[1] !== undefined && m[2] !== undefined) config.set(m[1], m[2]);
  }
  return config;
}

/** LZ4 legacy frame magic, as the kernel's `make` writes it (`lz4 -l`). */
const LZ4_LEGACY_MAGIC = Buffer.from([0x02, 0x21, 0x4c, 0x18]);

/** Where the compressed kernel sits inside a bzImage, from its x86 boot protocol header. */
export interface BzImagePayload {
  readonly offset: number;
  /** Length of the compressed data, without the 4-byte size trailer the kernel appends. */
  readonly length: number;
  /** Size of the decompressed vmlinux, from that trailer. */
  readonly decompressedSize: number;
  readonly compression: 'lz4' | 'gzip' | 'xz' | 'zstd' | 'unknown';
}

/**
 * Locates the payload of a bzImage (boot protocol >= 2.08: `payload_offset` at 0x248 and
 * `payload_length` at 0x24c, relative to the protected-mode code after the setup sectors).
 */
export function locateBzImagePayload(image: Buffer): BzImagePayload {
  if (image.length < 0x250 || image.toString('latin1', 0x202, 0x206) !== 'HdrS') {
    throw new GuestBuildError('kernel', 'not a bzImage (no "HdrS" boot header)');
  }
  if (image.readUInt16LE(0x206) < 0x208) throw new GuestBuildError('kernel', 'bzImage boot protocol is older than 2.08');
  const setupSectors = image[0x1f1] || 4;
  const offset = (setupSectors + 1) * 512 + image.readUInt32LE(0x248);
  const total = image.readUInt32LE(0x24c);
  if (total < 8 || offset + total > image.length) throw new GuestBuildError('kernel', 'bzImage payload lies outside the file');
  const head = image.subarray(offset, offset + 6);
  const compression = head.subarray(0, 4).equals(LZ4_LEGACY_MAGIC)
    ? 'lz4'
    : head[0] === 0x1f && head[1] === 0x8b
      ? 'gzip'
      : head.equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))
        ? 'xz'
        : head.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))
          ? 'zstd'
          : 'unknown';
  return { offset, length: total - 4, decompressedSize: image.readUInt32LE(offset + total - 4), compression };
}

/**
 * Extracts the uncompressed ELF vmlinux from an LZ4- or XZ-compressed bzImage (`lz4 -d`,
 * `xz -d`), which QEMU boots directly through its PVH entry point, skipping the in-guest
 * decompression. Returns false (and writes nothing) for another compression: boot the bzImage
 * then.
 */
export async function extractVmlinux(bzImage: string, out: string, scratchDir: string, signal?: AbortSignal): Promise<boolean> {
  const image = await fs.readFile(bzImage);
  const payload = locateBzImagePayload(image);
  if (payload.compression !== 'lz4' && payload.compression !== 'xz') return false;
  const compressed = path.join(scratchDir, `vmlinux.${payload.compression}`);
  await fs.writeFile(compressed, image.subarray(payload.offset, payload.offset + payload.length));
  try {
    if (payload.compression === 'lz4') {
      await run('lz4', ['-d', '-f', '-q', compressed, out], { signal });
    } else {
      // The kernel's xz stream (x86 BCJ + LZMA2, CRC32); `xz -d` checks it and drops the suffix.
      await run('xz', ['-d', '-f', '-q', '--single-stream', compressed], { signal });
      await fs.rename(compressed.slice(0, -'.xz'.length), out);
    }
  } finally {
    await fs.rm(compressed, { force: true });
  }
  const handle = await fs.open(out, 'r');
  try {
    const { size } = await handle.stat();
    const magic = Buffer.alloc(4);
    await handle.read(magic, 0, 4, 0);
    if (size !== payload.decompressedSize || !magic.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) {
      throw new GuestBuildError('kernel', `${payload.compression} gave ${size} bytes, not the ${payload.decompressedSize}-byte ELF the bzImage announces`);
    }
  } finally {
    await handle.close();
  }
  return true;
}
