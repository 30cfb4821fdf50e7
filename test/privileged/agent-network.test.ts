// The agent's networking methods, with the real agent run on the host inside a network namespace
// of its own (`ip netns exec`, --manage-network): NICs found by MAC, renamed out of each other's
// way, addresses/routes/neighbours replaced, removed, listed; containers' resolv.conf, hosts and
// hostname; validation of everything the host sends. Every result is checked with `ip -j`.
// Each test has a namespace and an agent of its own (they take a moment to make), and sets up
// the configuration it starts from itself: any test runs alone and in any order.
import net from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentError } from '../../src/agent/errors.js';
import { FrameDecoder, FrameType, encodeFrame } from '../../src/agent/framing.js';
import type { AgentClient } from '../../src/agent/client.js';
import { AGENT_BINARY, collect, haveAgent, haveBusybox, isRoot, minimalSpec, startHostAgent, uniqueId, type HostAgent } from './agent-host.js';
import { ipJson, run, uniquePrefix } from './helpers/net.js';

const ready = isRoot && haveAgent && haveBusybox;
const reason = !isRoot ? 'needs root' : !haveAgent ? `no agent binary at ${AGENT_BINARY} (npm run build:native)` : 'busybox-static is not installed';

const M1 = '02:76:00:00:00:01';
const M2 = '02:76:00:00:00:02';
const M3 = '02:76:00:00:00:03';
const GW_MAC = '02:76:00:00:00:fe';

/** Error code of a rejected agent call. */
async function agentCode(call: Promise<unknown>): Promise<string> {
  try {
    await call;
  } catch (error) {
    if (error instanceof AgentError) return error.agentCode;
    throw error;
  }
  throw new Error('the call did not fail');
}

/** One request on a raw session (past the client's own checks): the agent's answer as JSON. */
async function rawCall(socketPath: string, method: string, params: unknown): Promise<any> {
  const socket = net.createConnection({ path: socketPath });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const decoder = new FrameDecoder();
  const answer = new Promise<any>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) if (frame.stream === 3) resolve(JSON.parse(frame.payload.toString()));
    });
    socket.once('close', () => reject(new Error('the agent hung up')));
  });
  const send = (stream: number, body: unknown) => socket.write(encodeFrame(stream, FrameType.Request, 0, Buffer.from(JSON.stringify(body))));
  send(1, { method: 'Hello', params: { version: 1 } });
  send(3, { method, params });
  try {
    return await answer;
  } finally {
    socket.destroy();
  }
}

/** The first configuration of M1's NIC (it takes the name eth9 from M3's). */
const FIRST = {
  mac: M1,
  name: 'eth9',
  mtu: 1400,
  addresses: ['10.77.0.2/24', 'fd00:77::2/64'],
  routes: [
    { dst: 'default', gateway: '10.77.0.1' },
    { dst: '10.88.0.0/16', gateway: '10.77.0.1', metric: 50 },
    { dst: '192.0.2.0/24', scope: 'link' as const },
    { dst: '198.51.100.0/24', gateway: '203.0.113.1', onlink: true },
    { dst: 'default', family: 6 as const, gateway: 'fd00:77::1' },
  ],
  neighbors: [{ ip: '10.77.0.1', mac: GW_MAC }],
};
/** The configuration that replaces it: one address, one route, no neighbour. */
const SECOND = { mac: M1, name: 'eth9', addresses: ['10.77.0.3/24'], routes: [{ dst: '10.99.0.0/16', gateway: '10.77.0.1' }] };

describe.skipIf(!ready)(`the agent's guest network configuration (${ready ? 'in a netns' : reason})`, () => {
  const prefix = uniquePrefix();
  let made = 0;
  let ns: string;
  let agent: HostAgent;
  /** The agent of this test once it started, for the clean-up. */
  let started: HostAgent | undefined;
  let client: AgentClient;

  const link = async (name: string) => (await ipJson<any[]>(['link', 'show', 'dev', name], ns))[0];
  const addresses = async (name: string) =>
    ((await ipJson<any[]>(['addr', 'show', 'dev', name], ns))[0]?.addr_info ?? []).map((a: any) => `${a.local}/${a.prefixlen}`);
  const routes = async (family: '-4' | '-6') =>
    JSON.parse((await run('ip', ['-n', ns, '-j', family, 'route', 'show', 'table', 'all'])) || '[]') as any[];

  /** M1's NIC configured with FIRST and then SECOND: eth9, MTU 1400, 10.77.0.3/24. */
  async function reconfigured(): Promise<void> {
    await client.configureInterface(FIRST);
    await client.configureInterface(SECOND);
  }

  beforeEach(async () => {
    ns = `${prefix}-agnet${++made}`;
    started = undefined;
    await run('ip', ['netns', 'add', ns]);
    // Two NICs standing in for virtio ones (M1, M3; the tests that need M2 plug it); "eth9" holds
    // the name M1's NIC will want.
    await run('ip', ['-n', ns, 'link', 'add', 'nica', 'address', M1, 'type', 'veth', 'peer', 'name', 'nicap']);
    await run('ip', ['-n', ns, 'link', 'add', 'eth9', 'address', M3, 'type', 'veth', 'peer', 'name', 'nicbp']);
    for (const dev of ['lo', 'nicap', 'nicbp']) await run('ip', ['-n', ns, 'link', 'set', dev, 'up']);
    agent = await startHostAgent({ netns: ns, cgroups: false });
    started = agent;
    client = agent.client;
  });

  afterEach(async () => {
    try {
      if (started) expect(await started.cleanup()).toBe(0);
    } finally {
      await run('ip', ['netns', 'del', ns]).catch(() => undefined);
    }
    expect(JSON.parse((await run('ip', ['-j', 'netns', 'list'])) || '[]').map((n: any) => n.name)).not.toContain(ns);
  });

  it('announces the network feature', () => {
    expect(client.info.features).toContain('network');
  });

  it('configures a NIC found by MAC: name (moving a NIC that held it aside), MTU, addresses, routes, neighbours', async () => {
    const eth9Index = (await link('eth9')).ifindex as number;
    const result = await client.configureInterface(FIRST);
    expect(result).toMatchObject({ name: 'eth9', mac: M1, mtu: 1400 });

    const nic = await link('eth9');
    expect(nic.address).toBe(M1);
    expect(nic.mtu).toBe(1400);
    expect(nic.flags).toContain('UP');
    expect(await addresses('eth9')).toEqual(expect.arrayContaining(['10.77.0.2/24', 'fd00:77::2/64']));
    // The NIC that was called eth9 moved aside, down, until it is configured itself.
    const aside = await link(`vmpod${eth9Index}`);
    expect(aside.address).toBe(M3);
    expect(aside.flags).not.toContain('UP');

    const v4 = (await routes('-4')).filter((r) => r.dev === 'eth9' && r.protocol === '118');
    expect(v4.map((r) => [r.dst, r.gateway ?? null, r.metric ?? null, r.scope ?? null]).sort()).toEqual(
      [
        ['10.88.0.0/16', '10.77.0.1', 50, null],
        ['192.0.2.0/24', null, null, 'link'],
        ['198.51.100.0/24', '203.0.113.1', null, null],
        ['default', '10.77.0.1', null, null],
      ].sort(),
    );
    expect(v4.find((r) => r.dst === '198.51.100.0/24').flags).toContain('onlink');
    expect((await routes('-6')).some((r) => r.dev === 'eth9' && r.dst === 'default' && r.gateway === 'fd00:77::1')).toBe(true);
    const neigh = await ipJson<any[]>(['neigh', 'show', 'dev', 'eth9'], ns);
    expect(neigh.find((n) => n.dst === '10.77.0.1')).toMatchObject({ lladdr: GW_MAC, state: ['PERMANENT'] });

    // The aside NIC gets its own name later.
    await client.configureInterface({ mac: M3, name: 'eth8', addresses: ['10.78.0.2/24'] });
    expect((await link('eth8')).address).toBe(M3);
  });

  it('replaces on reconfiguration: addresses, its routes and neighbours not asked for go; kernel routes stay', async () => {
    await client.configureInterface(FIRST);
    expect((await ipJson<any[]>(['neigh', 'show', 'dev', 'eth9', 'nud', 'permanent'], ns))).toHaveLength(1);
    await client.configureInterface(SECOND);
    expect((await addresses('eth9')).filter((a: string) => !a.startsWith('fe80:'))).toEqual(['10.77.0.3/24']);
    const v4 = (await routes('-4')).filter((r) => r.dev === 'eth9');
    expect(v4.filter((r) => r.protocol === '118').map((r) => r.dst)).toEqual(['10.99.0.0/16']);
    expect(v4.some((r) => r.protocol === 'kernel' && r.dst === '10.77.0.0/24')).toBe(true);
    expect((await ipJson<any[]>(['neigh', 'show', 'dev', 'eth9', 'nud', 'permanent'], ns))).toEqual([]);
  });

  it('lists what it configured', async () => {
    await reconfigured();
    const info = await client.listInterfaces();
    const eth9 = info.interfaces.find((i) => i.name === 'eth9');
    expect(eth9).toMatchObject({ mac: M1, up: true, mtu: 1400 });
    expect(eth9!.addresses).toContain('10.77.0.3/24');
    expect(info.routes).toContainEqual(expect.objectContaining({ dst: '10.99.0.0/16', gateway: '10.77.0.1', dev: 'eth9', protocol: 118, family: 4 }));
    expect(info.interfaces.find((i) => i.name === 'lo')?.addresses).toContain('127.0.0.1/8');
  });

  it('waits for a NIC that appears later (a hot-plugged one), and gives up with NOT_FOUND', async () => {
    const later = client.configureInterface({ mac: M2, name: 'hot0', addresses: ['10.79.0.2/24'], timeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 300));
    await run('ip', ['-n', ns, 'link', 'add', 'nicc', 'address', M2, 'type', 'veth', 'peer', 'name', 'niccp']);
    expect((await later).name).toBe('hot0');
    expect(await addresses('hot0')).toContain('10.79.0.2/24');
    expect(await agentCode(client.configureInterface({ mac: '02:76:00:00:00:99', name: 'nope0', timeoutMs: 200 }))).toBe('NOT_FOUND');
  });

  it('removes a NIC\'s configuration before an unplug', async () => {
    await run('ip', ['-n', ns, 'link', 'add', 'nicc', 'address', M2, 'type', 'veth', 'peer', 'name', 'niccp']);
    await client.configureInterface({ mac: M2, name: 'hot0', addresses: ['10.79.0.2/24'] });
    expect((await link('hot0')).flags).toContain('UP');
    expect(await addresses('hot0')).toContain('10.79.0.2/24');
    expect(await client.removeInterface(M2)).toEqual({ found: true });
    expect((await link('hot0')).flags).not.toContain('UP');
    expect((await addresses('hot0')).filter((a: string) => !a.startsWith('fe80:'))).toEqual([]);
    expect(await client.removeInterface('02:76:00:00:00:99')).toEqual({ found: false });
  });

  it('gives containers resolv.conf, hosts and hostname, rewritten in place when the config changes', async () => {
    await reconfigured();
    expect(
      await client.setNetworkConfig({
        hostname: 'sandbox-host',
        dns: { nameservers: ['10.77.0.53', 'fd00:77::53'], search: ['svc.local', 'local'], options: ['ndots:2'] },
        hosts: [{ ip: '10.77.0.10', names: ['peer', 'peer.local'] }],
      }),
    ).toEqual({ hostnameApplied: false }); // only the guest's init sets the hostname
    const id = uniqueId('net');
    const spec = minimalSpec(['sh', '-c', 'cat /etc/resolv.conf /etc/hosts /etc/hostname; echo MARK; read x; cat /etc/resolv.conf /etc/hosts; ip -o -4 addr show dev eth9']);
    spec.hostname = 'ctr-one';
    await client.createContainer({ id, bundle: agent.bundle, config: { ...spec, linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }, { type: 'uts' }, { type: 'ipc' }] } }, stdio: { stdin: true } });
    const stdio = await client.openStdio(id, { stdin: true, stdout: true, stderr: true });
    let text = '';
    stdio.stdout!.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
    const ended = new Promise((resolve) => stdio.stdout!.once('end', resolve));
    const err = collect(stdio.stderr);
    await client.startContainer(id);
    for (let i = 0; i < 500 && !text.includes('MARK\n'); i++) await new Promise((r) => setTimeout(r, 10));
    const [before, after] = text.split('MARK\n') as [string, string];
    // A new config while the container runs: the same bind mounts show the new files.
    await client.setNetworkConfig({ hostname: 'sandbox-host', dns: { nameservers: ['10.77.0.54'] }, hosts: [{ ip: '10.77.0.11', names: ['other'] }] });
    stdio.stdin!.end('go\n');
    expect((await client.wait(id)).exitCode).toBe(0);
    await ended;
    expect((await err).toString()).toBe('');
    expect(after).toBe('');
    expect(before).toContain('nameserver 10.77.0.53\nnameserver fd00:77::53\nsearch svc.local local\noptions ndots:2\n');
    // The container's own name maps to the sandbox's first address (of the first NIC configured).
    expect(before).toContain('127.0.0.1\tlocalhost\n');
    expect(before).toContain('10.77.0.3\tctr-one\n');
    expect(before).toContain('10.77.0.10\tpeer\tpeer.local\n');
    expect(before.endsWith('ctr-one\n')).toBe(true);
    const later = text.split('MARK\n')[1]!;
    expect(later).toContain('nameserver 10.77.0.54\n');
    expect(later).not.toContain('10.77.0.53');
    expect(later).toContain('10.77.0.11\tother\n');
    expect(later).toContain('10.77.0.3\tctr-one\n');
    // The container shares the agent's network namespace: it sees the configured NIC.
    expect(later).toContain('inet 10.77.0.3/24');
    await client.deleteContainer(id);

    // A container that mounts its own /etc/hosts keeps it.
    const own = uniqueId('own');
    const ownSpec = minimalSpec(['cat', '/etc/hosts']);
    ownSpec.mounts!.push({ destination: '/etc/hosts', type: 'bind', source: `${agent.rootfs}/etc/passwd`, options: ['rbind', 'ro'] });
    await client.createContainer({ id: own, bundle: agent.bundle, config: { ...ownSpec, linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }] } } });
    const ownOut = collect((await client.openStdio(own, { stdout: true, stderr: false })).stdout);
    await client.startContainer(own);
    await client.wait(own);
    expect((await ownOut).toString()).toContain('root:x:0:0');
    await client.deleteContainer(own);
  });

  it('rejects malformed requests with INVALID_ARGUMENT before touching anything', async () => {
    await reconfigured();
    const bad: Array<Record<string, unknown>> = [
      { mac: 'zz:76:00:00:00:01', name: 'x' },
      { mac: M1, name: 'a-name-longer-than-15' },
      { mac: M1, name: 'bad/name' },
      { mac: M1, name: 'eth9', mtu: 20 },
      { mac: M1, name: 'eth9', addresses: ['10.1.2.3/33'] },
      { mac: M1, name: 'eth9', addresses: ['10.1.2.3'] },
      { mac: M1, name: 'eth9', addresses: ['10.1.2.300/24'] },
      { mac: M1, name: 'eth9', routes: [{ dst: '10.1.2.3/24' }] },
      { mac: M1, name: 'eth9', routes: [{ dst: 'default', gateway: 'fd00::1', family: 4 }] },
      { mac: M1, name: 'eth9', routes: [{ dst: '10.1.0.0/16', gateway: '10.0.0.1', table: 255 }] },
      { mac: M1, name: 'eth9', routes: [{ dst: '10.1.0.0/16', scope: 'galaxy' }] },
      { mac: M1, name: 'eth9', neighbors: [{ ip: '10.0.0.1', mac: 'nope' }] },
      { mac: M1, name: 'eth9', addresses: Array.from({ length: 65 }, (_, i) => `10.0.${i}.1/24`) },
      { mac: M1, name: 'eth9', surprise: true },
      { mac: M1, name: 'eth9', addresses: 'not-a-list' },
    ];
    for (const params of bad) {
      expect((await rawCall(agent.socket, 'ConfigureInterface', params)).error?.code, JSON.stringify(params)).toBe('INVALID_ARGUMENT');
    }
    for (const params of [{ hostname: 'no spaces' }, { dns: { nameservers: ['not-an-ip'] } }, { dns: { search: ['a;b'] } }, { hosts: [{ ip: '10.0.0.1', names: [] }] }, { dns: 7 }]) {
      expect((await rawCall(agent.socket, 'SetNetworkConfig', params)).error?.code, JSON.stringify(params)).toBe('INVALID_ARGUMENT');
    }
    for (const [method, params] of [['RemoveInterface', { mac: 1 }], ['RemoveInterface', {}], ['ListInterfaces', { x: 1 }]] as const) {
      expect((await rawCall(agent.socket, method, params)).error?.code, `${method} ${JSON.stringify(params)}`).toBe('INVALID_ARGUMENT');
    }
    // Nothing changed on the NIC.
    expect((await addresses('eth9')).filter((a: string) => !a.startsWith('fe80:'))).toEqual(['10.77.0.3/24']);
  });

  it('refuses the network methods in an agent that may not manage the network', async () => {
    const plain = await startHostAgent({ cgroups: false });
    try {
      expect(await agentCode(plain.client.configureInterface({ mac: M1, name: 'eth9' }))).toBe('FAILED_PRECONDITION');
      expect(await agentCode(plain.client.setNetworkConfig({ hostname: 'x' }))).toBe('FAILED_PRECONDITION');
    } finally {
      expect(await plain.cleanup()).toBe(0);
    }
  });
});
