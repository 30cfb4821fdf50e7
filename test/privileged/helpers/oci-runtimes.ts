/**
 * The OCI runtimes the caller tests (podman, containerd's runc shim, the lifecycle cases) drive:
 * runc, the reference, which proves each harness against the real thing, and vmpod-runtime (the
 * package's bin, dist/runtime/main.js: `npx tsc -p tsconfig.json` builds it). Each entry knows
 * what `uname -r` must print inside its containers: the host's kernel for runc, the guest's
 * (the library's current guest assets) for vmpod-runtime.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { resolveGuestAssets } from '../../../src/guest/assets.js';
import { packageRoot } from '../../../src/native.js';

export interface OciRuntime {
  /** `runc` or `vmpod-runtime`. */
  readonly name: string;
  /** The executable, an absolute path. */
  readonly path: string;
  /** Why it cannot be used here, or undefined. */
  readonly skip: string | undefined;
  /** True when its containers run in a VM (their kernel is not the host's). */
  readonly vm: boolean;
  /** What `uname -r` prints in its containers. */
  kernelRelease(): Promise<string>;
}

export const RUNC_PATH = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => fs.existsSync(p)) ?? '/usr/sbin/runc';
export const VMPOD_RUNTIME_PATH = process.env['VMPOD_RUNTIME'] ?? path.join(packageRoot, 'dist', 'runtime', 'main.js');

function executable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export const runc: OciRuntime = {
  name: 'runc',
  path: RUNC_PATH,
  skip: executable(RUNC_PATH) ? undefined : `needs runc at ${RUNC_PATH} (scripts/setup-host.sh installs it)`,
  vm: false,
  kernelRelease: () => Promise.resolve(os.release()),
};

export const vmpodRuntime: OciRuntime = {
  name: 'vmpod-runtime',
  path: VMPOD_RUNTIME_PATH,
  skip: !fs.existsSync('/usr/bin/qemu-system-x86_64')
    ? 'needs qemu-system-x86_64 (scripts/setup-host.sh installs it)'
    : executable(VMPOD_RUNTIME_PATH)
      ? undefined
      : `no executable vmpod-runtime at ${VMPOD_RUNTIME_PATH} (npm run build:ts)`,
  vm: true,
  kernelRelease: async () => {
    const assets = await resolveGuestAssets({ verify: 'size' });
    const release = assets.manifest?.kernelRelease;
    if (release === undefined) throw new Error('the guest assets have no manifest: no kernel release to expect');
    return release;
  },
};

/** Both runtimes, runc first. */
export const OCI_RUNTIMES: readonly OciRuntime[] = [runc, vmpodRuntime];

/** `runtime --version`'s first line (for reports). */
export function runtimeVersion(runtime: OciRuntime): string {
  return execFileSync(runtime.path, ['--version'], { encoding: 'utf8' }).split('\n')[0] ?? '';
}
