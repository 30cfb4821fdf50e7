/**
 * Hot plug into a running sandbox that fails: PCI passthrough (this host has no VFIO: a bad
 * address, an address no device has, a real device without vfio-pci, an unknown id to remove)
 * and vhost-user NICs (no socket, a file that is no socket, a socket nobody listens on, an id
 * the VM already has). Each gives its typed error, and neither the sandbox record (resources,
 * state) nor QEMU (devices, chardevs, netdevs, as its own QMP queries say) keeps anything of it;
 * the sandbox still runs a container afterwards.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { InvalidArgumentError, NotFoundError } from '../../../src/errors.js';
import { FeatureUnavailableError } from '../../../src/devices/errors.js';
import { VhostUserSocketError } from '../../../src/nfv/errors.js';
import { QmpError } from '../../../src/hypervisor/errors.js';
import { QmpClient } from '../../../src/hypervisor/qemu/qmp.js';
import { promisify } from 'node:util';
import { expectNothingLeft, forceCleanup, makeStateDir, runScript, skipReason } from './fixture.js';

const exec = promisify(execFile);
const hasVfio = (await fs.stat('/sys/bus/pci/drivers/vfio-pci').catch(() => undefined)) !== undefined;
// A device of this host (never bound: without vfio-pci the plug stops before any write).
const hostDevice = (await fs.readdir('/sys/bus/pci/devices').catch(() => [] as string[])).sort()[0];

describe.skipIf(skipReason)(`hot-plug faults in a running sandbox${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  let sandbox: Sandbox;
  let qmp: QmpClient;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(stateDir, 'work-'));
    // xdup: a device of the VM (a virtio-serial with one port) whose id a plug may not take.
    sandbox = await Sandbox.create({ stateDir, id: 'hpfault', extraDevices: [{ kind: 'virtio-serial', id: 'xdup', ports: [{ name: 'xdup.0', socket: path.join(work, 'xdup.sock') }] }] });
    await sandbox.start();
    // QEMU's last monitor socket: the sandbox holds another.
    const sockets = (await sandbox.record()).boot!.vm!.controlSockets;
    qmp = await QmpClient.connect(sockets.at(-1)!);
  });

  afterAll(async () => {
    try {
      qmp?.close();
      await sandbox?.delete({ force: true });
      await fs.rm(work, { recursive: true, force: true });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  /** What a plug would leave: the record's state and resources, QEMU's devices, chardevs, netdevs. */
  async function snapshot(): Promise<unknown> {
    const record = await sandbox.record();
    return {
      state: record.state,
      // A resource's state appears at its first use: no entry is the same as an empty one.
      resources: { ...record.resources, vhostUser: record.resources['vhostUser'] ?? { nics: [], serverSockets: [] }, devices: record.resources['devices'] ?? { devices: [] } },
      devices: await sandbox.devices(),
      peripherals: (await qmp.execute<{ name: string }[]>('qom-list', { path: '/machine/peripheral' })).map((p) => p.name).sort(),
      chardevs: (await qmp.execute<{ label: string }[]>('query-chardev')).map((c) => c.label).sort(),
      network: await qmp.execute<string>('human-monitor-command', { 'command-line': 'info network' }),
      pci: JSON.stringify(await qmp.execute('query-pci')),
    };
  }

  /** Expects `plug` to fail with `type` (and `message`), leaving {@link snapshot} as it was. */
  async function failsLeavingNothing(plug: () => Promise<unknown>, type: new (...args: never[]) => Error, message: RegExp): Promise<Error> {
    const before = await snapshot();
    const error = await plug().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(type);
    expect((error as Error).message).toMatch(message);
    expect(await snapshot()).toEqual(before);
    return error as Error;
  }

  it('PCI: a malformed address, an address without a device, an unknown id to remove', async () => {
    await failsLeavingNothing(() => sandbox.addPciDevice({ address: 'not-a-pci-address' }), InvalidArgumentError, /not-a-pci-address/u);
    await failsLeavingNothing(() => sandbox.addPciDevice({ address: '0000:7f:1f.7' }), NotFoundError, /0000:7f:1f\.7/u);
    await failsLeavingNothing(() => sandbox.removePciDevice('nosuchdev'), NotFoundError, /nosuchdev/u);
  });

  it.skipIf(hasVfio || hostDevice === undefined)('PCI: a real device on a host without vfio-pci is FeatureUnavailableError, nothing bound', async () => {
    const driver = await fs.readlink(`/sys/bus/pci/devices/${hostDevice}/driver`).catch(() => '');
    await failsLeavingNothing(() => sandbox.addPciDevice({ address: hostDevice!, id: 'hostdev9' }), FeatureUnavailableError, /vfio-pci driver is not loaded/u);
    expect(await fs.readlink(`/sys/bus/pci/devices/${hostDevice}/driver`).catch(() => '')).toBe(driver);
  });

  it('PCI: an id the VM already has is refused before the device is looked at', async () => {
    await failsLeavingNothing(() => sandbox.addPciDevice({ address: hostDevice ?? '0000:00:00.0', id: 'xdup' }), InvalidArgumentError, /already has a device "xdup"/u);
  });

  it('vhost-user: no socket, a plain file, an id the VM already has', async () => {
    const missing = await failsLeavingNothing(() => sandbox.addVhostUserNic({ id: 'vu1', socket: path.join(work, 'nobody.sock') }), VhostUserSocketError, /does not exist/u);
    expect(missing).toMatchObject({ reason: 'missing' });
    await fs.writeFile(path.join(work, 'plain'), '');
    const plain = await failsLeavingNothing(() => sandbox.addVhostUserNic({ id: 'vu1', socket: path.join(work, 'plain') }), VhostUserSocketError, /is not a unix socket/u);
    expect(plain).toMatchObject({ reason: 'not-a-socket' });
    await failsLeavingNothing(() => sandbox.addVhostUserNic({ id: 'xdup', socket: path.join(work, 'plain') }), InvalidArgumentError, /already has a device "xdup"/u);
  });

  it('vhost-user: a socket nobody listens on any more is refused by QEMU (chardev-add), nothing kept', async () => {
    // A backend that went away: its socket file stays (bound, then closed: nobody unlinks it),
    // connecting to it is refused.
    const stale = path.join(work, 'stale.sock');
    await exec('python3', ['-c', 'import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.close()', stale]);
    expect((await fs.lstat(stale)).isSocket()).toBe(true);
    await failsLeavingNothing(() => sandbox.addVhostUserNic({ id: 'vu2', socket: stale }), QmpError, /Connection refused|Failed to connect/iu);
  });

  it('still runs a container after the failed plugs', async () => {
    expect(await runScript(sandbox, {}, 'echo alive')).toEqual({ out: 'alive\n', err: '', code: 0 });
  });
});
