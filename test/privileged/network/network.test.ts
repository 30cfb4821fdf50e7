// The sandbox Network for real: what it creates (checked with ip/tc), the scan, the teardown,
// and cleanup after a failed create.
import { fstatSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AlreadyExistsError, InvalidArgumentError } from '../../../src/errors.js';
import { addBridge, createNetns, listNeighbors, Network, NETWORK_LINK_GROUP, scanNetns } from '../../../src/network/index.js';
import { ipJson, ipLinkNames, ipNetnsNames, KernelObjects, run, skipReason, tcJson, uniquePrefix } from '../helpers/net.js';

interface IpLink {
  ifname: string;
  address: string;
  mtu: number;
  group: string;
  flags: string[];
  linkinfo?: { info_kind: string; info_data?: Record<string, unknown> };
}

describe.skipIf(skipReason !== undefined)(`Network${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let k: KernelObjects;
  beforeEach(() => {
    k = new KernelObjects(uniquePrefix());
  });
  afterEach(async () => {
    await k.cleanup();
    await k.assertNothingLeft();
  });

  it('creates a netns, a veth with its peer inside, a tap and redirects both ways, all up; destroy removes it all', async () => {
    const nsName = k.netns('n');
    const host = k.link('h');
    const net = await Network.create({ netns: nsName, veth: { name: host, mac: '02:00:00:00:30:01', mtu: 1450 }, tap: { queues: 2 } });
    expect(net.endpoint).toEqual({ hostVeth: host, peer: 'eth0', tap: 'tap0', mac: '02:00:00:00:30:01', mtu: 1450, queues: 2, vnetHdr: true, linkGroup: NETWORK_LINK_GROUP });
    expect(net.tapFds).toHaveLength(2);
    for (const fd of net.tapFds) expect(fstatSync(fd).isCharacterDevice()).toBe(true);

    expect(await ipNetnsNames()).toContain(nsName);
    const [hostLink] = await ipJson<IpLink[]>(['link', 'show', 'dev', host]);
    expect(hostLink).toMatchObject({ mtu: 1450, group: String(NETWORK_LINK_GROUP) });
    expect(hostLink?.flags).toEqual(expect.arrayContaining(['UP', 'LOWER_UP']));
    const inside = await ipJson<IpLink[]>(['link', 'show'], nsName);
    expect(inside.map((l) => l.ifname)).toEqual(['lo', 'eth0', 'tap0']);
    const eth0 = inside[1] as IpLink;
    const tap0 = inside[2] as IpLink;
    expect(eth0).toMatchObject({ address: '02:00:00:00:30:01', mtu: 1450, group: String(NETWORK_LINK_GROUP) });
    expect(eth0.flags).toContain('UP');
    expect(tap0).toMatchObject({ mtu: 1450, group: String(NETWORK_LINK_GROUP) });
    expect(tap0.flags).toContain('UP');
    expect(tap0.linkinfo?.info_data).toMatchObject({ type: 'tap', vnet_hdr: true, multi_queue: true, persist: true, numqueues: 2 });
    for (const [from, to] of [['eth0', 'tap0'], ['tap0', 'eth0']] as const) {
      const qdiscs = await tcJson<Array<{ kind: string }>>(['qdisc', 'show', 'dev', from], nsName);
      expect(qdiscs.map((q) => q.kind)).toContain('ingress');
      const filters = await tcJson<Array<{ options?: { actions?: Array<{ to_dev?: string; mirred_action?: string }> } }>>(['filter', 'show', 'dev', from, 'parent', 'ffff:'], nsName);
      expect(filters.flatMap((f) => f.options?.actions ?? [])).toEqual([expect.objectContaining({ mirred_action: 'redirect', to_dev: to })]);
    }

    await net.destroy();
    expect(net.destroyed).toBe(true);
    expect(net.tapFds).toEqual([]);
    expect(await ipNetnsNames()).not.toContain(nsName);
    expect(await ipLinkNames()).not.toContain(host); // gone on return, not later
    await net.destroy(); // idempotent
  });

  it('scans a namespace: every interface, whoever made it, with addresses and routes', async () => {
    const nsName = k.netns('s');
    await using net = await Network.create({ netns: nsName, veth: { name: k.link('h') } });
    // Interfaces made by someone else (here `ip`), as a CNI plugin would.
    await run('ip', ['-n', nsName, 'link', 'add', 'cni0', 'type', 'veth', 'peer', 'name', 'cni1']);
    await run('ip', ['-n', nsName, 'link', 'set', 'cni0', 'up', 'mtu', '1300']);
    await run('ip', ['-n', nsName, 'link', 'set', 'cni1', 'up']);
    await run('ip', ['-n', nsName, 'address', 'add', '10.210.0.2/24', 'dev', 'cni0']);
    await run('ip', ['-n', nsName, 'route', 'add', 'default', 'via', '10.210.0.1', 'dev', 'cni0']);
    await run('ip', ['-n', nsName, 'neigh', 'add', '10.210.0.9', 'lladdr', '02:00:00:00:09:09', 'dev', 'cni0', 'nud', 'permanent']);
    await run('ip', ['-n', nsName, 'neigh', 'add', '10.210.0.10', 'lladdr', '02:00:00:00:09:10', 'dev', 'cni0', 'nud', 'reachable']);

    const found = await net.scan();
    expect(found.map((i) => i.name).sort()).toEqual(['cni0', 'cni1', 'eth0', 'lo', 'tap0']);
    const ipLinks = await ipJson<IpLink[]>(['link', 'show'], nsName);
    for (const l of ipLinks) {
      const f = found.find((i) => i.name === l.ifname);
      expect(f, l.ifname).toMatchObject({ mac: l.address, mtu: l.mtu });
    }
    const cni0 = found.find((i) => i.name === 'cni0');
    expect(cni0).toMatchObject({ kind: 'veth', mtu: 1300, up: true, group: 0 });
    expect(cni0?.addresses.map((a) => a.cidr)).toContain('10.210.0.2/24');
    expect(cni0?.routes).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ dst: 'default', gateway: '10.210.0.1', table: 254 }),
        expect.objectContaining({ dst: '10.210.0.0/24', protocol: 'kernel' }),
      ]),
    );
    // Only the permanent neighbour is part of the interface; both are listed, as `ip neigh` shows them.
    expect(cni0?.neighbors).toEqual([{ family: 4, address: '10.210.0.9', mac: '02:00:00:00:09:09', dev: 'cni0', states: ['permanent'] }]);
    // IPv4 only: IPv6 multicast entries (NOARP) come and go on their own.
    const neighbors = (await listNeighbors({ netns: nsName, dev: 'cni0' })).filter((n) => n.family === 4);
    const ipNeighbors = await ipJson<{ dst: string; lladdr?: string; state: string[] }[]>(['-4', 'neigh', 'show', 'nud', 'all', 'dev', 'cni0'], nsName);
    expect(neighbors.map((n) => [n.address, n.mac, n.states.map((x) => x.toUpperCase())]).sort()).toEqual(ipNeighbors.map((n) => [n.dst, n.lladdr, n.state]).sort());
    expect(neighbors.map((n) => n.address).sort()).toEqual(['10.210.0.10', '10.210.0.9']);
    expect(found.find((i) => i.name === 'tap0')).toMatchObject({ kind: 'tap', group: NETWORK_LINK_GROUP });
    expect(found.find((i) => i.name === 'eth0')).toMatchObject({ kind: 'veth', group: NETWORK_LINK_GROUP, linkNetnsId: expect.any(Number) });
    expect(found.find((i) => i.name === 'lo')).toMatchObject({ kind: 'loopback' });
    // By name, as a later step would scan a namespace made by a CNI runtime.
    expect((await scanNetns(nsName)).map((i) => i.name).sort()).toEqual(found.map((i) => i.name).sort());
  });

  it('removes everything it made when a step fails, and leaves what was there before', async () => {
    const host = k.link('h');
    await addBridge({ name: host }); // the host veth name is taken
    const nsName = k.netns('f');
    const failure = await Network.create({ netns: nsName, veth: { name: host } }).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(AlreadyExistsError);
    expect(await ipNetnsNames()).not.toContain(nsName);
    expect((await ipJson<IpLink[]>(['link', 'show', 'dev', host]))[0]?.linkinfo?.info_kind).toBe('bridge');

    // A namespace name that is taken: nothing is created at all.
    const taken = k.netns('g');
    (await createNetns(taken)).close();
    await expect(Network.create({ netns: taken, veth: { name: k.link('i') } })).rejects.toMatchObject({ constructor: AlreadyExistsError, kind: 'netns' });
    expect(await ipLinkNames()).not.toContain(`${k.prefix}i`);
  });

  it('tears a network down by name after the object is gone (crash recovery), idempotently', async () => {
    const nsName = k.netns('r');
    const host = k.link('h');
    const net = await Network.create({ netns: nsName, veth: { name: host } });
    net.closeTapFds();
    net.netns.close(); // as if the process had died
    await Network.teardown(nsName);
    expect(await ipNetnsNames()).not.toContain(nsName);
    expect(await ipLinkNames()).not.toContain(host);
    await Network.teardown(nsName);
  });

  it('rejects bad options before creating anything', async () => {
    const nsName = k.netns('v');
    const bad = [
      { netns: 'a/b', veth: { name: k.link('h') } },
      { netns: nsName, veth: { name: 'this-name-is-too-long' } },
      { netns: nsName, veth: { name: k.link('h'), peerName: 'tap0' } },
      { netns: nsName, veth: { name: k.link('h'), mac: 'not-a-mac' } },
      { netns: nsName, veth: { name: k.link('h'), mtu: 10 } },
      { netns: nsName, veth: { name: k.link('h') }, tap: { queues: 0 } },
      { netns: nsName, veth: { name: k.link('h') }, linkGroup: 0 },
    ];
    for (const options of bad) {
      await expect(Network.create(options), JSON.stringify(options)).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    expect(await ipNetnsNames()).not.toContain(nsName);
  });
});
