/**
 * Sandboxes on CNI bridge networks, with real traffic: a container in the VM gets the address,
 * routes, MTU and MAC the plugins gave, its DNS, hosts and hostname; pings a peer namespace and
 * fetches a file from busybox httpd in it; two sandboxes on one bridge reach each other; a NIC
 * of a second (bandwidth-limited) network is hot plugged, used, measured and removed; a rescan
 * plugs and unplugs an interface made by hand; CNI DEL runs after QEMU was SIGKILLed.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { NotFoundError } from '../../../src/errors.js';
import { CniPluginNotFoundError } from '../../../src/network/cni/index.js';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { World, ipj, runIn, sh, skipReason, type BridgeNet, type Peer } from './fixture.js';

/** Seconds from `/proc/uptime` lines printed before and after a transfer. */
function elapsed(stdout: string): number {
  const times = [...stdout.matchAll(/^(\d+\.\d+) \d+\.\d+$/gmu)].map((m) => Number(m[1]));
  return (times[1] as number) - (times[0] as number);
}

describe.skipIf(skipReason)(`sandbox networks over CNI bridges${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  const world = new World();
  let net: BridgeNet;
  let peer: Peer;
  /** Sandbox a, on the bridge: the tests share it; the SIGKILL test ends it and the next makes another. */
  let a: Sandbox;
  let aAlive = false;
  let b: Sandbox | undefined;
  /** The host end of a's veth (a bridge port). */
  let aHostVeth: string;
  /** Every sandbox made, for the final check. */
  const made: string[] = [];

  async function makeA(): Promise<void> {
    a = await Sandbox.create({
      stateDir: world.stateDir,
      cpus: 2,
      network: { cni: [{ config: net.config }], hostname: 'web-a', hosts: [{ ip: peer.ip, names: ['peer'] }] },
    });
    made.push(a.id);
    aAlive = true;
    await a.start();
    const [inNs] = await ipj<any[]>(['addr', 'show', 'dev', 'eth0'], `vmpod-${a.id}`);
    // The host end of the plugin's veth: the bridge port whose ifindex the namespace's eth0 links to.
    aHostVeth = (await ipj<any[]>(['link', 'show', 'master', net.bridge])).find((l) => l.ifindex === inNs.link_index)?.ifname;
  }
  const data = randomBytes(256 * 1024);
  const big = randomBytes(1536 * 1024);

  beforeAll(async () => {
    await world.init();
    net = world.bridgeNet({ mtu: 1400, dns: { nameservers: ['10.9.9.9'], search: ['example.test'], options: ['ndots:2'] } });
    net.config.plugins[0].ipam.routes = [{ dst: '10.123.0.0/16', gw: `${net.net}.1` }];
    peer = await world.peer(net, 'peer');
    await world.httpd(peer.netns, { 'data.bin': data, 'big.bin': big });
  });

  // Whichever test ran before: a runs, with its eth0 only.
  beforeEach(async () => {
    if (!aAlive) await makeA();
    expect((await a.networks()).map((n) => [n.name, n.plugged])).toEqual([['eth0', true]]);
  });

  afterAll(async () => {
    try {
      await b?.delete({ force: true });
      if (aAlive) await a.delete({ force: true });
      await world.expectNothingLeft(made);
    } finally {
      await world.cleanup();
    }
  });

  it('gives the container the address, routes, MTU and MAC the plugin gave, DNS from the result, hosts and hostname', async () => {
    const [eth0] = await a.networks();
    expect(eth0).toMatchObject({ name: 'eth0', kind: 'veth', model: 'tcfilter', origin: 'cni', network: net.name, mtu: 1400, queues: 2, plugged: true });

    // What the plugin made in the namespace is what the guest mirrors.
    const ns = `vmpod-${a.id}`;
    const [inNs] = await ipj<any[]>(['addr', 'show', 'dev', 'eth0'], ns);
    const address = inNs.addr_info.find((x: any) => x.family === 'inet');
    expect(eth0!.mac).toBe(inNs.address);
    expect(eth0!.addresses).toEqual([`${address.local}/${address.prefixlen}`]);
    expect(aHostVeth).toMatch(/^veth/u);

    const r = await runIn(
      a,
      ['sh', '-c', 'ip -o -4 addr show dev eth0; ip route; cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ls /sys/class/net/eth0/queues; cat /etc/resolv.conf /etc/hosts; hostname'],
      { hostname: 'ctr-a' },
    );
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toContain(`inet ${address.local}/${address.prefixlen}`);
    expect(r.stdout).toContain(`10.123.0.0/16 via ${net.net}.1 dev eth0`);
    expect(r.stdout).toContain(`${inNs.address}\n1400\n`);
    expect(r.stdout).toContain('rx-0\nrx-1\n'); // a multi-queue NIC for 2 vCPUs
    expect(r.stdout).toContain('nameserver 10.9.9.9\nsearch example.test\noptions ndots:2\n');
    expect(r.stdout).toContain(`${peer.ip}\tpeer\n`);
    expect(r.stdout).toContain(`${address.local}\tctr-a\n`);
    expect(r.stdout.trimEnd().endsWith('ctr-a')).toBe(true);
    expect((await (await a.agent()).listInterfaces()).hostname).toBe('web-a');
  });

  it('reaches a peer namespace across the bridge: ping, and HTTP from busybox httpd by the name in /etc/hosts', async () => {
    const r = await runIn(a, ['sh', '-c', `ping -c 3 -W 5 ${peer.ip} && wget -q -O - http://peer:8080/data.bin | md5sum`]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain('3 packets received');
    expect(r.stdout).toContain(createHash('md5').update(data).digest('hex'));
  });

  it('lets two sandboxes on the same bridge reach each other', async () => {
    b = await Sandbox.create({ stateDir: world.stateDir, cpus: 1, network: { cni: [{ config: net.config }] } });
    made.push(b.id);
    await b.start();
    const aIp = (await a.networks())[0]!.addresses[0]!.split('/')[0]!;
    const server = await a.createContainer({ process: { args: ['sh', '-c', 'echo hello from sandbox a > /tmp/a.txt; exec httpd -f -p 8080 -h /tmp'] } });
    await server.start();
    try {
      const r = await runIn(b, ['sh', '-c', `ping -c 2 -W 5 ${aIp} && for i in $(seq 1 40); do wget -q -O - http://${aIp}:8080/a.txt && exit 0; sleep 0.5; done; exit 1`]);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout).toContain('2 packets received');
      expect(r.stdout).toContain('hello from sandbox a\n');
    } finally {
      await server.kill('SIGKILL');
      await server.wait();
      await server.delete();
    }
  });

  it('hot plugs a NIC of a second, bandwidth-limited network, uses it, measures the limit, and removes it', async () => {
    const rate = 4_000_000; // bits/s into the container
    const limited = world.bridgeNet({ chain: [{ type: 'bandwidth', ingressRate: rate, ingressBurst: 64 * 1024 * 8, egressRate: rate, egressBurst: 64 * 1024 * 8 }] });
    const peer2 = await world.peer(limited, 'peer2');
    await world.httpd(peer2.netns, { 'big.bin': big });

    // What cannot be added fails with a typed error and changes nothing.
    await expect(a.addNetwork({ interface: 'nothere0' })).rejects.toBeInstanceOf(NotFoundError);
    await expect(a.addNetwork({ cni: { config: { cniVersion: '1.0.0', name: 'nope', plugins: [{ type: 'nosuchplugin' }] } } })).rejects.toBeInstanceOf(CniPluginNotFoundError);
    await expect(a.addNetwork({ cni: { config: limited.config, ifName: 'eth0' } })).rejects.toThrow(/already an interface/u);
    expect((await a.networks()).map((n) => n.name)).toEqual(['eth0']);

    const info = await a.addNetwork({ cni: { config: limited.config, ifName: 'eth1' } });
    expect(info).toMatchObject({ name: 'eth1', origin: 'cni', network: limited.name, plugged: true, kind: 'veth' });
    const guest = (await (await a.agent()).listInterfaces()).interfaces.find((i) => i.name === 'eth1');
    expect(guest?.mac).toBe(info.mac);
    expect(guest?.addresses).toContain(info.addresses[0]);

    // The same 1.5 MiB through the limited NIC and through eth0 (unlimited), in one container.
    const r = await runIn(a, [
      'sh',
      '-c',
      `cat /proc/uptime; wget -q -O /dev/null http://${peer2.ip}:8080/big.bin || exit 1; cat /proc/uptime; ` +
        `cat /proc/uptime; wget -q -O /dev/null http://${peer.ip}:8080/big.bin || exit 1; cat /proc/uptime`,
    ]);
    expect(r.exitCode, r.stderr).toBe(0);
    const [limitedPart, openPart] = [r.stdout.split('\n').slice(0, 2).join('\n'), r.stdout.split('\n').slice(2, 4).join('\n')];
    const limitedSeconds = elapsed(limitedPart);
    const openSeconds = elapsed(openPart);
    const limitedRate = (big.length * 8) / limitedSeconds;
    console.info(
      `bandwidth plugin ingressRate ${rate / 1e6} Mbit/s: measured ${(limitedRate / 1e6).toFixed(2)} Mbit/s through the limited NIC, ` +
        `${((big.length * 8) / openSeconds / 1e6).toFixed(2)} Mbit/s through the unlimited one`,
    );
    // The limit holds: the tbf lets the burst through at once, then at most `rate` (10 % slack for timer granularity).
    expect(limitedSeconds).toBeGreaterThanOrEqual(((big.length - 64 * 1024) * 8) / rate / 1.1);

    await a.removeNetwork('eth1');
    expect((await (await a.agent()).listInterfaces()).interfaces.map((i) => i.name)).not.toContain('eth1');
    expect((await a.networks()).map((n) => n.name)).toEqual(['eth0']);
    expect((await ipj<any[]>(['link', 'show'], `vmpod-${a.id}`)).map((l) => l.ifname)).not.toContain('eth1');
    // CNI DEL ran: the plugin's host side (veth, ifb of the bandwidth plugin) and the IP are gone.
    expect(await ipj<any[]>(['link', 'show', 'master', limited.bridge])).toHaveLength(1); // the peer's veth only
    expect((await ipj<any[]>(['link', 'show'])).filter((l) => l.ifname.startsWith('bwp'))).toHaveLength(1); // the peer's
    const reserved = await fs.readdir(path.join(world.ipamDir, limited.name));
    expect(reserved.filter((f) => /^\d/u.test(f))).toEqual([peer2.ip]);
  });

  it('rescans the namespace: an interface made by hand is plugged, its new route mirrored, and unplugged once gone', async () => {
    const ns = `vmpod-${a.id}`;
    const far = await world.netns('far');
    const subnet = `10.${100 + (Number.parseInt(world.tag, 16) % 50)}.77`;
    await sh('ip', ['-n', ns, 'link', 'add', 'hand0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', far]);
    await sh('ip', ['-n', ns, 'addr', 'add', `${subnet}.2/24`, 'dev', 'hand0']);
    await sh('ip', ['-n', far, 'addr', 'add', `${subnet}.1/24`, 'dev', 'eth0']);
    await sh('ip', ['-n', ns, 'link', 'set', 'hand0', 'up']);
    await sh('ip', ['-n', far, 'link', 'set', 'eth0', 'up']);

    expect(await a.rescanNetwork()).toEqual({ added: ['hand0'], removed: [], updated: [] });
    const ping = await runIn(a, ['ping', '-c', '2', '-W', '5', `${subnet}.1`]);
    expect(ping.exitCode, ping.stdout + ping.stderr).toBe(0);

    await sh('ip', ['-n', ns, 'route', 'add', '10.234.0.0/16', 'via', `${subnet}.1`, 'dev', 'hand0']);
    expect(await a.rescanNetwork()).toEqual({ added: [], removed: [], updated: ['hand0'] });
    expect((await runIn(a, ['ip', 'route'])).stdout).toContain(`10.234.0.0/16 via ${subnet}.1 dev hand0`);

    const hand = (await a.networks()).find((n) => n.name === 'hand0')!;
    await sh('ip', ['-n', ns, 'link', 'del', 'hand0']);
    expect(await a.rescanNetwork()).toEqual({ added: [], removed: ['hand0'], updated: [] });
    expect((await (await a.agent()).listInterfaces()).interfaces.map((i) => i.mac)).not.toContain(hand.mac);
    expect((await ipj<any[]>(['link', 'show'], ns)).map((l) => l.ifname)).not.toContain(hand.hostLinks[0]);
  });

  it('runs CNI DEL after QEMU was killed with SIGKILL, and leaves nothing behind', async () => {
    const pid = a.pid!;
    process.kill(pid, 'SIGKILL');
    // Gone, or a zombie waiting to be reaped.
    const running = async () => !/^\d+ \(.*\) Z/u.test(await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => `${pid} (x) Z`));
    for (let i = 0; i < 200 && (await running()); i++) await new Promise((r) => setTimeout(r, 50));
    const id = a.id;
    expect(aHostVeth).toMatch(/^veth/u);
    expect((await ipj<any[]>(['link', 'show'])).map((l) => l.ifname)).toContain(aHostVeth);
    aAlive = false; // a test after this one makes another a
    await a.delete({ force: true });
    expect((JSON.parse((await sh('ip', ['-j', 'netns', 'list'])) || '[]') as any[]).map((n) => n.name)).not.toContain(`vmpod-${id}`);
    expect((await ipj<any[]>(['link', 'show'])).map((l) => l.ifname)).not.toContain(aHostVeth);
    const reserved = await fs.readdir(path.join(world.ipamDir, net.name));
    for (const file of reserved.filter((f) => /^\d/u.test(f))) {
      expect((await fs.readFile(path.join(world.ipamDir, net.name, file), 'utf8')).startsWith(id)).toBe(false);
    }
  });
});
