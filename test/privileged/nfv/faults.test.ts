/**
 * Bad input and faults of the NFV resources and volumes in real sandboxes: each gives a typed
 * error from `start()` and leaves the host exactly as before (hugepage pool, mounts, processes,
 * sockets): a missing vhost-user socket, more hugepages than the host has, a read-only
 * directory asked read-write, 9p on a guest kernel without it, a PCI device on a host without
 * VFIO.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { hugepagePool } from '../../../src/devices/hugepages.js';
import { FeatureUnavailableError, InsufficientHugepagesError } from '../../../src/devices/errors.js';
import { VhostUserSocketError } from '../../../src/nfv/errors.js';
import { Volume } from '../../../src/volume/volume.js';
import { VolumeReadOnlyError } from '../../../src/volume/errors.js';
import { mountPoints } from '../../../src/state/remove.js';
import { collect, expectNothingLeft, forceCleanup, makeStateDir, processesMentioning, skipReason } from '../sandbox/fixture.js';

const exec = promisify(execFile);
const hasVfio = (await fs.stat('/sys/bus/pci/drivers/vfio-pci').catch(() => undefined)) !== undefined;
const hardware = process.env['VMPOD_TEST_VFIO_DEVICE'];

describe.skipIf(skipReason)(`NFV faults leave the host as it was${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  let pool: number;
  let mountsBefore: string[];

  beforeAll(async () => {
    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(stateDir, 'work-'));
  });

  afterAll(async () => {
    try {
      await fs.rm(work, { recursive: true, force: true });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  /** Creates a sandbox, expects start() to fail with `error`, then checks the host and deletes it. */
  async function failsCleanly(config: Parameters<typeof Sandbox.create>[0], error: new (...args: never[]) => Error, message: RegExp): Promise<void> {
    pool = (await hugepagePool('2M')).total;
    mountsBefore = await mountPoints();
    const sandbox = await Sandbox.create({ stateDir, ...config });
    const failure = await sandbox.start().catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(error);
    expect((failure as Error).message).toMatch(message);
    expect(sandbox.state).toBe('stopped'); // a start that failed: nothing of it is left
    expect((await hugepagePool('2M')).total).toBe(pool);
    expect(await mountPoints()).toEqual(mountsBefore);
    expect(await processesMentioning(sandbox.dir)).toEqual([]);
    await sandbox.delete();
  }

  it('a missing vhost-user socket: VhostUserSocketError, hugepages given back', async () => {
    await failsCleanly(
      { hugepages: true, vhostUser: [{ socket: path.join(work, 'nobody.sock') }] },
      VhostUserSocketError,
      /does not exist: start the vhost-user backend/u,
    );
    await fs.writeFile(path.join(work, 'plain'), '');
    await failsCleanly({ vhostUser: [{ socket: path.join(work, 'plain') }] }, VhostUserSocketError, /is not a unix socket/u);
  });

  it('more hugepages than the host has: InsufficientHugepagesError, pool untouched', async () => {
    await failsCleanly({ memoryMiB: 512 * 1024, hugepages: true }, InsufficientHugepagesError, /exceeds the memory of the host; nothing was changed/u);
  });

  it('a read-only host directory asked read-write: VolumeReadOnlyError, no mount left', async () => {
    const dir = path.join(work, 'dir');
    const roMount = path.join(work, 'ro');
    await fs.mkdir(dir);
    await fs.mkdir(roMount);
    await exec('mount', ['--bind', '-o', 'ro', dir, roMount]);
    try {
      await failsCleanly({ volumes: [Volume.directory('v', roMount)] }, VolumeReadOnlyError, /is read-only on the host/u);
    } finally {
      await exec('umount', [roMount]);
    }
  });

  it('a 9p volume on a guest kernel without 9p: FeatureUnavailableError naming the kernel', async () => {
    await failsCleanly({ volumes: [Volume.directory('v', work, { transport: '9p' })] }, FeatureUnavailableError, /no 9p filesystem .*use transport "virtiofs"/u);
  });

  it.skipIf(hasVfio)(`a PCI device on a host without VFIO: FeatureUnavailableError, nothing bound${hasVfio ? ' (skipped: this host has vfio-pci)' : ''}`, async () => {
    const [address] = (await fs.readdir('/sys/bus/pci/devices')).sort();
    await failsCleanly({ devices: [{ address: address! }] }, FeatureUnavailableError, /vfio-pci driver is not loaded/u);
  });

  it.skipIf(!hardware)(
    `passes a real device to a sandbox, the guest sees it at its PCI path, and its drivers come back${hardware ? '' : ' (skipped: set VMPOD_TEST_VFIO_DEVICE=DDDD:BB:DD.F to a device that may be taken from the host)'}`,
    async () => {
      const address = hardware!;
      const driverBefore = await fs.readlink(`/sys/bus/pci/devices/${address}/driver`).catch(() => null);
      const sandbox = await Sandbox.create({ stateDir, devices: [{ address, force: process.env['VMPOD_TEST_VFIO_FORCE'] === '1' }] });
      try {
        await sandbox.start();
        const { pci: devices } = await sandbox.devices();
        expect(devices).toHaveLength(1);
        const slot = devices[0]!.pciPath!.split('/')[0];
        const c = await sandbox.createContainer({ process: { args: ['sh', '-c', `ls -d /sys/bus/pci/devices/0000:00:${slot}.0/0000:*`] } });
        const out = collect(c.stdout);
        await c.start();
        expect((await c.wait()).exitCode).toBe(0);
        expect((await out).toString()).toMatch(/0000:[0-9a-f]{2}:00\.0/u);
      } finally {
        await sandbox.delete({ force: true });
      }
      expect(await fs.readlink(`/sys/bus/pci/devices/${address}/driver`).catch(() => null)).toBe(driverBefore);
    },
  );
});
