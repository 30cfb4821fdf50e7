/**
 * The NFV data plane in a real sandbox (QEMU under TCG here): guest RAM on host hugepages, a
 * vhost-user NIC served by dpdk-testpmd (cold plugged in client mode, hot plugged in server
 * mode) with pings answered by testpmd's icmpecho engine, the guest PCI path of the NIC, and a
 * static DPDK-style program mapping guest hugepages in a container (MAP_HUGETLB, a hugepages
 * volume, and the /dev/hugepages mount made for OCI hugepage limits). Afterwards the host is as
 * before: nr_hugepages, no testpmd, no mounts, /var/run/dpdk clean.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { hugepagePool } from '../../../src/devices/hugepages.js';
import { Volume } from '../../../src/volume/volume.js';
import { collect, makeStateDir, runcSpecBundle, skipReason as vmSkip, runScript } from '../sandbox/fixture.js';
import { Testpmd, testpmdSkipReason } from '../../../benchmarks/lib/testpmd.js';
import { tearDown } from './testpmd-fixture.js';

const exec = promisify(execFile);
const skipReason = vmSkip ?? (await testpmdSkipReason());
const tag = `vt${randomBytes(2).toString('hex')}`;

/** Runs a shell script in a new container of `sandbox` from `bundle`; returns its output and exit code. */
function run(sandbox: Sandbox, bundle: string, script: string): Promise<{ out: string; err: string; code: number }> {
  return runScript(sandbox, { bundle }, script);
}

/**
 * The script that checks the guest interface the agent found for a NIC (its MAC), configures
 * it and pings testpmd.
 */
function pingScript(ifname: string, mac: string, address: string, peer: string): string {
  return [
    `test "$(cat /sys/class/net/${ifname}/address)" = ${mac}`,
    `ip link set ${ifname} up`,
    `ip addr replace ${address}/24 dev ${ifname}`, // the same address again when another test already set it in this guest
    `ping -c 5 -W 3 ${peer}`,
  ].join(' && ');
}

/** What the agent reports for a virtio-net NIC on the root port of `pciPath`. */
function guestNic(pciPath: string): unknown {
  return {
    pciAddress: expect.stringMatching(/^0000:[0-9a-f]{2}:00\.0$/u),
    sysfsPath: expect.stringContaining(`/sys/devices/pci0000:00/0000:00:${pciPath.split('/')[0]}.0/0000:`),
    driver: 'virtio-pci',
    netdevs: [expect.stringMatching(/^eth\d+$/u)],
  };
}

describe.skipIf(skipReason)(`vhost-user and hugepages in a sandbox${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  let bundle: string;
  let sandbox: Sandbox;
  let testpmd: Testpmd;
  let poolBefore: number;

  beforeAll(async () => {
    poolBefore = (await hugepagePool('2M')).total;
    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(stateDir, 'work-'));
    bundle = await runcSpecBundle(path.join(work, 'bundle'), (spec) => {
      spec.process.terminal = false;
      for (const set of ['bounding', 'effective', 'permitted']) spec.process.capabilities[set].push('CAP_NET_ADMIN', 'CAP_NET_RAW');
      spec.root.readonly = false;
      spec.linux.resources = { ...spec.linux.resources, hugepageLimits: [{ pageSize: '2MB', limit: 4 * 1024 * 1024 }] };
    });
    await exec('gcc', ['-static', '-O2', '-o', path.join(bundle, 'rootfs/bin/hugemap'), path.join(import.meta.dirname, 'hugemap.c')]);
    testpmd = await Testpmd.start({ socket: path.join(work, 'vhost0.sock'), forwardMode: 'icmpecho', prefix: `${tag}a` });
    sandbox = await Sandbox.create({
      stateDir,
      memoryMiB: 256,
      hugepages: { prealloc: true },
      vhostUser: [{ id: 'vnic0', socket: testpmd.options.socket, mac: '52:54:00:77:00:01' }],
      volumes: [Volume.hugepages('hp', 8)],
    });
    await sandbox.start();
  });

  afterAll(() => tearDown({ sandbox, testpmd, stateDir, poolBefore, prefix: `${tag}a` }));

  it('backs guest RAM with hugepages from a reservation and a hugetlbfs mount of its own', async () => {
    const cmdline = (await fs.readFile(`/proc/${sandbox.pid}/cmdline`, 'utf8')).split('\0');
    const mountPoint = path.join(sandbox.dir, 'hugepages');
    expect(cmdline).toContain(`memory-backend-file,id=mem0,size=256M,mem-path=${mountPoint},share=on,prealloc=on`);
    expect(cmdline).toContain('q35,memory-backend=mem0,mem-merge=off');
    expect(cmdline.join(' ')).toContain('hugepagesz=2M hugepages=4');
    const pool = await hugepagePool('2M');
    // 128 pages for the guest and 32 for testpmd, the guest's faulted in (prealloc).
    expect(pool.total).toBe(poolBefore + 128 + 32);
    expect(pool.total - pool.free).toBeGreaterThanOrEqual(128);
    const mounts = await fs.readFile('/proc/self/mountinfo', 'utf8');
    expect(mounts).toMatch(new RegExp(`${mountPoint} .* hugetlbfs .*pagesize=2M`, 'u'));
  });

  it('exchanges packets with testpmd over a cold-plugged vhost-user NIC, found by the agent at its guest PCI path', async () => {
    const { vhostUser } = await sandbox.devices();
    const pciPath = vhostUser[0]?.pciPath ?? '';
    expect(vhostUser).toEqual([
      { id: 'vnic0', socket: testpmd.options.socket, mode: 'client', pciPath: expect.stringMatching(/^1[0-9a-e]\/00$/u), guest: guestNic(pciPath), hotplugged: false },
    ]);
    const before = await testpmd.stats();
    const r = await run(sandbox, bundle, pingScript(vhostUser[0]!.guest!.netdevs[0]!, '52:54:00:77:00:01', '192.0.2.1', '192.0.2.2'));
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const received = Number(/(\d+) packets received/u.exec(r.out)?.[1]);
    expect(received).toBeGreaterThanOrEqual(4);
    const after = await testpmd.stats();
    // At least the ARP request and the echo requests came in; the ARP reply and the echo replies went out.
    expect(after.rxPackets - before.rxPackets).toBeGreaterThanOrEqual(5);
    expect(after.txPackets - before.txPackets).toBeGreaterThanOrEqual(received);
  });

  it('hot plugs a vhost-user NIC in server mode (testpmd connects as client), pings over it, unplugs it', async () => {
    const socket = path.join(work, 'vhost1.sock');
    // QEMU's netdev_add of a server-mode vhost-user netdev waits for the backend: testpmd (as a
    // vhost-user client, which retries) must be up first.
    const client = await Testpmd.start({ socket, client: true, forwardMode: 'icmpecho', prefix: `${tag}b` });
    try {
      const nic = await sandbox.addVhostUserNic({ id: 'vnic1', socket, mode: 'server', mac: '52:54:00:77:00:02' });
      expect(nic).toMatchObject({ id: 'vnic1', mode: 'server', hotplugged: true, pciPath: expect.stringMatching(/^1[0-9a-e]\/00$/u) });
      expect(nic.guest).toEqual(guestNic(nic.pciPath!));
      const r = await run(sandbox, bundle, pingScript(nic.guest!.netdevs[0]!, '52:54:00:77:00:02', '198.51.100.1', '198.51.100.2'));
      expect(r.code).toBe(0);
      expect(Number(/(\d+) packets received/u.exec(r.out)?.[1])).toBeGreaterThanOrEqual(4);
      expect((await client.stats()).rxPackets).toBeGreaterThanOrEqual(5);
      await sandbox.removeVhostUserNic('vnic1');
      expect((await sandbox.devices()).vhostUser.map((n) => n.id)).toEqual(['vnic0']);
      await expect(fs.stat(socket)).rejects.toMatchObject({ code: 'ENOENT' }); // its socket went with it
    } finally {
      await client.stop();
    }
  });

  it('lets a static DPDK-style program in a container map guest hugepages (MAP_HUGETLB, a hugepages volume, /dev/hugepages)', async () => {
    const c = await sandbox.createContainer({
      bundle,
      volumes: [{ volume: 'hp', destination: '/hugepages' }],
      process: { args: ['sh', '-c', 'grep HugePages_Total /proc/meminfo && /bin/hugemap /hugepages /dev/hugepages'] },
    });
    const out = collect(c.stdout);
    const err = collect(c.stderr);
    await c.start();
    const status = await c.wait();
    await c.delete();
    expect((await err).toString()).toBe('');
    expect(status.exitCode).toBe(0);
    expect((await out).toString().split('\n')).toEqual([
      expect.stringMatching(/^HugePages_Total:\s+4$/u),
      'anonymous MAP_HUGETLB ok',
      '/hugepages ok',
      '/dev/hugepages ok',
      '',
    ]);
  });

  it('gives everything back at stop and makes it again at the next start (pages, mount, the NIC on testpmd)', async () => {
    await sandbox.stop();
    expect((await hugepagePool('2M')).total).toBe(poolBefore + 32); // testpmd's only
    expect(await fs.readFile('/proc/self/mountinfo', 'utf8')).not.toContain(path.join(sandbox.dir, 'hugepages'));
    await sandbox.start();
    expect((await hugepagePool('2M')).total).toBe(poolBefore + 32 + 128);
    const { vhostUser } = await sandbox.devices();
    expect(vhostUser.map((n) => n.id)).toEqual(['vnic0']);
    expect(vhostUser[0]!.guest).toEqual(guestNic(vhostUser[0]!.pciPath!));
    const r = await run(sandbox, bundle, pingScript(vhostUser[0]!.guest!.netdevs[0]!, '52:54:00:77:00:01', '192.0.2.1', '192.0.2.2'));
    expect(r.code).toBe(0);
    expect(Number(/(\d+) packets received/u.exec(r.out)?.[1])).toBeGreaterThanOrEqual(4);
  });
});

