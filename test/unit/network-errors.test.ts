// How native failures become typed errors, how results are shaped, and how Network.create cleans
// up after a failed step, against a scripted fake of the addon.
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError, SystemError } from '../../src/errors.js';

type Fake = Record<string, (...args: unknown[]) => Promise<unknown>>;
let fake: Fake = {};
const calls: Array<[string, unknown[]]> = [];
vi.mock('../../src/native.js', () => ({
  native: () =>
    new Proxy(
      {},
      {
        get: (_t, prop) => (...args: unknown[]) => {
          calls.push([String(prop), args]);
          const fn = fake[String(prop)];
          return fn ? fn(...args) : Promise.reject(new Error(`unexpected native ${String(prop)}`));
        },
      },
    ),
}));

const net = await import('../../src/network/index.js');

function sysError(code: string, errno: number, syscall: string, target?: string, detail?: string): Error {
  return Object.assign(new Error(`${syscall}: ${code}`), { code, errno, syscall, description: `desc of ${code}`, target, detail });
}

const nativeLink = {
  index: 7,
  name: 'x',
  kind: '',
  flags: 0x1043,
  type: 1,
  up: true,
  lowerUp: true,
  loopback: false,
  operState: 'up',
  mac: '02:00:00:00:00:01',
  mtu: 1500,
  group: 0,
  txQueueLen: 1000,
};

describe('native errors become typed errors', () => {
  beforeEach(() => {
    fake = {};
    calls.length = 0;
  });

  it('maps EEXIST on creation to AlreadyExistsError, with the SystemError as cause', async () => {
    fake['linkAdd'] = () => Promise.reject(sysError('EEXIST', 17, 'RTM_NEWLINK', 'br0', 'File exists'));
    const e = await net.addBridge({ name: 'br0' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(AlreadyExistsError);
    expect(e).toMatchObject({ kind: 'link', id: 'br0', code: 'ERR_VMPOD_ALREADY_EXISTS' });
    const cause = (e as AlreadyExistsError).cause as SystemError;
    expect(cause).toBeInstanceOf(SystemError);
    expect(cause).toMatchObject({ errnoName: 'EEXIST', errno: 17, syscall: 'RTM_NEWLINK', code: 'ERR_VMPOD_SYSTEM' });
    expect(cause.message).toBe('RTM_NEWLINK: desc of EEXIST (br0): File exists (EEXIST)');
    expect(cause.cause).toMatchObject({ code: 'EEXIST' });
  });

  it('maps ENODEV to NotFoundError naming the missing link (the master, not the link itself)', async () => {
    fake['linkSet'] = () => Promise.reject(sysError('ENODEV', 19, 'SIOCGIFINDEX', 'br9'));
    await expect(net.setLink('v0', { master: 'br9' })).rejects.toMatchObject({ constructor: NotFoundError, kind: 'link', id: 'br9' });
  });

  it('maps a missing namespace file to NotFoundError("netns") and a non-namespace to InvalidArgumentError', async () => {
    fake['linkList'] = () => Promise.reject(sysError('ENOENT', 2, 'open', '/run/netns/gone'));
    await expect(net.listLinks({ netns: 'gone' })).rejects.toMatchObject({ constructor: NotFoundError, kind: 'netns', id: 'gone' });
    expect(calls[0]?.[1][0]).toBe('/run/netns/gone');
    fake['netnsOpen'] = () => Promise.reject(sysError('EINVAL', 22, 'open', '/tmp/x', 'not a network namespace'));
    await expect(net.openNetns('/tmp/x')).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('keeps other failures as SystemError with errno name, errno and syscall', async () => {
    fake['qdiscAddIngress'] = () => Promise.reject(sysError('EPERM', 1, 'RTM_NEWQDISC', 'eth0', 'Operation not permitted'));
    await expect(net.addIngressQdisc('eth0')).rejects.toMatchObject({ constructor: SystemError, errnoName: 'EPERM', errno: 1, syscall: 'RTM_NEWQDISC' });
    fake['tapOpen'] = () => Promise.reject(sysError('EBUSY', 16, 'TUNSETIFF', 't0'));
    await expect(net.createTap({ name: 't0' })).rejects.toMatchObject({ constructor: AlreadyExistsError, kind: 'link', id: 't0' });
    // Errors that are not native pass through untouched.
    const plain = new TypeError('boom');
    fake['linkGet'] = () => Promise.reject(plain);
    await expect(net.getLink('lo')).rejects.toBe(plain);
  });
});

describe('results', () => {
  beforeEach(() => {
    fake = {};
    calls.length = 0;
  });

  it('names link kinds: taps apart from tuns, loopback and devices without a kind', async () => {
    const cases: Array<[Partial<typeof nativeLink> & { tun?: unknown }, string]> = [
      [{ kind: 'tun', tun: { type: 'tap' } }, 'tap'],
      [{ kind: 'tun', tun: { type: 'tun' } }, 'tun'],
      [{ kind: '', loopback: true }, 'loopback'],
      [{ kind: '' }, 'device'],
      [{ kind: 'veth' }, 'veth'],
    ];
    for (const [patch, kind] of cases) {
      fake['linkGet'] = () => Promise.resolve({ ...nativeLink, ...patch });
      expect((await net.getLink('x')).kind).toBe(kind);
    }
  });

  it('writes and reads tc handles as tc does', () => {
    expect(net.formatHandle(0xffff0000)).toBe('ffff:');
    expect(net.formatHandle(0xfffffff1)).toBe('ffff:fff1');
    expect(net.formatHandle(0xffffffff)).toBe('root');
    expect(net.formatHandle(0x00010002)).toBe('1:2');
    expect(net.parseHandle('ffff:')).toBe(0xffff0000);
    expect(net.parseHandle('ingress')).toBe(net.INGRESS_PARENT);
    expect(net.parseHandle('1:2')).toBe(0x00010002);
    expect(net.parseHandle('root')).toBe(0xffffffff);
    expect(() => net.parseHandle('1:2:3')).toThrow(InvalidArgumentError);
  });

  it('shapes filters: u32 handle, protocol name, mirred direction and mode', async () => {
    fake['filterList'] = () =>
      Promise.resolve([
        { parent: 0xffff0000, handle: 0x80000800, prio: 49152, protocol: 3, kind: 'u32', chain: 0, actions: [{ kind: 'mirred', eaction: 1, action: 4, ifindex: 3, dev: 'tap0' }] },
        { parent: 0xffff0000, handle: 0x80000801, prio: 2, protocol: 0x0800, kind: 'u32', actions: [{ kind: 'mirred', eaction: 4, ifindex: 2 }] },
      ]);
    const [a, b] = await net.listFilters('eth0');
    expect(a).toEqual({ dev: 'eth0', parent: 'ffff:', prio: 49152, protocol: 'all', kind: 'u32', handle: '800::800', chain: 0, actions: [{ kind: 'mirred', direction: 'egress', mode: 'redirect', ifindex: 3, dev: 'tap0' }] });
    expect(b).toMatchObject({ protocol: 'ip', handle: '800::801', actions: [{ direction: 'ingress', mode: 'mirror', ifindex: 2 }] });
    expect(calls[0]?.[1]).toEqual([null, 'eth0', 0xffff0000]);
  });
});

describe('Network.create after a failed step', () => {
  beforeEach(() => {
    fake = {};
    calls.length = 0;
  });

  it('queues every step at once, then removes the group and the namespace and closes the handle', async () => {
    const closed = vi.fn();
    const handle = { fd: 30, path: '/run/netns/n1', inode: 1, close: closed };
    fake['netnsCreate'] = () => Promise.resolve(handle);
    fake['linkAdd'] = () => Promise.reject(sysError('EEXIST', 17, 'RTM_NEWLINK', 'v0'));
    fake['tapOpen'] = () => Promise.reject(sysError('ENOMEM', 12, 'TUNSETIFF', 'tap0'));
    fake['linkSet'] = () => Promise.resolve();
    fake['qdiscAddIngress'] = () => Promise.resolve();
    fake['filterAddRedirect'] = () => Promise.reject(sysError('ENODEV', 19, 'SIOCGIFINDEX', 'eth0'));
    fake['qdiscDeleteIngress'] = () => Promise.resolve();
    fake['linkGet'] = () => Promise.reject(sysError('ENODEV', 19, 'RTM_GETLINK', 'eth0'));
    fake['linkDeleteGroup'] = () => Promise.resolve();
    fake['netnsDelete'] = () => Promise.resolve();

    const e = await net.Network.create({ netns: 'n1', veth: { name: 'v0' } }).catch((x: unknown) => x);
    // The first failing step in order is reported.
    expect(e).toMatchObject({ constructor: AlreadyExistsError, kind: 'veth' });
    const names = calls.map(([n]) => n);
    expect(names.slice(0, 8)).toEqual(['netnsCreate', 'linkAdd', 'tapOpen', 'linkSet', 'qdiscAddIngress', 'qdiscAddIngress', 'filterAddRedirect', 'filterAddRedirect']);
    expect(names).toContain('linkDeleteGroup');
    expect(names).toContain('netnsDelete');
    expect(calls.find(([n]) => n === 'linkDeleteGroup')?.[1]).toEqual([handle, net.NETWORK_LINK_GROUP]);
    expect(closed).toHaveBeenCalledOnce();
  });
});
