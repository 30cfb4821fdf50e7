/**
 * The pod sandbox image of the CRI tests, built offline: helpers/pause.c compiled with
 * `gcc -static` (build-essential: scripts/setup-host.sh), alone in a one-layer OCI image (umoci)
 * whose entrypoint is /pause, written as an oci-archive (skopeo) for `ctr images import`.
 * Built in a temporary folder vmpod-pause-* on first use; removePauseImage() removes it.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { SKOPEO, UMOCI } from './oci-images.js';

const exec = promisify(execFile);
const SOURCE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'pause.c');
export const GCC = '/usr/bin/gcc';

/** The name the archive is imported as with `ctr images import --base-name BASE` (tag: pause). */
export const PAUSE_BASE_NAME = 'localhost/vmpod-test/pause';
export const PAUSE_IMAGE = `${PAUSE_BASE_NAME}:pause`;

export interface PauseImage {
  dir: string;
  /** The oci-archive (tag `pause`). */
  ociArchive: string;
}

let cached: Promise<PauseImage> | undefined;
const made: string[] = [];

/** Why the pause image cannot be built here, or undefined. */
export async function pauseImageSkipReason(): Promise<string | undefined> {
  for (const [file, pkg] of [[GCC, 'build-essential'], ['/usr/lib/x86_64-linux-gnu/libc.a', 'libc6-dev'], [UMOCI, 'umoci'], [SKOPEO, 'skopeo']] as const) {
    if (!(await fs.stat(file).catch(() => undefined))) return `needs ${file} (Debian's ${pkg}: scripts/setup-host.sh installs it)`;
  }
  return undefined;
}

export function pauseImage(): Promise<PauseImage> {
  cached ??= build().catch((err: unknown) => {
    cached = undefined;
    throw err;
  });
  return cached;
}

export async function removePauseImage(): Promise<void> {
  cached = undefined;
  for (const dir of made.splice(0)) await fs.rm(dir, { recursive: true, force: true });
}

async function build(): Promise<PauseImage> {
  const dir = path.join(os.tmpdir(), `vmpod-pause-${randomBytes(6).toString('hex')}`);
  await fs.mkdir(dir, { mode: 0o700 });
  made.push(dir);
  const env = { ...process.env, TMPDIR: dir };
  const run = (file: string, args: string[]) => exec(file, args, { env, maxBuffer: 16 << 20 });
  const rootfs = path.join(dir, 'rootfs');
  await fs.mkdir(rootfs);
  await run(GCC, ['-static', '-O2', '-s', '-o', path.join(rootfs, 'pause'), SOURCE]);
  const layout = path.join(dir, 'layout');
  const image = `${layout}:pause`;
  await run(UMOCI, ['init', '--layout', layout]);
  await run(UMOCI, ['new', '--image', image]);
  await run(UMOCI, ['insert', '--image', image, '--history.comment', 'pause', path.join(rootfs, 'pause'), '/pause']);
  await run(UMOCI, ['config', '--image', image, '--config.entrypoint', '/pause', '--os', 'linux', '--architecture', 'amd64']);
  const policy = path.join(dir, 'policy.json');
  await fs.writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  const ociArchive = path.join(dir, 'pause-oci.tar');
  await run(SKOPEO, ['--policy', policy, '--registries.d', path.join(dir, 'registries.d'), '--tmpdir', dir, 'copy', `oci:${layout}:pause`, `oci-archive:${ociArchive}:pause`]);
  await fs.rm(rootfs, { recursive: true });
  return { dir, ociArchive };
}
