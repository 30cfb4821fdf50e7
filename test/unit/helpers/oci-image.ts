/**
 * Builds OCI image layouts, OCI archives and Docker archives by hand for tests, with no tool
 * and no network: tars made with tar-stream, blobs written under their digests, index.json and
 * oci-layout written as the image spec says. Every builder returns the descriptors it wrote, so
 * a test can tamper with one blob, one index or one name and see what the reader makes of it.
 *
 *   const layout = await OciLayout.create(dir);
 *   const image = await layout.image({ layers: [{ entries: [{ name: 'etc/motd', content: 'hi' }] }] });
 *   await layout.writeIndex([{ ...image.manifest, ref: 'v1' }]);   // oci:DIR:v1
 *
 * `zstdFrame` writes zstd frames of raw (stored) blocks, since Node 20 has no zstd compressor:
 * real zstd framing, enough to drive any decoder.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { pack, type Header } from 'tar-stream';

/** One tar entry to write. */
export interface TarEntrySpec {
  name: string;
  type?: Header['type'];
  content?: string | Buffer;
  mode?: number;
  linkname?: string;
  uid?: number;
  gid?: number;
  mtime?: Date;
  /** Extra pax records (tar-stream writes a pax header when names are long, or given these). */
  pax?: Record<string, string>;
}

/** A tar of `entries`, in memory. */
export async function makeTar(entries: TarEntrySpec[]): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  const done = new Promise<Buffer>((resolve, reject) => {
    p.on('data', (c: unknown) => chunks.push(c as Buffer));
    p.on('end', () => resolve(Buffer.concat(chunks)));
    p.on('error', reject);
  });
  for (const e of entries) {
    const type = e.type ?? 'file';
    const content = e.content === undefined ? Buffer.alloc(0) : Buffer.from(e.content);
    const header: Partial<Header> & { name: string } = {
      name: e.name,
      type,
      mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: e.mtime ?? new Date(1_700_000_000_000),
    };
    if (e.linkname !== undefined) header.linkname = e.linkname;
    if (e.pax) header.pax = e.pax;
    await new Promise<void>((resolve, reject) => {
      if (type === 'file') p.entry({ ...header, size: content.length }, content, (err) => (err ? reject(err) : resolve()));
      else p.entry(header, (err) => (err ? reject(err) : resolve()));
    });
  }
  p.finalize();
  return done;
}

export function sha256(bytes: Buffer | string): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** A zstd frame holding `data` in raw blocks of `blockSize` bytes (at most 128 KiB). */
export function zstdFrame(data: Buffer, blockSize = 64 * 1024): Buffer {
  const parts: Buffer[] = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.from([0x00, 7 << 3])];
  let offset = 0;
  do {
    const size = Math.min(blockSize, data.length - offset);
    const last = offset + size >= data.length ? 1 : 0;
    const header = last | (0 << 1) | (size << 3);
    parts.push(Buffer.from([header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff]), data.subarray(offset, offset + size));
    offset += size;
  } while (offset < data.length);
  return Buffer.concat(parts);
}

/** A zstd frame of `blocks` RLE blocks, each `byte` repeated 128 KiB: 4 bytes of input per 128 KiB of output. */
export function zstdRleFrame(byte: number, blocks: number): Buffer {
  const parts: Buffer[] = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.from([0x00, 7 << 3])];
  for (let i = 0; i < blocks; i++) {
    const header = (i === blocks - 1 ? 1 : 0) | (1 << 1) | ((128 * 1024) << 3);
    parts.push(Buffer.from([header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff, byte]));
  }
  return Buffer.concat(parts);
}

export type Compression = 'none' | 'gzip' | 'zstd';

export function compress(tar: Buffer, compression: Compression): Buffer {
  if (compression === 'gzip') return zlib.gzipSync(tar);
  if (compression === 'zstd') return zstdFrame(tar);
  return tar;
}

/** A content descriptor as written into manifests and indexes. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os: string; architecture: string; variant?: string };
}

/** A layer to build: tar entries (or a ready tar) and how to compress it. */
export interface LayerSpec {
  entries?: TarEntrySpec[];
  tar?: Buffer;
  compression?: Compression;
  /** Override the media type written into the manifest. */
  mediaType?: string;
}

/** What {@link OciLayout.image} wrote. */
export interface BuiltImage {
  manifest: Descriptor;
  config: Descriptor;
  layers: Descriptor[];
  /** The uncompressed tars, in order. */
  tars: Buffer[];
  diffIds: string[];
  /** The config JSON object as written. */
  configJson: Record<string, unknown>;
}

export interface ImageSpec {
  layers?: LayerSpec[];
  /** The config's `config` object (User, Env, Entrypoint, Cmd, ...). */
  exec?: Record<string, unknown>;
  architecture?: string;
  os?: string;
  /** `docker` writes Docker schema 2 media types. */
  flavor?: 'oci' | 'docker';
  /** Replace or add fields of the config JSON before it is written. */
  configPatch?: Record<string, unknown>;
  /** Replace or add fields of the manifest JSON before it is written. */
  manifestPatch?: Record<string, unknown>;
}

const LAYER_TYPES: Record<'oci' | 'docker', Record<Compression, string>> = {
  oci: {
    none: 'application/vnd.oci.image.layer.v1.tar',
    gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
    zstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  },
  docker: {
    none: 'application/vnd.docker.image.rootfs.diff.tar',
    gzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
    zstd: 'application/vnd.docker.image.rootfs.diff.tar.zstd',
  },
};

/** An OCI image layout being written in a directory. */
export class OciLayout {
  private constructor(readonly dir: string) {}

  /** Makes `dir` (and `oci-layout`, `blobs/sha256/`). */
  static async create(dir: string): Promise<OciLayout> {
    await fs.mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
    await fs.writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    return new OciLayout(dir);
  }

  /** The file a digest names. */
  blobFile(digest: string): string {
    const [alg, hex] = digest.split(':') as [string, string];
    return path.join(this.dir, 'blobs', alg, hex);
  }

  /** Writes `bytes` as a blob; returns its descriptor. */
  async blob(bytes: Buffer | string, mediaType: string): Promise<Descriptor> {
    const data = Buffer.from(bytes);
    const digest = sha256(data);
    await fs.writeFile(this.blobFile(digest), data);
    return { mediaType, digest, size: data.length };
  }

  /** Writes a JSON blob. */
  async json(value: unknown, mediaType: string): Promise<Descriptor> {
    return this.blob(JSON.stringify(value), mediaType);
  }

  /** Writes an image's layers, config and manifest (not index.json). */
  async image(spec: ImageSpec = {}): Promise<BuiltImage> {
    const flavor = spec.flavor ?? 'oci';
    const tars: Buffer[] = [];
    const layers: Descriptor[] = [];
    for (const l of spec.layers ?? [{ entries: [{ name: 'hello', content: 'hello\n' }] }]) {
      const tar = l.tar ?? (await makeTar(l.entries ?? []));
      tars.push(tar);
      const compression = l.compression ?? 'gzip';
      layers.push(await this.blob(compress(tar, compression), l.mediaType ?? LAYER_TYPES[flavor][compression]));
    }
    const diffIds = tars.map((t) => sha256(t));
    const configJson: Record<string, unknown> = {
      architecture: spec.architecture ?? 'amd64',
      os: spec.os ?? 'linux',
      config: spec.exec ?? { Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: diffIds },
      ...spec.configPatch,
    };
    const config = await this.json(configJson, flavor === 'oci' ? 'application/vnd.oci.image.config.v1+json' : 'application/vnd.docker.container.image.v1+json');
    const manifestType = flavor === 'oci' ? 'application/vnd.oci.image.manifest.v1+json' : 'application/vnd.docker.distribution.manifest.v2+json';
    const manifest = await this.json({ schemaVersion: 2, mediaType: manifestType, config, layers, ...spec.manifestPatch }, manifestType);
    return { manifest, config, layers, tars, diffIds, configJson };
  }

  /** Writes an index blob listing `manifests`. */
  async index(manifests: Descriptor[], flavor: 'oci' | 'docker' = 'oci'): Promise<Descriptor> {
    const mediaType = flavor === 'oci' ? 'application/vnd.oci.image.index.v1+json' : 'application/vnd.docker.distribution.manifest.list.v2+json';
    return this.json({ schemaVersion: 2, mediaType, manifests }, mediaType);
  }

  /** Writes index.json; an entry's `ref` becomes its org.opencontainers.image.ref.name. */
  async writeIndex(entries: (Descriptor & { ref?: string })[]): Promise<void> {
    const manifests = entries.map(({ ref, ...d }) => (ref === undefined ? d : { ...d, annotations: { ...d.annotations, 'org.opencontainers.image.ref.name': ref } }));
    await fs.writeFile(path.join(this.dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }));
  }
}

/** Every file under `dir` as tar entries (directories first), names relative to it. */
async function treeEntries(dir: string, prefix = ''): Promise<TarEntrySpec[]> {
  const out: TarEntrySpec[] = [];
  for (const name of (await fs.readdir(path.join(dir, prefix))).sort()) {
    const rel = prefix === '' ? name : `${prefix}/${name}`;
    const stat = await fs.lstat(path.join(dir, rel));
    if (stat.isDirectory()) out.push({ name: `${rel}/`, type: 'directory' }, ...(await treeEntries(dir, rel)));
    else out.push({ name: rel, content: await fs.readFile(path.join(dir, rel)) });
  }
  return out;
}

/** Writes an OCI archive (a tar of the layout at `layoutDir`) to `file`; `prefix` such as `./` is put before each name. */
export async function writeOciArchive(layoutDir: string, file: string, prefix = ''): Promise<void> {
  const entries = (await treeEntries(layoutDir)).map((e) => ({ ...e, name: `${prefix}${e.name}` }));
  await fs.writeFile(file, await makeTar(entries));
}

/** One image of a Docker archive. */
export interface DockerArchiveImage {
  repoTags?: string[];
  layers: LayerSpec[];
  exec?: Record<string, unknown>;
  configPatch?: Record<string, unknown>;
}

/** What {@link writeDockerArchive} wrote, per image. */
export interface BuiltDockerImage {
  configDigest: string;
  diffIds: string[];
  /** The archive entry of each layer. */
  layerNames: string[];
  configName: string;
}

/**
 * Writes a `docker save` archive: `legacy` puts each layer at `<id>/layer.tar` and the config at
 * `<hex>.json` (Docker before 25); `blobs` puts both under `blobs/sha256/` and makes `<id>/layer.tar`
 * symlinks to them (Docker 25 and later).
 */
export async function writeDockerArchive(file: string, images: DockerArchiveImage[], format: 'legacy' | 'blobs' = 'legacy', extra: TarEntrySpec[] = []): Promise<BuiltDockerImage[]> {
  const entries: TarEntrySpec[] = [];
  const written = new Set<string>();
  const manifest: Record<string, unknown>[] = [];
  const built: BuiltDockerImage[] = [];
  for (const image of images) {
    const layerNames: string[] = [];
    const diffIds: string[] = [];
    for (const l of image.layers) {
      const tar = l.tar ?? (await makeTar(l.entries ?? []));
      diffIds.push(sha256(tar));
      const blob = compress(tar, l.compression ?? 'none');
      const hex = sha256(blob).slice(7);
      const name = format === 'legacy' ? `${hex}/layer.tar` : `blobs/sha256/${hex}`;
      if (!written.has(name)) {
        if (format === 'legacy') entries.push({ name: `${hex}/`, type: 'directory' }, { name, content: blob });
        else entries.push({ name, content: blob }, { name: `${hex}/`, type: 'directory' }, { name: `${hex}/layer.tar`, type: 'symlink', linkname: `../blobs/sha256/${hex}` });
        written.add(name);
      }
      layerNames.push(name);
    }
    const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: image.exec ?? { Cmd: ['/bin/sh'] }, rootfs: { type: 'layers', diff_ids: diffIds }, ...image.configPatch });
    const configDigest = sha256(config);
    const configName = format === 'legacy' ? `${configDigest.slice(7)}.json` : `blobs/sha256/${configDigest.slice(7)}`;
    if (!written.has(configName)) {
      entries.push({ name: configName, content: config });
      written.add(configName);
    }
    manifest.push({ Config: configName, RepoTags: image.repoTags ?? null, Layers: layerNames });
    built.push({ configDigest, diffIds, layerNames, configName });
  }
  if (format === 'blobs') entries.unshift({ name: 'blobs/', type: 'directory' }, { name: 'blobs/sha256/', type: 'directory' });
  entries.push({ name: 'manifest.json', content: JSON.stringify(manifest) }, ...extra);
  await fs.writeFile(file, await makeTar(entries));
  return built;
}
