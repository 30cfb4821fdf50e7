import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ImageStore, chainId, digestHex, storeDirOf, type ImageRecord, type LayerApplier } from '../../src/image/store.js';
import { InvalidArgumentError, InvalidStateError, NotFoundError } from '../../src/errors.js';

const sha = (text: string): string => `sha256:${createHash('sha256').update(text).digest('hex')}`;

/** A stand-in for the unpacker: writes what it reads to `dir/f0` and counts the lines as entries. */
const writeChunks: LayerApplier = async (stream, dir) => {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks);
  await fs.writeFile(path.join(dir, 'f0'), text);
  return { entries: text.toString().split('\n').length };
};

let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-unit-store-'));
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('chainId', () => {
  it('is the first diff_id for one layer and a hash chain of "PARENT DIFFID" after', () => {
    const [a, b, c] = [sha('a'), sha('b'), sha('c')];
    expect(chainId([a])).toBe(a);
    const ab = sha(`${a} ${b}`);
    expect(chainId([a, b])).toBe(ab);
    expect(chainId([a, b, c])).toBe(sha(`${ab} ${c}`));
    // Order matters.
    expect(chainId([b, a])).not.toBe(ab);
  });

  it('refuses no layers and anything that is not a sha256 digest', () => {
    expect(() => chainId([])).toThrow(InvalidArgumentError);
    expect(() => chainId([sha('a'), 'sha512:00'])).toThrow(/diffIds\[1\]/u);
    expect(() => digestHex('sha256:ABC')).toThrow(InvalidArgumentError);
  });
});

describe('storeDirOf', () => {
  it('refuses paths overlayfs options cannot carry', () => {
    expect(() => storeDirOf('/srv/a:b')).toThrow(InvalidArgumentError);
    expect(() => storeDirOf('/srv/a,b')).toThrow(InvalidArgumentError);
    expect(() => storeDirOf('relative')).toThrow(InvalidArgumentError);
    expect(storeDirOf('/srv/images')).toBe('/srv/images');
  });
});

describe('ImageStore layers', () => {
  it('unpacks a layer once, into place, with its record; the second time reuses it', async () => {
    const store = await ImageStore.open(dir);
    const id = sha('layer');
    let opened = 0;
    const open = async (): Promise<Readable> => {
      opened++;
      return Readable.from([Buffer.from('one\n'), Buffer.from('two')]);
    };
    const first = await store.ensureLayer(id, open, writeChunks, { source: 'oci:/x:1' });
    expect(first.unpacked).toBe(true);
    expect(first.record).toMatchObject({ diffId: id, size: 7, entries: 2, source: 'oci:/x:1' });
    expect(await fs.readFile(path.join(store.layerDir(id), 'rootfs', 'f0'), 'utf8')).toBe('one\ntwo');
    const again = await (await ImageStore.open(dir)).ensureLayer(id, open, writeChunks, { source: 'oci:/y:2' });
    expect(again.unpacked).toBe(false);
    expect(again.record.source).toBe('oci:/x:1');
    expect(opened).toBe(1);
    expect((await fs.readdir(path.join(dir, 'layers'))).sort()).toEqual([digestHex(id), `${digestHex(id)}.json`]);
  });

  it('keeps nothing of a layer whose stream fails (a digest mismatch at its end)', async () => {
    const store = await ImageStore.open(dir);
    const id = sha('bad');
    const failing = async (): Promise<Readable> =>
      new Readable({
        read() {
          this.push(Buffer.from('data'));
          this.destroy(new Error('digest mismatch'));
        },
      });
    await expect(store.ensureLayer(id, failing, writeChunks, { source: 's' })).rejects.toThrow('digest mismatch');
    expect(await fs.readdir(path.join(dir, 'layers'))).toEqual([]);
    expect(await store.layer(id)).toBeUndefined();
    expect(store.counters.layersUnpacked).toBe(0);
  });

  it('removes what a crashed unpack left (a temp folder, a folder without its record) and unpacks again', async () => {
    const store = await ImageStore.open(dir);
    const id = sha('crash');
    const hex = digestHex(id);
    await fs.mkdir(path.join(dir, 'layers', `.tmp-${hex}-dead`));
    await fs.mkdir(path.join(dir, 'layers', hex));
    await fs.writeFile(path.join(dir, 'layers', hex, 'half'), 'x');
    const result = await store.ensureLayer(id, async () => Readable.from([Buffer.from('whole')]), writeChunks, { source: 's' });
    expect(result.unpacked).toBe(true);
    expect(await fs.readdir(path.join(store.layerDir(id), 'rootfs'))).toEqual(['f0']);
    expect((await fs.readdir(path.join(dir, 'layers'))).sort()).toEqual([hex, `${hex}.json`]);
  });

  it('unpacks once when two store users ask for the same layer at the same time', async () => {
    const [one, two] = await Promise.all([ImageStore.open(dir), ImageStore.open(dir)]);
    const id = sha('race');
    let applies = 0;
    const slow: LayerApplier = async (stream, target) => {
      applies++;
      await new Promise((r) => setTimeout(r, 50));
      return writeChunks(stream, target);
    };
    const open = async (): Promise<Readable> => Readable.from([Buffer.from('x')]);
    const results = await Promise.all([one.ensureLayer(id, open, slow, { source: 'a' }), two.ensureLayer(id, open, slow, { source: 'b' })]);
    expect(applies).toBe(1);
    expect(results.map((r) => r.unpacked).sort()).toEqual([false, true]);
  });
});

describe('ImageStore images', () => {
  const record = (n: string, refs: string[]): ImageRecord => ({
    id: sha(`m${n}`),
    manifestDigest: sha(`m${n}`),
    configDigest: sha(`c${n}`),
    config: {},
    diffIds: [sha(`l${n}`)],
    chainId: sha(`l${n}`),
    platform: 'linux/amd64',
    references: refs,
    layerSizes: [1],
    createdAt: new Date(0).toISOString(),
    lastUsed: new Date(Number(n)).toISOString(),
  });

  it('finds an image by reference, digest, digest prefix or chain id', async () => {
    const store = await ImageStore.open(dir);
    await store.writeImage(record('1', ['oci:/a:1']));
    await store.writeImage(record('2', ['oci:/b:2']));
    const two = record('2', []);
    expect((await store.find('oci:/b:2')).id).toBe(two.id);
    expect((await store.find(two.id)).references).toEqual(['oci:/b:2']);
    expect((await store.find(two.id.slice(7, 19))).id).toBe(two.id);
    expect((await store.find(two.chainId)).id).toBe(two.id);
    await expect(store.find('oci:/c:3')).rejects.toThrow(NotFoundError);
    expect((await store.images()).map((r) => r.references[0])).toEqual(['oci:/a:1', 'oci:/b:2']);
  });

  it('refuses to remove an image a sandbox record names; --force only when that sandbox does not run', async () => {
    const store = await ImageStore.open(dir);
    const image = record('1', ['oci:/a:1']);
    await store.writeImage(image);
    const stateDir = path.join(dir, 'state');
    await fs.mkdir(path.join(stateDir, 'sandboxes', 'sb1'), { recursive: true });
    // A record whose VM is this very process: "running".
    const vm = { pid: process.pid, startTime: Number((await fs.readFile('/proc/self/stat', 'utf8')).split(') ')[1]!.split(' ')[19]) };
    const write = (withVm: boolean): Promise<void> =>
      fs.writeFile(
        path.join(stateDir, 'sandboxes', 'sb1', 'state.json'),
        JSON.stringify({ id: 'sb1', containers: { c1: { image: { chainId: image.chainId, store: dir } } }, ...(withVm ? { boot: { vm } } : {}) }),
      );
    await write(true);
    expect(await ImageStore.usersOf(image.chainId, stateDir)).toEqual([{ sandbox: 'sb1', container: 'c1', running: true }]);
    // Another store's image of the same chain is not this one.
    expect(await ImageStore.usersOf(image.chainId, stateDir, path.join(dir, 'other'))).toEqual([]);
    await expect(store.remove('oci:/a:1', { stateDir })).rejects.toThrow(InvalidStateError);
    await expect(store.remove('oci:/a:1', { stateDir, force: true })).rejects.toThrow(/in use by c1 in sandbox sb1/u);
    expect(await store.image(image.id)).toBeDefined();
    await write(false);
    await expect(store.remove('oci:/a:1', { stateDir })).rejects.toThrow(InvalidStateError);
    await store.remove('oci:/a:1', { stateDir, force: true });
    expect(await store.image(image.id)).toBeUndefined();
  });

  it('prune removes unused images, layers no image has and crash leftovers, and keeps what a record uses', async () => {
    const store = await ImageStore.open(dir);
    const used = record('1', ['oci:/a:1']);
    const unused = record('2', ['oci:/b:2']);
    const stateDir = path.join(dir, 'state');
    await fs.mkdir(path.join(stateDir, 'sandboxes', 'sb1'), { recursive: true });
    await fs.writeFile(path.join(stateDir, 'sandboxes', 'sb1', 'state.json'), JSON.stringify({ id: 'sb1', containers: { c1: { image: { chainId: used.chainId } } } }));
    for (const r of [used, unused]) {
      await store.writeImage(r);
      await store.ensureLayer(r.diffIds[0]!, async () => Readable.from([Buffer.from('x')]), writeChunks, { source: r.references[0]! });
    }
    const orphan = sha('orphan');
    await fs.mkdir(path.join(dir, 'layers', `.tmp-${digestHex(orphan)}-0a0a`));
    const removed = await store.prune({ stateDir });
    expect(removed.images).toEqual([unused.id]);
    expect(removed.layers).toEqual([unused.diffIds[0]]);
    expect(removed.leftovers).toEqual([`.tmp-${digestHex(orphan)}-0a0a`]);
    expect(await store.layer(used.diffIds[0]!)).toBeDefined();
    expect(await store.layer(unused.diffIds[0]!)).toBeUndefined();
    expect((await fs.readdir(path.join(dir, 'layers'))).sort()).toEqual([digestHex(used.diffIds[0]!), `${digestHex(used.diffIds[0]!)}.json`]);
  });
});
