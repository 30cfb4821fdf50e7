/**
 * The `devices` sandbox resource (VFIO passthrough) against generated sysfs trees: a VF of a
 * PF, a multi-device IOMMU group, an up netdev, a device already on vfio-pci, a group that
 * cannot be split, an unbindable driver, a probe that fails midway, a crash between the record
 * and the bind. Asserts the exact sysfs writes, the persisted record, the exact QEMU arguments
 * and that release leaves the tree as it was.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DeviceBindError, DeviceBusyError, IommuGroupNotViableError } from '../../src/devices/errors.js';
import { buildQemuCommandLine } from '../../src/hypervisor/qemu/cmdline.js';
import type { HostFacts } from '../../src/hypervisor/host.js';
import type { VmDevice } from '../../src/hypervisor/hypervisor.js';
import { PciDevicesResource, hotplugPci, pciDevices, unplugPci } from '../../src/sandbox/resources/pci-devices.js';
import { resolveSandboxConfig, type SandboxConfig } from '../../src/sandbox/config.js';
import { memoryContext, withGuest } from './resource-context.js';
import { InvalidArgumentError } from '../../src/errors.js';
import type { Hypervisor, VmConfig } from '../../src/hypervisor/hypervisor.js';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { FakeSysfs } from './devices-fake-sysfs.js';

// The resources name their sysfs root by path (it is persisted); this routes that path to the
// fake tree object, whose writes play the kernel's part.
const fake = vi.hoisted(() => ({ current: undefined as { root: string } | undefined }));
vi.mock('../../src/devices/sysfs.js', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../../src/devices/sysfs.js')>();
  return {
    ...actual,
    sysfsOf: (options: { sysfs?: unknown } = {}) =>
      fake.current !== undefined && options.sysfs === fake.current.root ? fake.current : actual.sysfsOf(options as never),
  };
});

const UP = 0x1003;
const DOWN = 0x1002;
const tcg: HostFacts = { kvm: false, vhostNet: false, tscKhz: 2596145 };

let sysfs: FakeSysfs;
let dir: string;

beforeEach(async () => {
  sysfs = await FakeSysfs.create();
  fake.current = sysfs;
  await sysfs.addDriver('vfio-pci');
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-nfv-'));
});
afterEach(async () => {
  await sysfs.cleanup();
  await fs.rm(dir, { recursive: true, force: true });
});

/** A resource context over an in-memory record, as the sandbox gives it. */
function context(config: Omit<SandboxConfig, 'sysfs' | 'stateDir'>, initial?: unknown) {
  return memoryContext(new PciDevicesResource(), { dir, config: resolveSandboxConfig({ ...config, sysfs: sysfs.root, stateDir: dir }) }, initial);
}

/** A snapshot of the tree: every driver link and driver_override. */
async function snapshot(): Promise<Record<string, string | undefined>> {
  const out: Record<string, string | undefined> = {};
  for (const a of await sysfs.list('bus/pci/devices')) {
    out[`${a} driver`] = await sysfs.linkName(`bus/pci/devices/${a}/driver`);
    out[`${a} override`] = await sysfs.readOptional(`bus/pci/devices/${a}/driver_override`);
  }
  return out;
}

/** The QEMU arguments of `devices` in a q35 VM. */
function qemuArgs(devices: readonly VmDevice[]): string[] {
  return [
    ...buildQemuCommandLine(
      { id: 'sb', cpus: 1, memory: { sizeMiB: 256 }, kernel: '/k', consoleLog: '/tmp/c.log', runDir: '/tmp/run', devices, hotplugPorts: 0 },
      { host: tcg },
    ).args,
  ];
}

async function pfWithVfs(): Promise<void> {
  await sysfs.addDevice({
    address: '0000:3b:00.0',
    driver: 'i40e',
    iommuGroup: 40,
    netdevs: [{ name: 'vtpf0', operstate: 'up', flags: UP }],
    sriov: { totalVfs: 4, numVfs: 2, vfDriver: 'iavf', vfAddress: (i) => `0000:3b:02.${i}`, vfGroup: (i) => 50 + i },
  });
}

describe('the devices resource binds at prepare and restores at release', () => {
  it('passes a VF of a PF: exact writes, record, QEMU arguments, then the tree as before', async () => {
    await pfWithVfs();
    const before = await snapshot();
    const { ctx, record } = context({ devices: [{ address: '0000:3b:02.1' }] });
    const resource = new PciDevicesResource();
    const contribution = await resource.prepare(ctx);
    expect(sysfs.writes).toEqual([
      ['bus/pci/devices/0000:3b:02.1/driver_override', 'vfio-pci'],
      ['bus/pci/drivers/iavf/unbind', '0000:3b:02.1'],
      ['bus/pci/drivers_probe', '0000:3b:02.1'],
    ]);
    // The first save happened before any write, and already named the original driver and the
    // host-wide claim the binding takes on the group.
    expect(record.saves[0]).toEqual({
      devices: [
        {
          id: 'hostdev0',
          address: '0000:3b:02.1',
          binding: {
            address: '0000:3b:02.1',
            iommuGroup: 51,
            devices: [{ address: '0000:3b:02.1', originalDriver: 'iavf', originalDriverOverride: null, alreadyBound: false }],
            claimId: expect.stringMatching(/^[0-9a-f-]{36}$/u),
            owner: 'sandbox sb',
          },
          hotplugged: false,
        },
      ],
    });
    expect((record.saves.at(-1) as { devices: { binding: { claimId: string } }[] }).devices[0]!.binding.claimId).toBe(
      (record.saves[0] as { devices: { binding: { claimId: string } }[] }).devices[0]!.binding.claimId,
    );
    expect(contribution.devices).toEqual([{ kind: 'vfio-pci', id: 'hostdev0', host: '0000:3b:02.1', rootPort: true }]);
    const args = qemuArgs(contribution.devices!);
    expect(args).toContain('pcie-root-port,id=rp0,bus=pcie.0,chassis=1,addr=0x10');
    expect(args).toContain('vfio-pci,id=hostdev0,bus=rp0,host=0000:3b:02.1');
    expect(await sysfs.linkName('bus/pci/devices/0000:3b:02.1/driver')).toBe('vfio-pci');

    sysfs.writes.length = 0;
    await resource.release(ctx);
    expect(sysfs.writes).toEqual([
      ['bus/pci/drivers/vfio-pci/unbind', '0000:3b:02.1'],
      ['bus/pci/devices/0000:3b:02.1/driver_override', '\n'],
      ['bus/pci/drivers/iavf/bind', '0000:3b:02.1'],
    ]);
    expect(await snapshot()).toEqual(before);
    expect(pciDevices(record.state)).toEqual([]);
  });

  it('binds every device of a multi-device IOMMU group, and restores them last first', async () => {
    await sysfs.addDevice({ address: '0000:3b:00.0', driver: 'ixgbe', iommuGroup: 30, netdevs: [{ name: 'vtp0', flags: DOWN }] });
    await sysfs.addDevice({ address: '0000:3b:00.1', driver: 'ixgbe', iommuGroup: 30, netdevs: [{ name: 'vtp1', flags: DOWN }] });
    const before = await snapshot();
    const { ctx, record } = context({ devices: [{ address: '0000:3b:00.1', id: 'vnf0' }] });
    const resource = new PciDevicesResource();
    const contribution = await resource.prepare(ctx);
    expect(sysfs.writes).toEqual([
      ['bus/pci/devices/0000:3b:00.0/driver_override', 'vfio-pci'],
      ['bus/pci/drivers/ixgbe/unbind', '0000:3b:00.0'],
      ['bus/pci/drivers_probe', '0000:3b:00.0'],
      ['bus/pci/devices/0000:3b:00.1/driver_override', 'vfio-pci'],
      ['bus/pci/drivers/ixgbe/unbind', '0000:3b:00.1'],
      ['bus/pci/drivers_probe', '0000:3b:00.1'],
    ]);
    expect(pciDevices(record.state)[0]!.binding.devices.map((d) => d.address)).toEqual(['0000:3b:00.0', '0000:3b:00.1']);
    // Only the device asked for goes to the VM; its group mate is held by vfio-pci, unused.
    expect(qemuArgs(contribution.devices!)).toContain('vfio-pci,id=vnf0,bus=rp0,host=0000:3b:00.1');
    sysfs.writes.length = 0;
    await resource.release(ctx);
    expect(sysfs.writes.map(([p]) => p)).toEqual([
      'bus/pci/drivers/vfio-pci/unbind',
      'bus/pci/devices/0000:3b:00.1/driver_override',
      'bus/pci/drivers/ixgbe/bind',
      'bus/pci/drivers/vfio-pci/unbind',
      'bus/pci/devices/0000:3b:00.0/driver_override',
      'bus/pci/drivers/ixgbe/bind',
    ]);
    expect(await snapshot()).toEqual(before);
  });

  it('refuses a device whose netdev is up (DeviceBusyError, nothing written) unless forced', async () => {
    await pfWithVfs();
    const busy = context({ devices: [{ address: '0000:3b:00.0' }] });
    await expect(new PciDevicesResource().prepare(busy.ctx)).rejects.toThrow(DeviceBusyError);
    await expect(new PciDevicesResource().prepare(busy.ctx)).rejects.toThrow(/netdev vtpf0 is up/u);
    expect(sysfs.writes).toEqual([]);
    expect(pciDevices(busy.record.state)).toEqual([]);

    // Forced (the PF's VFs count as use too): bound, and restored on release.
    const before = await snapshot();
    const forced = context({ devices: [{ address: '0000:3b:00.0', force: true }] });
    const resource = new PciDevicesResource();
    await resource.prepare(forced.ctx);
    expect(await sysfs.linkName('bus/pci/devices/0000:3b:00.0/driver')).toBe('vfio-pci');
    await resource.release(forced.ctx);
    expect(await snapshot()).toEqual(before);
  });

  it('takes a device already on vfio-pci without writing, and leaves it there on release', async () => {
    await sysfs.addDevice({ address: '0000:5e:00.0', driver: 'vfio-pci', nativeDriver: 'nvme', class: '010802', iommuGroup: 31 });
    const { ctx, record } = context({ devices: [{ address: '0000:5e:00.0' }] });
    const resource = new PciDevicesResource();
    const contribution = await resource.prepare(ctx);
    expect(sysfs.writes).toEqual([]);
    expect(pciDevices(record.state)[0]!.binding.devices).toEqual([
      { address: '0000:5e:00.0', originalDriver: 'vfio-pci', originalDriverOverride: null, alreadyBound: true },
    ]);
    expect(qemuArgs(contribution.devices!)).toContain('vfio-pci,id=hostdev0,bus=rp0,host=0000:5e:00.0');
    await resource.release(ctx);
    expect(sysfs.writes).toEqual([]);
    expect(await sysfs.linkName('bus/pci/devices/0000:5e:00.0/driver')).toBe('vfio-pci');
  });

  it('refuses an IOMMU group that cannot be split: a member in use, a bridge, an unbindable driver', async () => {
    await sysfs.addDevice({ address: '0000:3b:00.0', driver: 'ixgbe', iommuGroup: 30, netdevs: [{ name: 'vtp0', flags: UP }] });
    await sysfs.addDevice({ address: '0000:3b:00.1', driver: 'ixgbe', iommuGroup: 30, netdevs: [{ name: 'vtp1', flags: DOWN }] });
    await sysfs.addDevice({ address: '0000:00:1c.0', driver: 'pcieport', class: '060400', iommuGroup: 32 });
    await sysfs.addDevice({ address: '0000:00:1c.1', iommuGroup: 32 });
    await sysfs.addDriver('sticky', { unbind: false });
    await sysfs.addDevice({ address: '0000:6a:00.0', driver: 'sticky', iommuGroup: 33 });
    for (const [address, reason] of [
      ['0000:3b:00.1', /0000:3b:00.0 shares the group and is in use/u],
      ['0000:00:1c.1', /is a PCI bridge/u],
      ['0000:6a:00.0', /held by driver sticky, which cannot be unbound/u],
    ] as const) {
      const { ctx, record } = context({ devices: [{ address }] });
      const error = await new PciDevicesResource().prepare(ctx).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(IommuGroupNotViableError);
      expect((error as Error).message).toMatch(reason);
      expect(pciDevices(record.state)).toEqual([]);
    }
    expect(sysfs.writes).toEqual([]);
  });

  it('undoes a bind whose probe fails midway, before throwing DeviceBindError', async () => {
    await sysfs.addDevice({ address: '0000:3b:00.0', driver: 'ixgbe', iommuGroup: 30, netdevs: [{ name: 'vtp0', flags: DOWN }] });
    await sysfs.addDevice({ address: '0000:3b:00.1', driver: 'ixgbe', iommuGroup: 30, netdevs: [{ name: 'vtp1', flags: DOWN }] });
    sysfs.failProbe.add('0000:3b:00.1 vfio-pci');
    const before = await snapshot();
    const { ctx, record } = context({ devices: [{ address: '0000:3b:00.1' }] });
    const error = await new PciDevicesResource().prepare(ctx).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DeviceBindError);
    expect((error as DeviceBindError).restored).toBe(true);
    expect(await snapshot()).toEqual(before);
    expect(pciDevices(record.state)).toEqual([]);
  });

  it('releases from the record alone after a crash between the record and the bind (no writes), or mid-bind', async () => {
    await pfWithVfs();
    const before = await snapshot();
    const { ctx, record } = context({ devices: [{ address: '0000:3b:02.0' }] });
    // What prepare saves before its first write, as a crashed process would have left it.
    const crashed = {
      devices: [
        {
          id: 'hostdev0',
          address: '0000:3b:02.0',
          binding: { address: '0000:3b:02.0', iommuGroup: 50, devices: [{ address: '0000:3b:02.0', originalDriver: 'iavf', originalDriverOverride: null, alreadyBound: false }] },
          hotplugged: false,
        },
      ],
    };
    record.state = structuredClone(crashed);
    await new PciDevicesResource().release(ctx);
    expect(sysfs.writes).toEqual([]);
    // Mid-bind: the override was written and the driver unbound, then the process died.
    record.state = structuredClone(crashed);
    await sysfs.write('bus/pci/devices/0000:3b:02.0/driver_override', 'vfio-pci');
    await sysfs.write('bus/pci/drivers/iavf/unbind', '0000:3b:02.0');
    await new PciDevicesResource().release(ctx);
    expect(await snapshot()).toEqual(before);
    expect(pciDevices(record.state)).toEqual([]);
  });

  it('rejects bad device config before anything', () => {
    expect(() => resolveSandboxConfig({ devices: [{ address: '3b:00.1' }] })).toThrow(InvalidArgumentError);
    expect(() => resolveSandboxConfig({ devices: [{ address: '0000:3b:00.1' }, { address: '0000:3B:00.1' }] })).toThrow(/given twice/u);
    expect(() => resolveSandboxConfig({ machine: 'microvm', devices: [{ address: '0000:3b:00.1' }] })).toThrow(/q35/u);
    expect(() => resolveSandboxConfig({ devices: [{ address: '0000:3b:00.1', id: 'rp1' }] })).toThrow(InvalidArgumentError);
    expect(() => resolveSandboxConfig({ devices: [{ address: '0000:3b:00.1', bus: 'x' } as never] })).toThrow(/unknown field/u);
  });

  it('restores the drivers when the sandbox fails to start after the bind (the VM does not come up)', async () => {
    await pfWithVfs();
    const before = await snapshot();
    for (const f of ['vmlinux', 'initramfs']) await fs.writeFile(path.join(dir, f), 'x');
    let started: VmConfig | undefined;
    const fail = async (config: VmConfig): Promise<never> => {
      started = config;
      throw new Error('qemu-system-x86_64: -device vfio-pci,host=0000:3b:02.1: vfio 0000:3b:02.1: no iommu_group found');
    };
    const hypervisor: Hypervisor = {
      name: 'fake',
      start: fail,
      spawn: fail,
      kill: async () => undefined,
      attach: async () => {
        throw new Error('unused');
      },
    };
    const sandbox = await Sandbox.create({
      stateDir: path.join(dir, 'state'),
      sharedFs: false,
      guest: { kernel: path.join(dir, 'vmlinux'), initramfs: path.join(dir, 'initramfs') },
      devices: [{ address: '0000:3b:02.1', id: 'vnf0' }],
      sysfs: sysfs.root,
      hypervisor,
    });
    await expect(sandbox.start()).rejects.toThrow(/no iommu_group/u);
    // The VM was asked for with the device on a root port of its own.
    const args = buildQemuCommandLine(started!, { host: tcg }).args;
    expect(args).toContain('vfio-pci,id=vnf0,bus=rp0,host=0000:3b:02.1');
    expect(sysfs.writes).toEqual([
      ['bus/pci/devices/0000:3b:02.1/driver_override', 'vfio-pci'],
      ['bus/pci/drivers/iavf/unbind', '0000:3b:02.1'],
      ['bus/pci/drivers_probe', '0000:3b:02.1'],
      ['bus/pci/drivers/vfio-pci/unbind', '0000:3b:02.1'],
      ['bus/pci/devices/0000:3b:02.1/driver_override', '\n'],
      ['bus/pci/drivers/iavf/bind', '0000:3b:02.1'],
    ]);
    expect(await snapshot()).toEqual(before);
    const record = JSON.parse(await fs.readFile(path.join(sandbox.dir, 'state.json'), 'utf8'));
    expect(record.state).toBe('stopped');
    expect(record.resources.devices).toEqual({ devices: [] });
    await sandbox.delete();
  });

  it('hot plugs a device (bind, then device_add) and unplugs it (device_del, then restore); a failed device_add restores', async () => {
    await pfWithVfs();
    const before = await snapshot();
    const { ctx, record } = context({});
    const calls: unknown[] = [];
    let fail = false;
    const vm = {
      hotplug: async (device: VmDevice) => {
        calls.push(['hotplug', device]);
        if (fail) throw new Error('device_add: vfio 0000:3b:02.0: group 50 is not viable');
        return { id: device.id, port: 'rp2', pciPath: '12/00' };
      },
      unplug: async (id: string) => {
        calls.push(['unplug', id]);
      },
    };
    // The agent is told where the device landed and says what the guest made of it.
    let guestSees = true;
    const guestDevice = { pciAddress: '0000:01:00.0', sysfsPath: '/sys/devices/pci0000:00/0000:00:12.0/0000:01:00.0', driver: null, netdevs: [] };
    const agent = {
      info: { features: ['find-device'] },
      findDevice: async (request: { pciPath: string; netdev?: boolean }) => {
        calls.push(['findDevice', request.pciPath, request.netdev]);
        if (!guestSees) throw new Error('no device at PCI path 12/00 appeared in time');
        return guestDevice;
      },
    };
    const gctx = withGuest(ctx, { vm, agent });
    const info = await hotplugPci(gctx, { address: '0000:3b:02.0', id: 'vf0', force: false });
    expect(info).toMatchObject({ id: 'vf0', address: '0000:3b:02.0', pciPath: '12/00', hotplugged: true, guest: guestDevice });
    expect(calls).toEqual([['hotplug', { kind: 'vfio-pci', id: 'vf0', host: '0000:3b:02.0' }], ['findDevice', '12/00', false]]);
    // Bound before device_add.
    expect(sysfs.writes.slice(0, 3).map(([p]) => p)).toEqual([
      'bus/pci/devices/0000:3b:02.0/driver_override',
      'bus/pci/drivers/iavf/unbind',
      'bus/pci/drivers_probe',
    ]);
    expect(pciDevices(record.state).map((d) => d.pciPath)).toEqual(['12/00']);
    await unplugPci(gctx, 'vf0');
    expect(calls.at(-1)).toEqual(['unplug', 'vf0']);
    expect(await snapshot()).toEqual(before);
    expect(pciDevices(record.state)).toEqual([]);

    // A device the guest never sees is unplugged again and its drivers restored.
    guestSees = false;
    await expect(hotplugPci(gctx, { address: '0000:3b:02.0', id: 'vf0', force: false })).rejects.toThrow(/appeared in time/u);
    expect(calls.slice(-2)).toEqual([['findDevice', '12/00', false], ['unplug', 'vf0']]);
    expect(await snapshot()).toEqual(before);
    expect(pciDevices(record.state)).toEqual([]);

    fail = true;
    await expect(hotplugPci(gctx, { address: '0000:3b:02.1', id: 'vf1', force: false })).rejects.toThrow(/not viable/u);
    expect(await snapshot()).toEqual(before);
    expect(pciDevices(record.state)).toEqual([]);
  });
});
