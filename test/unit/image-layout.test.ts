import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import type { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AbortError } from '../../src/errors.js';
import { DigestMismatchError, ImageNotFoundError, InvalidImageError } from '../../src/image/errors.js';
import { openImageSource } from '../../src/image/open.js';
import { makeTar, OciLayout, sha256, zstdRleFrame, type Descriptor } from './helpers/oci-image.js';

let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-h1-layout-'));
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/** Reads a stream to its end; rejects with its error. */
async function drain(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const layoutDir = (): string => path.join(dir, 'layout');

describe('OCI layout: picking the manifest', () => {
  it('opens the only image without a ref: digests, config, layers of each compression, their tars', async () => {
    const layout = await OciLayout.create(layoutDir());
    const image = await layout.image({
      layers: [
        { entries: [{ name: 'bin/', type: 'directory' }, { name: 'bin/a', content: 'A' }], compression: 'gzip' },
        { entries: [{ name: 'etc/motd', content: 'hello' }], compression: 'none' },
        { entries: [{ name: 'etc/zstd', content: 'z'.repeat(200_000) }], compression: 'zstd' },
      ],
      exec: { Entrypoint: ['/bin/a'], Cmd: ['x'], Env: ['A=1'], User: 'nobody', Labels: { l: 'v' }, ExposedPorts: { '80/tcp': {} } },
    });
    await layout.writeIndex([image.manifest]);
    await using source = await openImageSource(`oci:${layoutDir()}`);
    expect(source.manifestDigest).toBe(image.manifest.digest);
    expect(source.manifestMediaType).toBe('application/vnd.oci.image.manifest.v1+json');
    expect(source.configDigest).toBe(image.config.digest);
    expect(source.config.architecture).toBe('amd64');
    expect(source.config.config).toEqual({ Entrypoint: ['/bin/a'], Cmd: ['x'], Env: ['A=1'], User: 'nobody', Labels: { l: 'v' }, ExposedPorts: { '80/tcp': {} } });
    expect(source.layers.map((l) => [l.compression, l.digest, l.size, l.diffId])).toEqual([
      ['gzip', image.layers[0]!.digest, image.layers[0]!.size, image.diffIds[0]],
      ['none', image.layers[1]!.digest, image.layers[1]!.size, image.diffIds[1]],
      ['zstd', image.layers[2]!.digest, image.layers[2]!.size, image.diffIds[2]],
    ]);
    for (const layer of source.layers) expect((await drain(source.openLayer(layer.index))).equals(image.tars[layer.index]!)).toBe(true);
  });

  it('picks by ref name, and names the refs it has when the ref is missing', async () => {
    const layout = await OciLayout.create(layoutDir());
    const one = await layout.image({ exec: { Cmd: ['one'] } });
    const two = await layout.image({ exec: { Cmd: ['two'] } });
    await layout.writeIndex([{ ...one.manifest, ref: 'v1' }, { ...two.manifest, ref: 'v2' }]);
    await using source = await openImageSource(`oci:${layoutDir()}:v2`);
    expect(source.manifestDigest).toBe(two.manifest.digest);
    expect(source.config.config.Cmd).toEqual(['two']);
    const missing = openImageSource(`oci:${layoutDir()}:v3`);
    await expect(missing).rejects.toBeInstanceOf(ImageNotFoundError);
    await expect(missing).rejects.toThrow(/no manifest is named "v3".*"v1", "v2"/u);
  });

  it('refuses two manifests and no ref (ambiguous), and an empty layout, and a missing directory', async () => {
    const layout = await OciLayout.create(layoutDir());
    const one = await layout.image({ exec: { Cmd: ['one'] } });
    const two = await layout.image({ exec: { Cmd: ['two'] } });
    await layout.writeIndex([{ ...one.manifest, ref: 'v1' }, two.manifest]);
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toThrow(/holds 2 manifests: name one/u);
    await layout.writeIndex([]);
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toBeInstanceOf(ImageNotFoundError);
    await expect(openImageSource(`oci:${path.join(dir, 'nothing')}`)).rejects.toBeInstanceOf(ImageNotFoundError);
    await fs.rm(path.join(layoutDir(), 'oci-layout'));
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toThrow(/not an OCI image layout/u);
  });

  it('goes through nested indexes to linux/amd64, in OCI and Docker media types', async () => {
    const layout = await OciLayout.create(layoutDir());
    const arm = await layout.image({ architecture: 'arm64', exec: { Cmd: ['arm'] } });
    const amd = await layout.image({ flavor: 'docker', exec: { Cmd: ['amd'] } });
    const attestation = await layout.image({ architecture: 'unknown', os: 'unknown' });
    const list = await layout.index(
      [
        { ...arm.manifest, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
        { ...attestation.manifest, platform: { os: 'unknown', architecture: 'unknown' } },
        { ...amd.manifest, platform: { os: 'linux', architecture: 'amd64' } },
      ],
      'docker',
    );
    const outer = await layout.index([list]);
    await layout.writeIndex([{ ...outer, ref: 'multi' }]);
    await using source = await openImageSource(`oci:${layoutDir()}:multi`);
    expect(source.manifestDigest).toBe(amd.manifest.digest);
    expect(source.manifestMediaType).toBe('application/vnd.docker.distribution.manifest.v2+json');
    expect(source.layers[0]!.mediaType).toBe('application/vnd.docker.image.rootfs.diff.tar.gzip');
    expect(source.config.config.Cmd).toEqual(['amd']);
    expect((await drain(source.openLayer(0))).equals(amd.tars[0]!)).toBe(true);

    await layout.writeIndex([{ ...arm.manifest, ref: 'arm-alone' }]);
    await expect(openImageSource(`oci:${layoutDir()}:arm-alone`)).rejects.toThrow(/the image is "linux"\/"arm64"; vmpod runs linux\/amd64 images/u);
    const armOnly = await layout.index([{ ...arm.manifest, platform: { os: 'linux', architecture: 'arm64' } }]);
    await layout.writeIndex([{ ...armOnly, ref: 'arm' }]);
    await expect(openImageSource(`oci:${layoutDir()}:arm`)).rejects.toThrow(/no linux\/amd64 manifest \(it has: linux\/arm64\)/u);
  });

  it('refuses indexes nested deeper than 8', async () => {
    const layout = await OciLayout.create(layoutDir());
    const image = await layout.image();
    let descriptor: Descriptor = image.manifest;
    for (let i = 0; i < 8; i++) descriptor = await layout.index([descriptor]);
    await layout.writeIndex([{ ...descriptor, ref: 'deep8' }]);
    await using source = await openImageSource(`oci:${layoutDir()}:deep8`);
    expect(source.manifestDigest).toBe(image.manifest.digest);
    descriptor = await layout.index([descriptor]);
    await layout.writeIndex([{ ...descriptor, ref: 'deep9' }]);
    await expect(openImageSource(`oci:${layoutDir()}:deep9`)).rejects.toThrow(/indexes nest deeper than 8/u);
  });
});

describe('OCI layout: hostile and broken layouts', () => {
  it('an index that lists itself (a loop) is refused by its digest: the loop cannot be read', async () => {
    const layout = await OciLayout.create(layoutDir());
    const image = await layout.image();
    const index = await layout.index([image.manifest]);
    // The file named by the index's digest now lists that digest again.
    const looping = JSON.stringify({ schemaVersion: 2, mediaType: index.mediaType, manifests: [index] });
    await fs.writeFile(layout.blobFile(index.digest), looping);
    await layout.writeIndex([{ ...index, size: Buffer.byteLength(looping), ref: 'loop' }]);
    const error = await openImageSource(`oci:${layoutDir()}:loop`).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DigestMismatchError);
    expect((error as DigestMismatchError).expected).toBe(index.digest);
  });

  it('never turns a hostile digest into a path', async () => {
    const layout = await OciLayout.create(layoutDir());
    const image = await layout.image();
    // A file where `sha256:../../x` would lead if it were joined into blobs/sha256/.
    await fs.writeFile(path.join(dir, 'x'), JSON.stringify({ schemaVersion: 2, manifests: [] }));
    for (const digest of ['sha256:../../x', 'sha256:../../../etc/passwd', 'sha256/../../x', `${image.manifest.digest.toUpperCase()}`, `${image.manifest.digest}\n`, 'md5:d41d8cd98f00b204e9800998ecf8427e', `sha256:${'a'.repeat(63)}`]) {
      await layout.writeIndex([{ ...image.manifest, digest }]);
      await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toThrow(/is not a sha256 or sha512 digest/u);
    }
    const manifestJson = JSON.parse(await fs.readFile(layout.blobFile(image.manifest.digest), 'utf8')) as { layers: Descriptor[] };
    manifestJson.layers[0]!.digest = 'sha256:../../../x';
    const tampered = await layout.json(manifestJson, image.manifest.mediaType);
    await layout.writeIndex([tampered]);
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toThrow(/layers\[0\]: "digest" "sha256:..\/..\/..\/x" is not a sha256/u);
  });

  it('refuses a manifest or config whose bytes do not match their digest, before parsing them', async () => {
    const layout = await OciLayout.create(layoutDir());
    const image = await layout.image();
    await layout.writeIndex([image.manifest]);
    const configFile = layout.blobFile(image.config.digest);
    const original = await fs.readFile(configFile);
    const changed = Buffer.from(original.toString('utf8').replace('"amd64"', '"arm64"'));
    expect(changed.length).toBe(original.length);
    await fs.writeFile(configFile, changed);
    const error = await openImageSource(`oci:${layoutDir()}`).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DigestMismatchError);
    expect((error as DigestMismatchError).expected).toBe(image.config.digest);
    expect((error as DigestMismatchError).actual).toBe(sha256(changed));
    await fs.writeFile(configFile, original);
    await fs.appendFile(layout.blobFile(image.manifest.digest), ' ');
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toThrow(/manifest sha256:[0-9a-f]{64} is \d+ bytes, its descriptor gives/u);
  });

  it('refuses an index.json over 4 MiB without reading it, and a descriptor that claims a huge blob', async () => {
    const layout = await OciLayout.create(layoutDir());
    const image = await layout.image();
    await fs.writeFile(path.join(layoutDir(), 'index.json'), '');
    await fs.truncate(path.join(layoutDir(), 'index.json'), (4 << 20) + 1);
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toThrow(/index.json is 4194305 bytes, more than the 4194304 vmpod reads/u);
    await layout.writeIndex([{ ...image.manifest, size: 1 << 30 }]);
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toThrow(/descriptor gives 1073741824 bytes, more than/u);
  });

  it('refuses unknown media types: of a layer, of a config (an artifact), of a manifest', async () => {
    const layout = await OciLayout.create(layoutDir());
    const strange = await layout.image({ layers: [{ entries: [], mediaType: 'application/vnd.example.layer.v1.tar+lz4' }] });
    await layout.writeIndex([strange.manifest]);
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toThrow(/unknown layer media type "application\/vnd.example.layer.v1.tar\+lz4"/u);
    const artifact = await layout.image({ manifestPatch: { config: { mediaType: 'application/vnd.example.config+json', digest: sha256('{}'), size: 2 } } });
    await layout.writeIndex([artifact.manifest]);
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toThrow(/config media type "application\/vnd.example.config\+json" is no image config/u);
    await layout.writeIndex([{ ...artifact.manifest, mediaType: 'application/vnd.example.manifest+json' }]);
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toBeInstanceOf(InvalidImageError);
  });

  it('refuses a config whose diff_ids do not match the manifest\'s layers in number', async () => {
    const layout = await OciLayout.create(layoutDir());
    const image = await layout.image({ configPatch: { rootfs: { type: 'layers', diff_ids: [] } } });
    await layout.writeIndex([image.manifest]);
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toThrow(/has 1 layers, its config 0 diff_ids/u);
  });
});

/** Makes index.json name an image whose one layer is `bytes` as stored, with config diff_id `diffId`. */
async function withLayerBlob(layout: OciLayout, bytes: Buffer, mediaType: string, diffId: string): Promise<void> {
  const blob = await layout.blob(bytes, mediaType);
  const image = await layout.image({ layers: [] });
  const config = await layout.json({ ...image.configJson, rootfs: { type: 'layers', diff_ids: [diffId] } }, image.config.mediaType);
  const manifest = await layout.json({ schemaVersion: 2, mediaType: image.manifest.mediaType, config, layers: [blob] }, image.manifest.mediaType);
  await layout.writeIndex([manifest]);
}

describe('OCI layout: layer streams verify while they stream', () => {
  async function oneLayer(compression: 'gzip' | 'none' | 'zstd', content = 'payload '.repeat(1000)) {
    const layout = await OciLayout.create(layoutDir());
    const image = await layout.image({ layers: [{ entries: [{ name: 'f', content }], compression }] });
    await layout.writeIndex([image.manifest]);
    return { layout, image };
  }

  it.each(['gzip', 'none', 'zstd'] as const)('a tampered %s blob errors the stream with DigestMismatchError, never ending it', async (compression) => {
    const { layout, image } = await oneLayer(compression);
    const file = layout.blobFile(image.layers[0]!.digest);
    const bytes = await fs.readFile(file);
    // Same size, same uncompressed tar: only the blob digest can tell. gzip: a byte of the header's
    // MTIME; zstd: the window size (7 -> 8, still large enough); uncompressed: a byte of the payload.
    const at = compression === 'gzip' ? 4 : compression === 'zstd' ? 5 : 600;
    bytes[at] = compression === 'zstd' ? 8 << 3 : bytes[at]! ^ 0x01;
    await fs.writeFile(file, bytes);
    await using source = await openImageSource(`oci:${layoutDir()}`);
    const stream = source.openLayer(0);
    let ended = false;
    stream.on('end', () => (ended = true));
    const error = await drain(stream).catch((e: unknown) => e);
    expect(ended).toBe(false);
    expect(error).toBeInstanceOf(DigestMismatchError);
    expect((error as DigestMismatchError).expected).toBe(image.layers[0]!.digest);
    expect((error as DigestMismatchError).actual).toBe(sha256(bytes));
  });

  it('a truncated blob and a blob with bytes added are refused by size', async () => {
    const { layout, image } = await oneLayer('none');
    const file = layout.blobFile(image.layers[0]!.digest);
    const bytes = await fs.readFile(file);
    await fs.writeFile(file, bytes.subarray(0, bytes.length - 512));
    {
      await using source = await openImageSource(`oci:${layoutDir()}`);
      await expect(drain(source.openLayer(0))).rejects.toThrow(/layer 0 \(blob\): \d+ bytes, its descriptor gives \d+ \(truncated\?\)/u);
    }
    await fs.writeFile(file, Buffer.concat([bytes, Buffer.alloc(512)]));
    await using source = await openImageSource(`oci:${layoutDir()}`);
    await expect(drain(source.openLayer(0))).rejects.toThrow(/more bytes than the \d+ its descriptor gives/u);
  });

  it('a wrong diff_id (the blob is intact) errors the stream with DigestMismatchError naming the diff_id', async () => {
    const layout = await OciLayout.create(layoutDir());
    const tar = await makeTar([{ name: 'f', content: 'x' }]);
    const other = sha256('not this tar');
    const image = await layout.image({ layers: [{ tar, compression: 'gzip' }], configPatch: { rootfs: { type: 'layers', diff_ids: [other] } } });
    await layout.writeIndex([image.manifest]);
    await using source = await openImageSource(`oci:${layoutDir()}`);
    const error = await drain(source.openLayer(0)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DigestMismatchError);
    expect((error as DigestMismatchError).what).toMatch(/^layer 0 \(diff_id\)/u);
    expect((error as DigestMismatchError).expected).toBe(other);
    expect((error as DigestMismatchError).actual).toBe(sha256(tar));
  });

  it('a missing layer blob and a corrupt gzip stream (its blob digest right) are InvalidImageError', async () => {
    const layout = await OciLayout.create(layoutDir());
    const gzip = zlib.gzipSync(await makeTar([{ name: 'f', content: 'payload '.repeat(1000) }]));
    gzip.fill(0x41, 10, 40);
    await withLayerBlob(layout, gzip, 'application/vnd.oci.image.layer.v1.tar+gzip', sha256('x'));
    {
      await using source = await openImageSource(`oci:${layoutDir()}`);
      const error = await drain(source.openLayer(0)).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(InvalidImageError);
      expect((error as Error).message).toMatch(/layer 0: .*(invalid|incorrect)/u);
    }
    await fs.rm(layout.blobFile(sha256(gzip)));
    await using source = await openImageSource(`oci:${layoutDir()}`);
    await expect(drain(source.openLayer(0))).rejects.toThrow(/layer 0: ENOENT/u);
  });

  it('a FIFO or a directory where a blob should be fails the read instead of hanging it', async () => {
    const { layout, image } = await oneLayer('none');
    const file = layout.blobFile(image.layers[0]!.digest);
    await fs.rm(file);
    execFileSync('mkfifo', [file]);
    {
      await using source = await openImageSource(`oci:${layoutDir()}`);
      await expect(drain(source.openLayer(0))).rejects.toThrow(/layer 0 \(blob\): 0 bytes, its descriptor gives \d+/u);
    }
    await fs.rm(file);
    await fs.mkdir(file);
    await using source = await openImageSource(`oci:${layoutDir()}`);
    await expect(drain(source.openLayer(0))).rejects.toThrow(/layer 0: EISDIR/u);
    await fs.rm(layout.blobFile(image.config.digest));
    execFileSync('mkfifo', [layout.blobFile(image.config.digest)]);
    await expect(openImageSource(`oci:${layoutDir()}`)).rejects.toThrow(/config sha256:[0-9a-f]+ is missing/u);
  });

  it('sha512 digests are read from blobs/sha512/ and verified with sha512', async () => {
    const layout = await OciLayout.create(layoutDir());
    const tar = await makeTar([{ name: 'f', content: 'five-twelve' }]);
    const hex = createHash('sha512').update(tar).digest('hex');
    await fs.mkdir(path.join(layoutDir(), 'blobs', 'sha512'));
    await fs.writeFile(path.join(layoutDir(), 'blobs', 'sha512', hex), tar);
    const image = await layout.image({ layers: [] });
    const config = await layout.json({ ...image.configJson, rootfs: { type: 'layers', diff_ids: [`sha512:${hex}`] } }, image.config.mediaType);
    const blob = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha512:${hex}`, size: tar.length };
    const manifest = await layout.json({ schemaVersion: 2, mediaType: image.manifest.mediaType, config, layers: [blob] }, image.manifest.mediaType);
    await layout.writeIndex([manifest]);
    {
      await using source = await openImageSource(`oci:${layoutDir()}`);
      expect(source.layers[0]!.digest).toBe(`sha512:${hex}`);
      expect((await drain(source.openLayer(0))).equals(tar)).toBe(true);
    }
    await fs.writeFile(path.join(layoutDir(), 'blobs', 'sha512', hex), Buffer.from(tar).fill(0x20, 0, 1));
    await using source = await openImageSource(`oci:${layoutDir()}`);
    await expect(drain(source.openLayer(0))).rejects.toThrow(/expected sha512:[0-9a-f]{128}, got sha512:[0-9a-f]{128}/u);
  });

  it('a zstd frame of RLE blocks (a decompression bomb) comes out in bounded chunks and fails its diff_id', async () => {
    const layout = await OciLayout.create(layoutDir());
    const bomb = zstdRleFrame(0x41, 256); // 1 KiB in, 32 MiB out
    await withLayerBlob(layout, bomb, 'application/vnd.oci.image.layer.v1.tar+zstd', sha256('x'));
    await using source = await openImageSource(`oci:${layoutDir()}`);
    let largest = 0;
    let total = 0;
    const stream = source.openLayer(0);
    stream.on('data', (chunk: Buffer) => {
      largest = Math.max(largest, chunk.length);
      total += chunk.length;
    });
    // Read without keeping the bytes (a failure message would print 32 MiB otherwise).
    const outcome = await (async () => {
      for await (const chunk of stream) void chunk;
    })().then(() => 'ended cleanly', (e: unknown) => e);
    expect(outcome).toBeInstanceOf(DigestMismatchError);
    expect(total).toBe(256 * 128 * 1024);
    expect(largest).toBeLessThanOrEqual(128 * 1024 * 64);
  });

  it('an aborted signal destroys the stream with AbortError', async () => {
    const { image } = await oneLayer('none', 'y'.repeat(1 << 20));
    await using source = await openImageSource(`oci:${layoutDir()}`);
    const controller = new AbortController();
    const stream = source.openLayer(0, { signal: controller.signal });
    const result = drain(stream).catch((e: unknown) => e);
    controller.abort();
    expect(await result).toBeInstanceOf(AbortError);
    const pre = new AbortController();
    pre.abort();
    await expect(drain(source.openLayer(0, { signal: pre.signal }))).rejects.toBeInstanceOf(AbortError);
    await expect(openImageSource(`oci:${layoutDir()}`, { signal: pre.signal })).rejects.toThrow(/opening image oci:.* was aborted/u);
    expect(image.layers).toHaveLength(1);
    expect(() => source.openLayer(1)).toThrow(RangeError);
  });
});
