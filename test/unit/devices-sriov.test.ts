import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import { DeviceBusyError, FeatureUnavailableError } from '../../src/devices/errors.js';
import { pciDevice } from '../../src/devices/pci.js';
import { setNumVfs, setVf, sriovCapability, vfIndex, vfSettingsMessage } from '../../src/devices/sriov.js';
import { bindVfio } from '../../src/devices/vfio.js';
import { FakeSysfs } from './devices-fake-sysfs.js';

const PF = '0000:3b:00.0';
const vfAddress = (i: number): string => `0000:3b:0${2 + Math.floor(i / 8)}.${i % 8}`;

let sysfs: FakeSysfs;
beforeEach(async () => {
  sysfs = await FakeSysfs.create();
  await sysfs.addDriver('vfio-pci');
  await sysfs.addDevice({
    address: PF,
    driver: 'i40e',
    iommuGroup: 20,
    netdevs: [{ name: 'ens1f0', operstate: 'up', flags: 0x1003 }],
    sriov: { totalVfs: 16, vfDriver: 'iavf', vfAddress, vfGroup: (i) => 100 + i },
  });
  await sysfs.addDevice({ address: '0000:5e:00.0', driver: 'nvme', class: '010802' });
});
afterEach(async () => {
  await sysfs.cleanup();
});

describe('VF creation through sriov_numvfs (fake sysfs)', () => {
  it('creates VFs, then changes their number by going through 0, with the exact writes', async () => {
    expect(await sriovCapability(PF, { sysfs })).toEqual({ totalVfs: 16, numVfs: 0, vfs: [] });

    const created = await setNumVfs(PF, 4, { sysfs });
    expect(sysfs.writes).toEqual([[`bus/pci/devices/${PF}/sriov_numvfs`, '4']]);
    expect(created.previous).toBe(0);
    expect(created.sriov.numVfs).toBe(4);
    expect(created.sriov.vfs).toEqual([0, 1, 2, 3].map((index) => ({ index, address: vfAddress(index) })));
    expect(await pciDevice(vfAddress(3), { sysfs })).toMatchObject({ physfn: PF, driver: 'iavf', iommuGroup: 103 });
    expect(await vfIndex(vfAddress(2), { sysfs })).toEqual({ pf: PF, index: 2 });

    sysfs.writes.length = 0;
    const changed = await setNumVfs(PF, 10, { sysfs });
    expect(sysfs.writes).toEqual([
      [`bus/pci/devices/${PF}/sriov_numvfs`, '0'],
      [`bus/pci/devices/${PF}/sriov_numvfs`, '10'],
    ]);
    expect(changed.previous).toBe(4);
    expect(changed.sriov.vfs.map((v) => v.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(await vfIndex(vfAddress(9), { sysfs })).toEqual({ pf: PF, index: 9 });

    sysfs.writes.length = 0;
    await setNumVfs(PF, 10, { sysfs }); // already so
    expect(sysfs.writes).toEqual([]);
    await setNumVfs(PF, 0, { sysfs });
    expect(sysfs.writes).toEqual([[`bus/pci/devices/${PF}/sriov_numvfs`, '0']]);
    expect((await sriovCapability(PF, { sysfs })).vfs).toEqual([]);
  });

  it('rejects counts beyond sriov_totalvfs and devices without SR-IOV, with no write', async () => {
    await expect(setNumVfs(PF, 17, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(setNumVfs(PF, -1, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(setNumVfs('0000:5e:00.0', 1, { sysfs })).rejects.toBeInstanceOf(FeatureUnavailableError);
    await expect(vfIndex('0000:5e:00.0', { sysfs })).rejects.toBeInstanceOf(NotFoundError);
    await expect(setNumVfs('0000:3b:00', 1, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(sysfs.writes).toEqual([]);
  });

  it('refuses to destroy VFs bound to vfio-pci unless forced', async () => {
    await setNumVfs(PF, 2, { sysfs });
    const binding = await bindVfio(vfAddress(1), { sysfs, addresses: () => [] });
    sysfs.writes.length = 0;
    const error = await setNumVfs(PF, 0, { sysfs }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DeviceBusyError);
    expect((error as Error).message).toMatch(/VFs 0000:3b:02\.1 are bound to vfio-pci/u);
    expect(sysfs.writes).toEqual([]);
    await binding.release();
    await setNumVfs(PF, 0, { sysfs });
  });

  it('puts the previous VF count back when the new one cannot be set', async () => {
    await setNumVfs(PF, 4, { sysfs });
    const before = await sysfs.snapshot();
    sysfs.writes.length = 0;
    sysfs.failWrite.set(`bus/pci/devices/${PF}/sriov_numvfs=8`, 'ENOMEM');
    const error = await setNumVfs(PF, 8, { sysfs }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ERR_VMPOD_SYSTEM', errnoName: 'ENOMEM' });
    expect(sysfs.writes).toEqual([
      [`bus/pci/devices/${PF}/sriov_numvfs`, '0'],
      [`bus/pci/devices/${PF}/sriov_numvfs`, '8'],
      [`bus/pci/devices/${PF}/sriov_numvfs`, '4'],
    ]);
    expect(await sysfs.snapshot()).toEqual(before);
  });
});

/** The request as the kernel's headers lay it out, built here independently of the addon. */
function expectedMessage(ifindex: number, seq: number, vf: number, mac: number[] | null, vlan: [number, number] | null): Buffer {
  const attrs: Buffer[] = [];
  const attr = (type: number, payload: Buffer): Buffer => {
    const b = Buffer.alloc(4 + payload.length);
    b.writeUInt16LE(4 + payload.length, 0);
    b.writeUInt16LE(type, 2);
    payload.copy(b, 4);
    return b;
  };
  if (mac) {
    const p = Buffer.alloc(36); // struct ifla_vf_mac { __u32 vf; __u8 mac[32]; }
    p.writeUInt32LE(vf, 0);
    Buffer.from(mac).copy(p, 4);
    attrs.push(attr(1 /* IFLA_VF_MAC */, p));
  }
  if (vlan) {
    const p = Buffer.alloc(12); // struct ifla_vf_vlan { __u32 vf, vlan, qos; }
    p.writeUInt32LE(vf, 0);
    p.writeUInt32LE(vlan[0], 4);
    p.writeUInt32LE(vlan[1], 8);
    attrs.push(attr(2 /* IFLA_VF_VLAN */, p));
  }
  const NLA_F_NESTED = 0x8000;
  const info = attr(NLA_F_NESTED | 1 /* IFLA_VF_INFO */, Buffer.concat(attrs));
  const list = attr(NLA_F_NESTED | 22 /* IFLA_VFINFO_LIST */, info);
  const head = Buffer.alloc(16 + 16);
  head.writeUInt32LE(head.length + list.length, 0); // nlmsg_len
  head.writeUInt16LE(19, 4); // RTM_SETLINK
  head.writeUInt16LE(0x1 | 0x4, 6); // NLM_F_REQUEST | NLM_F_ACK
  head.writeUInt32LE(seq, 8);
  head.writeInt32LE(ifindex, 16 + 4); // ifinfomsg.ifi_index (family AF_UNSPEC, type 0)
  return Buffer.concat([head, list]);
}

describe('VF MAC/VLAN request (RTM_SETLINK IFLA_VFINFO_LIST)', () => {
  it('encodes MAC and VLAN+QoS for a VF', () => {
    const got = vfSettingsMessage(3, 1, { mac: '02:00:00:00:00:01', vlan: 100, qos: 3 }, 7);
    expect(got.toString('hex')).toBe(expectedMessage(3, 7, 1, [2, 0, 0, 0, 0, 1], [100, 3]).toString('hex'));
    expect(got.length).toBe(96);
  });

  it('encodes a MAC alone and a VLAN alone (0 clears it)', () => {
    expect(vfSettingsMessage(12, 5, { mac: 'AA:BB:CC:DD:EE:0F' }, 1).toString('hex')).toBe(
      expectedMessage(12, 1, 5, [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f], null).toString('hex'),
    );
    expect(vfSettingsMessage(12, 63, { vlan: 0 }, 2).toString('hex')).toBe(expectedMessage(12, 2, 63, null, [0, 0]).toString('hex'));
  });

  it('rejects bad settings before any netlink call', async () => {
    expect(() => vfSettingsMessage(3, 0, {})).toThrow(InvalidArgumentError);
    expect(() => vfSettingsMessage(3, 0, { vlan: 4096 })).toThrow(InvalidArgumentError);
    expect(() => vfSettingsMessage(3, 0, { mac: '02:00:00:00:00' })).toThrow(InvalidArgumentError);
    expect(() => vfSettingsMessage(3, -1, { vlan: 1 })).toThrow(InvalidArgumentError);
    expect(() => vfSettingsMessage(0, 0, { vlan: 1 })).toThrow(InvalidArgumentError);
    await expect(setVf('ens1f0', 0, { qos: 2 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(setVf('a-name-way-too-long', 0, { vlan: 1 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(setVf('ens1f0', 0, { vlan: 1, qos: 8 })).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});
