// Every bad input to the networking API is rejected with a typed error naming the field, before
// any native call: the addon is replaced by a recorder that fails the test if it is reached.
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';

const calls: string[] = [];
vi.mock('../../src/native.js', () => ({
  native: () =>
    new Proxy(
      {},
      {
        get: (_target, prop) => (..._args: unknown[]) => {
          calls.push(String(prop));
          return Promise.reject(new Error(`native ${String(prop)} reached`));
        },
      },
    ),
}));

const net = await import('../../src/network/index.js');

async function rejects(promise: Promise<unknown>, field: string | RegExp): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(InvalidArgumentError);
  expect((error as InvalidArgumentError).code).toBe('ERR_VMPOD_INVALID_ARGUMENT');
  if (typeof field === 'string') expect((error as InvalidArgumentError).field).toBe(field);
  else expect((error as InvalidArgumentError).field).toMatch(field);
  expect(calls).toEqual([]);
}

const BAD_NAMES: unknown[] = ['', 'x'.repeat(16), 'a/b', 'a b', 'a\tb', 'a\nb', '.', '..', 'a:b', 42, undefined, null];

describe('networking input validation (no native call)', () => {
  beforeEach(() => {
    calls.length = 0;
  });

  it('rejects interface names longer than 15 bytes, with / : or whitespace, empty or not strings', async () => {
    for (const name of BAD_NAMES) {
      await rejects(net.addVeth({ name: name as string, peer: { name: 'p0' } }), 'name');
      await rejects(net.addVeth({ name: 'v0', peer: { name: name as string } }), 'peer.name');
      await rejects(net.addBridge({ name: name as string }), 'name');
      await rejects(net.deleteLink(name as string), 'name');
      await rejects(net.getLink(name as string), 'name');
      if (name !== undefined) await rejects(net.setLink('v0', { name: name as string }), 'change.name'); // undefined: no rename
      await rejects(net.createTap({ name: name as string }), 'name');
      await rejects(net.openMacvtap(name as string), 'name');
      await rejects(net.addIngressQdisc(name as string), 'dev');
      await rejects(net.addRedirectFilter('eth0', name as string), 'to');
      await rejects(net.addAddress(name as string, '10.0.0.1/24'), 'dev');
      await rejects(net.openPacketSocket(name as string), 'dev');
    }
    // Multi-byte characters count in bytes: 8 characters, 16 bytes.
    await rejects(net.addBridge({ name: 'éééééééé' }), 'name');
    // A kernel name template is not an exact name.
    await rejects(net.createTap({ name: 'tap%d' }), 'name');
  });

  it('rejects namespace names with path separators, and relative or empty references', async () => {
    for (const name of ['a/b', '', '.', '..', 'x\0y', 7]) {
      await rejects(net.createNetns(name as string), 'name');
      await rejects(net.deleteNetns(name as string), 'name');
    }
    await rejects(net.listLinks({ netns: 'a/b' }), 'netns');
    await rejects(net.openNetns('../escape'), 'netns');
    await rejects(net.addVeth({ name: 'v0', peer: { name: 'p0', netns: 'x/y' } }), 'peer.netns');
    await rejects(net.setLink('v0', { moveTo: '..' }), 'change.moveTo');
    await rejects(net.Network.create({ netns: 'a/b', veth: { name: 'v0' } }), 'netns');
  });

  it('rejects invalid MAC addresses (malformed, multicast, all zeros)', async () => {
    for (const mac of ['zz:zz:zz:zz:zz:zz', '02:00:00:00:00', '02:00:00:00:00:00:00', '0200.0000.0001', '01:00:5e:00:00:01', 'ff:ff:ff:ff:ff:ff', '00:00:00:00:00:00', 5]) {
      await rejects(net.addVeth({ name: 'v0', mac: mac as string, peer: { name: 'p0' } }), 'options.mac');
      await rejects(net.addVeth({ name: 'v0', peer: { name: 'p0', mac: mac as string } }), 'peer.mac');
      await rejects(net.setLink('v0', { mac: mac as string }), 'change.mac');
      await rejects(net.Network.create({ netns: 'n', veth: { name: 'v0', mac: mac as string } }), 'veth.mac');
    }
  });

  it('rejects invalid addresses and routes', async () => {
    for (const cidr of ['10.0.0.1', '10.0.0.256/24', '10.0.0.1/33', 'fd00::1/129', 'abc/8', '10.0.0.1/', '10.0.0.1/-1', '']) {
      await rejects(net.addAddress('eth0', cidr), 'address');
      await rejects(net.deleteAddress('eth0', cidr), 'address');
    }
    await rejects(net.addAddress('eth0', '10.0.0.1/24', { peer: 'fd00::1' }), 'peer');
    await rejects(net.addAddress('eth0', '10.0.0.1/24', { broadcast: 'nope' }), 'broadcast');
    await rejects(net.addAddress('eth0', '10.0.0.1/24', { scope: 'galaxy' as 'global' }), 'scope');
    await rejects(net.addAddress('eth0', '10.0.0.1/24', { label: 'has space' }), 'label');
    await rejects(net.addRoute({ dst: 'somewhere', dev: 'eth0' }), 'dst');
    await rejects(net.addRoute({ dst: '10.0.0.0/8', via: 'fd00::1' }), 'via');
    await rejects(net.addRoute({ dst: '10.0.0.0/8', via: '10.0.0.1', src: 'fd00::2' }), 'src');
    await rejects(net.addRoute({ dst: '10.0.0.0/8' }), 'dev');
    await rejects(net.addRoute({ dst: 'default', via: '10.0.0.1', family: 6 }), 'family');
    await rejects(net.addRoute({ dst: 'default', via: '10.0.0.1', table: 0 }), 'table');
    await rejects(net.addRoute({ dst: 'default', via: '10.0.0.1', type: 'teleport' as 'unicast' }), 'type');
    await rejects(net.listRoutes({ table: -1 }), 'table');
  });

  it('rejects out-of-range numbers and inconsistent options', async () => {
    for (const mtu of [10, 67, 65536, 1.5, '1500']) {
      await rejects(net.addBridge({ name: 'b0', mtu: mtu as number }), 'options.mtu');
      await rejects(net.Network.create({ netns: 'n', veth: { name: 'v0', mtu: mtu as number } }), 'veth.mtu');
    }
    await rejects(net.deleteLinkGroup(0), 'group');
    await rejects(net.deleteLinkGroup(2 ** 32), 'group');
    await rejects(net.addBridge({ name: 'b0', group: -1 }), 'options.group');
    await rejects(net.createTap({ name: 't0', queues: 0 }), 'queues');
    await rejects(net.createTap({ name: 't0', queues: 257 }), 'queues');
    await rejects(net.createTap({ name: 't0', queues: 2, multiQueue: false }), 'queues');
    await rejects(net.createTap({ name: 't0', owner: { uid: -1 } }), 'owner.uid');
    await rejects(net.addRedirectFilter('a0', 'b0', { prio: 0 }), 'prio');
    await rejects(net.addRedirectFilter('a0', 'b0', { prio: 65536 }), 'prio');
    await rejects(net.listFilters('a0', { parent: 'xyz' }), 'parent');
    await rejects(net.connectTcFilter('a0', 'a0'), 'b');
    await rejects(net.addMacvlan({ name: 'm0', link: 'eth0', mode: 'crazy' as 'bridge' }), 'mode');
    await rejects(net.addVeth({ name: 'v0', peer: { name: 'v0' } }), 'peer.name');
    await rejects(net.addVeth({ name: 'v0' } as never), 'peer');
    await rejects(net.Network.create({ netns: 'n', veth: { name: 'v0', peerName: 'tap0' } }), 'tap.name');
    await rejects(net.Network.create({ netns: 'n', veth: { name: 'v0' }, tap: { queues: 300 } }), 'tap.queues');
    await rejects(net.Network.create({ netns: 'n', veth: { name: 'v0' }, linkGroup: 0 }), 'linkGroup');
    await rejects(net.openMacvtap('m0', { devDir: 'relative/dir' }), 'devDir');
    await rejects(net.listLinks('nope' as never), 'options');
  });
});
