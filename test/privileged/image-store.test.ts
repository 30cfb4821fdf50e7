/**
 * The image store on the host, for real: layers applied in overlay form by the unpacker, the
 * read-only view of their chain mounted (whiteouts and an opaque directory across layers, a
 * one-layer image), a view that another mount still holds (as a sandbox share's bind does) never
 * unmounted nor its layers removed, prune leaving nothing mounted, and one image read from
 * three transports unpacked once.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore, chainId, type ImageRecord } from '../../src/image/store.js';
import { applyLayer } from '../../src/image/unpack.js';
import { InvalidStateError } from '../../src/errors.js';
import { mountPoints } from '../../src/state/remove.js';
import { Image } from '../../src/image/image.js';
import { bigFile, testLayers, writeTestLayout } from './helpers/image-build.js';
import { busyboxImage, imageSkipReason, removeTestImages } from './helpers/oci-images.js';

const exec = promisify(execFile);
const skip = process.getuid?.() !== 0 ? 'needs root (mounts)' : undefined;
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe.skipIf(skip)(`the image store's layers and views${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let work: string;
  let layers: Buffer[];

  beforeAll(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-imgs-'));
    layers = await testLayers();
  });

  afterAll(async () => {
    const left = (await mountPoints()).filter((m) => m.startsWith(work));
    for (const m of [...left].reverse()) await exec('umount', ['-l', m]).catch(() => undefined);
    await fs.rm(work, { recursive: true, force: true });
    expect(left).toEqual([]);
  });

  const unpackAll = async (store: ImageStore, tars: Buffer[]): Promise<string[]> => {
    const ids = tars.map(sha);
    for (const [i, t] of tars.entries()) {
      await store.ensureLayer(ids[i]!, async () => Readable.from([t]), (stream, dir, signal) => applyLayer(stream, dir, { mode: 'overlay', signal }), { source: 'test' });
    }
    return ids;
  };

  const record = (ids: string[]): ImageRecord => ({
    id: sha(Buffer.from(ids.join())),
    configDigest: sha(Buffer.from('config')),
    config: {},
    diffIds: ids,
    chainId: chainId(ids),
    platform: 'linux/amd64',
    references: [`oci:${work}/x:${ids.length}`],
    layerSizes: ids.map(() => 1),
    createdAt: new Date().toISOString(),
    lastUsed: new Date().toISOString(),
  });

  it('mounts the merged tree of three layers read-only: whiteouts hide, the opaque dir shows only its own layer, files read whole', async () => {
    const store = await ImageStore.open(path.join(work, 'store-merged'));
    const ids = await unpackAll(store, layers);
    // Overlay form on disk: layer 2 holds a 0/0 character device for the whiteout.
    const wh = await fs.lstat(path.join(store.layerDir(ids[1]!), 'rootfs/data/gone'));
    expect([wh.isCharacterDevice(), wh.rdev]).toEqual([true, 0]);
    const point = await store.ensureView(ids);
    expect(point).toBe(store.viewDir(chainId(ids)));
    const view = path.join(point, 'rootfs');
    await expect(fs.access(path.join(view, 'data/gone'))).rejects.toThrow(/ENOENT/u);
    expect(await fs.readFile(path.join(view, 'data/keep'), 'utf8')).toBe('kept\n');
    expect(await fs.readdir(path.join(view, 'opaque'))).toEqual(['new']);
    expect(await fs.readFile(path.join(view, 'etc/motd'), 'utf8')).toBe('vmpod image test\n');
    expect((await fs.readFile(path.join(view, 'big'))).equals(bigFile())).toBe(true);
    await expect(fs.writeFile(path.join(view, 'data/keep'), 'x')).rejects.toThrow(/EROFS/u);
    // Mounted once: the second ask reuses it.
    expect(await store.ensureView(ids)).toBe(point);
    expect(store.counters).toMatchObject({ layersUnpacked: 3, viewsMounted: 1, viewsReused: 1 });
    expect((await mountPoints()).filter((m) => m === point)).toHaveLength(1);
    await store.prune({ stateDir: path.join(work, 'no-state') });
    expect((await mountPoints()).filter((m) => m.startsWith(store.dir))).toEqual([]);
  });

  it('a reference that now names another image (a tag moved) names only the new one in the store', async () => {
    const store = path.join(work, 'store-moved');
    const layout = path.join(work, 'layout-moved');
    const old = await writeTestLayout(layout, 'app', layers.slice(0, 2));
    await using first = await Image.open(old.reference, { store });
    await first.unpack();
    await fs.rm(layout, { recursive: true });
    const moved = await writeTestLayout(layout, 'app', layers);
    await using second = await Image.open(moved.reference, { store });
    expect(await second.unpack()).toEqual({ unpacked: 1, reused: 2 });
    expect((await Image.inspect(moved.reference, { store })).id).toBe(moved.manifestDigest);
    const records = await Image.list({ store });
    expect(records.map((r) => [r.id, r.references])).toEqual([
      [old.manifestDigest, []],
      [moved.manifestDigest, [moved.reference]],
    ]);
    await Image.prune({ store, stateDir: path.join(work, 'no-state') });
  });

  it('two processes unpacking the same image into one store at once: each layer applied once, both succeed, the trees whole', async () => {
    const store = path.join(work, 'store-race');
    const { reference } = await writeTestLayout(path.join(work, 'layout-race'), 'race', layers);
    const script = path.join(work, 'race.mts');
    await fs.writeFile(
      script,
      `import { Image } from ${JSON.stringify(path.resolve('src/image/image.ts'))};\n` +
        `await using image = await Image.open(${JSON.stringify(reference)}, { store: ${JSON.stringify(store)} });\n` +
        'process.stdout.write(JSON.stringify(await image.unpack()));\n',
    );
    const runOne = (): Promise<{ unpacked: number; reused: number }> =>
      new Promise((resolve, reject) => {
        execFile(process.execPath, ['--import', 'tsx', script], (error, stdout, stderr) => (error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(JSON.parse(stdout))));
      });
    const results = await Promise.all([runOne(), runOne()]);
    // Every layer was applied by exactly one of them; the other found it complete.
    expect(results.reduce((n, r) => n + r.unpacked, 0)).toBe(3);
    expect(results.reduce((n, r) => n + r.reused, 0)).toBe(3);
    expect((await fs.readdir(path.join(store, 'layers'))).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    const s = await ImageStore.open(store);
    const root = path.join(await s.ensureView(layers.map(sha)), 'rootfs');
    expect((await fs.readFile(path.join(root, 'big'))).equals(bigFile())).toBe(true);
    expect(await fs.readdir(path.join(root, 'opaque'))).toEqual(['new']);
    await s.prune({ stateDir: path.join(work, 'no-state') });
  });

  it('a one-layer image is a view too (an overlay over the empty folder); its whiteouts name nothing', async () => {
    const store = await ImageStore.open(path.join(work, 'store-one'));
    const [id] = await unpackAll(store, [layers[1]!]);
    const point = await store.ensureView([id!]);
    expect((await mountPoints()).filter((m) => m === point)).toHaveLength(1);
    const view = path.join(point, 'rootfs');
    expect(await fs.readFile(path.join(view, 'data/added'), 'utf8')).toBe('added by layer 2\n');
    await expect(fs.lstat(path.join(view, 'data/gone'))).rejects.toThrow(/ENOENT/u);
    const removed = await store.prune({ stateDir: path.join(work, 'no-state') });
    expect(removed.layers).toEqual([id]);
    expect((await mountPoints()).filter((m) => m.startsWith(store.dir))).toEqual([]);
  });

  it('never unmounts a view another mount holds (a sandbox share\'s bind), nor removes its layers; prune then removes everything', async () => {
    const store = await ImageStore.open(path.join(work, 'store-held'));
    const ids = await unpackAll(store, layers);
    const image = record(ids);
    await store.writeImage(image);
    const view = await store.ensureView(ids);
    const bind = path.join(work, 'share-bind');
    await fs.mkdir(bind);
    await exec('mount', ['--bind', view, bind]);
    try {
      await expect(store.remove(image.references[0]!, { stateDir: path.join(work, 'no-state'), force: true })).rejects.toBeInstanceOf(InvalidStateError);
      const pruned = await store.prune({ stateDir: path.join(work, 'no-state') });
      expect(pruned.images).toEqual([]);
      expect(await fs.readFile(path.join(bind, 'rootfs/data/keep'), 'utf8')).toBe('kept\n');
      for (const id of ids) expect(await store.layer(id)).toBeDefined();
    } finally {
      await exec('umount', [bind]);
    }
    const pruned = await store.prune({ stateDir: path.join(work, 'no-state') });
    expect(pruned.images).toEqual([image.id]);
    expect(pruned.layers.sort()).toEqual([...new Set([...ids])].sort());
    expect((await mountPoints()).filter((m) => m.startsWith(store.dir))).toEqual([]);
    expect(await fs.readdir(path.join(store.dir, 'layers'))).toEqual([]);
    expect(await fs.readdir(path.join(store.dir, 'views'))).toEqual([]);
  });
});

const why = skip ?? (await imageSkipReason());

describe.skipIf(why)(`one store for every transport${why ? ` (skipped: ${why})` : ''}`, () => {
  let work: string;

  beforeAll(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-imgt-'));
  });

  afterAll(async () => {
    await removeTestImages();
    const left = (await mountPoints()).filter((m) => m.startsWith(work));
    for (const m of [...left].reverse()) await exec('umount', ['-l', m]).catch(() => undefined);
    await fs.rm(work, { recursive: true, force: true });
    expect(left).toEqual([]);
  });

  it('the same image from a layout, an oci-archive and a docker-archive is unpacked once: layers are shared by diff_id', async () => {
    const test = await busyboxImage();
    const store = path.join(work, 'store');
    await using fromLayout = await Image.open(test.ociRef, { store });
    expect(await fromLayout.unpack()).toEqual({ unpacked: 3, reused: 0 });
    await using fromArchive = await Image.open(test.ociArchiveRef, { store });
    expect(await fromArchive.cached()).toBe(true);
    expect(await fromArchive.unpack()).toEqual({ unpacked: 0, reused: 3 });
    // The same manifest: one record, both references.
    expect(fromArchive.id).toBe(fromLayout.id);
    await using fromDocker = await Image.open(`docker-archive:${test.dockerArchive}`, { store });
    expect(await fromDocker.unpack()).toEqual({ unpacked: 0, reused: 3 });
    // A docker archive stores no manifest: its id in the store is its config's digest.
    expect(fromDocker.manifestDigest).toBeUndefined();
    expect(fromDocker.id).toBe(fromDocker.configDigest);
    const records = await Image.list({ store });
    expect(records.map((r) => r.references.length).sort()).toEqual([1, 2]);
    const root = await fromDocker.view();
    expect(await fs.readFile(path.join(root, 'etc/motd'), 'utf8')).toBe(test.motd);
    await expect(fs.lstat(path.join(root, test.whiteout))).rejects.toThrow(/ENOENT/u);
    // The same layers: one view for both records, and prune removes everything.
    expect(await fromLayout.view()).toBe(root);
    const pruned = await Image.prune({ store, stateDir: path.join(work, 'no-state') });
    expect(pruned.images).toHaveLength(2);
    expect(pruned.layers).toHaveLength(3);
    expect((await mountPoints()).filter((m) => m.startsWith(store))).toEqual([]);
  });
});
