// Writes the fuzzers' seed corpus (test/fuzz/corpus/<target>/) from what the host really sends:
// the TypeScript AgentClient talks to a scripted agent (test/unit/agent-fake.ts) and every frame
// it writes is recorded: the whole byte stream (frame), each request (requests, json), the OCI
// specs (spec), the direct-stream options (direct_stream), Mount (mount) and the network
// requests (net). Run: npx tsx test/fuzz/make-corpus.ts. The files are small and committed;
// rerun it when the protocol changes.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentClient } from '../../src/agent/client.js';
import { FLAG_WINDOW, FrameType, HEADER_SIZE, encodeFrame } from '../../src/agent/framing.js';
import { FakeAgent, VALID_INFO } from '../unit/agent-fake.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const corpus = path.join(here, 'corpus');

function save(target: string, name: string, bytes: Buffer | string): void {
  const dir = path.join(corpus, target);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, name), bytes);
}

const spec = {
  ociVersion: '1.0.2',
  process: {
    terminal: false,
    user: { uid: 1000, gid: 1000, umask: 18, additionalGids: [10, 65534] },
    args: ['sh', '-c', 'echo hello'],
    env: ['PATH=/bin:/usr/bin', 'HOME=/root', 'TERM=xterm'],
    cwd: '/',
    capabilities: {
      bounding: ['CAP_CHOWN', 'CAP_NET_BIND_SERVICE', 'CAP_KILL'],
      effective: ['CAP_CHOWN', 'CAP_NET_BIND_SERVICE'],
      permitted: ['CAP_CHOWN', 'CAP_NET_BIND_SERVICE'],
      ambient: ['CAP_NET_BIND_SERVICE'],
    },
    rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }, { type: 'RLIMIT_NPROC', hard: 512, soft: 256 }],
    noNewPrivileges: true,
    oomScoreAdj: 100,
    consoleSize: { height: 24, width: 80 },
  },
  root: { path: 'rootfs', readonly: false },
  hostname: 'vmpod-fuzz',
  mounts: [
    { destination: '/proc', type: 'proc', source: 'proc' },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/data', source: '/run/vmpod/shared/data', options: ['rbind', 'rprivate', 'ro'] },
  ],
  linux: {
    namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network', path: '/proc/1/ns/net' }, { type: 'cgroup' }],
    devices: [{ path: '/dev/fuse', type: 'c', major: 10, minor: 229, fileMode: 438, uid: 0, gid: 0 }],
    resources: {
      memory: { limit: 268435456, reservation: 134217728, swap: -1 },
      pids: { limit: 100 },
      cpu: { shares: 512, quota: 50000, period: 100000, cpus: '0-1', mems: '0' },
      hugepageLimits: [{ pageSize: '2MB', limit: 8388608 }],
      unified: { 'memory.high': '200000000' },
    },
    maskedPaths: ['/proc/kcore', '/sys/firmware'],
    readonlyPaths: ['/proc/sys', '/proc/bus'],
    sysctl: { 'net.ipv4.ip_forward': '1' },
    rootfsPropagation: 'rslave',
  },
};
const minimal = {
  ociVersion: '1.0.2',
  process: { args: ['/bin/true'], env: ['PATH=/bin'], cwd: '/' },
  root: { path: '/run/vmpod/rootfs' },
  linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }] },
};
const cookie = createHash('sha256').update('vmpod fuzz corpus').digest('hex');

const fake = new FakeAgent({ answerHello: false });
const frames: Buffer[] = [];
fake.onOffer = (f) => frames.push(encodeFrame(f.stream, f.type as FrameType, f.flags, f.payload));
const requests: { method: string; params: Record<string, unknown> }[] = [];
fake.onRequest = (r) => {
  requests.push({ method: r.method, params: r.params });
  if (r.method === 'Hello') {
    fake.respond(r.stream, { ...VALID_INFO, features: ['containers', 'exec', 'tty', 'stats', 'mount', 'mount-9p', 'set-time', 'oom', 'network', 'direct-stdio', 'rootfs-overlay', 'find-device'] });
  } else if (r.method === 'OpenStdio') {
    fake.respond(r.stream, {});
    if (r.params['fd'] === 'stdout') {
      fake.sendData(r.stream, Buffer.from('hello\n'));
      fake.sendData(r.stream, Buffer.alloc(0), 1);
    }
  } else {
    fake.respondError(r.stream, 'NOT_FOUND', 'corpus run: no agent behind this');
  }
};
const client = await AgentClient.connect(fake.transport, { clientName: 'vmpod-corpus' });
const calls: (() => Promise<unknown>)[] = [
  () => client.ping(),
  () => client.createContainer({ id: 'web', bundle: '/run/vmpod/bundles/web', config: spec as never, stdio: { stdin: true } }),
  () => client.createContainer({ id: 'c1', config: minimal as never, rootfs: 'builtin' }),
  () => client.createContainer({ id: 'ro.fs', config: minimal as never, rootfs: '/run/vmpod/images/a', overlay: true, stdio: { stdin: false, stdout: true, stderr: true } }),
  () => client.createContainer({ id: 'direct', config: minimal as never, direct: { stdout: { port: 'vmpod.stream.1', cookie }, stderr: { port: 'vmpod.stream.2', cookie } } } as never),
  () => client.startContainer('web'),
  () => client.exec({ containerId: 'web', execId: 'sh-1', process: { args: ['sh'], env: ['PATH=/bin'], cwd: '/root', terminal: true, consoleSize: { height: 40, width: 120 } }, stdio: { stdin: true } }),
  () => client.signal('web', 'SIGTERM'),
  () => client.signal('web', 9, { execId: 'sh-1', all: true }),
  () => client.wait('web', { execId: 'sh-1' }),
  () => client.resizeTty('web', { rows: 50, cols: 132 }, { execId: 'sh-1' }),
  () => client.stats('web'),
  () => client.listContainers(),
  () => client.mount({ type: 'virtiofs', source: 'vmpod-share', target: '/run/vmpod/shared', readOnly: false }),
  () => client.mount({ type: '9p', source: 'share9p', target: '/run/vmpod/9p', options: ['cache=loose', 'msize=262144'] }),
  () => client.mount({ type: 'ext4', device: { pciAddress: '0000:01:00.0' }, target: '/run/vmpod/volumes/v1', readOnly: true, timeoutMs: 5000 }),
  () => client.mount({ type: 'ext4', device: { serial: 'vol-1' }, target: '/run/vmpod/volumes/v2' }),
  () => client.mount({ type: 'tmpfs', target: '/run/vmpod/tmp', options: ['size=64m', 'mode=1777'] }),
  () => client.mount({ type: 'hugetlbfs', target: '/run/vmpod/huge', options: ['pagesize=2M'] }),
  () => client.unmount('/run/vmpod/shared'),
  () => client.findDevice({ pciPath: '02/00', netdev: true, timeoutMs: 3000 }),
  () => client.setTime(new Date(Date.UTC(2026, 11, 7, 12, 0, 0, 123))),
  () => client.configureInterface({
      mac: '52:54:00:12:34:56', name: 'eth0', mtu: 1500,
      addresses: ['10.88.0.2/16', 'fd00::2/64'],
      routes: [{ dst: 'default', gateway: '10.88.0.1' }, { dst: '192.168.0.0/24', gateway: '10.88.0.254', metric: 100, table: 100 },
        { dst: 'fd01::/64', scope: 'link', mtu: 1400 }],
      neighbors: [{ ip: '10.88.0.1', mac: 'aa:bb:cc:dd:ee:ff' }],
      timeoutMs: 2000,
    }),
  () => client.removeInterface('52:54:00:12:34:56'),
  () => client.listInterfaces(),
  () => client.setNetworkConfig({ hostname: 'pod-1', dns: { nameservers: ['10.88.0.1', '2001:db8::1'], search: ['svc.cluster.local', 'cluster.local'], options: ['ndots:5'] },
      hosts: [{ ip: '10.88.0.3', names: ['db', 'db.local'] }] }),
  () => client.setNetworkConfig({ dns: { domain: 'example.org' } }),
  () => client.pauseContainer('web', { freezeTimeoutMs: 2000 }),
  () => client.resumeContainer('web'),
  () => client.updateContainer('web', {
      memory: { limit: 268435456, reservation: 134217728, swap: 536870912 },
      cpu: { shares: 512, quota: 50000, period: 100000, cpus: '0-1,3', mems: '0' },
      pids: { limit: 100 },
      blockIO: { weight: 500 },
    }),
  () => client.updateContainer('web', { memory: { limit: -1, swap: 0 }, cpu: { quota: -1 }, pids: { limit: -1 } }),
  () => client.deleteContainer('web', { force: true }),
];
for (const call of calls) await call().catch(() => undefined);
// Stdio: stdin data and close, stdout with its window updates.
const io = await client.openStdio('web', { stdin: true, stdout: true });
io.stdin!.end('some input\n');
for await (const chunk of io.stdout!) void chunk;
await client.shutdown().catch(() => undefined);
await new Promise((r) => setTimeout(r, 50));
client.close();

const seed = Buffer.from([0x5e, 0xed]);
save('frame', 'session', Buffer.concat([seed, ...frames]));
save('frame', 'hello', Buffer.concat([seed, frames[0]!]));
const windows = frames.filter((f) => f.readUInt8(8) === 3 && (f.readUInt8(9) & FLAG_WINDOW) !== 0);
const grant = Buffer.alloc(4);
grant.writeUInt32BE(65536);
// A window update the client would send for an output stream it reads (stream 3 above).
save('frame', 'window', Buffer.concat([Buffer.from([1, 0]), frames[0]!, ...windows, encodeFrame(3, FrameType.Data, FLAG_WINDOW, grant)]));
const data = frames.filter((f) => f.readUInt8(8) === 3 && f.length > HEADER_SIZE && (f.readUInt8(9) & FLAG_WINDOW) === 0);
if (data.length) save('frame', 'stdin', Buffer.concat([Buffer.from([7, 3]), ...data]));
const counts = new Map<string, number>();
for (const r of requests) {
  const n = (counts.get(r.method) ?? 0) + 1;
  counts.set(r.method, n);
  const name = `${r.method}-${n}.json`;
  const text = JSON.stringify(r);
  save('requests', name, text);
  save('json', name, text);
  if (r.method === 'CreateContainer') {
    save('spec', `${r.params['id']}.json`, JSON.stringify(r.params['config']));
    if (r.params['direct']) save('direct_stream', `${r.params['id']}.json`, JSON.stringify({ direct: r.params['direct'], stdio: r.params['stdio'] ?? null }));
  }
  if (r.method === 'Exec') save('spec', 'exec-process.json', JSON.stringify({ ociVersion: '1.0.2', process: r.params['process'] }));
  if (r.method === 'Mount') save('mount', name, JSON.stringify(r.params));
  if (['ConfigureInterface', 'RemoveInterface', 'SetNetworkConfig'].includes(r.method)) save('net', name, JSON.stringify(r.params));
}
// Boundary cases the host never sends but the checks stand on: one seed next to each refusal.
const edges: Record<string, unknown>[] = [
  { type: 'tmpfs', target: '/run/vmpod' },
  { type: 'tmpfs', target: '/run/vmpod/containers' },
  { type: 'tmpfs', target: '/run/vmpod/containers/c1/rootfs' },
  { type: 'tmpfs', target: '/run/vmpod/x/../containers' },
  { type: 'tmpfs', target: '/run/vmpodx' },
  { type: 'ext4', device: { path: '/dev/../etc/shadow' }, target: '/run/vmpod/v' },
  { type: '9p', source: 'tag', target: '/run/vmpod/9', options: ['trans=fd', 'rfdno=0'] },
  { type: 'virtiofs', source: 'tag', target: '/run/vmpod/s', options: ['bind'] },
];
edges.forEach((params, i) => save('mount', `edge-${i}.json`, JSON.stringify(params)));
// UpdateContainer and PauseContainer next to their bounds (the client refuses most of these itself).
const requestEdges: { method: string; params: Record<string, unknown> }[] = [
  { method: 'UpdateContainer', params: { id: 'web', resources: { memory: { swap: 1073741824 } } } },
  { method: 'UpdateContainer', params: { id: 'web', resources: { memory: { limit: 1048576, swap: 1048575 } } } },
  { method: 'UpdateContainer', params: { id: 'web', resources: { cpu: { cpus: '0-4095,4095', mems: '1-0' } } } },
  { method: 'UpdateContainer', params: { id: 'web', resources: { cpu: { quota: 17592186044415, period: 1000000, shares: 262144 } } } },
  { method: 'UpdateContainer', params: { id: 'web', resources: { pids: { limit: 0 }, blockIO: { weight: 10 } } } },
  { method: 'PauseContainer', params: { id: 'web', timeoutMs: 600001 } },
];
requestEdges.forEach((r, i) => save('requests', `edge-${r.method}-${i}.json`, JSON.stringify(r)));
// Paths for the path half of the mount target (NormalizePath, SecureJoin).
for (const [name, p] of [['path-plain', '/etc/passwd'], ['path-dots', '/a/./b/../../c//d/'], ['path-link', '/chain/x'], ['path-deep', 'deep/../up/abs']]) save('mount', name!, p!);
save('direct_stream', 'terminal.json', JSON.stringify({ direct: { stdout: { port: 'vmpod.stream.3', cookie } }, stdio: { stdout: true }, terminal: true }));
console.log(`corpus: ${frames.length} frames, ${requests.length} requests (${[...counts.keys()].join(', ')})`);
