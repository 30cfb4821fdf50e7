/**
 * The shim's pods on real VMs (src/shim/pods.ts), with bundles made as containerd makes them (a
 * folder per task under NAMESPACE/, config.json with the CRI annotations, the rootfs in it): the
 * sandbox container boots a VM sized from the pod annotations (the guest's memory and CPU count
 * read from inside), an app container joins it (the same guest boot id), the release of the app
 * keeps the VM and the release of the last task removes it; QEMU killed: the VM's exit is told
 * once; a server killed with SIGKILL: `cleanupAfterCrash` per task removes the VM with the last.
 * Nothing is left afterwards.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import type { Container } from '../../src/container/container.js';
import { silentLog, type ShimLog } from '../../src/shim/log.js';
import { CRI_SANDBOX_CPU_PERIOD, CRI_SANDBOX_CPU_QUOTA, CRI_SANDBOX_MEMORY, Pods, podRecordsDir, type PodContainerRequest, type RuntimeSpec } from '../../src/shim/pods.js';
import { collect, deleteAllAndCheck, makeStateDir, nodeScript, processesMentioning, runcSpecBundle, skipReason, until } from './sandbox/fixture.js';

const NS = 'vt-shim';
const TYPE = 'io.kubernetes.cri.container-type';
const SANDBOX_ID = 'io.kubernetes.cri.sandbox-id';
const MiB = 1024 * 1024;
const exec = promisify(execFile);
const ip = (...args: string[]) => exec('ip', args);

/** The shim's log lines, kept for the failure messages. */
function memoryLog(): ShimLog & { lines: string[] } {
  const lines: string[] = [];
  const add = (level: string) => (msg: string) => void lines.push(`${level} ${msg}`);
  return { lines, debug: add('debug'), info: add('info'), warn: add('warn'), error: add('error') };
}

function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
}

describe.skipIf(skipReason !== undefined)('shim pods: one VM per pod', () => {
  let stateDir: string;
  let tasksRoot: string;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    tasksRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-shim-pods-'));
  });

  afterAll(async () => {
    try {
      // The pod records: none left (the namespace's lock file stays, as every lock file does).
      const records = await fs.readdir(podRecordsDir(stateDir, NS)).catch(() => [] as string[]);
      expect(records.filter((n) => n.endsWith('.json'))).toEqual([]);
      expect(await processesMentioning(tasksRoot)).toEqual([]);
    } finally {
      try {
        await deleteAllAndCheck(stateDir);
      } finally {
        await fs.rm(tasksRoot, { recursive: true, force: true });
      }
    }
  });

  const podId = (): string => randomBytes(32).toString('hex');

  /** A task's bundle as containerd lays it out: TASKS/NAMESPACE/ID with config.json and rootfs. */
  async function bundle(id: string, args: string[], annotations: Record<string, string>, netns?: string): Promise<PodContainerRequest> {
    const dir = path.join(tasksRoot, NS, id);
    await runcSpecBundle(dir, (spec) => {
      // CRI makes the sandbox container's root read-only and names the pod's host in it; an app
      // container gets no hostname (it joins the sandbox's UTS namespace by path).
      spec.root.readonly = annotations[TYPE] === 'sandbox';
      if (annotations[TYPE] === 'sandbox') spec.hostname = 'pod-web';
      else delete spec.hostname;
      spec.process.terminal = false;
      spec.process.args = args;
      spec.annotations = annotations;
      // containerd's default capabilities include NET_RAW (ping); runc spec's do not.
      for (const set of Object.values(spec.process.capabilities) as string[][]) set.push('CAP_NET_RAW');
      // As CRI gives it: the path of the namespace CNI set up.
      if (netns !== undefined) for (const ns of spec.linux.namespaces) if (ns.type === 'network') ns.path = netns;
    });
    const spec = JSON.parse(await fs.readFile(path.join(dir, 'config.json'), 'utf8')) as RuntimeSpec;
    return { id, bundle: dir, spec, stdio: { stdin: false, terminal: false } };
  }

  const sandboxTask = (pod: string, extra: Record<string, string> = {}, netns?: string) =>
    bundle(pod, ['sh', '-c', 'cat /proc/sys/kernel/random/boot_id; exec sleep 100000'], { [TYPE]: 'sandbox', [SANDBOX_ID]: pod, ...extra }, netns);
  const appTask = (pod: string, id: string, args: string[]) => bundle(id, args, { [TYPE]: 'container', [SANDBOX_ID]: pod });

  async function firstLine(container: Container): Promise<string> {
    let text = '';
    const stream = container.stdout!;
    await new Promise<void>((resolve, reject) => {
      const onData = (d: Buffer): void => {
        text += d.toString();
        if (text.includes('\n')) {
          stream.off('data', onData);
          resolve();
        }
      };
      stream.on('data', onData);
      stream.once('error', reject);
      stream.once('end', () => resolve());
    });
    stream.resume();
    return text.split('\n')[0]!;
  }

  async function sandboxPids(): Promise<Map<string, number | undefined>> {
    return new Map((await Sandbox.list({ stateDir })).map((s) => [s.id, s.pid]));
  }

  it('a pod VM sized from the annotations, on the pod netns; an app container joins it; the VM goes with the last task', async () => {
    // The pod's namespace, as CNI would leave it: a veth whose peer is in a far namespace.
    const tag = randomBytes(2).toString('hex');
    const podNs = `vt-shimpod-${tag}`;
    const farNs = `vt-shimfar-${tag}`;
    const net = `10.${100 + (Number.parseInt(tag, 16) % 100)}.${Number.parseInt(tag.slice(2), 16) % 250}`;
    try {
      await ip('netns', 'add', podNs);
      await ip('netns', 'add', farNs);
      await ip('-n', podNs, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', farNs);
      await ip('-n', podNs, 'addr', 'add', `${net}.2/24`, 'dev', 'eth0');
      await ip('-n', farNs, 'addr', 'add', `${net}.1/24`, 'dev', 'eth0');
      await ip('-n', podNs, 'link', 'set', 'eth0', 'up');
      await ip('-n', farNs, 'link', 'set', 'eth0', 'up');
      await podOnNetwork(`/run/netns/${podNs}`, net);
    } finally {
      await ip('netns', 'del', podNs).catch(() => undefined);
      await ip('netns', 'del', farNs).catch(() => undefined);
    }
  });

  async function podOnNetwork(netns: string, net: string): Promise<void> {
    const log = memoryLog();
    const pods = new Pods({ stateDir, namespace: NS, log });
    const pod = podId();
    const hostCpus = os.availableParallelism();
    const cpus = Math.min(2, hostCpus);
    const sandboxReq = await sandboxTask(pod, { [CRI_SANDBOX_MEMORY]: String(256 * MiB), [CRI_SANDBOX_CPU_QUOTA]: String(cpus * 100_000), [CRI_SANDBOX_CPU_PERIOD]: '100000' }, netns);
    const began = Date.now();
    const { pod: created, container: pause } = await pods.createContainer(sandboxReq);
    console.log(`shim-pods: pod VM boot + sandbox container create: ${Date.now() - began} ms (${cpus} vCPU, 384 MiB, TCG)`);
    expect(created.sandbox.config.memoryMiB, log.lines.join('\n')).toBe(384);
    await pause.start();
    const pauseBoot = await firstLine(pause);
    const qemu = pods.hostPid(pod);
    expect(qemu).toBeGreaterThan(0);
    expect(processGone(qemu)).toBe(false);
    expect((await sandboxPids()).get(pod)).toBe(qemu);

    const appId = podId();
    // In the guest: the boot id, RAM, CPUs, and the pod's address reaching the far end.
    const appReq = await appTask(pod, appId, ['sh', '-c', `cat /proc/sys/kernel/random/boot_id; grep MemTotal /proc/meminfo; grep -c ^processor /proc/cpuinfo; hostname; ip -o -4 addr show | grep -q ' ${net}.2/24 ' && echo has-address; ping -c 1 -W 10 ${net}.1 >/dev/null && echo reaches-far`]);
    const { pod: joined, container: app } = await pods.createContainer(appReq);
    expect(joined).toBe(created);
    expect(pods.hostPid(appId)).toBe(qemu);
    const out = collect(app.stdout);
    await app.start();
    expect(await app.wait()).toMatchObject({ exitCode: 0 });
    const [appBoot, memLine, cpuLine, hostname, ...network] = (await out).toString().trim().split('\n');
    expect(network).toEqual(['has-address', 'reaches-far']);
    // The pod's hostname, which CRI gave the sandbox container alone.
    expect(hostname).toBe('pod-web');
    // One VM: the same guest kernel boot.
    expect(appBoot).toMatch(/^[0-9a-f-]{36}$/u);
    expect(appBoot).toBe(pauseBoot);
    // 384 MiB of guest RAM: the kernel keeps a part of it; more than the 256 MiB default would give.
    const memKiB = Number(/MemTotal:\s+(\d+) kB/u.exec(memLine ?? '')?.[1]);
    expect(memKiB, memLine).toBeGreaterThan(300 * 1024);
    expect(memKiB, memLine).toBeLessThanOrEqual(384 * 1024);
    expect(Number(cpuLine)).toBe(cpus);

    await pods.releaseContainer(appId);
    // The VM runs on with the sandbox container.
    expect((await sandboxPids()).get(pod)).toBe(qemu);
    expect(processGone(qemu)).toBe(false);
    expect((await created.sandbox.containers()).map((c) => c.id)).toEqual([pod]);

    await pods.releaseContainer(pod);
    expect((await sandboxPids()).has(pod)).toBe(false);
    await until('QEMU to be gone', () => processGone(qemu), 20_000);
    expect(await fs.readdir(podRecordsDir(stateDir, NS)).then((n) => n.filter((x) => x.endsWith('.json')))).toEqual([]);
  }

  it('QEMU killed: the VM exit is told once; the releases still remove everything', async () => {
    const pods = new Pods({ stateDir, namespace: NS, log: silentLog });
    const told: string[] = [];
    pods.onVmExit((p) => told.push(p));
    const pod = podId();
    const { container: pause } = await pods.createContainer(await sandboxTask(pod));
    await pause.start();
    await firstLine(pause);
    const appId = podId();
    const { container: app } = await pods.createContainer(await appTask(pod, appId, ['sleep', '100000']));
    await app.start();
    // The waits end (with an error: the agent is gone) rather than hang.
    const waits = [pause.wait().catch((e: unknown) => e), app.wait().catch((e: unknown) => e)];
    const qemu = pods.hostPid(pod);
    expect(qemu).toBeGreaterThan(0);
    process.kill(qemu, 'SIGKILL');
    await until('the VM exit to be told', () => told.length > 0, 30_000);
    await Promise.all(waits);
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(told).toEqual([pod]);
    expect(pods.hostPid(pod)).toBe(0);
    expect(pods.podOf(appId)?.vmExited).toBe(true);
    await pods.releaseContainer(appId);
    await pods.releaseContainer(pod);
    expect((await sandboxPids()).has(pod)).toBe(false);
    expect(told).toEqual([pod]);
  });

  it('a server killed with SIGKILL: cleanupAfterCrash per task, the VM removed with the last', async () => {
    const pod = podId();
    const appId = podId();
    const sandboxReq = await sandboxTask(pod);
    const appReq = await appTask(pod, appId, ['sleep', '100000']);
    // The server: another process that makes the pod, then is killed.
    const server = nodeScript(
      tasksRoot,
      `const { Pods } = await import(${JSON.stringify(path.resolve('src/shim/pods.ts'))});
const { silentLog } = await import(${JSON.stringify(path.resolve('src/shim/log.ts'))});
const pods = new Pods({ stateDir: ${JSON.stringify(stateDir)}, namespace: ${JSON.stringify(NS)}, log: silentLog });
for (const request of ${JSON.stringify([sandboxReq, appReq])}) {
  const { container } = await pods.createContainer(request);
  container.stdout?.resume();
  container.stderr?.resume();
  await container.start();
}
console.log(JSON.stringify({ qemu: pods.hostPid(${JSON.stringify(pod)}) }));
setInterval(() => undefined, 1 << 30);
`,
    );
    let qemu = 0;
    try {
      await until('the server to make its pod', () => server.output().includes('\n') || server.child.exitCode !== null, 150_000);
      qemu = (JSON.parse(server.output().split('\n')[0]!) as { qemu: number }).qemu;
      expect(qemu).toBeGreaterThan(0);
    } finally {
      server.child.kill('SIGKILL');
      await server.result;
    }
    // The VM outlives its server.
    expect(processGone(qemu)).toBe(false);

    // containerd's `delete` of the app task: out of the VM and the record; the sandbox task's bundle is still there.
    let began = Date.now();
    await Pods.cleanupAfterCrash({ stateDir, namespace: NS, id: appId, bundle: appReq.bundle });
    const appMs = Date.now() - began;
    expect((await sandboxPids()).get(pod)).toBe(qemu);
    expect(processGone(qemu)).toBe(false);
    const attached = await Sandbox.attach(pod, { stateDir });
    try {
      expect((await attached.containers()).map((c) => c.id)).toEqual([pod]);
    } finally {
      attached.detach();
    }
    await fs.rm(appReq.bundle, { recursive: true }); // containerd removes a bundle after its `delete`

    began = Date.now();
    await Pods.cleanupAfterCrash({ stateDir, namespace: NS, id: pod, bundle: sandboxReq.bundle });
    console.log(`shim-pods: cleanupAfterCrash: ${appMs} ms for the app task (out of the VM), ${Date.now() - began} ms for the last (the VM removed); containerd 1.6 gives delete 5 s`);
    expect((await sandboxPids()).has(pod)).toBe(false);
    await until('QEMU to be gone', () => processGone(qemu), 20_000);
    expect(await fs.readdir(podRecordsDir(stateDir, NS)).then((n) => n.filter((x) => x.endsWith('.json')))).toEqual([]);
  });
});
