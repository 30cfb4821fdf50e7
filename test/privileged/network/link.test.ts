// Links for real, each checked through the library and through `ip -j -d link`.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../../../src/errors.js';
import {
  addBridge,
  addMacvlan,
  addVeth,
  createNetns,
  deleteLink,
  deleteLinkGroup,
  getLink,
  listLinks,
  setLink,
  type Netns,
} from '../../../src/network/index.js';
import { ipJson, ipLinkNames, KernelObjects, skipReason, uniquePrefix } from '../helpers/net.js';

interface IpLink {
  ifindex: number;
  ifname: string;
  address: string;
  mtu: number;
  group: string;
  flags: string[];
  master?: string;
  link_netnsid?: number;
  linkinfo?: { info_kind: string; info_data?: { mode?: string } };
}

async function ipLink(name: string, netns?: string): Promise<IpLink> {
  const [link] = await ipJson<IpLink[]>(['link', 'show', 'dev', name], netns);
  if (!link) throw new Error(`ip link show ${name}: nothing`);
  return link;
}

describe.skipIf(skipReason !== undefined)(`links${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let k: KernelObjects;
  let nsName: string;
  let ns: Netns;
  beforeEach(async () => {
    k = new KernelObjects(uniquePrefix());
    nsName = k.netns('l');
    ns = await createNetns(nsName);
  });
  afterEach(async () => {
    ns.close();
    await k.cleanup();
    await k.assertNothingLeft();
  });

  it('creates a veth with its peer directly inside a namespace, with MTU, MAC, group, up', async () => {
    const host = k.link('v');
    const index = await addVeth({
      name: host,
      mtu: 1400,
      mac: '02:00:00:aa:bb:01',
      group: 4242,
      up: true,
      peer: { name: 'eth0', netns: ns, mac: '02:00:00:aa:bb:02', up: true, group: 4242 },
    });
    const ip = await ipLink(host);
    expect(ip.ifindex).toBe(index);
    expect(ip.linkinfo?.info_kind).toBe('veth');
    expect(ip.mtu).toBe(1400);
    expect(ip.address).toBe('02:00:00:aa:bb:01');
    expect(ip.group).toBe('4242');
    expect(ip.flags).toContain('UP');
    expect(ip.link_netnsid).toBeDefined(); // the other end lives in another namespace
    const peer = await ipLink('eth0', nsName);
    expect(peer.mtu).toBe(1400); // the peer takes the MTU of its pair
    expect(peer.address).toBe('02:00:00:aa:bb:02');
    expect(peer.flags).toEqual(expect.arrayContaining(['UP', 'LOWER_UP']));

    const mine = await getLink(host);
    expect(mine).toMatchObject({ index, name: host, kind: 'veth', mtu: 1400, mac: '02:00:00:aa:bb:01', group: 4242, up: true });
    expect(mine.linkNetnsId).toBe(ip.link_netnsid);
    const inside = await listLinks({ netns: ns });
    expect(inside.map((l) => [l.name, l.kind])).toEqual([['lo', 'loopback'], ['eth0', 'veth']]);
    expect(inside[1]).toMatchObject({ mac: peer.address, mtu: peer.mtu, up: true, lowerUp: true, operState: 'up' });
  });

  it('creates a bridge and enslaves, detaches, renames, changes and moves links', async () => {
    const br = k.link('br');
    const host = k.link('v');
    await addBridge({ name: br, up: true });
    await addVeth({ name: host, peer: { name: k.link('p') } });
    expect((await ipLink(br)).linkinfo?.info_kind).toBe('bridge');

    await setLink(host, { master: br, up: true, mtu: 1450, mac: '02:00:00:00:00:33', group: 7, txQueueLen: 500 });
    let ip = await ipLink(host);
    expect(ip).toMatchObject({ master: br, mtu: 1450, address: '02:00:00:00:00:33', group: '7' });
    expect(ip.flags).toContain('UP');
    expect(await getLink(host)).toMatchObject({ master: br, txQueueLen: 500 });
    expect((await listLinks()).find((l) => l.name === host)?.master).toBe(br);

    await setLink(host, { master: null, up: false });
    ip = await ipLink(host);
    expect(ip.master).toBeUndefined();
    expect(ip.flags).not.toContain('UP');

    const renamed = k.link('w');
    await setLink(host, { name: renamed });
    expect(await ipLinkNames()).toContain(renamed);
    expect(await ipLinkNames()).not.toContain(host);

    await setLink(renamed, { moveTo: ns, name: 'moved0' });
    expect(await ipLinkNames()).not.toContain(renamed);
    expect((await ipLink('moved0', nsName)).linkinfo?.info_kind).toBe('veth');
  });

  it('creates a macvlan on a parent link inside a namespace', async () => {
    const host = k.link('v');
    await addVeth({ name: host, up: true, peer: { name: 'eth0', netns: ns, up: true } });
    await addMacvlan({ name: 'mv0', link: 'eth0', mode: 'bridge', netns: ns, up: true, mac: '02:00:00:00:10:01' });
    const ip = await ipLink('mv0', nsName);
    expect(ip.linkinfo?.info_kind).toBe('macvlan');
    expect(ip.linkinfo?.info_data?.mode).toBe('bridge');
    expect(ip.address).toBe('02:00:00:00:10:01');
    const link = await getLink('mv0', { netns: ns });
    expect(link).toMatchObject({ kind: 'macvlan', macvlanMode: 'bridge', mac: '02:00:00:00:10:01' });
    expect(link.linkIndex).toBe((await ipLink('eth0', nsName)).ifindex);
  });

  it('deletes one link (a veth takes its peer) and a whole group in one request', async () => {
    const a = k.link('a');
    const b = k.link('b');
    const c = k.link('c');
    await addVeth({ name: a, peer: { name: 'eth0', netns: ns } });
    await deleteLink(a);
    expect(await ipLinkNames()).not.toContain(a);
    expect(await ipLinkNames(nsName)).toEqual(['lo']);

    await addVeth({ name: b, group: 31000, peer: { name: k.link('bp'), group: 31000 } });
    await addBridge({ name: c, group: 31000 });
    await addBridge({ name: k.link('d') }); // not in the group
    await deleteLinkGroup(31000);
    const left = await ipLinkNames();
    expect(left.filter((n) => n.startsWith(k.prefix))).toEqual([`${k.prefix}d`]);
    await expect(deleteLinkGroup(31000)).rejects.toMatchObject({ kind: 'link group', id: '31000' });
  });

  it('rejects taken names, missing links and masters with typed errors, and bad input before any call', async () => {
    const host = k.link('v');
    await addVeth({ name: host, peer: { name: 'eth0', netns: ns } });
    const taken = await addBridge({ name: host }).catch((e: unknown) => e);
    expect(taken).toBeInstanceOf(AlreadyExistsError);
    expect(taken).toMatchObject({ cause: { errnoName: 'EEXIST', syscall: 'RTM_NEWLINK' } });
    await expect(addVeth({ name: k.link('x'), peer: { name: 'eth0', netns: ns } })).rejects.toBeInstanceOf(AlreadyExistsError);
    expect(await ipLinkNames()).not.toContain(`${k.prefix}x`); // nothing half-made

    const missing = `${k.prefix}zz`;
    await expect(getLink(missing)).rejects.toMatchObject({ constructor: NotFoundError, kind: 'link', id: missing });
    await expect(deleteLink(missing)).rejects.toBeInstanceOf(NotFoundError);
    await expect(setLink(host, { master: missing })).rejects.toMatchObject({ kind: 'link', id: missing });
    await expect(addMacvlan({ name: 'mv1', link: missing, netns: ns })).rejects.toMatchObject({ kind: 'link', id: missing });

    await expect(addBridge({ name: 'a-name-that-is-too-long' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(addBridge({ name: 'bad/name' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(addBridge({ name: 'bad name' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(addBridge({ name: '' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(setLink(host, { mac: '01:00:5e:00:00:01' })).rejects.toMatchObject({ field: 'change.mac' });
    await expect(setLink(host, { mac: 'zz:zz' })).rejects.toMatchObject({ field: 'change.mac' });
    await expect(listLinks({ netns: 'a/b' })).rejects.toMatchObject({ field: 'netns' });
  });
});
