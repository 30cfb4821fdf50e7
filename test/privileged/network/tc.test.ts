// tc for real: ingress qdiscs and u32/mirred redirect filters, checked against `tc -j`.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AlreadyExistsError, NotFoundError } from '../../../src/errors.js';
import {
  addIngressQdisc,
  addRedirectFilter,
  addVeth,
  connectTcFilter,
  createNetns,
  createTap,
  deleteFilters,
  deleteIngressQdisc,
  disconnectTcFilter,
  listFilters,
  listQdiscs,
  type Netns,
} from '../../../src/network/index.js';
import { KernelObjects, run, skipReason, tcJson, uniquePrefix } from '../helpers/net.js';

interface TcQdisc {
  kind: string;
  handle: string;
  parent?: string;
  dev?: string;
}
interface TcFilter {
  kind?: string;
  pref: number;
  protocol: string;
  options?: { fh?: string; actions?: Array<{ kind: string; mirred_action?: string; direction?: string; to_dev?: string }> };
}

describe.skipIf(skipReason !== undefined)(`tc${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let k: KernelObjects;
  let nsName: string;
  let ns: Netns;
  let fds: number[] = [];
  beforeEach(async () => {
    k = new KernelObjects(uniquePrefix());
    nsName = k.netns('t');
    ns = await createNetns(nsName);
    await addVeth({ name: 'eth0', netns: ns, up: true, peer: { name: 'eth1', up: true } });
    fds = (await createTap({ name: 'tap0', netns: ns, up: true })).fds;
  });
  afterEach(async () => {
    for (const fd of fds) await import('node:fs').then((fs) => fs.closeSync(fd));
    ns.close();
    await k.cleanup();
    await k.assertNothingLeft();
  });

  it('adds, lists and deletes an ingress qdisc', async () => {
    await addIngressQdisc('eth0', { netns: ns });
    const ours = (await tcJson<TcQdisc[]>(['qdisc', 'show', 'dev', 'eth0'], nsName)).find((q) => q.kind === 'ingress');
    expect(ours).toMatchObject({ handle: 'ffff:', parent: 'ffff:fff1' });
    expect((await listQdiscs({ netns: ns, dev: 'eth0' })).find((q) => q.kind === 'ingress')).toMatchObject({ dev: 'eth0', handle: 'ffff:', parent: 'ffff:fff1' });
    await expect(addIngressQdisc('eth0', { netns: ns })).rejects.toBeInstanceOf(AlreadyExistsError);

    await deleteIngressQdisc('eth0', { netns: ns });
    expect((await tcJson<TcQdisc[]>(['qdisc', 'show', 'dev', 'eth0'], nsName)).some((q) => q.kind === 'ingress')).toBe(false);
    await expect(deleteIngressQdisc('eth0', { netns: ns })).rejects.toMatchObject({ constructor: NotFoundError, kind: 'ingress qdisc' });
  });

  it('adds u32 match-all + mirred egress redirect filters that tc reads back', async () => {
    await addIngressQdisc('eth0', { netns: ns });
    await addRedirectFilter('eth0', 'tap0', { netns: ns });
    await addRedirectFilter('eth0', 'eth0', { netns: ns, prio: 7 });
    const tc = await tcJson<TcFilter[]>(['filter', 'show', 'dev', 'eth0', 'parent', 'ffff:'], nsName);
    const redirect = tc.find((f) => f.pref === 49152 && f.options?.actions);
    expect(redirect).toMatchObject({ kind: 'u32', protocol: 'all', options: { fh: '800::800' } });
    expect(redirect?.options?.actions?.[0]).toMatchObject({ kind: 'mirred', mirred_action: 'redirect', direction: 'egress', to_dev: 'tap0' });

    const mine = await listFilters('eth0', { netns: ns });
    expect(mine).toHaveLength(2); // hash tables left out
    expect(mine.find((f) => f.prio === 49152)).toMatchObject({
      dev: 'eth0',
      parent: 'ffff:',
      protocol: 'all',
      kind: 'u32',
      handle: '800::800',
      actions: [{ kind: 'mirred', direction: 'egress', mode: 'redirect', dev: 'tap0' }],
    });
    expect(mine.find((f) => f.prio === 7)?.actions).toEqual([expect.objectContaining({ dev: 'eth0' })]);

    await deleteFilters('eth0', { netns: ns, prio: 7 });
    expect((await listFilters('eth0', { netns: ns })).map((f) => f.prio)).toEqual([49152]);
    await deleteFilters('eth0', { netns: ns });
    expect(await tcJson<TcFilter[]>(['filter', 'show', 'dev', 'eth0', 'parent', 'ffff:'], nsName)).toEqual([]);
    await expect(addRedirectFilter('eth0', 'nope0', { netns: ns })).rejects.toMatchObject({ constructor: NotFoundError, id: 'nope0' });
  });

  it('connects and disconnects two links the tcfilter way', async () => {
    await connectTcFilter('eth0', 'tap0', { netns: ns });
    for (const [from, to] of [['eth0', 'tap0'], ['tap0', 'eth0']]) {
      const out = await run('tc', ['-n', nsName, 'filter', 'show', 'dev', from as string, 'parent', 'ffff:']);
      expect(out).toMatch(new RegExp(`u32 .*\\n[\\s\\S]*match 00000000/00000000 at 0[\\s\\S]*mirred \\(Egress Redirect to device ${to}\\)`, 'u'));
    }
    await disconnectTcFilter('eth0', 'tap0', { netns: ns });
    expect((await listQdiscs({ netns: ns })).filter((q) => q.kind === 'ingress')).toEqual([]);
    // A failed connect removes the qdiscs it added.
    await expect(connectTcFilter('eth0', 'nope0', { netns: ns })).rejects.toBeInstanceOf(NotFoundError);
    expect((await listQdiscs({ netns: ns })).filter((q) => q.kind === 'ingress')).toEqual([]);
  });
});
