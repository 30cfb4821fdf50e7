/**
 * `image.bundle(dir)`: a standalone OCI bundle from an image, every layer flattened in turn,
 * compared entry by entry with what `umoci unpack` makes of the same layout (Debian's umoci).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Image } from '../../src/image/image.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { bigFile, writeTestLayout } from './helpers/image-build.js';

const exec = promisify(execFile);
const UMOCI = '/usr/bin/umoci';
const skip =
  process.getuid?.() !== 0 ? 'needs root (owners, device nodes)' : !(await fs.stat(UMOCI).catch(() => undefined)) ? `needs ${UMOCI} (scripts/setup-host.sh)` : undefined;

/** Every entry under `root`: its relative path, type, mode, owner, and a file's size or a link's target. */
async function tree(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const name of (await fs.readdir(dir)).sort()) {
      const full = path.join(dir, name);
      const st = await fs.lstat(full);
      const rel = path.relative(root, full);
      const what = st.isSymbolicLink() ? `-> ${await fs.readlink(full)}` : st.isFile() ? `${st.size}` : st.isDirectory() ? 'dir' : 'other';
      out.push(`${rel} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${what}`);
      if (st.isDirectory()) await walk(full);
    }
  };
  await walk(root);
  return out;
}

describe.skipIf(skip)(`image.bundle${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let work: string;
  let reference: string;
  let layout: string;

  beforeAll(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-imgb-'));
    layout = path.join(work, 'layout');
    ({ reference } = await writeTestLayout(layout, 'test'));
  });

  afterAll(async () => {
    await fs.rm(work, { recursive: true, force: true });
  });

  it('makes the tree umoci unpack makes, with whiteouts applied, and a config.json of the image', async () => {
    await using image = await Image.open(reference, { store: path.join(work, 'store') });
    const bundle = path.join(work, 'bundle');
    const spec = await image.bundle(bundle);
    expect(JSON.parse(await fs.readFile(path.join(bundle, 'config.json'), 'utf8'))).toEqual(spec);
    expect(spec.process.args).toEqual(['/bin/sh', '-c', 'echo entry; id -un; pwd; echo $GREETING']);
    expect(spec.process.cwd).toBe('/app');
    expect(spec.process.user).toMatchObject({ uid: 1000, gid: 1000 });
    const rootfs = path.join(bundle, 'rootfs');
    await expect(fs.lstat(path.join(rootfs, 'data/gone'))).rejects.toThrow(/ENOENT/u);
    expect(await fs.readdir(path.join(rootfs, 'opaque'))).toEqual(['new']);
    expect((await fs.readFile(path.join(rootfs, 'big'))).equals(bigFile())).toBe(true);
    // The store was not used.
    expect(await Image.list({ store: path.join(work, 'store') })).toEqual([]);

    const peer = path.join(work, 'umoci');
    await exec(UMOCI, ['unpack', '--image', `${layout}:test`, peer], { env: { ...process.env, TMPDIR: work } });
    expect(await tree(rootfs)).toEqual(await tree(path.join(peer, 'rootfs')));
  });

  it('refuses a folder that is not empty', async () => {
    await using image = await Image.open(reference, { store: path.join(work, 'store') });
    const dir = path.join(work, 'full');
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'x'), '');
    await expect(image.bundle(dir)).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});
