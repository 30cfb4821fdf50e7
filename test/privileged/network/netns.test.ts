// Network namespaces for real: created as `ip netns add` does, opened, listed, deleted; the worker
// thread always returns to the process's namespace.
import { readFile, readlink, stat } from 'node:fs/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../../../src/errors.js';
import { createNetns, deleteNetns, getLink, listLinks, listNetns, NETNS_DIR, openNetns } from '../../../src/network/index.js';
import { ipNetnsNames, KernelObjects, run, skipReason, threadNetns, uniquePrefix } from '../helpers/net.js';

describe.skipIf(skipReason !== undefined)(`network namespaces${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let k: KernelObjects;
  beforeEach(() => {
    k = new KernelObjects(uniquePrefix());
  });
  afterEach(async () => {
    await k.cleanup();
  });

  it('creates a namespace that `ip netns` sees, bind-mounted under a shared /run/netns', async () => {
    const name = k.netns('a');
    using ns = await createNetns(name);
    expect(ns.name).toBe(name);
    expect(ns.path).toBe(`${NETNS_DIR}/${name}`);
    expect(ns.fd).toBeGreaterThan(2);
    expect(await ipNetnsNames()).toContain(name);
    expect(await listNetns()).toContain(name);
    // The handle is the namespace mounted at the path (same inode as `stat -L`).
    expect(ns.inode).toBe((await stat(ns.path)).ino);
    expect((await run('stat', ['-L', '-c', '%i', ns.path])).trim()).toBe(String(ns.inode));
    // As iproute2: /run/netns is a mount point with shared propagation, and the file a bind mount.
    const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
    const dirLine = mountinfo.split('\n').find((l) => l.split(' ')[4] === NETNS_DIR);
    expect(dirLine).toMatch(/ shared:\d+/u);
    expect(mountinfo.split('\n').some((l) => l.split(' ')[4] === ns.path)).toBe(true);
    // `ip netns exec` enters the same namespace: it has only lo.
    expect((await run('ip', ['-n', name, '-o', 'link', 'show'])).trim().split('\n')).toHaveLength(1);
    expect((await listLinks({ netns: ns })).map((l) => l.name)).toEqual(['lo']);
  });

  it('opens by name and by path, and a namespace made by `ip netns add`', async () => {
    const name = k.netns('b');
    await run('ip', ['netns', 'add', name]);
    using byName = await openNetns(name);
    using byPath = await openNetns(`${NETNS_DIR}/${name}`);
    expect(byName.inode).toBe(byPath.inode);
    expect(byName.name).toBe(name);
    expect(byPath.name).toBeUndefined();
    expect((await getLink('lo', { netns: byPath })).kind).toBe('loopback');
    // A process's namespace by /proc path is the host's.
    using self = await openNetns('/proc/self/ns/net');
    expect(self.inode).toBe((await stat('/proc/self/ns/net')).ino);
  });

  it('deletes a namespace as `ip netns delete` does', async () => {
    const name = k.netns('c');
    const ns = await createNetns(name);
    ns.close();
    expect(ns.closed).toBe(true);
    expect(ns.fd).toBe(-1);
    await deleteNetns(name);
    expect(await ipNetnsNames()).not.toContain(name);
    await expect(stat(`${NETNS_DIR}/${name}`)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('rejects an existing name, a missing namespace and a file that is not one, with typed errors', async () => {
    const name = k.netns('d');
    using ns = await createNetns(name);
    const taken = await createNetns(name).catch((e: unknown) => e);
    expect(taken).toBeInstanceOf(AlreadyExistsError);
    expect(taken).toMatchObject({ code: 'ERR_VMPOD_ALREADY_EXISTS', kind: 'netns', id: name, cause: { errnoName: 'EEXIST', syscall: 'open' } });
    // The existing namespace is untouched.
    expect((await openNetns(name)).inode).toBe(ns.inode);

    const missing = k.netns('missing');
    await expect(openNetns(missing)).rejects.toBeInstanceOf(NotFoundError);
    await expect(deleteNetns(missing)).rejects.toMatchObject({ kind: 'netns', id: missing, cause: { errnoName: 'ENOENT' } });
    await expect(listLinks({ netns: missing })).rejects.toBeInstanceOf(NotFoundError);
    await expect(openNetns('/etc/hostname')).rejects.toBeInstanceOf(InvalidArgumentError);
    // A closed handle is refused before any call.
    const closed = await openNetns(name);
    closed.close();
    await expect(listLinks({ netns: closed })).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('leaves every thread of the process in its own namespace after namespace work', async () => {
    const home = await readlink('/proc/self/ns/net');
    const names = [k.netns('e1'), k.netns('e2'), k.netns('e3')];
    const handles = await Promise.all(names.map((n) => createNetns(n)));
    // Work that enters namespaces (tap creation, packet sockets) interleaved with host work.
    await Promise.all(handles.map((ns) => listLinks({ netns: ns })));
    expect((await listLinks()).some((l) => l.name === 'lo')).toBe(true);
    for (const h of handles) h.close();
    await Promise.all(names.map((n) => deleteNetns(n)));
    expect(new Set(await threadNetns())).toEqual(new Set([home]));
  });
});
