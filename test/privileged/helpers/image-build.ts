/**
 * A multi-layer OCI image layout written by the tests themselves (tar-stream pack, gzip), for
 * the image store and image container tests:
 *
 *   1. a busybox root filesystem (the host's busybox-static, every applet a symlink),
 *      /etc/passwd with root and app (1000), /etc/group, /data/keep, /data/gone, /opaque/old,
 *      /big (3 MiB of a known pattern), /app (owned by app);
 *   2. a whiteout of /data/gone, /opaque made opaque (with /opaque/new in it), /data/added;
 *   3. /etc/motd.
 *
 * Config: Entrypoint ["/bin/sh", "-c"], Cmd [SCRIPT] (prints a marker, the user's name, the
 * working directory and $GREETING), User "app", WorkingDir "/app", Env PATH and GREETING.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import tar from 'tar-stream';

const exec = promisify(execFile);

export const BUSYBOX = '/bin/busybox';

/** What the default process of the built image prints. */
export const DEFAULT_OUTPUT = 'entry\napp\n/app\nhello\n';

/** The big file's bytes (3 MiB: bigger than one virtio-fs request). */
export function bigFile(): Buffer {
  const b = Buffer.alloc(3 << 20);
  for (let i = 0; i < b.length; i++) b[i] = (i * 7 + (i >> 12)) & 0xff;
  return b;
}

interface Entry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'character-device';
  mode?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
  body?: Buffer | string;
}

async function layerOf(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
  const ended = new Promise<void>((resolve, reject) => {
    pack.on('end', () => resolve());
    pack.on('error', (e: unknown) => reject(e as Error));
  });
  for (const e of entries) {
    const type = e.type ?? 'file';
    const header = { name: e.name, type, mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644), uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: new Date(1_700_000_000_000), ...(e.linkname ? { linkname: e.linkname } : {}) };
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error | null): void => (err ? reject(err) : resolve());
      if (type === 'file') pack.entry(header, e.body ?? '', done);
      else pack.entry(header, done);
    });
  }
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

const sha = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** The three layers' uncompressed tars. */
export async function testLayers(): Promise<Buffer[]> {
  const { stdout } = await exec(BUSYBOX, ['--list']);
  const applets = stdout.split('\n').filter((a) => a && a !== 'busybox');
  const base: Entry[] = [
    ...['bin', 'etc', 'proc', 'sys', 'dev', 'root', 'run', 'data', 'opaque'].map((d) => ({ name: `${d}/`, type: 'directory' as const })),
    { name: 'tmp/', type: 'directory', mode: 0o1777 },
    { name: 'home/', type: 'directory' },
    { name: 'home/app/', type: 'directory', uid: 1000, gid: 1000 },
    { name: 'app/', type: 'directory', uid: 1000, gid: 1000 },
    { name: 'bin/busybox', mode: 0o755, body: await fs.readFile(BUSYBOX) },
    ...applets.map((a) => ({ name: `bin/${a}`, type: 'symlink' as const, linkname: 'busybox' })),
    { name: 'etc/passwd', body: 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n' },
    { name: 'etc/group', body: 'root:x:0:\napp:x:1000:\n' },
    { name: 'data/keep', body: 'kept\n' },
    { name: 'data/gone', body: 'layer 2 removes this\n' },
    { name: 'opaque/old', body: 'hidden by the opaque marker\n' },
    { name: 'big', body: bigFile() },
  ];
  const second: Entry[] = [
    { name: 'data/', type: 'directory' },
    { name: 'data/.wh.gone' },
    { name: 'data/added', body: 'added by layer 2\n' },
    { name: 'opaque/', type: 'directory' },
    { name: 'opaque/.wh..wh..opq' },
    { name: 'opaque/new', body: 'new\n' },
  ];
  const third: Entry[] = [{ name: 'etc/', type: 'directory' }, { name: 'etc/motd', body: 'vmpod image test\n' }];
  return Promise.all([layerOf(base), layerOf(second), layerOf(third)]);
}

/** Writes an OCI image layout at `dir` with the test layers, tagged `tag`; returns `oci:DIR:TAG`. */
export async function writeTestLayout(dir: string, tag = 'test', layers?: Buffer[]): Promise<{ reference: string; diffIds: string[]; manifestDigest: string }> {
  const tars = layers ?? (await testLayers());
  const blobs = path.join(dir, 'blobs', 'sha256');
  await fs.mkdir(blobs, { recursive: true });
  const put = async (data: Buffer): Promise<string> => {
    const digest = sha(data);
    await fs.writeFile(path.join(blobs, digest.slice(7)), data);
    return digest;
  };
  const diffIds = tars.map((t) => sha(t));
  const layerDescriptors = [];
  for (const t of tars) {
    const gz = zlib.gzipSync(t);
    layerDescriptors.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: await put(gz), size: gz.length });
  }
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: {
        User: 'app',
        WorkingDir: '/app',
        Env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'GREETING=hello'],
        Entrypoint: ['/bin/sh', '-c'],
        Cmd: ['echo entry; id -un; pwd; echo $GREETING'],
        Labels: { 'org.vmpod.test': 'image' },
      },
      rootfs: { type: 'layers', diff_ids: diffIds },
      history: tars.map(() => ({ created_by: 'vmpod test' })),
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: await put(config), size: config.length },
      layers: layerDescriptors,
    }),
  );
  const manifestDigest = await put(manifest);
  await fs.writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await fs.writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: manifestDigest,
          size: manifest.length,
          annotations: { 'org.opencontainers.image.ref.name': tag },
          platform: { architecture: 'amd64', os: 'linux' },
        },
      ],
    }),
  );
  return { reference: `oci:${dir}:${tag}`, diffIds, manifestDigest };
}
