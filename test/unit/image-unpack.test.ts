import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DigestMismatchError, InvalidImageError, LayerEscapeError } from '../../src/image/errors.js';
import { applyLayer, normaliseEntryName } from '../../src/image/unpack.js';

// What needs no privileges: name normalisation, malformed input, and a layer of files,
// directories and symlinks applied without changing owners. The hostile layers and the rest of
// the semantics are in test/privileged/image-unpack.test.ts.

describe('normaliseEntryName', () => {
  it('drops leading / and ./, empty and . parts, and applies ..', () => {
    expect(normaliseEntryName('./etc/passwd')).toEqual(['etc', 'passwd']);
    expect(normaliseEntryName('/etc//./passwd')).toEqual(['etc', 'passwd']);
    expect(normaliseEntryName('a/b/../c/')).toEqual(['a', 'c']);
    expect(normaliseEntryName('./')).toEqual([]);
    expect(normaliseEntryName('a/..')).toEqual([]);
  });

  it('refuses a .. that leaves the root, a NUL byte and an empty name', () => {
    for (const name of ['..', '../x', 'a/../../x', '/../etc/passwd', './a/../..']) {
      expect(() => normaliseEntryName(name)).toThrow(LayerEscapeError);
    }
    expect(() => normaliseEntryName('a\0b')).toThrow(LayerEscapeError);
    expect(() => normaliseEntryName('')).toThrow(InvalidImageError);
  });
});

async function tarOf(entries: Array<Parameters<tar.Pack['entry']>[0] & { data?: string }>): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => { for await (const c of pack) chunks.push(c as Buffer); })();
  for (const { data, ...header } of entries) {
    await new Promise<void>((resolve, reject) => pack.entry(header, data ?? '', (e) => (e ? reject(e) : resolve())));
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

let root: string;
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-unpack-unit-'));
});
afterEach(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('applyLayer without privileges', () => {
  it('applies files, directories and symlinks, and counts them', async () => {
    const buf = await tarOf([
      { name: 'etc', type: 'directory', mode: 0o755, mtime: new Date(1_000_000_000_000) },
      { name: 'etc/hostname', data: 'box\n', mode: 0o640, mtime: new Date(1_100_000_000_000) },
      { name: 'etc/link', type: 'symlink', linkname: '/etc/hostname', mtime: new Date(1_100_000_000_000) },
    ]);
    const progress: number[] = [];
    const counts = await applyLayer(Readable.from([buf]), root, { preserveOwnership: false, onProgress: (c) => progress.push(c.entries) });
    expect(counts).toEqual({ entries: 3, bytes: 4, whiteouts: 0 });
    expect(progress).toEqual([1, 2, 3]);
    expect(await fs.readFile(path.join(root, 'etc/hostname'), 'utf8')).toBe('box\n');
    expect(((await fs.stat(path.join(root, 'etc/hostname'))).mode & 0o7777).toString(8)).toBe('640');
    expect(await fs.readlink(path.join(root, 'etc/link'))).toBe('/etc/hostname');
    expect((await fs.stat(path.join(root, 'etc'))).mtimeMs).toBe(1_000_000_000_000);
  });

  it('a tar without the padding of its last block (umoci 0.4 insert) is applied; one cut short is refused', async () => {
    const buf = await tarOf([{ name: 'motd', data: 'vmpod test image\n' }]);
    // Header + 17 bytes of data: what umoci 0.4's insert writes.
    await applyLayer(Readable.from([buf.subarray(0, 512 + 17)]), root, { preserveOwnership: false });
    expect(await fs.readFile(path.join(root, 'motd'), 'utf8')).toBe('vmpod test image\n');
    await expect(applyLayer(Readable.from([buf.subarray(0, 512 + 10)]), root, { preserveOwnership: false })).rejects.toThrow(/cut short/u);
    // The same for a file large enough to be written through its fd.
    const big = await tarOf([{ name: 'big', data: 'y'.repeat(1_500_000) }]);
    await expect(applyLayer(Readable.from([big.subarray(0, 512 + 1_499_900)]), root, { preserveOwnership: false })).rejects.toThrow(/cut short/u);
    await applyLayer(Readable.from([big.subarray(0, 512 + 1_500_000)]), root, { preserveOwnership: false });
    expect((await fs.stat(path.join(root, 'big'))).size).toBe(1_500_000);
  });

  it('garbage is an InvalidImageError; the source stream\'s own error passes as it is', async () => {
    await expect(applyLayer(Readable.from([Buffer.alloc(2048, 0x41)]), root)).rejects.toThrow(/not a valid tar stream/u);
    const source = new PassThrough();
    const result = applyLayer(source, root, { preserveOwnership: false });
    source.write((await tarOf([{ name: 'a', data: 'x'.repeat(2000) }])).subarray(0, 1024));
    const mismatch = new DigestMismatchError('layer 1', 'sha256:aa', 'sha256:bb');
    setImmediate(() => source.destroy(mismatch));
    await expect(result).rejects.toBe(mismatch);
  });

  it('a source that fails while the root is still being opened, or had failed before the call, fails the layer with its error', async () => {
    // A CI run (under load) lost the error this way: it came before the parser was attached.
    const early = new PassThrough();
    const mismatch = new DigestMismatchError('layer 1', 'sha256:aa', 'sha256:bb');
    const result = applyLayer(early, root, { preserveOwnership: false });
    early.destroy(mismatch);
    await expect(result).rejects.toBe(mismatch);
    const before = new PassThrough();
    before.on('error', () => undefined);
    before.destroy(mismatch);
    await new Promise((resolve) => setImmediate(resolve));
    await expect(applyLayer(before, root, { preserveOwnership: false })).rejects.toBe(mismatch);
    // A refusal before the parse destroys the source too.
    const unused = new PassThrough();
    await expect(applyLayer(unused, root, { mode: 'other' as 'flatten' })).rejects.toThrow(/flatten/u);
    expect(unused.destroyed).toBe(true);
  });

  it('a failed layer destroys its source stream', async () => {
    const source = new PassThrough();
    const result = applyLayer(source, root, { preserveOwnership: false });
    source.write(Buffer.alloc(1024, 0x41));
    await expect(result).rejects.toThrow(InvalidImageError);
    expect(source.destroyed).toBe(true);
  });

  it('an aborted signal before the start refuses at once', async () => {
    const controller = new AbortController();
    controller.abort();
    await expect(applyLayer(Readable.from([Buffer.alloc(0)]), root, { signal: controller.signal })).rejects.toMatchObject({ code: 'ERR_VMPOD_ABORTED' });
    await expect(applyLayer(Readable.from([Buffer.alloc(0)]), root, { mode: 'other' as 'flatten' })).rejects.toThrow(/flatten/u);
  });
});
