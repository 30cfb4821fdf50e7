/**
 * applyLayer against real filesystems, as root: hostile layers (each of these was seen to write
 * outside the root, or to follow a link out of it, with the protection that stops it disabled:
 * see docs/images.md, "Applying layers"), and the layer semantics of the image spec in both modes.
 * Every test works in a vmpod-unpack-* folder holding the root and a canary folder next to it; the
 * canary must be untouched and nothing else may appear in the folder.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidImageError, LayerEscapeError } from '../../src/image/errors.js';
import { applyLayer, type ApplyLayerOptions } from '../../src/image/unpack.js';
import { native } from '../../src/native.js';

type Header = Parameters<tar.Pack['entry']>[0];
type Spec = Header & { data?: string | Buffer };

/** A layer's tar, built with tar-stream's pack side. */
async function tarOf(entries: Spec[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  // Read while writing: an entry's callback waits for the pack's buffer to drain.
  const collected = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const { data, ...header } of entries) {
    await new Promise<void>((resolve, reject) => {
      pack.entry({ mtime: new Date(1_600_000_000_000), ...header }, data ?? Buffer.alloc(0), (e) => (e ? reject(e) : resolve()));
    });
  }
  pack.finalize();
  await collected;
  return Buffer.concat(chunks);
}

async function apply(root: string, entries: Spec[] | Buffer, options: ApplyLayerOptions = {}) {
  const buf = Buffer.isBuffer(entries) ? entries : await tarOf(entries);
  return applyLayer(Readable.from([buf]), root, options);
}

let base: string;
let root: string;
let canary: string;
const canaryFiles: Record<string, string> = { 'file': 'canary file\n', 'passwd': 'not yours\n', 'sub/deep': 'deep canary\n' };
const hostPasswd = createHash('sha256').update(fsSync.readFileSync('/etc/passwd')).digest('hex');

beforeEach(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-unpack-'));
  root = path.join(base, 'root');
  canary = path.join(base, 'canary');
  await fs.mkdir(root);
  await fs.mkdir(path.join(canary, 'sub'), { recursive: true });
  for (const [name, text] of Object.entries(canaryFiles)) await fs.writeFile(path.join(canary, name), text);
});

afterEach(async () => {
  try {
    // Nothing outside the root: the folder holds the root and the canary, the canary as it was.
    expect((await fs.readdir(base)).sort()).toEqual(['canary', 'root']);
    expect((await listTree(canary)).map((e) => e.split(' ')[0]).sort()).toEqual(['file', 'passwd', 'sub', 'sub/deep']);
    for (const [name, text] of Object.entries(canaryFiles)) expect(await fs.readFile(path.join(canary, name), 'utf8')).toBe(text);
    expect(createHash('sha256').update(fsSync.readFileSync('/etc/passwd')).digest('hex')).toBe(hostPasswd);
  } finally {
    for (const m of mounted.splice(0)) await native().umount(m, native().mountConstants.MNT_DETACH).catch(() => undefined);
    await fs.rm(base, { recursive: true, force: true });
  }
});
const mounted: string[] = [];

/** Every path below dir with type, mode, owner, size or target, and contents' hash. */
async function listTree(dir: string, withMtime = false): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await fs.readdir(path.join(dir, rel))).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const p = path.join(dir, r);
      const st = await fs.lstat(p);
      let what: string;
      if (st.isSymbolicLink()) what = `-> ${await fs.readlink(p)}`;
      else if (st.isFile()) what = `file ${createHash('sha256').update(await fs.readFile(p)).digest('hex').slice(0, 16)}`;
      else if (st.isDirectory()) what = 'dir';
      else if (st.isCharacterDevice() || st.isBlockDevice()) what = `${st.isCharacterDevice() ? 'char' : 'block'} ${st.rdev}`;
      else what = 'fifo';
      out.push(`${r} ${what} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}${withMtime && !st.isSymbolicLink() && !st.isDirectory() ? ` ${st.mtimeMs}` : ''}`);
      if (st.isDirectory()) await walk(r);
    }
  };
  await walk('');
  return out;
}

function getXattr(file: string, name: string): Buffer | null {
  const hex = execFileSync('python3', ['-c', `import os,sys
try: sys.stdout.write(os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False).hex())
except OSError: sys.stdout.write('none')`, file, name]).toString();
  return hex === 'none' ? null : Buffer.from(hex, 'hex');
}

describe('applyLayer: hostile layers', () => {
  it('refuses `..` names that leave the root, and writes nothing', async () => {
    for (const name of ['./../canary/file', '../../etc/x', 'a/../../x', '..']) {
      await expect(apply(root, [{ name, data: 'evil\n' }])).rejects.toThrow(LayerEscapeError);
    }
    expect(await fs.readdir(root)).toEqual([]);
  });

  it('takes absolute names as relative to the root', async () => {
    await apply(root, [{ name: `${canary}/file`, data: 'inside\n' }, { name: '/abs', data: 'abs\n' }]);
    expect(await fs.readFile(path.join(root, canary, 'file'), 'utf8')).toBe('inside\n');
    expect(await fs.readFile(path.join(root, 'abs'), 'utf8')).toBe('abs\n');
  });

  it('resolves a symlink to / inside the root: a -> / then a/etc/passwd', async () => {
    await apply(root, [{ name: 'a', type: 'symlink', linkname: '/' }, { name: 'a/etc/passwd', data: 'root::0:0::/:/bin/sh\n' }]);
    expect(await fs.readFile(path.join(root, 'etc/passwd'), 'utf8')).toBe('root::0:0::/:/bin/sh\n');
    expect(await fs.readlink(path.join(root, 'a'))).toBe('/');
  });

  it('resolves a ../../.. symlink inside the root, and an absolute one to the canary', async () => {
    await apply(root, [
      { name: 'b', type: 'symlink', linkname: '../../../../../../../..' },
      { name: `b${canary}/file`, data: 'evil\n' },
      { name: 'c', type: 'symlink', linkname: canary },
      { name: 'c/passwd', data: 'evil\n' },
      { name: 'c/sub/deep', data: 'evil\n' },
    ]);
    expect(await fs.readFile(path.join(root, canary, 'file'), 'utf8')).toBe('evil\n');
    expect(await fs.readFile(path.join(root, canary, 'passwd'), 'utf8')).toBe('evil\n');
    expect(await fs.readFile(path.join(root, canary, 'sub/deep'), 'utf8')).toBe('evil\n');
  });

  it('refuses hardlinks that leave the root, and resolves /etc/passwd inside it', async () => {
    await expect(apply(root, [{ name: 'h', type: 'link', linkname: '../x' }])).rejects.toThrow(LayerEscapeError);
    await expect(apply(root, [{ name: 'h', type: 'link', linkname: '../../canary/file' }])).rejects.toThrow(LayerEscapeError);
    // /etc/passwd of the root does not exist yet: refused, the host's is never linked.
    await expect(apply(root, [{ name: 'h', type: 'link', linkname: '/etc/passwd' }])).rejects.toThrow(InvalidImageError);
    await expect(fs.lstat(path.join(root, 'h'))).rejects.toMatchObject({ code: 'ENOENT' });
    await apply(root, [{ name: 'etc/passwd', data: 'image\n' }, { name: 'h', type: 'link', linkname: '/etc/passwd' }]);
    expect((await fs.stat(path.join(root, 'h'))).ino).toBe((await fs.stat(path.join(root, 'etc/passwd'))).ino);
  });

  it('refuses a hardlink to a symlink, through a symlink out of the root, or to a directory', async () => {
    await expect(apply(root, [
      { name: 's', type: 'symlink', linkname: path.join(canary, 'file') },
      { name: 'h', type: 'link', linkname: 's' },
    ])).rejects.toThrow(LayerEscapeError);
    await expect(apply(root, [
      { name: 'd', type: 'symlink', linkname: canary },
      { name: 'h2', type: 'link', linkname: 'd/file' },
    ])).rejects.toThrow(InvalidImageError);
    await expect(apply(root, [{ name: 'dir', type: 'directory' }, { name: 'h3', type: 'link', linkname: 'dir' }])).rejects.toThrow(/a hardlink to a directory/u);
    for (const name of ['h', 'h2', 'h3']) await expect(fs.lstat(path.join(root, name))).rejects.toMatchObject({ code: 'ENOENT' });
    // The canary's file was never linked: it still has one link.
    expect((await fs.stat(path.join(canary, 'file'))).nlink).toBe(1);
  });

  it('a hardlink to a symlink that points outside cannot make a later write land outside', async () => {
    await expect(apply(root, [
      { name: 'out', type: 'symlink', linkname: path.join(canary, 'passwd') },
      { name: 'hl', type: 'link', linkname: 'out' },
      { name: 'hl', data: 'evil\n' },
    ])).rejects.toThrow(LayerEscapeError);
    // And a regular file written over the symlink replaces the symlink, not its target.
    await apply(root, [{ name: 'out', data: 'replaced\n' }]);
    expect((await fs.lstat(path.join(root, 'out'))).isFile()).toBe(true);
  });

  it('a directory replaced by a symlink to outside in a later layer: files under it stay inside', async () => {
    await apply(root, [{ name: 'd', type: 'directory' }, { name: 'd/f', data: 'one\n' }]);
    await apply(root, [{ name: 'd', type: 'symlink', linkname: canary }, { name: 'd/file', data: 'evil\n' }, { name: 'd/new', data: 'evil\n' }]);
    expect(await fs.readlink(path.join(root, 'd'))).toBe(canary);
    expect(await fs.readFile(path.join(root, canary, 'file'), 'utf8')).toBe('evil\n');
    expect(await fs.readFile(path.join(root, canary, 'new'), 'utf8')).toBe('evil\n');
  });

  it('a directory named after a symlink of the same name replaces the symlink, never writes through it', async () => {
    await apply(root, [{ name: 'e', type: 'symlink', linkname: canary }]);
    await apply(root, [{ name: 'e', type: 'directory', mode: 0o700 }, { name: 'e/file', data: 'inside\n' }]);
    expect((await fs.lstat(path.join(root, 'e'))).isDirectory()).toBe(true);
    expect(await fs.readFile(path.join(root, 'e/file'), 'utf8')).toBe('inside\n');
  });

  it('refuses whiteouts of `..` and `.`, and whites out through a symlink inside the root', async () => {
    await expect(apply(root, [{ name: 'x/.wh...' }])).rejects.toThrow(LayerEscapeError);
    await expect(apply(root, [{ name: '.wh..' }])).rejects.toThrow(LayerEscapeError);
    await expect(apply(root, [{ name: 'x/../../.wh.canary' }])).rejects.toThrow(LayerEscapeError);
    await apply(root, [{ name: `${canary.slice(1)}/file`, data: 'image\n' }, { name: 'l', type: 'symlink', linkname: canary }]);
    await apply(root, [{ name: 'l/.wh.file' }, { name: 'l/.wh.sub' }, { name: 'up/.wh.canary' }, { name: 'l2', type: 'symlink', linkname: '../../..' }, { name: 'l2/.wh.canary' }]);
    await expect(fs.lstat(path.join(root, canary, 'file'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('refuses garbage and truncated tars, bad names and limits with typed errors', async () => {
    await expect(apply(root, Buffer.from('this is not a tar stream at all'.repeat(40)))).rejects.toThrow(InvalidImageError);
    const good = await tarOf([{ name: 'f', data: 'x'.repeat(5000) }]);
    await expect(apply(root, good.subarray(0, 1500))).rejects.toThrow(InvalidImageError);
    await expect(apply(root, [{ name: 'ok', data: '', pax: { path: 'a/b\0c' } }])).rejects.toThrow(InvalidImageError);
    await expect(apply(root, [{ name: 'a', data: '' }, { name: 'b', data: '' }, { name: 'c', data: '' }], { limits: { maxEntries: 2 } })).rejects.toThrow(/more than 2 entries/u);
    await expect(apply(root, [{ name: 'x'.repeat(300), data: '' }], { limits: { maxPathLength: 200 } })).rejects.toThrow(/longer than 200 bytes/u);
    await expect(apply(root, [{ name: 'big', data: '', pax: { 'SCHILY.xattr.user.big': 'v'.repeat(300) } }], { limits: { maxXattrBytes: 100 } })).rejects.toThrow(InvalidImageError);
    await expect(apply(root, [{ name: 'l', type: 'symlink', linkname: '' }])).rejects.toThrow(InvalidImageError);
  });

  it('honours an aborted signal between entries', async () => {
    const controller = new AbortController();
    const entries: Spec[] = Array.from({ length: 50 }, (_, i) => ({ name: `f${i}`, data: 'x' }));
    const result = apply(root, entries, { signal: controller.signal, onProgress: (c) => { if (c.entries === 10) controller.abort(new Error('enough')); } });
    await expect(result).rejects.toMatchObject({ code: 'ERR_VMPOD_ABORTED' });
    expect((await fs.readdir(root)).length).toBeLessThan(50);
  });
});

describe('applyLayer: the layer semantics', () => {
  it('files, directories, modes, owners, setuid after chown, devices, fifos, mtimes in ns, verbatim symlinks', async () => {
    const counts = await apply(root, [
      { name: './', type: 'directory', mode: 0o755 },
      { name: 'bin/', type: 'directory', mode: 0o711, uid: 5, gid: 6 },
      { name: 'bin/su', data: '#!/bin/true\n', mode: 0o4755, uid: 1000, gid: 1000 },
      { name: 'bin/sg', data: 'x', mode: 0o2711, uid: 0, gid: 42 },
      { name: 'tmp', type: 'directory', mode: 0o1777 },
      { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
      { name: 'dev/loop0', type: 'block-device', devmajor: 7, devminor: 0, mode: 0o660, gid: 6 },
      { name: 'run/fifo', type: 'fifo', mode: 0o620 },
      { name: 'etc/localtime', type: 'symlink', linkname: '/usr/share/zoneinfo/UTC' },
      { name: 'rel', type: 'symlink', linkname: '../../../../x' },
      { name: 'ns', data: 'ns\n', pax: { mtime: '1700000000.123456789', atime: '1600000000.5' } },
      { name: 'stamped', type: 'directory', pax: { mtime: '1500000000.000000042' } },
      { name: 'stamped/child', data: 'written after the directory\n' },
    ]);
    expect(counts).toEqual({ entries: 13, bytes: 12 + 1 + 3 + 28, whiteouts: 0 });
    const st = async (p: string) => fs.lstat(path.join(root, p), { bigint: true });
    expect(Number((await st('bin/su')).mode & 0o7777n).toString(8)).toBe('4755');
    expect((await st('bin/su')).uid).toBe(1000n);
    expect(Number((await st('bin/sg')).mode & 0o7777n).toString(8)).toBe('2711');
    expect((await st('bin/sg')).gid).toBe(42n);
    expect(Number((await st('bin')).mode & 0o7777n).toString(8)).toBe('711');
    expect([(await st('bin')).uid, (await st('bin')).gid]).toEqual([5n, 6n]);
    expect(Number((await st('tmp')).mode & 0o7777n).toString(8)).toBe('1777');
    expect((await st('dev/null')).isCharacterDevice()).toBe(true);
    expect((await st('dev/null')).rdev).toBe(BigInt((1 << 8) | 3));
    expect((await st('dev/loop0')).isBlockDevice()).toBe(true);
    expect((await st('dev/loop0')).rdev).toBe(BigInt(7 << 8));
    expect((await st('run/fifo')).isFIFO()).toBe(true);
    expect(Number((await st('run/fifo')).mode & 0o7777n).toString(8)).toBe('620');
    expect(await fs.readlink(path.join(root, 'etc/localtime'))).toBe('/usr/share/zoneinfo/UTC');
    expect(await fs.readlink(path.join(root, 'rel'))).toBe('../../../../x');
    expect((await st('ns')).mtimeNs).toBe(1_700_000_000_123_456_789n);
    expect((await st('ns')).atimeNs).toBe(1_600_000_000_500_000_000n);
    // The directory's time is set after its child was written.
    expect((await st('stamped')).mtimeNs).toBe(1_500_000_000_000_000_042n);
    expect((await st('etc/localtime')).mtimeNs).toBe(1_600_000_000_000_000_000n);
  });

  it('GNU long names and links, and pax long names', async () => {
    const scratch = path.join(root, 'scratch');
    const long = `${'d'.repeat(120)}/${'f'.repeat(150)}`;
    await fs.mkdir(path.join(scratch, 'd'.repeat(120)), { recursive: true });
    await fs.writeFile(path.join(scratch, long), 'long\n');
    await fs.symlink(`/${'t'.repeat(200)}`, path.join(scratch, 'longlink'));
    await fs.link(path.join(scratch, long), path.join(scratch, 'hard'));
    for (const format of ['gnu', 'pax']) {
      const tarBuf = execFileSync('tar', ['-C', scratch, `--format=${format}`, '-cf', '-', '.'], { maxBuffer: 1 << 24 });
      const dest = path.join(root, format);
      await fs.mkdir(dest);
      await apply(dest, tarBuf);
      expect(await fs.readFile(path.join(dest, long), 'utf8')).toBe('long\n');
      expect(await fs.readlink(path.join(dest, 'longlink'))).toBe(`/${'t'.repeat(200)}`);
      const [a, b] = await Promise.all([fs.stat(path.join(dest, long)), fs.stat(path.join(dest, 'hard'))]);
      expect(a.ino).toBe(b.ino);
    }
  });

  it('xattrs from pax, binary security.capability included, set after chown', async () => {
    // VFS_CAP_REVISION_2, permitted = CAP_SETUID (bit 7: the byte 0x80) | CAP_NET_RAW (bit 13).
    const cap = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x80, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    const buf = await tarOf([
      { name: 'ping', data: 'x', mode: 0o755, uid: 0, gid: 0, pax: { 'SCHILY.xattr.security.capability': cap.toString('latin1'), 'SCHILY.xattr.user.note': 'héllo' } },
      { name: 'd', type: 'directory', pax: { 'SCHILY.xattr.trusted.mark': 'dir' } },
      { name: 'ln', type: 'symlink', linkname: 'ping', pax: { 'SCHILY.xattr.trusted.link': 'on the link' } },
    ]);
    // tar-stream's pack writes pax values as UTF-8; a real tar has the raw bytes: rewrite them.
    const fixed = rewritePaxValue(buf, 'SCHILY.xattr.security.capability', cap);
    await apply(root, fixed);
    expect(getXattr(path.join(root, 'ping'), 'security.capability')).toEqual(cap);
    expect(getXattr(path.join(root, 'ping'), 'user.note')?.toString('utf8')).toBe('héllo');
    expect(getXattr(path.join(root, 'd'), 'trusted.mark')?.toString()).toBe('dir');
    expect(getXattr(path.join(root, 'ln'), 'trusted.link')?.toString()).toBe('on the link');
    expect(getXattr(path.join(root, 'ping'), 'trusted.link')).toBeNull();
  });

  it('a directory over a directory changes only its attributes; a file over a directory replaces it', async () => {
    await apply(root, [{ name: 'd', type: 'directory', mode: 0o755 }, { name: 'd/keep', data: 'lower\n' }, { name: 'x/y', data: 'y' }, { name: 'f', data: 'file' }]);
    await apply(root, [{ name: 'd', type: 'directory', mode: 0o700, uid: 7, gid: 8 }, { name: 'x', data: 'now a file\n' }, { name: 'f', type: 'directory' }]);
    expect(await fs.readFile(path.join(root, 'd/keep'), 'utf8')).toBe('lower\n');
    const d = await fs.stat(path.join(root, 'd'));
    expect([(d.mode & 0o7777).toString(8), d.uid, d.gid]).toEqual(['700', 7, 8]);
    expect(await fs.readFile(path.join(root, 'x'), 'utf8')).toBe('now a file\n');
    expect((await fs.stat(path.join(root, 'f'))).isDirectory()).toBe(true);
  });

  it('hardlinks share an inode; a big file goes through the fd path intact', async () => {
    const big = Buffer.alloc(3 * 1024 * 1024 + 17);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7919) & 0xff;
    await apply(root, [{ name: 'big', data: big, mode: 0o4750, uid: 3, gid: 4 }, { name: 'sub/link', type: 'link', linkname: './big' }]);
    const [a, b] = await Promise.all([fs.stat(path.join(root, 'big')), fs.stat(path.join(root, 'sub/link'))]);
    expect(a.ino).toBe(b.ino);
    expect(a.nlink).toBe(2);
    expect((a.mode & 0o7777).toString(8)).toBe('4750');
    expect([a.uid, a.gid]).toEqual([3, 4]);
    expect((await fs.readFile(path.join(root, 'big'))).equals(big)).toBe(true);
  });

  const lower: Spec[] = [
    { name: 'a/', type: 'directory' }, { name: 'a/x', data: 'x' }, { name: 'a/y', data: 'y' },
    { name: 'b/', type: 'directory' }, { name: 'b/z', data: 'z' }, { name: 'b/deep/w', data: 'w' },
    { name: 'c/', type: 'directory' }, { name: 'c/old', data: 'old' }, { name: 'c/sub/old2', data: 'old2' },
    { name: 'keep', data: 'keep' },
  ];
  const upper: Spec[] = [
    { name: 'a/.wh.x' }, { name: '.wh.b' },
    { name: 'c/', type: 'directory', mode: 0o750 }, { name: 'c/.wh..wh..opq' }, { name: 'c/new', data: 'new' }, { name: 'c/sub/new2', data: 'new2' },
    { name: '.wh.nothing-there' },
  ];
  const expected = ['a dir 755 0:0', 'a/y', 'c dir 750 0:0', 'c/new', 'c/sub dir 755 0:0', 'c/sub/new2', 'keep'];

  it('flatten: whiteouts delete, an opaque directory loses what the lower layers had', async () => {
    await apply(root, lower);
    const counts = await apply(root, upper);
    expect(counts.whiteouts).toBe(4);
    const tree = await listTree(root);
    expect(tree.map((e) => (e.includes(' dir ') ? e : e.split(' ')[0]))).toEqual(expected);
  });

  it('flatten: an opaque whiteout after the layer wrote into the directory keeps what it wrote', async () => {
    await apply(root, lower);
    await apply(root, [{ name: 'c/first', data: 'f' }, { name: 'c/sub/n', data: 'n' }, { name: 'c/.wh..wh..opq' }]);
    expect((await listTree(root)).filter((e) => e.startsWith('c/')).map((e) => e.split(' ')[0])).toEqual(['c/first', 'c/sub', 'c/sub/n']);
    // Opaque twice in one layer, and a whiteout of a directory this layer made: only the lower
    // layers' contents go, everything the layer wrote (before or after) stays.
    await apply(root, [
      { name: 'c/.wh..wh..opq' }, { name: 'c/a', data: 'a' }, { name: 'c/.wh..wh..opq' }, { name: 'c/b', data: 'b' },
      { name: 'a/z/new', data: 'new' }, { name: '.wh.a' },
    ]);
    expect((await listTree(root)).filter((e) => /^[ac]\//u.test(e)).map((e) => e.split(' ')[0])).toEqual(['a/z', 'a/z/new', 'c/a', 'c/b']);
  });

  it('overlay: whiteouts are 0/0 char devices, opaque is trusted.overlay.opaque; overlayfs of the layers equals flatten', async () => {
    const l1 = path.join(root, 'l1');
    const l2 = path.join(root, 'l2');
    const l3 = path.join(root, 'l3');
    const flat = path.join(root, 'flat');
    const merged = path.join(root, 'merged');
    for (const d of [l1, l2, l3, flat, merged]) await fs.mkdir(d);
    // A third layer: opaque twice in one directory, a whiteout of a directory the layer writes into.
    const third: Spec[] = [
      { name: 'a/.wh..wh..opq' }, { name: 'a/n1', data: '1' }, { name: 'a/.wh..wh..opq' }, { name: 'a/n2', data: '2' },
      { name: 'c/sub/more', data: 'more' }, { name: 'c/.wh.sub' }, { name: 'keep', data: 'replaced' },
    ];
    await apply(l1, lower, { mode: 'overlay' });
    await apply(l2, upper, { mode: 'overlay', parents: [l1] });
    // `c` is not named by the third layer: made from l2's (0750), not with defaults (0755).
    await apply(l3, third, { mode: 'overlay', parents: [l2, l1] });
    expect(((await fs.stat(path.join(l3, 'c'))).mode & 0o7777).toString(8)).toBe('750');
    const wh = await fs.lstat(path.join(l2, 'b'));
    expect(wh.isCharacterDevice() && wh.rdev === 0).toBe(true);
    expect(getXattr(path.join(l2, 'c'), 'trusted.overlay.opaque')?.toString()).toBe('y');
    await apply(flat, lower);
    await apply(flat, upper);
    await native().mount('overlay', merged, 'overlay', native().mountConstants.MS_RDONLY, `lowerdir=${l2}:${l1}`);
    mounted.push(merged);
    expect(await listTree(merged, true)).toEqual(await listTree(flat, true));
    await native().umount(merged, 0);
    mounted.pop();
    await apply(flat, third);
    await native().mount('overlay', merged, 'overlay', native().mountConstants.MS_RDONLY, `lowerdir=${l3}:${l2}:${l1}`);
    mounted.push(merged);
    const tree = await listTree(merged, true);
    expect(tree.map((e) => e.split(' ')[0])).toEqual(['a', 'a/n1', 'a/n2', 'c', 'c/new', 'c/sub', 'c/sub/more', 'keep']);
    expect(tree).toEqual(await listTree(flat, true));
    await native().umount(merged, 0);
    mounted.pop();
  });

  it('agrees with umoci unpack on a real image (names, types, modes, owners, link targets, contents)', async (ctx) => {
    const { busyboxImage, imageSkipReason, removeTestImages, UMOCI } = await import('./helpers/oci-images.js');
    const reason = await imageSkipReason();
    if (reason) ctx.skip(reason);
    try {
      const image = await busyboxImage();
      const bundle = path.join(root, 'bundle');
      execFileSync(UMOCI, ['unpack', '--image', `${image.layout}:${image.tag}`, bundle], { stdio: 'pipe' });
      const index = JSON.parse(await fs.readFile(path.join(image.layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> };
      const desc = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === image.tag) ?? index.manifests[0]!;
      const blob = (digest: string) => path.join(image.layout, 'blobs', ...digest.split(':'));
      const manifest = JSON.parse(await fs.readFile(blob(desc.digest), 'utf8')) as { layers: Array<{ digest: string; mediaType: string }> };
      const mine = path.join(root, 'mine');
      await fs.mkdir(mine);
      const zlib = await import('node:zlib');
      let whiteouts = 0;
      for (const layer of manifest.layers) {
        const raw = await fs.readFile(blob(layer.digest));
        const counts = await apply(mine, layer.mediaType.endsWith('gzip') ? zlib.gunzipSync(raw) : raw);
        whiteouts += counts.whiteouts;
      }
      expect(whiteouts).toBeGreaterThan(0);
      const theirs = await listTree(path.join(bundle, 'rootfs'));
      expect(theirs.length).toBeGreaterThan(10);
      expect(await listTree(mine)).toEqual(theirs);
    } finally {
      await removeTestImages();
    }
  });
});

/** Replaces a pax record's value (UTF-8 as tar-stream wrote it) with raw bytes, fixing lengths and the checksum. */
function rewritePaxValue(tarBuf: Buffer, key: string, value: Buffer): Buffer {
  const blocks: Buffer[] = [];
  let off = 0;
  while (off + 512 <= tarBuf.length) {
    const header = Buffer.from(tarBuf.subarray(off, off + 512));
    const size = parseInt(header.subarray(124, 136).toString('latin1').replace(/\0.*$/su, '').trim() || '0', 8);
    const body = tarBuf.subarray(off + 512, off + 512 + size);
    off += 512 + Math.ceil(size / 512) * 512;
    if (header[156] !== 0x78 /* 'x' */ || !body.includes(Buffer.from(key))) {
      blocks.push(header, tarBuf.subarray(off - Math.ceil(size / 512) * 512, off));
      continue;
    }
    const records: Buffer[] = [];
    let rest = body;
    while (rest.length > 0) {
      const sp = rest.indexOf(0x20);
      const len = Number(rest.subarray(0, sp).toString());
      const rec = rest.subarray(sp + 1, len - 1);
      const eq = rec.indexOf(0x3d);
      const k = rec.subarray(0, eq).toString();
      const v = k === key ? value : rec.subarray(eq + 1);
      const inner = Buffer.concat([Buffer.from(`${k}=`), v, Buffer.from('\n')]);
      let n = inner.length + 2;
      while (String(n).length + 1 + inner.length !== n) n = String(n).length + 1 + inner.length;
      records.push(Buffer.from(`${n} `), inner);
      rest = rest.subarray(len);
    }
    const newBody = Buffer.concat(records);
    header.write(newBody.length.toString(8).padStart(11, '0') + '\0', 124, 12, 'latin1');
    header.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of header) sum += b;
    header.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
    blocks.push(header, newBody, Buffer.alloc((512 - (newBody.length % 512)) % 512));
  }
  blocks.push(tarBuf.subarray(off));
  return Buffer.concat(blocks);
}
