/**
 * OCI bundles for benchmarks: a busybox-static root filesystem with a config.json written by
 * `runc spec` (Debian's runc), as a user of runc would make one.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { OciSpec } from '../../src/container/spec.js';

const exec = promisify(execFile);

export const BUSYBOX = '/bin/busybox';
export const RUNC = '/usr/sbin/runc';

/**
 * Makes `dir` a bundle: `dir/rootfs` with /bin/busybox and a symlink per applet, and the
 * config.json of `runc spec`, with `terminal: false` and `edit` applied.
 */
export async function busyboxBundle(dir: string, edit: (spec: OciSpec) => void = () => undefined): Promise<string> {
  const rootfs = path.join(dir, 'rootfs');
  for (const sub of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'root']) await fs.mkdir(path.join(rootfs, sub), { recursive: true });
  await fs.copyFile(BUSYBOX, path.join(rootfs, 'bin/busybox'));
  await fs.chmod(path.join(rootfs, 'bin/busybox'), 0o755);
  const { stdout } = await exec(BUSYBOX, ['--list']);
  for (const applet of stdout.split('\n').filter((a) => a !== '' && a !== 'busybox')) {
    await fs.symlink('busybox', path.join(rootfs, 'bin', applet));
  }
  await fs.writeFile(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await fs.writeFile(path.join(rootfs, 'etc/group'), 'root:x:0:\n');
  await fs.rm(path.join(dir, 'config.json'), { force: true });
  await exec(RUNC, ['spec', '--bundle', dir]);
  const file = path.join(dir, 'config.json');
  const spec = JSON.parse(await fs.readFile(file, 'utf8')) as OciSpec;
  spec.process.terminal = false;
  edit(spec);
  await fs.writeFile(file, JSON.stringify(spec, null, 2));
  return dir;
}
