// Frames for real: through the tcfilter redirect of a Network (tap fd <-> veth) and through a
// macvtap fd, both ways. Traffic stays on veth pairs the test made.
import { closeSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { addVeth, createMacvtap, createNetns, disconnectTcFilter, getLink, Network, openPacketSocket, openTap } from '../../../src/network/index.js';
import { carries, ethernetFrame, KernelObjects, readFrame, skipReason, TEST_ETHERTYPE, uniquePrefix, VNET_HDR } from '../helpers/net.js';

const BROADCAST = 'ff:ff:ff:ff:ff:ff';

describe.skipIf(skipReason !== undefined)(`data path${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let k: KernelObjects;
  const fds: number[] = [];
  const keep = (fd: number): number => {
    fds.push(fd);
    return fd;
  };
  beforeEach(() => {
    k = new KernelObjects(uniquePrefix());
  });
  afterEach(async () => {
    for (const fd of fds.splice(0)) closeSync(fd);
    await k.cleanup();
    await k.assertNothingLeft();
  });

  it('carries frames from the tap fd to the veth and from the veth to the tap fd (tcfilter)', async () => {
    const host = k.link('h');
    await using net = await Network.create({ netns: k.netns('d'), veth: { name: host }, tap: { vnetHdr: true } });
    // Re-attach the persistent tap's queue non-blocking, so that the test can poll it.
    net.closeTapFds();
    const tap = keep((await openTap(net.endpoint.tap, { netns: net.netns, vnetHdr: true, nonBlocking: true })).fds[0] as number);
    const onHost = keep(await openPacketSocket(host, { nonBlocking: true, ignoreOutgoing: true }));
    const onPeer = keep(await openPacketSocket(net.endpoint.peer, { netns: net.netns, nonBlocking: true }));
    const hostMac = (await getLink(host)).mac;

    // Guest -> network: what QEMU writes into the tap leaves by the veth.
    const out = randomBytes(16);
    writeSync(tap, Buffer.concat([VNET_HDR, ethernetFrame(hostMac, net.endpoint.mac, TEST_ETHERTYPE, out)]));
    const seenOnPeer = await readFrame(onPeer, (f) => carries(f, TEST_ETHERTYPE, out));
    expect(seenOnPeer.subarray(0, 6).toString('hex')).toBe(hostMac.replaceAll(':', ''));
    const seenOnHost = await readFrame(onHost, (f) => carries(f, TEST_ETHERTYPE, out));
    expect(seenOnHost.subarray(6, 12).toString('hex')).toBe(net.endpoint.mac.replaceAll(':', ''));

    // Network -> guest: a frame arriving on the veth comes out of the tap fd, behind a vnet header.
    const back = randomBytes(16);
    writeSync(onHost, ethernetFrame(net.endpoint.mac, hostMac, TEST_ETHERTYPE, back));
    const fromTap = await readFrame(tap, (f) => carries(f.subarray(VNET_HDR.length), TEST_ETHERTYPE, back));
    expect(fromTap.subarray(VNET_HDR.length, VNET_HDR.length + 6).toString('hex')).toBe(net.endpoint.mac.replaceAll(':', ''));

    // Without the redirects nothing crosses: the filters are what carried the frames.
    await disconnectTcFilter(net.endpoint.peer, net.endpoint.tap, { netns: net.netns });
    const lost = randomBytes(16);
    writeSync(tap, Buffer.concat([VNET_HDR, ethernetFrame(hostMac, net.endpoint.mac, TEST_ETHERTYPE, lost)]));
    await expect(readFrame(onHost, (f) => carries(f, TEST_ETHERTYPE, lost), 300)).rejects.toThrow(/no matching frame/u);
  });

  it('carries frames through a macvtap fd both ways', async () => {
    const ns = await createNetns(k.netns('m'));
    try {
      const host = k.link('h');
      await addVeth({ name: host, up: true, peer: { name: 'eth0', netns: ns, up: true } });
      const mvt = await createMacvtap({ name: 'mvt0', link: 'eth0', netns: ns, mode: 'bridge', up: true, nonBlocking: true });
      const fd = keep(mvt.fds[0] as number);
      const mvtMac = (await getLink('mvt0', { netns: ns })).mac;
      const hostMac = (await getLink(host)).mac;
      const onHost = keep(await openPacketSocket(host, { nonBlocking: true, ignoreOutgoing: true }));

      const out = randomBytes(16);
      writeSync(fd, Buffer.concat([VNET_HDR, ethernetFrame(BROADCAST, mvtMac, TEST_ETHERTYPE, out)]));
      const seen = await readFrame(onHost, (f) => carries(f, TEST_ETHERTYPE, out));
      expect(seen.subarray(6, 12).toString('hex')).toBe(mvtMac.replaceAll(':', ''));

      const back = randomBytes(16);
      writeSync(onHost, ethernetFrame(mvtMac, hostMac, TEST_ETHERTYPE, back));
      const got = await readFrame(fd, (f) => carries(f.subarray(VNET_HDR.length), TEST_ETHERTYPE, back));
      expect(got.subarray(VNET_HDR.length, VNET_HDR.length + 6).toString('hex')).toBe(mvtMac.replaceAll(':', ''));
    } finally {
      ns.close();
    }
  });
});
