/**
 * image-unpack: an OCI image of realistic size (3 gzip layers of this machine's Debian files:
 * /usr/lib/x86_64-linux-gnu, /usr/share and /usr/bin, capped at MAX_FILES files and MAX_MIB MiB
 * each), unpacked
 * - `vmpod-bundle`: by `image.bundle(dir)` (every layer applied in turn, `flatten`: what a
 *   standalone bundle needs), against
 * - `umoci-unpack`: `umoci unpack --image LAYOUT:TAG DIR` of the same layout (the peer);
 * - `store-unpack`: into an empty image store (`image.unpack()`: each layer into a folder of its
 *   own, overlay form);
 * and, in one running sandbox:
 * - `first-container`: `createContainer({ image })` to a created container with an empty store
 *   (unpack, mount the view, share it, create in the guest);
 * - `cached-container`: a second container of the same image (nothing unpacked).
 * Interleaved after one warm-up round; every tree is removed between runs.
 *
 * Usage: npm run bench -- image-unpack [RUNS] [--files N] [--mib N]   (default 5 runs, 3000 files, 40 MiB a layer)
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { Image } from '../src/image/image.js';
import { Sandbox } from '../src/sandbox/index.js';
import { mountPoints } from '../src/state/remove.js';
import { withCleanup } from './lib/cleanup.js';
import { benchArgs, interleave } from './lib/interleave.js';
import { machineFacts } from './lib/machine.js';
import { ratios, report } from './lib/report.js';
import { benchStateDir } from './lib/sandbox.js';

const exec = promisify(execFile);
const USAGE = 'usage: npm run bench -- image-unpack [RUNS] [--files N] [--mib N]';
const UMOCI = '/usr/bin/umoci';

/** A gzip'ed tar of up to `maxFiles` regular files (and the symlinks met on the way) under `root`, at most `maxBytes` of contents. */
async function hostLayer(root: string, maxFiles: number, maxBytes: number): Promise<{ tar: Buffer; files: number; bytes: number }> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
  const ended = new Promise<void>((resolve, reject) => {
    pack.on('end', () => resolve());
    pack.on('error', (e: unknown) => reject(e as Error));
  });
  const put = (header: Parameters<tar.Pack['entry']>[0], body?: Buffer): Promise<void> =>
    new Promise((resolve, reject) => {
      const done = (e?: Error | null): void => (e ? reject(e) : resolve());
      if (body === undefined) pack.entry(header, done);
      else pack.entry(header, body, done);
    });
  let files = 0;
  let bytes = 0;
  const made = new Set<string>();
  const dirs = async (rel: string): Promise<void> => {
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (made.has(d)) continue;
      made.add(d);
      await put({ name: `${d}/`, type: 'directory', mode: 0o755 });
    }
  };
  const walk = async (dir: string): Promise<void> => {
    for (const entry of (await fs.readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      if (files >= maxFiles || bytes >= maxBytes) return;
      const full = path.join(dir, entry.name);
      const rel = full.slice(1);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isSymbolicLink()) {
        await dirs(rel);
        await put({ name: rel, type: 'symlink', linkname: await fs.readlink(full) });
      } else if (entry.isFile()) {
        const st = await fs.stat(full);
        if (st.size > 8 << 20) continue;
        await dirs(rel);
        await put({ name: rel, type: 'file', mode: st.mode & 0o7777, mtime: st.mtime }, await fs.readFile(full));
        files++;
        bytes += st.size;
      }
    }
  };
  await walk(root);
  pack.finalize();
  await ended;
  return { tar: Buffer.concat(chunks), files, bytes };
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** An OCI layout at `dir` with `tars` as gzip layers; returns its `oci:` reference. */
async function writeLayout(dir: string, tag: string, tars: Buffer[]): Promise<string> {
  const blobs = path.join(dir, 'blobs', 'sha256');
  await fs.mkdir(blobs, { recursive: true });
  const put = async (data: Buffer): Promise<{ digest: string; size: number }> => {
    const digest = sha(data);
    await fs.writeFile(path.join(blobs, digest.slice(7)), data);
    return { digest, size: data.length };
  };
  const layers = [];
  for (const t of tars) layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...(await put(zlib.gzipSync(t))) });
  const config = await put(
    Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/true'], Env: ['PATH=/usr/bin:/bin'] }, rootfs: { type: 'layers', diff_ids: tars.map(sha) } })),
  );
  const manifestBytes = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers }),
  );
  const manifest = await put(manifestBytes);
  await fs.writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await fs.writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': tag } }] }),
  );
  return `oci:${dir}:${tag}`;
}

export default async function main(args: string[]): Promise<void> {
  const { runs, options } = benchArgs(args, 5, { files: '3000', mib: '40' }, USAGE);
  const maxFiles = Number(options.files);
  const maxBytes = Number(options.mib) << 20;
  if (!(await fs.stat(UMOCI).catch(() => undefined))) throw new Error(`needs ${UMOCI} (Debian's umoci: scripts/setup-host.sh installs it)`);
  const facts = await machineFacts();
  await withCleanup(async (cleanup) => {
    const { signal } = cleanup;
    const work = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-image-'));
    const unmountUnder = async (): Promise<void> => {
      for (const m of (await mountPoints()).filter((p) => p.startsWith(`${work}/`)).reverse()) await exec('umount', ['-l', m]).catch(() => undefined);
    };
    cleanup.add(`work dir ${work}`, async () => {
      await unmountUnder();
      await fs.rm(work, { recursive: true, force: true });
    });
    process.stderr.write('building the image from this machine\'s files...\n');
    const made = await Promise.all([
      hostLayer('/usr/lib/x86_64-linux-gnu', maxFiles, maxBytes),
      hostLayer('/usr/share', maxFiles, maxBytes),
      hostLayer('/usr/bin', maxFiles, maxBytes),
    ]);
    // The containers are timed to "created" (their process is never started).
    const reference = await writeLayout(path.join(work, 'layout'), 'bench', made.map((m) => m.tar));
    const layout = reference.slice('oci:'.length, reference.lastIndexOf(':'));
    const image = await Image.open(reference);
    cleanup.add('image', () => image.close());
    let n = 0;
    const fresh = (what: string): string => path.join(work, `${what}-${n++}`);

    const bundle = async (): Promise<number> => {
      const dir = fresh('bundle');
      const t0 = performance.now();
      await image.bundle(dir);
      const ms = performance.now() - t0;
      await fs.rm(dir, { recursive: true, force: true });
      return ms;
    };
    const umoci = async (): Promise<number> => {
      const dir = fresh('umoci');
      const t0 = performance.now();
      await exec(UMOCI, ['unpack', '--image', `${layout}:bench`, dir], { env: { ...process.env, TMPDIR: work } });
      const ms = performance.now() - t0;
      await fs.rm(dir, { recursive: true, force: true });
      return ms;
    };
    const storeUnpack = async (): Promise<number> => {
      const store = fresh('store');
      await using fromStore = await Image.open(reference, { store });
      const t0 = performance.now();
      await fromStore.unpack();
      const ms = performance.now() - t0;
      await Image.prune({ store });
      await fs.rm(store, { recursive: true, force: true });
      return ms;
    };

    const stateDir = await benchStateDir(cleanup);
    const sandbox = await Sandbox.create({ stateDir }, { signal });
    cleanup.add(`sandbox ${sandbox.id}`, () => sandbox.delete({ force: true }));
    await sandbox.start({ signal });
    const containers = async (): Promise<Record<string, number>> => {
      const store = fresh('cstore');
      const timed = async (): Promise<[number, () => Promise<void>]> => {
        await using img = await Image.open(reference, { store });
        const t0 = performance.now();
        const c = await sandbox.createContainer({ image: img, stdio: { stdout: false, stderr: false }, signal });
        const ms = performance.now() - t0;
        return [ms, () => c.delete({ force: true })];
      };
      const [first, undoFirst] = await timed();
      const [second, undoSecond] = await timed();
      await undoSecond();
      await undoFirst();
      await Image.prune({ store, stateDir });
      await fs.rm(store, { recursive: true, force: true });
      return { 'first-container': first, 'cached-container': second };
    };

    const samples = await interleave(runs, [['vmpod-bundle', bundle], ['umoci-unpack', umoci], ['store-unpack', storeUnpack], ['containers', containers]], { signal, digits: 0 });
    const results = samples.results();
    report(
      'image-unpack',
      'ms',
      runs,
      results,
      ratios(results, [['vmpod-bundle', 'umoci-unpack'], ['store-unpack', 'umoci-unpack'], ['cached-container', 'first-container']]),
      {
        image: made.map((m, i) => `layer ${i + 1}: ${m.files} files, ${(m.bytes / (1 << 20)).toFixed(1)} MiB`).join('; '),
        ...facts,
      },
    );
  });
}
