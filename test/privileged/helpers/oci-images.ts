/**
 * Test images, built offline from the host's busybox-static with umoci and skopeo (both from
 * Debian: scripts/setup-host.sh). One image, three layers, so that layer order and whiteouts are
 * exercised by anything that unpacks it:
 *
 *   1. a busybox root filesystem (/bin/busybox and its applets as symlinks, /etc/passwd with root
 *      and app (1000), /etc/group, /tmp 1777, /root, /home/app, and /etc/removed-by-layer-2);
 *   2. a whiteout of /etc/removed-by-layer-2;
 *   3. /etc/motd ("vmpod test image\n").
 *
 * Config: Cmd ["sh"], Env PATH=/usr/sbin:/usr/bin:/sbin:/bin, WorkingDir /, a label
 * `org.vmpod.test=busybox`. Written as an OCI image layout (`oci:DIR:TAG`), as an oci-archive
 * (`oci-archive:FILE:TAG`, what `ctr images import` and `podman load` take) and as a docker-archive
 * (`docker-archive:FILE`, what `docker save` writes).
 *
 * The image is built once per test file (the first call) in a temporary folder named vmpod-img-*
 * and removed by removeTestImages() (call it in afterAll): cached within a test run, never
 * between runs.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const exec = promisify(execFile);

export const UMOCI = '/usr/bin/umoci';
export const SKOPEO = '/usr/bin/skopeo';
export const BUSYBOX = '/bin/busybox';

/** Why the test images cannot be built here, or undefined. */
export async function imageSkipReason(): Promise<string | undefined> {
  for (const [file, pkg] of [[UMOCI, 'umoci'], [SKOPEO, 'skopeo'], [BUSYBOX, 'busybox-static']] as const) {
    if (!(await fs.stat(file).catch(() => undefined))) return `needs ${file} (Debian's ${pkg}: scripts/setup-host.sh installs it)`;
  }
  return undefined;
}

export interface TestImage {
  /** The temporary folder holding everything below (removed by removeTestImages). */
  dir: string;
  /** The OCI image layout's directory. */
  layout: string;
  /** The tag (org.opencontainers.image.ref.name) of the image in the layout and the archive. */
  tag: string;
  /** `oci:LAYOUT:TAG`, for podman, skopeo and vmpod. */
  ociRef: string;
  /** The oci-archive file (a tar of the layout). */
  ociArchive: string;
  /** `oci-archive:FILE:TAG`. */
  ociArchiveRef: string;
  /** The docker-archive file (`docker save`'s format), tagged `dockerName`. */
  dockerArchive: string;
  /** The name:tag recorded in the docker-archive. */
  dockerName: string;
  /** The contents of /etc/motd (layer 3). */
  motd: string;
  /** The path layer 2 whites out. */
  whiteout: string;
}

let cached: Promise<TestImage> | undefined;
const made: string[] = [];

/** The busybox test image (built on first use in this test file). */
export function busyboxImage(): Promise<TestImage> {
  cached ??= build().catch((err: unknown) => {
    cached = undefined;
    throw err;
  });
  return cached;
}

/** Removes every test image this test file built. */
export async function removeTestImages(): Promise<void> {
  cached = undefined;
  for (const dir of made.splice(0)) await fs.rm(dir, { recursive: true, force: true });
}

async function layBusyboxRootfs(rootfs: string, whiteout: string): Promise<void> {
  for (const sub of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'root', 'home/app', 'run']) {
    await fs.mkdir(path.join(rootfs, sub), { recursive: true, mode: 0o755 });
  }
  await fs.chmod(path.join(rootfs, 'tmp'), 0o1777);
  await fs.copyFile(BUSYBOX, path.join(rootfs, 'bin/busybox'));
  await fs.chmod(path.join(rootfs, 'bin/busybox'), 0o755);
  const { stdout } = await exec(BUSYBOX, ['--list']);
  for (const applet of stdout.split('\n').filter((a) => a && a !== 'busybox')) {
    await fs.symlink('busybox', path.join(rootfs, 'bin', applet));
  }
  await fs.writeFile(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n');
  await fs.writeFile(path.join(rootfs, 'etc/group'), 'root:x:0:\napp:x:1000:\n');
  await fs.writeFile(path.join(rootfs, whiteout), 'layer 2 removes this file\n');
  await fs.chown(path.join(rootfs, 'home/app'), 1000, 1000);
}

async function build(): Promise<TestImage> {
  // Lower case only: podman 4.3 names an image it pulls from `oci:DIR:TAG` after DIR, and refuses
  // a name with capitals ("repository name must be lowercase"), which mkdtemp's names have.
  const dir = path.join(os.tmpdir(), `vmpod-img-${randomBytes(6).toString('hex')}`);
  await fs.mkdir(dir, { mode: 0o700 });
  made.push(dir);
  const layout = path.join(dir, 'layout');
  const tag = 'busybox';
  const image = `${layout}:${tag}`;
  const whiteout = '/etc/removed-by-layer-2';
  const motd = 'vmpod test image\n';
  // umoci and skopeo keep their temporary files here, not in the shared /var/tmp.
  const env = { ...process.env, TMPDIR: dir };
  const run = (file: string, args: string[]) => exec(file, args, { env, maxBuffer: 16 << 20 });

  const rootfs = path.join(dir, 'rootfs');
  await layBusyboxRootfs(rootfs, whiteout);
  const motdFile = path.join(dir, 'motd');
  await fs.writeFile(motdFile, motd);

  await run(UMOCI, ['init', '--layout', layout]);
  await run(UMOCI, ['new', '--image', image]);
  await run(UMOCI, ['insert', '--image', image, '--history.comment', 'busybox rootfs', rootfs, '/']);
  await run(UMOCI, ['insert', '--image', image, '--history.comment', `whiteout ${whiteout}`, '--whiteout', whiteout]);
  await run(UMOCI, ['insert', '--image', image, '--history.comment', '/etc/motd', motdFile, '/etc/motd']);
  await run(UMOCI, [
    'config', '--image', image,
    '--config.cmd', 'sh',
    '--config.env', 'PATH=/usr/sbin:/usr/bin:/sbin:/bin',
    '--config.workingdir', '/',
    '--config.label', 'org.vmpod.test=busybox',
    '--os', 'linux', '--architecture', 'amd64',
  ]);
  await fs.rm(rootfs, { recursive: true });

  // skopeo checks a signature policy: this one accepts everything (the sources are local files).
  const policy = path.join(dir, 'policy.json');
  await fs.writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  const ociArchive = path.join(dir, 'busybox-oci.tar');
  const dockerArchive = path.join(dir, 'busybox-docker.tar');
  const dockerName = 'localhost/vmpod-test/busybox:latest';
  const ociRef = `oci:${layout}:${tag}`;
  const skopeo = ['--policy', policy, '--registries.d', path.join(dir, 'registries.d'), '--tmpdir', dir];
  await run(SKOPEO, [...skopeo, 'copy', ociRef, `oci-archive:${ociArchive}:${tag}`]);
  await run(SKOPEO, [...skopeo, 'copy', ociRef, `docker-archive:${dockerArchive}:${dockerName}`]);

  return {
    dir,
    layout,
    tag,
    ociRef,
    ociArchive,
    ociArchiveRef: `oci-archive:${ociArchive}:${tag}`,
    dockerArchive,
    dockerName,
    motd,
    whiteout,
  };
}
