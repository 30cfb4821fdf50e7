import fs from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import {
  DeviceBindError,
  DeviceBusyError,
  FeatureUnavailableError,
  IommuGroupInUseError,
  IommuGroupNotViableError,
} from '../../src/devices/errors.js';
import { iommuGroupDevices, listPciDevices, netdevStates, pciDevice } from '../../src/devices/pci.js';
import {
  bindVfio,
  checkVfioGroup,
  releaseVfio,
  vfioDeviceAddArguments,
  vfioPciDevice,
  vfioQemuArgument,
  type VfioBindingRecord,
} from '../../src/devices/vfio.js';
import { FakeSysfs } from './devices-fake-sysfs.js';
import type { VfioWorkerOptions, VfioWorkerReport } from './devices-vfio-worker.js';
import { runWorkers } from './devices-workers.js';

const UP = 0x1003; // IFF_UP | IFF_BROADCAST | IFF_MULTICAST
const DOWN = 0x1002;
const noAddresses = (): string[] => [];

let sysfs: FakeSysfs;
beforeEach(async () => {
  sysfs = await FakeSysfs.create();
  await sysfs.addDriver('vfio-pci');
});
afterEach(async () => {
  await sysfs.cleanup();
});

/** Two ports of one NIC in one IOMMU group (no ACS between functions), plus a lone device. */
async function multiFunctionNic(): Promise<void> {
  await sysfs.addDevice({ address: '0000:3b:00.0', driver: 'ixgbe', iommuGroup: 30, numaNode: 0, netdevs: [{ name: 'ens1f0', flags: DOWN }] });
  await sysfs.addDevice({ address: '0000:3b:00.1', driver: 'ixgbe', iommuGroup: 30, numaNode: 0, netdevs: [{ name: 'ens1f1', flags: DOWN }] });
  await sysfs.addDevice({ address: '0000:5e:00.0', driver: 'nvme', class: '010802', iommuGroup: 31 });
}

describe('PCI discovery on a fake sysfs', () => {
  it('describes a PF with VFs and the VFs with their PF', async () => {
    await sysfs.addDevice({
      address: '0000:3b:00.0',
      vendor: '8086',
      device: '1572',
      driver: 'i40e',
      iommuGroup: 40,
      numaNode: 1,
      netdevs: [{ name: 'ens2f0', operstate: 'up', flags: UP }],
      sriov: { totalVfs: 8, numVfs: 2, vfDevice: '154c', vfDriver: 'iavf', vfAddress: (i) => `0000:3b:02.${i}`, vfGroup: (i) => 50 + i },
    });
    const pf = await pciDevice('0000:3B:00.0', { sysfs });
    expect(pf).toEqual({
      address: '0000:3b:00.0',
      vendor: '8086',
      device: '1572',
      class: '020000',
      subsystemVendor: '8086',
      subsystemDevice: '0000',
      driver: 'i40e',
      driverOverride: null,
      iommuGroup: 40,
      numaNode: 1,
      netdevs: ['ens2f0'],
      isBridge: false,
      sriov: { totalVfs: 8, numVfs: 2, vfs: [{ index: 0, address: '0000:3b:02.0' }, { index: 1, address: '0000:3b:02.1' }] },
      physfn: null,
    });
    const vf = await pciDevice('0000:3b:02.1', { sysfs });
    expect(vf).toMatchObject({ device: '154c', driver: 'iavf', iommuGroup: 51, physfn: '0000:3b:00.0', sriov: null, numaNode: null });
    expect(await listPciDevices({ sysfs })).toEqual(['0000:3b:00.0', '0000:3b:02.0', '0000:3b:02.1']);
    expect(await netdevStates('0000:3b:00.0', { sysfs, addresses: () => ['192.0.2.1/24'] })).toEqual([
      { name: 'ens2f0', operstate: 'up', adminUp: true, addresses: ['192.0.2.1/24'] },
    ]);
  });

  it('lists the members of a multi-device IOMMU group', async () => {
    await multiFunctionNic();
    expect(await iommuGroupDevices(30, { sysfs })).toEqual(['0000:3b:00.0', '0000:3b:00.1']);
    expect(await iommuGroupDevices(31, { sysfs })).toEqual(['0000:5e:00.0']);
    expect(await iommuGroupDevices(99, { sysfs })).toEqual([]);
  });

  it('finds a virtio-net netdev one level down (virtioN/net/NAME)', async () => {
    await sysfs.addDevice({ address: '0000:00:03.0', vendor: '1af4', device: '1041', driver: 'virtio-pci' });
    await sysfs.file('bus/pci/devices/0000:00:03.0/virtio2/net/eth9/operstate', 'up');
    await sysfs.file('bus/pci/devices/0000:00:03.0/virtio2/net/eth9/flags', '0x1003');
    expect((await pciDevice('0000:00:03.0', { sysfs })).netdevs).toEqual(['eth9']);
    expect(await netdevStates('0000:00:03.0', { sysfs, addresses: noAddresses })).toEqual([
      { name: 'eth9', operstate: 'up', adminUp: true, addresses: [] },
    ]);
  });

  it('rejects a malformed address before touching sysfs, and reports a missing device', async () => {
    const spies = (['read', 'readOptional', 'readInt', 'linkName', 'list', 'exists', 'write'] as const).map((m) => vi.spyOn(sysfs, m));
    await expect(pciDevice('3b:00.0', { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(bindVfio('0000:3b:00.0/../..', { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    for (const spy of spies) expect(spy).not.toHaveBeenCalled();
    await expect(pciDevice('0000:3b:00.7', { sysfs })).rejects.toBeInstanceOf(NotFoundError);
  });
});

describe('bindVfio / releaseVfio on a fake sysfs', () => {
  it('binds a device alone in its group and restores its driver, with the exact writes', async () => {
    await multiFunctionNic();
    const before = await sysfs.snapshot();
    const binding = await bindVfio('0000:5e:00.0', { sysfs, addresses: noAddresses });
    expect(sysfs.writes).toEqual([
      ['bus/pci/devices/0000:5e:00.0/driver_override', 'vfio-pci'],
      ['bus/pci/drivers/nvme/unbind', '0000:5e:00.0'],
      ['bus/pci/drivers_probe', '0000:5e:00.0'],
    ]);
    expect((await pciDevice('0000:5e:00.0', { sysfs })).driver).toBe('vfio-pci');
    expect(binding.record).toEqual({
      address: '0000:5e:00.0',
      iommuGroup: 31,
      devices: [{ address: '0000:5e:00.0', originalDriver: 'nvme', originalDriverOverride: null, alreadyBound: false }],
      claimId: expect.stringMatching(/^[0-9a-f-]{36}$/u),
      owner: `pid ${process.pid}`,
    });
    expect(binding.groupDevice).toBe('/dev/vfio/31');

    sysfs.writes.length = 0;
    await binding.release();
    expect(sysfs.writes).toEqual([
      ['bus/pci/drivers/vfio-pci/unbind', '0000:5e:00.0'],
      ['bus/pci/devices/0000:5e:00.0/driver_override', '\n'],
      ['bus/pci/drivers/nvme/bind', '0000:5e:00.0'],
    ]);
    expect(await sysfs.snapshot()).toEqual(before);
    sysfs.writes.length = 0;
    await binding.release(); // idempotent
    expect(sysfs.writes).toEqual([]);
  });

  it('binds every device of a multi-device group, and restores them in reverse order', async () => {
    await multiFunctionNic();
    const before = await sysfs.snapshot();
    const binding = await bindVfio('0000:3b:00.1', { sysfs, addresses: noAddresses });
    expect(sysfs.writes).toEqual([
      ['bus/pci/devices/0000:3b:00.0/driver_override', 'vfio-pci'],
      ['bus/pci/drivers/ixgbe/unbind', '0000:3b:00.0'],
      ['bus/pci/drivers_probe', '0000:3b:00.0'],
      ['bus/pci/devices/0000:3b:00.1/driver_override', 'vfio-pci'],
      ['bus/pci/drivers/ixgbe/unbind', '0000:3b:00.1'],
      ['bus/pci/drivers_probe', '0000:3b:00.1'],
    ]);
    expect(binding.record.devices.map((d) => [d.address, d.originalDriver])).toEqual([
      ['0000:3b:00.0', 'ixgbe'],
      ['0000:3b:00.1', 'ixgbe'],
    ]);
    for (const a of ['0000:3b:00.0', '0000:3b:00.1']) expect((await pciDevice(a, { sysfs })).driver).toBe('vfio-pci');
    expect((await pciDevice('0000:5e:00.0', { sysfs })).driver).toBe('nvme');

    sysfs.writes.length = 0;
    // The record is persistable: release from its JSON, as after a restart.
    await releaseVfio(JSON.parse(JSON.stringify(binding.record)) as VfioBindingRecord, { sysfs });
    expect(sysfs.writes).toEqual([
      ['bus/pci/drivers/vfio-pci/unbind', '0000:3b:00.1'],
      ['bus/pci/devices/0000:3b:00.1/driver_override', '\n'],
      ['bus/pci/drivers/ixgbe/bind', '0000:3b:00.1'],
      ['bus/pci/drivers/vfio-pci/unbind', '0000:3b:00.0'],
      ['bus/pci/devices/0000:3b:00.0/driver_override', '\n'],
      ['bus/pci/drivers/ixgbe/bind', '0000:3b:00.0'],
    ]);
    expect(await sysfs.snapshot()).toEqual(before);
  });

  it('binds a device that had no driver and leaves it driverless on release; keeps a custom override', async () => {
    await sysfs.addDevice({ address: '0000:af:00.0', iommuGroup: 7, nativeDriver: 'ice', driverOverride: 'ice' });
    await sysfs.addDevice({ address: '0000:af:00.1', iommuGroup: 7 });
    const before = await sysfs.snapshot();
    const binding = await bindVfio('0000:af:00.1', { sysfs, addresses: noAddresses });
    expect(sysfs.writes).toEqual([
      ['bus/pci/devices/0000:af:00.0/driver_override', 'vfio-pci'],
      ['bus/pci/drivers_probe', '0000:af:00.0'],
      ['bus/pci/devices/0000:af:00.1/driver_override', 'vfio-pci'],
      ['bus/pci/drivers_probe', '0000:af:00.1'],
    ]);
    sysfs.writes.length = 0;
    await binding.release();
    expect(sysfs.writes).toEqual([
      ['bus/pci/drivers/vfio-pci/unbind', '0000:af:00.1'],
      ['bus/pci/devices/0000:af:00.1/driver_override', '\n'],
      ['bus/pci/drivers/vfio-pci/unbind', '0000:af:00.0'],
      ['bus/pci/devices/0000:af:00.0/driver_override', 'ice'],
    ]);
    expect(await sysfs.snapshot()).toEqual(before);
  });

  it('refuses a device whose netdev is up, or has addresses, unless forced', async () => {
    await sysfs.addDevice({ address: '0000:3b:00.0', driver: 'ixgbe', iommuGroup: 30, netdevs: [{ name: 'ens1f0', operstate: 'up', flags: UP }] });
    await sysfs.addDevice({ address: '0000:3c:00.0', driver: 'ixgbe', iommuGroup: 32, netdevs: [{ name: 'ens2f0', operstate: 'down', flags: DOWN }] });
    const before = await sysfs.snapshot();
    const up = await bindVfio('0000:3b:00.0', { sysfs, addresses: noAddresses }).catch((e: unknown) => e);
    expect(up).toBeInstanceOf(DeviceBusyError);
    expect((up as DeviceBusyError).code).toBe('ERR_VMPOD_DEVICE_BUSY');
    expect((up as DeviceBusyError).reasons).toEqual(['netdev ens1f0 is up']);
    const addressed = await bindVfio('0000:3c:00.0', { sysfs, addresses: (n) => (n === 'ens2f0' ? ['10.1.2.3/24'] : []) }).catch((e: unknown) => e);
    expect(addressed).toBeInstanceOf(DeviceBusyError);
    expect((addressed as DeviceBusyError).reasons).toEqual(['netdev ens2f0 has addresses 10.1.2.3/24']);
    expect(sysfs.writes).toEqual([]);
    expect(await sysfs.snapshot()).toEqual(before);

    const forced = await bindVfio('0000:3b:00.0', { sysfs, addresses: noAddresses, force: true });
    expect(sysfs.writes).toHaveLength(3);
    await forced.release();
    expect(await sysfs.snapshot()).toEqual(before);
  });

  it('refuses a group whose other member is in use, naming it, with no write', async () => {
    await sysfs.addDevice({ address: '0000:3b:00.0', driver: 'ixgbe', iommuGroup: 30, netdevs: [{ name: 'ens1f0', operstate: 'up', flags: UP }] });
    await sysfs.addDevice({ address: '0000:3b:00.1', driver: 'ixgbe', iommuGroup: 30, netdevs: [{ name: 'ens1f1', flags: DOWN }] });
    const error = await bindVfio('0000:3b:00.1', { sysfs, addresses: noAddresses }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IommuGroupNotViableError);
    expect((error as Error).message).toBe(
      'IOMMU group 30 of PCI device 0000:3b:00.1 cannot be split: 0000:3b:00.0 shares the group and is in use: netdev ens1f0 is up',
    );
    expect((error as Error).cause).toBeInstanceOf(DeviceBusyError);
    expect(sysfs.writes).toEqual([]);
  });

  it('refuses a group holding a bridge, a driver that cannot unbind, a PF with VFs, and a device without a group', async () => {
    await sysfs.addDevice({ address: '0000:00:1c.0', class: '060400', driver: 'pcieport', iommuGroup: 8 });
    await sysfs.addDevice({ address: '0000:02:00.0', driver: 'e1000e', iommuGroup: 8 });
    await sysfs.addDriver('stubborn', { unbind: false });
    await sysfs.addDevice({ address: '0000:03:00.0', driver: 'stubborn', iommuGroup: 9 });
    await sysfs.addDevice({ address: '0000:04:00.0', driver: 'e1000e' });
    await sysfs.addDevice({
      address: '0000:05:00.0',
      driver: 'i40e',
      iommuGroup: 10,
      sriov: { totalVfs: 4, numVfs: 1, vfAddress: (i) => `0000:05:02.${i}` },
    });
    const fail = (a: string): Promise<unknown> => bindVfio(a, { sysfs, addresses: noAddresses }).catch((e: unknown) => e);
    const bridge = await fail('0000:02:00.0');
    expect(bridge).toBeInstanceOf(IommuGroupNotViableError);
    expect((bridge as Error).message).toMatch(/0000:00:1c\.0 is a PCI bridge/u);
    expect(await fail('0000:03:00.0')).toMatchObject({ code: 'ERR_VMPOD_IOMMU_GROUP_NOT_VIABLE', message: expect.stringMatching(/stubborn, which cannot be unbound/u) });
    const noGroup = await fail('0000:04:00.0');
    expect(noGroup).toBeInstanceOf(IommuGroupNotViableError);
    expect((noGroup as IommuGroupNotViableError).group).toBeUndefined();
    const pf = await fail('0000:05:00.0');
    expect(pf).toBeInstanceOf(DeviceBusyError);
    expect((pf as DeviceBusyError).reasons).toEqual(['1 SR-IOV VFs are enabled (set sriov_numvfs to 0 first)']);
    expect(sysfs.writes).toEqual([]);
  });

  it('fails clearly when vfio-pci is not loaded', async () => {
    const bare = await FakeSysfs.create();
    try {
      await bare.addDevice({ address: '0000:3b:00.0', driver: 'ixgbe', iommuGroup: 30 });
      const error = await checkVfioGroup('0000:3b:00.0', { sysfs: bare }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(FeatureUnavailableError);
      expect((error as Error).message).toMatch(/vfio-pci driver is not loaded/u);
      expect(bare.writes).toEqual([]);
    } finally {
      await bare.cleanup();
    }
  });

  it('accepts a device already on vfio-pci and leaves it bound on release', async () => {
    await sysfs.addDevice({ address: '0000:3b:00.0', driver: 'vfio-pci', iommuGroup: 30 });
    await sysfs.addDevice({ address: '0000:3b:00.1', driver: 'ixgbe', iommuGroup: 30, netdevs: [{ name: 'ens1f1', flags: DOWN }] });
    const before = await sysfs.snapshot();
    const binding = await bindVfio('0000:3b:00.0', { sysfs, addresses: noAddresses });
    expect(binding.record.devices).toEqual([
      { address: '0000:3b:00.0', originalDriver: 'vfio-pci', originalDriverOverride: null, alreadyBound: true },
      { address: '0000:3b:00.1', originalDriver: 'ixgbe', originalDriverOverride: null, alreadyBound: false },
    ]);
    expect(sysfs.writes.map(([p]) => p)).toEqual([
      'bus/pci/devices/0000:3b:00.1/driver_override',
      'bus/pci/drivers/ixgbe/unbind',
      'bus/pci/drivers_probe',
    ]);
    sysfs.writes.length = 0;
    await binding.release();
    expect(sysfs.writes.every(([, v]) => v !== '0000:3b:00.0')).toBe(true);
    expect((await pciDevice('0000:3b:00.0', { sysfs })).driver).toBe('vfio-pci');
    expect(await sysfs.snapshot()).toEqual(before);

    // Alone in its group: nothing to write either way.
    sysfs.writes.length = 0;
    await sysfs.addDevice({ address: '0000:d8:00.0', driver: 'vfio-pci', iommuGroup: 77 });
    const alone = await bindVfio('0000:d8:00.0', { sysfs });
    await alone.release();
    expect(sysfs.writes).toEqual([]);
  });

  it('undoes everything when a probe fails midway (the kernel leaves the device unbound)', async () => {
    for (const f of [0, 1, 2]) {
      await sysfs.addDevice({ address: `0000:3b:00.${f}`, driver: f === 2 ? 'ixgbevf' : 'ixgbe', iommuGroup: 30 });
    }
    sysfs.failProbe.add('0000:3b:00.1 vfio-pci');
    const before = await sysfs.snapshot();
    const error = await bindVfio('0000:3b:00.2', { sysfs, addresses: noAddresses }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DeviceBindError);
    expect((error as DeviceBindError).restored).toBe(true);
    expect((error as Error).message).toMatch(/0000:3b:00\.1 is unbound after drivers_probe, not to vfio-pci; every device was put back/u);
    expect(sysfs.writes).toEqual([
      ['bus/pci/devices/0000:3b:00.0/driver_override', 'vfio-pci'],
      ['bus/pci/drivers/ixgbe/unbind', '0000:3b:00.0'],
      ['bus/pci/drivers_probe', '0000:3b:00.0'],
      ['bus/pci/devices/0000:3b:00.1/driver_override', 'vfio-pci'],
      ['bus/pci/drivers/ixgbe/unbind', '0000:3b:00.1'],
      ['bus/pci/drivers_probe', '0000:3b:00.1'],
      // rollback, last touched first; 00.1 never reached vfio-pci
      ['bus/pci/devices/0000:3b:00.1/driver_override', '\n'],
      ['bus/pci/drivers/ixgbe/bind', '0000:3b:00.1'],
      ['bus/pci/drivers/vfio-pci/unbind', '0000:3b:00.0'],
      ['bus/pci/devices/0000:3b:00.0/driver_override', '\n'],
      ['bus/pci/drivers/ixgbe/bind', '0000:3b:00.0'],
    ]);
    expect(await sysfs.snapshot()).toEqual(before);
  });

  it('undoes everything when a write fails midway (unbind returns EIO)', async () => {
    await multiFunctionNic();
    sysfs.failWrite.set('bus/pci/drivers/ixgbe/unbind=0000:3b:00.1', 'EIO');
    const before = await sysfs.snapshot();
    const error = await bindVfio('0000:3b:00.0', { sysfs, addresses: noAddresses }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ERR_VMPOD_DEVICE_BIND', restored: true });
    expect(((error as Error).cause as { errnoName?: string }).errnoName).toBe('EIO');
    expect(sysfs.writes.slice(4)).toEqual([
      ['bus/pci/drivers/ixgbe/unbind', '0000:3b:00.1'],
      ['bus/pci/devices/0000:3b:00.1/driver_override', '\n'],
      ['bus/pci/drivers/vfio-pci/unbind', '0000:3b:00.0'],
      ['bus/pci/devices/0000:3b:00.0/driver_override', '\n'],
      ['bus/pci/drivers/ixgbe/bind', '0000:3b:00.0'],
    ]);
    expect(await sysfs.snapshot()).toEqual(before);
  });

  it('reports what it could not restore, after trying every device', async () => {
    await multiFunctionNic();
    const binding = await bindVfio('0000:3b:00.0', { sysfs, addresses: noAddresses });
    sysfs.failWrite.set('bus/pci/drivers/ixgbe/bind=0000:3b:00.1', 'ENODEV');
    const error = await binding.release().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DeviceBindError);
    expect((error as DeviceBindError).failures).toEqual([
      expect.stringMatching(/^0000:3b:00\.1: write .*ixgbe\/bind/u),
    ]);
    expect((await pciDevice('0000:3b:00.0', { sysfs })).driver).toBe('ixgbe'); // the other one was still restored
    sysfs.failWrite.clear();
    await binding.release(); // a retry finishes the job
    expect((await pciDevice('0000:3b:00.1', { sysfs })).driver).toBe('ixgbe');
  });

  it('rejects a tampered record before any write', async () => {
    await multiFunctionNic();
    const bad = { address: '0000:3b:00.0', iommuGroup: 30, devices: [{ address: '0000:3b:00.0', originalDriver: '../../x', originalDriverOverride: null, alreadyBound: false }] };
    await expect(releaseVfio(bad, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(releaseVfio({ ...bad, devices: [{ ...bad.devices[0]!, address: '0000:3b:00.0/..', originalDriver: 'ixgbe' }] }, { sysfs })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    expect(sysfs.writes).toEqual([]);
  });
});

describe('one binding per IOMMU group: the claim (fake sysfs)', () => {
  const A = '0000:3b:00.0';
  const B = '0000:3b:00.1';
  const claimFile = (): string => sysfs.path('.vmpod-lock/vfio-group-30.json');
  const drivers = async (): Promise<(string | null)[]> => Promise.all([A, B].map(async (a) => (await pciDevice(a, { sysfs })).driver));

  it('refuses a second binding of a held group, naming the holder, with no write; the group is free again after release', async () => {
    await multiFunctionNic();
    const first = await bindVfio(A, { sysfs, addresses: noAddresses, owner: 'sandbox one' });
    expect(first.record).toMatchObject({ owner: 'sandbox one', claimId: expect.any(String) });
    const claim = JSON.parse(await fs.readFile(claimFile(), 'utf8')) as Record<string, unknown>;
    expect(claim).toEqual({ owner: 'sandbox one', pid: process.pid, since: expect.any(String), address: A, claimId: first.record.claimId, record: first.record });
    expect((await fs.stat(claimFile())).mode & 0o777).toBe(0o600);
    sysfs.writes.length = 0;

    const error = await bindVfio(B, { sysfs, addresses: noAddresses, owner: 'sandbox two' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IommuGroupInUseError);
    expect(error).toMatchObject({
      code: 'ERR_VMPOD_IOMMU_GROUP_IN_USE',
      address: B,
      group: 30,
      holder: { owner: 'sandbox one', pid: process.pid, address: A, claimId: first.record.claimId },
      claimPath: claimFile(),
    });
    expect((error as Error).message).toMatch(
      /^IOMMU group 30 of PCI device 0000:3b:00\.1 is bound to vfio-pci for sandbox one \(pid \d+, since .+, for 0000:3b:00\.0\): a group goes to one VM at a time/u,
    );
    // The check without writes says so too, before anything is recorded.
    await expect(checkVfioGroup(B, { sysfs, addresses: noAddresses })).rejects.toBeInstanceOf(IommuGroupInUseError);
    // The same device again is refused just the same.
    await expect(bindVfio(A, { sysfs, addresses: noAddresses })).rejects.toBeInstanceOf(IommuGroupInUseError);
    expect(sysfs.writes).toEqual([]);

    await first.release();
    await expect(fs.access(claimFile())).rejects.toMatchObject({ code: 'ENOENT' });
    const second = await bindVfio(B, { sysfs, addresses: noAddresses, owner: 'sandbox two' });
    expect(await drivers()).toEqual(['vfio-pci', 'vfio-pci']);
    await second.release();
    expect(await drivers()).toEqual(['ixgbe', 'ixgbe']);
  });

  it('two binds of one group at once in one process: one gets it, the other is refused', async () => {
    await multiFunctionNic();
    const results = await Promise.allSettled([bindVfio(A, { sysfs, addresses: noAddresses }), bindVfio(B, { sysfs, addresses: noAddresses })]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect([won.length, lost.length]).toEqual([1, 1]);
    expect(lost[0]!.reason).toBeInstanceOf(IommuGroupInUseError);
    await (won[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof bindVfio>>>).value.release();
    expect(await drivers()).toEqual(['ixgbe', 'ixgbe']);
  });

  it('a release of a binding that is over leaves the group to the binding that holds it now', async () => {
    await multiFunctionNic();
    const first = await bindVfio(A, { sysfs, addresses: noAddresses, owner: 'one' });
    const saved = JSON.parse(JSON.stringify(first.record)) as VfioBindingRecord;
    await first.release();
    const second = await bindVfio(B, { sysfs, addresses: noAddresses, owner: 'two' });
    sysfs.writes.length = 0;
    // The first sandbox's record, released again (a retry after a crash, say): nothing is touched.
    await releaseVfio(saved, { sysfs });
    expect(sysfs.writes).toEqual([]);
    expect(await drivers()).toEqual(['vfio-pci', 'vfio-pci']);
    // Nor by a record of an older version for another state of the group.
    const { claimId: _c, owner: _o, ...legacy } = saved;
    await releaseVfio({ ...legacy, devices: legacy.devices.map((d) => ({ ...d, originalDriver: 'i40e' })) }, { sysfs });
    expect(sysfs.writes).toEqual([]);
    await second.release();
    expect(await drivers()).toEqual(['ixgbe', 'ixgbe']);
    // With no claim at all, a record with a claim id is over: nothing to do.
    sysfs.writes.length = 0;
    await releaseVfio(saved, { sysfs });
    expect(sysfs.writes).toEqual([]);
  });

  it('releases a record without a claim id (older versions, or saved before bindVfio returned) like before', async () => {
    await multiFunctionNic();
    const before = await sysfs.snapshot();
    // Bound by an older vmpod: no claim.
    const binding = await bindVfio(A, { sysfs, addresses: noAddresses });
    const { claimId: _c, owner: _o, ...legacy } = binding.record;
    await fs.rm(claimFile());
    await releaseVfio(legacy, { sysfs });
    expect(await sysfs.snapshot()).toEqual(before);
    // Saved before the bind (as a sandbox does), the bind then claims the group: the record is
    // that binding's, so it releases it and the claim.
    const planned = (await bindVfio(A, { sysfs, addresses: noAddresses })).record;
    const { claimId: _c2, owner: _o2, ...presaved } = planned;
    await releaseVfio(presaved, { sysfs });
    expect(await sysfs.snapshot()).toEqual(before);
    await expect(fs.access(claimFile())).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a claim id given to bindVfio goes into the record; a bind that cannot be undone keeps the claim for the saved record', async () => {
    await multiFunctionNic();
    const before = await sysfs.snapshot();
    sysfs.failWrite.set(`bus/pci/drivers/ixgbe/unbind=${B}`, 'EIO');
    sysfs.failWrite.set(`bus/pci/drivers/ixgbe/bind=${A}`, 'EIO');
    const { members, iommuGroup } = await checkVfioGroup(A, { sysfs, addresses: noAddresses });
    const saved: VfioBindingRecord = {
      address: A,
      iommuGroup,
      devices: members.map((m) => ({ address: m.address, originalDriver: m.driver, originalDriverOverride: m.driverOverride, alreadyBound: false })),
      claimId: 'sandbox-1.dev0',
      owner: 'sandbox 1',
    };
    const error = await bindVfio(A, { sysfs, addresses: noAddresses, owner: 'sandbox 1', claimId: 'sandbox-1.dev0' }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ERR_VMPOD_DEVICE_BIND', restored: false });
    // Half bound: the group stays claimed, nobody else can take it.
    await expect(bindVfio(B, { sysfs, addresses: noAddresses })).rejects.toMatchObject({ holder: { owner: 'sandbox 1', claimId: 'sandbox-1.dev0' } });
    sysfs.failWrite.clear();
    await releaseVfio(saved, { sysfs });
    expect(await sysfs.snapshot()).toEqual(before);
    await expect(fs.access(claimFile())).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(bindVfio(A, { sysfs, claimId: 'a/b' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(bindVfio(A, { sysfs, owner: 'x\ny' })).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('replaces a stale claim (no member left on vfio-pci); refuses on an unreadable one while the group is bound', async () => {
    await multiFunctionNic();
    const first = await bindVfio(A, { sysfs, addresses: noAddresses, owner: 'gone' });
    // Given back by hand (the claim is left behind).
    for (const a of [A, B]) {
      await sysfs.write(`bus/pci/drivers/vfio-pci/unbind`, a);
      await sysfs.write(`bus/pci/devices/${a}/driver_override`, '\n');
      await sysfs.write(`bus/pci/drivers/ixgbe/bind`, a);
    }
    const second = await bindVfio(B, { sysfs, addresses: noAddresses, owner: 'new' });
    expect(JSON.parse(await fs.readFile(claimFile(), 'utf8'))).toMatchObject({ owner: 'new' });
    sysfs.writes.length = 0;
    await releaseVfio(first.record, { sysfs }); // the stale holder's record: not its group any more
    expect(sysfs.writes).toEqual([]);
    await fs.writeFile(claimFile(), '{"owner": 4');
    const error = await bindVfio(A, { sysfs, addresses: noAddresses }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IommuGroupInUseError);
    expect((error as IommuGroupInUseError).holder).toBeUndefined();
    expect((error as Error).message).toMatch(/for a binding whose claim cannot be read/u);
    await fs.rm(claimFile());
    await releaseVfio(second.record, { sysfs }); // its claim is gone: over as far as it knows
    expect(await drivers()).toEqual(['vfio-pci', 'vfio-pci']);
    const { claimId: _c, owner: _o, ...legacy } = second.record;
    await releaseVfio(legacy, { sysfs });
    expect(await drivers()).toEqual(['ixgbe', 'ixgbe']);
  });

  it('rejects a record whose group or claim is not what a record holds, before any lock or write', async () => {
    await multiFunctionNic();
    const good = { address: A, iommuGroup: 30, devices: [{ address: A, originalDriver: 'ixgbe', originalDriverOverride: null, alreadyBound: false }] };
    for (const bad of [{ ...good, iommuGroup: '30/../x' }, { ...good, iommuGroup: -1 }, { ...good, claimId: '../x' }, { ...good, owner: 7 }]) {
      await expect(releaseVfio(bad as unknown as VfioBindingRecord, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    expect(sysfs.writes).toEqual([]);
    await expect(fs.access(sysfs.path('.vmpod-lock'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('bindVfio / releaseVfio from several processes (fake sysfs)', () => {
  const worker = fileURLToPath(new URL('./devices-vfio-worker.ts', import.meta.url));

  it('two processes binding the two devices of one IOMMU group: one holds it at a time, the drivers end as they were', async () => {
    await multiFunctionNic();
    const lockDir = await fs.mkdtemp(`${sysfs.root}-locks-`);
    try {
      const before = await sysfs.snapshot();
      const members = ['0000:3b:00.0', '0000:3b:00.1'];
      const common = { sysfs: sysfs.root, lockDir, members, binds: 8, checks: 3, deadlineMs: 40_000, holdFirst: true };
      const reports = await runWorkers<VfioWorkerOptions, VfioWorkerReport>(worker, [
        { ...common, name: 'sandbox-a', address: members[0]! },
        { ...common, name: 'sandbox-b', address: members[1]! },
      ]);
      expect(reports.flatMap((r) => r.errors)).toEqual([]);
      expect(reports.flatMap((r) => r.violations)).toEqual([]);
      expect(reports.map((r) => r.bound)).toEqual([8, 8]);
      // The other one was refused while one held the group, and was told who held it.
      expect(reports.reduce((n, r) => n + r.refused, 0)).toBeGreaterThan(0);
      for (const r of reports) expect(r.holders.every((h) => h !== r.name)).toBe(true);
      expect(await sysfs.snapshot()).toEqual(before);
      // No claim is left: only the lock files stay.
      expect((await fs.readdir(lockDir)).filter((f) => !f.endsWith('.lock'))).toEqual([]);
    } finally {
      await fs.rm(lockDir, { recursive: true, force: true });
    }
  }, 120_000);
});

describe('the QEMU vfio-pci device', () => {
  it('gives the -device argument and the device_add arguments', () => {
    const cold = vfioPciDevice('0000:3B:00.1', { id: 'hostdev0', bus: 'rp1' });
    expect(cold).toEqual({ driver: 'vfio-pci', host: '0000:3b:00.1', id: 'hostdev0', bus: 'rp1' });
    expect(vfioQemuArgument(cold)).toBe('vfio-pci,host=0000:3b:00.1,id=hostdev0,bus=rp1');
    expect(vfioDeviceAddArguments(cold)).toEqual({ driver: 'vfio-pci', host: '0000:3b:00.1', id: 'hostdev0', bus: 'rp1' });

    const full = vfioPciDevice('0000:af:00.0', { id: 'vf.2', bus: 'pcie.0', addr: '0x5', multifunction: true, rombar: 0 });
    expect(vfioQemuArgument(full)).toBe('vfio-pci,host=0000:af:00.0,id=vf.2,bus=pcie.0,addr=0x5,multifunction=on,rombar=0');
    expect(vfioDeviceAddArguments(full)).toEqual({ driver: 'vfio-pci', host: '0000:af:00.0', id: 'vf.2', bus: 'pcie.0', addr: '0x5', multifunction: true, rombar: 0 });
    expect(vfioQemuArgument(vfioPciDevice('0000:af:00.0', { id: 'h' }))).toBe('vfio-pci,host=0000:af:00.0,id=h');
  });

  it('rejects ids, buses and slots QEMU would misparse', () => {
    expect(() => vfioPciDevice('0000:3b:00.1', { id: '0dev' })).toThrow(InvalidArgumentError);
    expect(() => vfioPciDevice('0000:3b:00.1', { id: 'a,b=c' })).toThrow(InvalidArgumentError);
    expect(() => vfioPciDevice('0000:3b:00.1', { id: 'ok', bus: 'rp1,addr=2' })).toThrow(InvalidArgumentError);
    expect(() => vfioPciDevice('0000:3b:00.1', { id: 'ok', addr: '0x100' })).toThrow(InvalidArgumentError);
    expect(() => vfioPciDevice('3b:00.1', { id: 'ok' })).toThrow(InvalidArgumentError);
  });
});
