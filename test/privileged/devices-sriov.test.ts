/**
 * The VF MAC/VLAN request against this host's kernel. Without SR-IOV hardware, the request is
 * sent to a veth made for the test: the kernel parses IFLA_VFINFO_LIST against its attribute
 * policy (a truncated IFLA_VF_MAC was seen to fail with ERANGE) and stops at the driver, which has
 * no VF support (EOPNOTSUPP). With hardware, VMPOD_TEST_SRIOV_PF=<PF netdev> runs the real case.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { NotFoundError, SystemError } from '../../src/errors.js';
import { FeatureUnavailableError } from '../../src/devices/errors.js';
import { setVf } from '../../src/devices/sriov.js';

const run = promisify(execFile);
const root = process.getuid?.() === 0;
const created: string[] = [];

afterEach(async () => {
  for (const name of created.splice(0)) await run('ip', ['link', 'del', name]).catch(() => undefined);
});

const linkJson = async (name: string): Promise<unknown> => JSON.parse((await run('ip', ['-j', '-d', 'link', 'show', name])).stdout);

describe.skipIf(!root)('VF settings through rtnetlink on this host (needs root)', () => {
  it('sends a well-formed request that the kernel takes to the driver (a veth: EOPNOTSUPP), changing nothing', async () => {
    const name = `vt${randomBytes(2).toString('hex')}a`;
    await run('ip', ['link', 'add', name, 'type', 'veth', 'peer', 'name', `${name.slice(0, -1)}b`]);
    created.push(name);
    const before = await linkJson(name);
    const error = await setVf(name, 0, { mac: '02:00:00:00:00:01', vlan: 100, qos: 3 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FeatureUnavailableError);
    expect((error as Error).cause).toBeInstanceOf(SystemError);
    expect((error as Error).cause).toMatchObject({ errnoName: 'EOPNOTSUPP', syscall: 'RTM_SETLINK' });
    const vlanOnly = await setVf(name, 3, { vlan: 0 }).catch((e: unknown) => e);
    expect((vlanOnly as Error).cause).toMatchObject({ errnoName: 'EOPNOTSUPP' });
    expect(await linkJson(name)).toEqual(before);
  });

  it('reports a PF netdev that does not exist', async () => {
    const name = `vt${randomBytes(2).toString('hex')}none`;
    await expect(setVf(name, 0, { vlan: 5 })).rejects.toBeInstanceOf(NotFoundError);
  });
});

const hardwarePf = process.env['VMPOD_TEST_SRIOV_PF'];

interface VfInfo {
  vf: number;
  address: string;
  vlan_list?: { vlan?: number; qos?: number }[];
}
const vfInfo = async (pf: string): Promise<VfInfo> => {
  const [link] = (await linkJson(pf)) as { vfinfo_list?: VfInfo[] }[];
  const vf = link?.vfinfo_list?.find((v) => v.vf === 0);
  if (!vf) throw new Error(`${pf} has no VF 0: enable VFs first (echo 1 > /sys/class/net/${pf}/device/sriov_numvfs)`);
  return vf;
};

describe('VF settings on real SR-IOV hardware', () => {
  it.skipIf(hardwarePf === undefined)(
    'sets VF 0 MAC and VLAN through $VMPOD_TEST_SRIOV_PF, reads them back with ip, and restores them (skipped: set VMPOD_TEST_SRIOV_PF=<PF netdev with VFs>)',
    async () => {
      const pf = hardwarePf!;
      const before = await vfInfo(pf);
      const mac = '02:76:6d:70:6f:64';
      try {
        await setVf(pf, 0, { mac, vlan: 123, qos: 2 });
        const now = await vfInfo(pf);
        expect(now.address).toBe(mac);
        expect(now.vlan_list?.[0]).toMatchObject({ vlan: 123, qos: 2 });
      } finally {
        await setVf(pf, 0, { mac: before.address, vlan: before.vlan_list?.[0]?.vlan ?? 0, qos: before.vlan_list?.[0]?.qos ?? 0 });
      }
      expect(await vfInfo(pf)).toEqual(before);
    },
  );
});
