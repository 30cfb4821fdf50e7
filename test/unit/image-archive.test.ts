import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VmpodError } from '../../src/errors.js';
import { DigestMismatchError, ImageNotFoundError, InvalidImageError } from '../../src/image/errors.js';
import { openImageSource } from '../../src/image/open.js';
import { makeTar, OciLayout, sha256, writeDockerArchive, writeOciArchive, type TarEntrySpec } from './helpers/oci-image.js';

let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-h1-archive-'));
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function drain(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** A layout with two named images; returns them. */
async function twoImageLayout() {
  const layout = await OciLayout.create(path.join(dir, 'layout'));
  const one = await layout.image({ layers: [{ entries: [{ name: 'one', content: '1' }], compression: 'gzip' }, { entries: [{ name: 'z', content: 'zz' }], compression: 'zstd' }] });
  const two = await layout.image({ exec: { Cmd: ['two'] } });
  await layout.writeIndex([{ ...one.manifest, ref: 'one' }, { ...two.manifest, ref: 'two' }]);
  return { layout, one, two };
}

/** A 512-byte ustar header written by hand (sizes over 8 GiB in base-256, as GNU tar does). */
function header(name: string, size: number, typeflag = '0'): Buffer {
  const block = Buffer.alloc(512);
  block.write(name, 0, 100, 'utf8');
  block.write('0000644\0', 100);
  block.write('0000000\0', 108);
  block.write('0000000\0', 116);
  if (size < 8 ** 11) block.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  else {
    let rest = BigInt(size);
    for (let i = 135; i > 124; i--) {
      block[i] = Number(rest & 0xffn);
      rest >>= 8n;
    }
    block[124] = 0x80;
  }
  block.write('00000000000\0', 136);
  block[156] = typeflag.charCodeAt(0);
  block.write('ustar\0', 257, 'latin1');
  block.write('00', 263, 'latin1');
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of block) sum += b;
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return block;
}

describe('oci-archive', () => {
  it.each(['', './'])('reads a tar of a layout in place (names prefixed %j): refs, config, layers', async (prefix) => {
    const { layout, one, two } = await twoImageLayout();
    const file = path.join(dir, 'image.tar');
    await writeOciArchive(layout.dir, file, prefix);
    {
      await using source = await openImageSource(`oci-archive:${file}:one`);
      expect(source.manifestDigest).toBe(one.manifest.digest);
      expect(source.layers.map((l) => l.compression)).toEqual(['gzip', 'zstd']);
      for (const l of source.layers) expect((await drain(source.openLayer(l.index))).equals(one.tars[l.index]!)).toBe(true);
    }
    await using source = await openImageSource(`oci-archive:${file}:two`);
    expect(source.manifestDigest).toBe(two.manifest.digest);
    expect(source.config.config.Cmd).toEqual(['two']);
    await expect(openImageSource(`oci-archive:${file}`)).rejects.toThrow(/holds 2 manifests/u);
    await expect(openImageSource(`oci-archive:${file}:three`)).rejects.toBeInstanceOf(ImageNotFoundError);
    await expect(openImageSource(`oci-archive:${path.join(dir, 'none.tar')}`)).rejects.toBeInstanceOf(ImageNotFoundError);
  });

  it.each(['gnu', 'pax', 'ustar'])('reads an archive written by GNU tar --format=%s (long names in its own way)', async (format) => {
    const { layout, one } = await twoImageLayout();
    await fs.writeFile(path.join(layout.dir, `${'n'.repeat(150)}.txt`), 'a long name before the blobs');
    const file = path.join(dir, `${format}.tar`);
    const args = ['--format', format, '-C', layout.dir, '-cf', file, '.'];
    if (format === 'ustar') await fs.rm(path.join(layout.dir, `${'n'.repeat(150)}.txt`));
    execFileSync('tar', args);
    await using source = await openImageSource(`oci-archive:${file}:one`);
    expect(source.configDigest).toBe(one.config.digest);
    expect((await drain(source.openLayer(1))).equals(one.tars[1]!)).toBe(true);
  });

  it('does not read an entry it does not need: a 9 GiB (sparse) entry in front of the layout', async () => {
    const { layout, one } = await twoImageLayout();
    const inner = path.join(dir, 'inner.tar');
    await writeOciArchive(layout.dir, inner);
    const big = 9 * 1024 ** 3;
    const file = path.join(dir, 'big.tar');
    await fs.writeFile(file, header('junk.bin', big));
    await fs.truncate(file, 512 + big);
    await fs.appendFile(file, await fs.readFile(inner));
    await using source = await openImageSource(`oci-archive:${file}:one`);
    expect(source.manifestDigest).toBe(one.manifest.digest);
    expect((await drain(source.openLayer(0))).equals(one.tars[0]!)).toBe(true);
  });

  it('refuses duplicate names, names that leave the archive, a truncated archive, a bad checksum', async () => {
    const { layout } = await twoImageLayout();
    const index = await fs.readFile(path.join(layout.dir, 'index.json'));
    const base = path.join(dir, 'base.tar');
    await writeOciArchive(layout.dir, base);
    const baseBytes = await fs.readFile(base);
    const cases: [string, TarEntrySpec[], RegExp][] = [
      ['dup', [{ name: 'index.json', content: index }], /two entries named "index.json"/u],
      ['dotdot', [{ name: 'blobs/../../escape', content: 'x' }], /leaves the archive: "blobs\/..\/..\/escape"/u],
      ['abs', [{ name: '/etc/escape', content: 'x' }], /leaves the archive: "\/etc\/escape"/u],
    ];
    for (const [name, extra, message] of cases) {
      const file = path.join(dir, `${name}.tar`);
      // The layout's entries, then the hostile one (tar-stream strips nothing from names).
      const tail = await makeTar(extra);
      await fs.writeFile(file, Buffer.concat([baseBytes.subarray(0, baseBytes.length - 1024), tail]));
      await expect(openImageSource(`oci-archive:${file}:one`)).rejects.toThrow(message);
    }
    const truncated = path.join(dir, 'truncated.tar');
    await fs.writeFile(truncated, baseBytes.subarray(0, 512 + 100));
    await expect(openImageSource(`oci-archive:${truncated}:one`)).rejects.toThrow(/past the end of the file|truncated header/u);
    const badSum = Buffer.from(baseBytes);
    badSum[0] = badSum[0]! ^ 0x01;
    await fs.writeFile(truncated, badSum);
    await expect(openImageSource(`oci-archive:${truncated}:one`)).rejects.toThrow(/bad checksum at offset 0/u);
    await fs.rm(truncated);
    execFileSync('mkfifo', [truncated]);
    await expect(openImageSource(`oci-archive:${truncated}:one`)).rejects.toThrow(/is not a regular file/u);
    await fs.rm(truncated);
    await fs.writeFile(truncated, 'not a tar at all');
    await expect(openImageSource(`oci-archive:${truncated}:one`)).rejects.toBeInstanceOf(InvalidImageError);
  });

  it('follows a symlink to a blob inside the archive, never one that leaves it', async () => {
    const { layout, one } = await twoImageLayout();
    const file = path.join(dir, 'links.tar');
    const hex = one.config.digest.slice(7);
    const configBytes = await fs.readFile(layout.blobFile(one.config.digest));
    const entries: TarEntrySpec[] = [
      { name: 'oci-layout', content: await fs.readFile(path.join(layout.dir, 'oci-layout')) },
      { name: 'index.json', content: await fs.readFile(path.join(layout.dir, 'index.json')) },
      { name: 'store/config', content: configBytes },
    ];
    for (const name of await fs.readdir(path.join(layout.dir, 'blobs', 'sha256'))) {
      if (name !== hex) entries.push({ name: `blobs/sha256/${name}`, content: await fs.readFile(path.join(layout.dir, 'blobs', 'sha256', name)) });
    }
    await fs.writeFile(file, await makeTar([...entries, { name: `blobs/sha256/${hex}`, type: 'symlink', linkname: '../../store/config' }]));
    {
      await using source = await openImageSource(`oci-archive:${file}:one`);
      expect(source.configDigest).toBe(one.config.digest);
    }
    await fs.writeFile(file, await makeTar([...entries, { name: `blobs/sha256/${hex}`, type: 'symlink', linkname: '../../../store/config' }]));
    await expect(openImageSource(`oci-archive:${file}:one`)).rejects.toThrow(/config sha256:[0-9a-f]+ is missing/u);
  });
});

describe('archives with random damage', () => {
  it('a damaged archive opens and streams, or fails with a vmpod error: never a raw exception, never a hang', async () => {
    const { layout } = await twoImageLayout();
    const base = path.join(dir, 'base.tar');
    await writeOciArchive(layout.dir, base);
    const original = await fs.readFile(base);
    const docker = path.join(dir, 'docker.tar');
    await writeDockerArchive(docker, [{ repoTags: ['a:1'], layers: [{ entries: [{ name: 'x', content: 'y' }] }] }]);
    const originalDocker = await fs.readFile(docker);
    let seed = 20261208;
    const random = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const outcomes = new Map<string, number>();
    for (let round = 0; round < 200; round++) {
      const [source, transport] = round % 2 === 0 ? [original, 'oci-archive'] : [originalDocker, 'docker-archive'];
      const bytes = Buffer.from(source);
      // A few bytes changed, mostly in the headers (the first 512 bytes of each block that has one).
      for (let i = 0, n = 1 + random(4); i < n; i++) {
        const at = random(4) === 0 ? random(bytes.length) : random(Math.floor(bytes.length / 512)) * 512 + random(512);
        bytes[at] = random(256);
      }
      const file = path.join(dir, `damaged-${round}.tar`);
      await fs.writeFile(file, bytes);
      let outcome: string;
      try {
        await using image = await openImageSource(`${transport}:${file}${transport === 'oci-archive' ? ':one' : ''}`);
        for (const layer of image.layers) await drain(image.openLayer(layer.index));
        outcome = 'ok';
      } catch (error) {
        expect(error, `round ${round}`).toBeInstanceOf(VmpodError);
        outcome = (error as VmpodError).code;
      }
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      await fs.rm(file);
    }
    // Both ends seen: damage that changes nothing that matters, and damage refused.
    expect(outcomes.get('ERR_VMPOD_INVALID_IMAGE') ?? 0).toBeGreaterThan(0);
    expect(outcomes.get('ok') ?? 0).toBeGreaterThan(0);
  });
});

describe('docker-archive', () => {
  const layers = [{ entries: [{ name: 'bin/', type: 'directory' as const }, { name: 'bin/sh', content: 'sh' }] }, { entries: [{ name: 'etc/motd', content: 'hi' }] }];

  it.each(['legacy', 'blobs'] as const)('reads a docker save archive (%s format): config digest from its name, layers verified by diff_id', async (format) => {
    const file = path.join(dir, 'docker.tar');
    const [built] = await writeDockerArchive(file, [{ repoTags: ['busybox:latest', 'example.com:5000/me/app:1.0'], layers, exec: { Cmd: ['sh'] } }], format);
    for (const ref of ['', ':busybox', ':busybox:latest', ':docker.io/library/busybox:latest', ':example.com:5000/me/app:1.0', ':@0']) {
      await using source = await openImageSource(`docker-archive:${file}${ref}`);
      expect(source.manifestDigest).toBeUndefined();
      expect(source.configDigest).toBe(built!.configDigest);
      expect(source.config.config.Cmd).toEqual(['sh']);
      expect(source.layers.map((l) => [l.compression, l.digest, l.diffId])).toEqual(built!.diffIds.map((d) => ['none', d, d]));
      const tars = await Promise.all(layers.map((l) => makeTar(l.entries)));
      for (const l of source.layers) expect((await drain(source.openLayer(l.index))).equals(tars[l.index]!)).toBe(true);
    }
    await expect(openImageSource(`docker-archive:${file}:busybox:1.36`)).rejects.toThrow(/no image is tagged "docker.io\/library\/busybox:1.36" \(its tags: "busybox:latest"/u);
    await expect(openImageSource(`docker-archive:${file}:@1`)).rejects.toBeInstanceOf(ImageNotFoundError);
  });

  it('a compressed legacy layer.tar: no blob digest in the format, its diff_id still checked', async () => {
    const file = path.join(dir, 'gz.tar');
    const tar = await makeTar([{ name: 'f', content: 'gz' }]);
    const [built] = await writeDockerArchive(file, [{ layers: [{ tar, compression: 'gzip' }] }]);
    {
      await using source = await openImageSource(`docker-archive:${file}`);
      expect(source.layers[0]).toMatchObject({ compression: 'gzip', digest: undefined, diffId: built!.diffIds[0], mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip' });
      expect((await drain(source.openLayer(0))).equals(tar)).toBe(true);
    }
    await writeDockerArchive(file, [{ layers: [{ tar, compression: 'gzip' }], configPatch: { rootfs: { type: 'layers', diff_ids: [sha256('other')] } } }]);
    await using source = await openImageSource(`docker-archive:${file}`);
    await expect(drain(source.openLayer(0))).rejects.toBeInstanceOf(DigestMismatchError);
  });

  it('several images: needs a tag or @N; a config that does not match its name; a layer missing', async () => {
    const file = path.join(dir, 'two.tar');
    const built = await writeDockerArchive(file, [{ repoTags: ['a:1'], layers }, { repoTags: ['b:1'], layers: layers.slice(0, 1), exec: { Cmd: ['b'] } }]);
    await expect(openImageSource(`docker-archive:${file}`)).rejects.toThrow(/holds 2 images: name one/u);
    {
      await using b = await openImageSource(`docker-archive:${file}:b:1`);
      expect(b.configDigest).toBe(built[1]!.configDigest);
      await using at1 = await openImageSource(`docker-archive:${file}:@1`);
      expect(at1.configDigest).toBe(built[1]!.configDigest);
    }
    // A config under a name (HEX.json) whose bytes are not HEX's.
    const otherConfig = JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: built[1]!.diffIds } });
    const hacked = path.join(dir, 'hacked.tar');
    const layerEntry: TarEntrySpec = { name: built[1]!.layerNames[0]!, content: await makeTar(layers[0]!.entries) };
    const list = (config: string): TarEntrySpec => ({ name: 'manifest.json', content: JSON.stringify([{ Config: config, RepoTags: ['b:1'], Layers: built[1]!.layerNames }]) });
    await fs.writeFile(hacked, await makeTar([{ name: `${'0'.repeat(64)}.json`, content: otherConfig }, layerEntry, list(`${'0'.repeat(64)}.json`)]));
    const error = await openImageSource(`docker-archive:${hacked}`).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DigestMismatchError);
    expect((error as DigestMismatchError).expected).toBe(`sha256:${'0'.repeat(64)}`);
    expect((error as DigestMismatchError).actual).toBe(sha256(otherConfig));
    // The same config under its true name, and its layer missing.
    const trueName = `${sha256(otherConfig).slice(7)}.json`;
    await fs.writeFile(hacked, await makeTar([{ name: trueName, content: otherConfig }, list(trueName)]));
    await expect(openImageSource(`docker-archive:${hacked}`)).rejects.toThrow(/layer 0 ".*layer.tar" is missing from the archive/u);
    await fs.writeFile(hacked, await makeTar([{ name: 'manifest.json', content: JSON.stringify([{ Config: '../../etc/passwd', Layers: [] }]) }]));
    await expect(openImageSource(`docker-archive:${hacked}`)).rejects.toThrow(/Config "..\/..\/etc\/passwd" is no relative path inside the archive/u);
    await fs.writeFile(hacked, await makeTar([{ name: 'manifest.json', content: '{"not": "a list"}' }]));
    await expect(openImageSource(`docker-archive:${hacked}`)).rejects.toThrow(/manifest.json must hold a JSON array/u);
  });
});
