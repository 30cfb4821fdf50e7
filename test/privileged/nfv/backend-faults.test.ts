/**
 * The vhost-user backend (dpdk-testpmd, icmpecho) killed under a running sandbox whose NIC is in
 * client mode: the sandbox runs on (QEMU and the agent answer), the guest's NIC loses its carrier
 * and pings fail. vmpod gives QEMU no `reconnect` for a client-mode socket, so a restarted
 * testpmd is not reconnected to by itself: the NIC is unplugged and a new one hot plugged on the
 * restarted backend, and traffic flows again. delete leaves nothing (hugepages, dpdk folders).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { hugepagePool } from '../../../src/devices/hugepages.js';
import { makeStateDir, runcSpecBundle, runScript, skipReason as vmSkip } from '../sandbox/fixture.js';
import { Testpmd, testpmdSkipReason } from '../../../benchmarks/lib/testpmd.js';
import { tearDown } from './testpmd-fixture.js';

const skipReason = vmSkip ?? (await testpmdSkipReason());
const tag = `vt${randomBytes(2).toString('hex')}`;

/** Configures the guest interface of MAC `mac` as ADDRESS and pings testpmd (PEER) COUNT times. */
function pingScript(mac: string, address: string, peer: string, count: number): string {
  return [
    `dev=$(grep -l ${mac} /sys/class/net/*/address | cut -d/ -f5)`,
    'test -n "$dev"',
    'ip link set $dev up',
    `(ip addr add ${address}/24 dev $dev || true)`,
    `ping -c ${count} -W 2 ${peer}`,
  ].join(' && ');
}

describe.skipIf(skipReason)(`a vhost-user backend killed under a sandbox${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  let bundle: string;
  let sandbox: Sandbox;
  let testpmd: Testpmd | undefined;
  let poolBefore: number;

  beforeAll(async () => {
    poolBefore = (await hugepagePool('2M')).total;
    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(stateDir, 'work-'));
    bundle = await runcSpecBundle(path.join(work, 'bundle'), (spec) => {
      spec.process.terminal = false;
      for (const set of ['bounding', 'effective', 'permitted']) spec.process.capabilities[set].push('CAP_NET_ADMIN', 'CAP_NET_RAW');
    });
    testpmd = await Testpmd.start({ socket: path.join(work, 'vhost0.sock'), forwardMode: 'icmpecho', prefix: `${tag}a` });
    sandbox = await Sandbox.create({ stateDir, memoryMiB: 256, vhostUser: [{ id: 'vnic0', socket: testpmd.options.socket, mac: '52:54:00:78:00:01' }] });
    await sandbox.start();
  });

  afterAll(() => tearDown({ sandbox, testpmd, stateDir, poolBefore, prefix: `${tag}a` }));

  it('testpmd killed: the sandbox runs on, the NIC loses its carrier; a NIC plugged anew on the restarted backend carries traffic', async () => {
    const ok = await runScript(sandbox, { bundle }, pingScript('52:54:00:78:00:01', '192.0.2.1', '192.0.2.2', 3));
    expect(ok.code, ok.out + ok.err).toBe(0);

    const { vhostUser } = await sandbox.devices();
    const ifname = vhostUser[0]!.guest!.netdevs[0]!;
    const pid = (testpmd as unknown as { child: { pid: number } }).child.pid;
    process.kill(pid, 'SIGKILL');
    await testpmd!.stop(); // its hugepages, mount, dpdk folder and socket
    testpmd = undefined;

    // QEMU sets the link down when the backend's socket closes: the guest sees no carrier.
    const carrier = await runScript(sandbox, { bundle }, `for i in $(seq 100); do [ "$(cat /sys/class/net/${ifname}/carrier)" = 0 ] && exit 0; sleep 0.1; done; exit 1`);
    expect(carrier.code).toBe(0);
    expect(sandbox.state).toBe('running');
    expect((await sandbox.containers()).length).toBe(0); // the agent answers
    const lost = await runScript(sandbox, { bundle }, pingScript('52:54:00:78:00:01', '192.0.2.1', '192.0.2.2', 2));
    expect(lost.code).not.toBe(0);

    // A backend again on the same path; the old NIC is unplugged, a new one plugged on it.
    testpmd = await Testpmd.start({ socket: path.join(work, 'vhost0.sock'), forwardMode: 'icmpecho', prefix: `${tag}a` });
    // No reconnect: the old NIC stays without carrier on the new backend.
    const still = await runScript(sandbox, { bundle }, `cat /sys/class/net/${ifname}/carrier; ${pingScript('52:54:00:78:00:01', '192.0.2.1', '192.0.2.2', 2)}`);
    expect(still.code).not.toBe(0);
    expect(still.out.split('\n')[0]).toBe('0');
    await sandbox.removeVhostUserNic('vnic0');
    const nic = await sandbox.addVhostUserNic({ id: 'vnic1', socket: testpmd.options.socket, mac: '52:54:00:78:00:02' });
    expect(nic).toMatchObject({ id: 'vnic1', mode: 'client', hotplugged: true });
    expect((await sandbox.devices()).vhostUser.map((n) => n.id)).toEqual(['vnic1']);
    const again = await runScript(sandbox, { bundle }, pingScript('52:54:00:78:00:02', '192.0.2.3', '192.0.2.2', 3));
    expect(again.code, again.out + again.err).toBe(0);
    const stats = await testpmd.stats();
    expect(stats.rxPackets).toBeGreaterThanOrEqual(4);
  });
});
