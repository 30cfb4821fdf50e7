// Taps and macvtaps for real: their fds, flags and owners, checked against `ip -j -d link`.
import { closeSync, fstatSync, readdirSync } from 'node:fs';
import { readlink } from 'node:fs/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../../../src/errors.js';
import { addVeth, createMacvtap, createNetns, createTap, getLink, openMacvtap, openTap, type Netns } from '../../../src/network/index.js';
import { ipJson, ipLinkNames, KernelObjects, run, skipReason, threadNetns, uniquePrefix } from '../helpers/net.js';

interface IpTun {
  ifname: string;
  mtu: number;
  group: string;
  flags: string[];
  linkinfo?: { info_kind: string; info_data?: Record<string, unknown> };
}

describe.skipIf(skipReason !== undefined)(`taps and macvtaps${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let k: KernelObjects;
  let nsName: string;
  let ns: Netns;
  const open: number[] = [];
  const keep = (fds: number[]): number[] => {
    open.push(...fds);
    return fds;
  };
  beforeEach(async () => {
    k = new KernelObjects(uniquePrefix());
    nsName = k.netns('t');
    ns = await createNetns(nsName);
  });
  afterEach(async () => {
    for (const fd of open.splice(0)) {
      try {
        closeSync(fd);
      } catch {
        // closed by the test
      }
    }
    ns.close();
    await k.cleanup();
    await k.assertNothingLeft();
  });

  it('creates a multi-queue vnet_hdr tap inside a namespace, persistent, with owner, group and link settings', async () => {
    const home = await readlink('/proc/self/ns/net');
    const tap = await createTap({
      name: 'tap0',
      netns: ns,
      queues: 4,
      vnetHdr: true,
      owner: { uid: 1000, gid: 1001 },
      up: true,
      mtu: 1400,
      mac: '02:00:00:00:20:01',
      group: 77,
    });
    keep(tap.fds);
    expect(tap.name).toBe('tap0');
    expect(tap.fds).toHaveLength(4);
    for (const fd of tap.fds) expect(fstatSync(fd).isCharacterDevice()).toBe(true);
    expect(new Set(tap.fds).size).toBe(4);

    const [ip] = await ipJson<IpTun[]>(['link', 'show', 'dev', 'tap0'], nsName);
    expect(ip).toMatchObject({ mtu: 1400, group: '77' });
    expect(ip?.flags).toContain('UP');
    expect(ip?.linkinfo?.info_kind).toBe('tun');
    expect(ip?.linkinfo?.info_data).toMatchObject({ type: 'tap', pi: false, vnet_hdr: true, multi_queue: true, persist: true, user: expect.anything(), group: expect.anything(), numqueues: 4 });
    const link = await getLink('tap0', { netns: ns });
    expect(link).toMatchObject({ index: tap.index, kind: 'tap', mac: '02:00:00:00:20:01', mtu: 1400, group: 77, up: true });
    expect(link.tun).toMatchObject({ type: 'tap', vnetHdr: true, persist: true, multiQueue: true, queues: 4, owner: 1000, group: 1001 });
    expect(await ipLinkNames()).not.toContain('tap0'); // created inside, not on the host

    // Persistent: the tap outlives its fds; queues can be attached again.
    for (const fd of tap.fds) closeSync(fd);
    open.length = 0;
    expect((await getLink('tap0', { netns: ns })).tun?.queues).toBe(0);
    const again = await openTap('tap0', { netns: ns, queues: 2, multiQueue: true, vnetHdr: true });
    keep(again.fds);
    expect(again.fds).toHaveLength(2);
    expect((await getLink('tap0', { netns: ns })).tun?.queues).toBe(2);
    expect(new Set(await threadNetns())).toEqual(new Set([home]));
  });

  it('creates a single-queue tap that goes away with its last fd when not persistent', async () => {
    const tap = await createTap({ name: 'tap1', netns: ns, persist: false });
    expect(tap.fds).toHaveLength(1);
    expect((await getLink('tap1', { netns: ns })).tun).toMatchObject({ vnetHdr: false, persist: false, multiQueue: false });
    closeSync(tap.fds[0] as number);
    expect(await ipLinkNames(nsName)).toEqual(['lo']);
  });

  it('rejects a taken tap name, attaching to a missing tap, and bad queue counts', async () => {
    keep((await createTap({ name: 'tap0', netns: ns })).fds);
    const taken = await createTap({ name: 'tap0', netns: ns }).catch((e: unknown) => e);
    expect(taken).toBeInstanceOf(AlreadyExistsError);
    expect(taken).toMatchObject({ cause: { syscall: 'TUNSETIFF', errnoName: 'EBUSY' } });
    await expect(openTap('tap9', { netns: ns })).rejects.toMatchObject({ constructor: NotFoundError, id: 'tap9' });
    expect(await ipLinkNames(nsName)).toEqual(['lo', 'tap0']); // attaching never creates
    await expect(createTap({ name: 'tap2', netns: ns, queues: 2, multiQueue: false })).rejects.toMatchObject({ field: 'queues' });
    await expect(createTap({ name: 'tap2', netns: ns, queues: 0 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(createTap({ name: 'tap2', netns: ns, queues: 257 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(createTap({ name: 'tap%d', netns: ns })).rejects.toMatchObject({ field: 'name' });
  });

  it('creates a macvtap inside a namespace and opens its queues through a private node, never /dev/tapN', async () => {
    await addVeth({ name: k.link('v'), up: true, peer: { name: 'eth0', netns: ns, up: true } });
    const devBefore = readdirSync('/dev').filter((f) => f.startsWith('.vmpod-macvtap') || /^tap\d+$/u.test(f));
    const mvt = await createMacvtap({ name: 'mvt0', link: 'eth0', netns: ns, mode: 'bridge', up: true, queues: 2 });
    keep(mvt.fds);
    expect(mvt.fds).toHaveLength(2);
    for (const fd of mvt.fds) expect(fstatSync(fd).isCharacterDevice()).toBe(true);
    const [ip] = await ipJson<IpTun[]>(['link', 'show', 'dev', 'mvt0'], nsName);
    expect(ip?.linkinfo?.info_kind).toBe('macvtap');
    expect((await getLink('mvt0', { netns: ns })).kind).toBe('macvtap');
    // The fds' device is this macvtap's: major:minor as sysfs shows it inside the namespace.
    const ifindex = (await getLink('mvt0', { netns: ns })).index;
    const sysfs = (await run('ip', ['netns', 'exec', nsName, 'cat', `/sys/class/net/mvt0/macvtap/tap${ifindex}/dev`])).trim();
    const [major, minor] = sysfs.split(':').map(Number) as [number, number];
    const rdev = fstatSync(mvt.fds[0] as number).rdev;
    expect(rdev).toBe(major * 256 + (minor & 0xff) + (minor >> 8) * 0x100000); // glibc makedev() for small numbers
    // No device node of ours is left behind in /dev.
    const devAfter = readdirSync('/dev').filter((f) => f.startsWith('.vmpod-macvtap'));
    expect(devAfter).toEqual(devBefore.filter((f) => f.startsWith('.vmpod-macvtap')));
    // More queues can be opened on the same macvtap.
    const more = keep(await openMacvtap('mvt0', { netns: ns }));
    expect(fstatSync(more[0] as number).rdev).toBe(rdev);
    await expect(openMacvtap('mvt9', { netns: ns })).rejects.toBeInstanceOf(NotFoundError);
  });
});
