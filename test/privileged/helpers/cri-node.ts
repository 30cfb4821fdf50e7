/**
 * A Kubernetes node as the CRI tests see it, without kubelet: a containerd of its own with the
 * CRI plugin on (helpers/containerd.ts), a CNI bridge network of its own (a unique bridge
 * vmpodcri<hex>, a /24 in 10.190-199.x, no gateway, no masquerade: no host sysctl or iptables rule
 * changes), the static pause image as the sandbox image and the busybox test image, both imported
 * into containerd's k8s.io namespace, the runtime handlers `runc` (io.containerd.runc.v2) and
 * `vmpod` (io.containerd.vmpod.v2: containerd finds `containerd-shim-vmpod-v2` on its PATH, a
 * symlink to the repo's dist/shim/main.js), the library's state directory of the shim's VMs
 * (VMPOD_STATE_DIR) under the node's folder, and a CRI client (helpers/cri.ts).
 *
 * `leftovers()` lists what a removed pod may have left: the pods' network namespaces (read from
 * CRI's verbose status when each pod ran), links on the bridge, mounts under the node's folders,
 * shim processes, vmpod sandboxes and QEMU processes. `close()` removes everything whatever
 * happened: pods through CRI, sandboxes through the library, containerd and its shims, the
 * namespaces, the bridge and the folders.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { packageRoot } from '../../../src/native.js';
import { serverPaths } from '../../../src/shim/main.js';
import { containerdSkipReason, startContainerd, type Containerd } from './containerd.js';
import { criClient, type ContainerConfig, type CriClient, type PodSandboxConfig } from './cri.js';
import { busyboxImage, imageSkipReason } from './oci-images.js';
import { PAUSE_BASE_NAME, PAUSE_IMAGE, pauseImage, pauseImageSkipReason } from './pause-image.js';
import { processesMentioning } from './podman.js';

const exec = promisify(execFile);

export const CNI_BIN_DIR = '/usr/lib/cni';
export const SHIM_MAIN = process.env['VMPOD_SHIM'] ?? path.join(packageRoot, 'dist', 'shim', 'main.js');
export const BUSYBOX_IMAGE = 'localhost/vmpod-test/busybox:busybox';
export { PAUSE_IMAGE };
/** containerd's namespace for CRI. */
export const K8S_NAMESPACE = 'k8s.io';

/** Why a CRI node cannot run here, or undefined. */
export async function criNodeSkipReason(): Promise<string | undefined> {
  const base = (await containerdSkipReason()) ?? (await imageSkipReason()) ?? (await pauseImageSkipReason());
  if (base !== undefined) return base;
  for (const plugin of ['bridge', 'host-local', 'loopback']) {
    const ok = await fs.access(path.join(CNI_BIN_DIR, plugin), fs.constants.X_OK).then(() => true, () => false);
    if (!ok) return `needs ${CNI_BIN_DIR}/${plugin} (Debian's containernetworking-plugins: scripts/setup-host.sh installs it)`;
  }
  return undefined;
}

/** Why the vmpod runtime handler cannot be used here, or undefined. */
export async function vmpodShimSkipReason(): Promise<string | undefined> {
  if (!(await fs.stat('/usr/bin/qemu-system-x86_64').catch(() => undefined))) return 'needs qemu-system-x86_64 (scripts/setup-host.sh installs it)';
  const ok = await fs.access(SHIM_MAIN, fs.constants.X_OK).then(() => true, () => false);
  return ok ? undefined : `no executable shim at ${SHIM_MAIN} (npm run build:ts)`;
}

export interface RunningPod {
  id: string;
  config: PodSandboxConfig;
  /** The pod's network namespace (from CRI's verbose status), if it has one. */
  netns: string | undefined;
}

export interface CriNode {
  readonly ctd: Containerd;
  readonly cri: CriClient;
  /** The node's own folder (CNI conf, shim PATH dir, vmpod state, pod logs). */
  readonly dir: string;
  /** VMPOD_STATE_DIR of the shims containerd starts. */
  readonly stateDir: string;
  readonly bridge: string;
  /** `10.X.Y`: the pods get `10.X.Y.N/24`. */
  readonly subnet: string;
  /** A pod's config: metadata, its own log directory (made here), annotations. */
  podConfig(name: string, extra?: Partial<PodSandboxConfig>): Promise<PodSandboxConfig>;
  /** RunPodSandbox; records the pod's netns for leftovers(). */
  runPod(handler: string, config: PodSandboxConfig): Promise<RunningPod>;
  /** CreateContainer of the busybox image with `command`, its log at LOGDIR/NAME.log. */
  createContainer(pod: RunningPod, name: string, command: string[], extra?: Partial<ContainerConfig>): Promise<string>;
  /** Polls ContainerStatus until the state is `state` (or the time is up) and returns the status. */
  untilState(id: string, state: 'CONTAINER_RUNNING' | 'CONTAINER_EXITED', timeoutMs?: number): Promise<Awaited<ReturnType<CriClient['containerStatus']>>>;
  /** StopPodSandbox + RemovePodSandbox. */
  removePod(id: string): Promise<void>;
  /** Pids of the vmpod shim's server processes (node processes naming this containerd). */
  vmpodShimPids(): Promise<number[]>;
  /** The vmpod shim server's log for containerd's CRI namespace (its tail), for failure messages. */
  vmpodShimLog(): Promise<string>;
  /** What is left of the pods (nothing, after every pod was removed). */
  leftovers(): Promise<string[]>;
  /**
   * leftovers(), polled until it is empty or `timeoutMs` passed: containerd cleans up after a
   * shim asynchronously (it runs the shim's `delete` when a connection closes, after the CRI call
   * returned), so processes and records get a few seconds to go.
   */
  settledLeftovers(timeoutMs?: number): Promise<string[]>;
  close(): Promise<void>;
}

async function readExe(pid: number): Promise<string> {
  return fs.readlink(`/proc/${pid}/exe`).catch(() => '');
}

/** Starts a CRI node (see the module's comment). */
export async function startCriNode(): Promise<CriNode> {
  const tag = randomBytes(2).toString('hex');
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `vmpod-cri-${tag}-`));
  const bridge = `vmpodcri${tag}`;
  const subnet = `10.${190 + (Number.parseInt(tag, 16) % 10)}.${Number.parseInt(tag.slice(2), 16) % 256}`;
  const stateDir = path.join(dir, 'vmpod-state');
  const confDir = path.join(dir, 'cni-conf');
  const binDir = path.join(dir, 'shim-bin');
  const logRoot = path.join(dir, 'logs');
  // The shim servers' folders (their logs) in ours, not in /run/vmpod-shim.
  const shimDir = path.join(dir, 'shim-servers');
  for (const sub of [stateDir, confDir, binDir, logRoot, shimDir]) await fs.mkdir(sub, { recursive: true, mode: 0o700 });
  await fs.symlink(SHIM_MAIN, path.join(binDir, 'containerd-shim-vmpod-v2'));
  await fs.writeFile(
    path.join(confDir, '10-vmpod-cri.conflist'),
    JSON.stringify({
      cniVersion: '1.0.0',
      name: `vmpod-cri-${tag}`,
      plugins: [
        {
          type: 'bridge',
          bridge,
          isGateway: false,
          ipMasq: false,
          ipam: { type: 'host-local', ranges: [[{ subnet: `${subnet}.0/24`, gateway: `${subnet}.1` }]], dataDir: path.join(dir, 'ipam') },
        },
      ],
    }),
  );
  const netnsOfPods = new Set<string>();
  let ctd: Containerd | undefined;
  let cri: CriClient | undefined;

  async function close(): Promise<void> {
    const errors: unknown[] = [];
    const attempt = async (what: () => Promise<unknown>) => {
      try {
        await what();
      } catch (err) {
        errors.push(err);
      }
    };
    if (cri !== undefined) {
      const client = cri;
      await attempt(async () => {
        for (const pod of await client.listPodSandbox()) {
          await client.stopPodSandbox(pod.id).catch(() => undefined);
          await client.removePodSandbox(pod.id).catch(() => undefined);
        }
      });
      client.close();
    }
    // VMs a failed pod left: removed through the library (it stops QEMU and what the VM used).
    await attempt(async () => {
      for (const info of await Sandbox.list({ stateDir })) await Sandbox.remove(info.id, { stateDir, force: true });
    });
    if (ctd !== undefined) await attempt(() => ctd!.stop());
    for (const pid of await processesMentioning(dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    // The vmpod shim server's socket (in /run/containerd/s), if a killed server left it.
    if (ctd !== undefined) await fs.rm(serverPaths(ctd.address, K8S_NAMESPACE, { VMPOD_SHIM_DIR: shimDir }).socketPath, { force: true });
    // containerd keeps the pods' namespaces under its state (unmounted with its folder); any
    // under /run/netns (another configuration) are deleted here.
    for (const netns of netnsOfPods) {
      if (/^\/(var\/)?run\/netns\//u.test(netns) && (await fs.stat(netns).catch(() => undefined))) await attempt(() => exec('ip', ['netns', 'delete', path.basename(netns)]));
    }
    await exec('ip', ['link', 'del', bridge]).catch(() => undefined);
    const mounts = (await fs.readFile('/proc/self/mountinfo', 'utf8'))
      .split('\n')
      .map((line) => line.split(' ')[4] ?? '')
      .filter((point) => point === dir || point.startsWith(`${dir}/`))
      .reverse();
    for (const point of mounts) await exec('umount', ['-l', point]).catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
    if (errors.length > 0) throw new AggregateError(errors, `closing the CRI node: ${errors.map(String).join('; ')}`);
  }

  try {
    const [pause, busybox] = await Promise.all([pauseImage(), busyboxImage()]);
    const env: Record<string, string> = { VMPOD_STATE_DIR: stateDir, VMPOD_SHIM_DIR: shimDir };
    for (const name of ['VMPOD_GUEST_CACHE', 'VMPOD_IMAGE_DIR']) if (process.env[name] !== undefined) env[name] = process.env[name]!;
    ctd = await startContainerd({
      cri: { sandboxImage: PAUSE_IMAGE, cniConfDir: confDir, cniBinDir: CNI_BIN_DIR, runtimes: { runc: 'io.containerd.runc.v2', vmpod: 'io.containerd.vmpod.v2' } },
      // The shim's link, and node for its #! line.
      pathPrepend: [binDir, path.dirname(process.execPath)],
      env,
    });
    for (const [base, archive] of [[PAUSE_BASE_NAME, pause.ociArchive], ['localhost/vmpod-test/busybox', busybox.ociArchive]] as const) {
      const imported = await ctd.ctr(['images', 'import', '--base-name', base, archive], { namespace: K8S_NAMESPACE });
      if (imported.code !== 0) throw new Error(`ctr images import ${archive}: ${imported.stderr}`);
    }
    cri = criClient(ctd.address);
    // The CRI plugin learns of imported images from containerd's events: wait until it lists both.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const tags = (await cri.listImages()).flatMap((i) => i.repoTags);
      if (tags.includes(PAUSE_IMAGE) && tags.includes(BUSYBOX_IMAGE)) break;
      if (Date.now() > deadline) throw new Error(`CRI lists the images ${JSON.stringify(tags)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (err) {
    await close().catch(() => undefined);
    throw err;
  }
  const node = ctd;
  const client = cri;

  async function podConfig(name: string, extra: Partial<PodSandboxConfig> = {}): Promise<PodSandboxConfig> {
    const uid = randomBytes(8).toString('hex');
    const logDirectory = path.join(logRoot, `${name}-${uid}`);
    await fs.mkdir(logDirectory, { recursive: true });
    return { metadata: { name, uid, namespace: 'vmpod-test', attempt: 0 }, hostname: name, logDirectory, ...extra };
  }

  async function runPod(handler: string, config: PodSandboxConfig): Promise<RunningPod> {
    const id = await client.runPodSandbox(config, handler);
    let netns: string | undefined;
    try {
      const { info } = await client.podSandboxStatusVerbose(id);
      const doc = JSON.parse(info['info'] ?? '{}') as { runtimeSpec?: { linux?: { namespaces?: { type: string; path?: string }[] } } };
      netns = doc.runtimeSpec?.linux?.namespaces?.find((n) => n.type === 'network')?.path;
    } finally {
      if (netns) netnsOfPods.add(netns);
    }
    return { id, config, netns };
  }

  async function createContainer(pod: RunningPod, name: string, command: string[], extra: Partial<ContainerConfig> = {}): Promise<string> {
    return client.createContainer(pod.id, { metadata: { name }, image: { image: BUSYBOX_IMAGE }, command, logPath: `${name}.log`, ...extra }, pod.config);
  }

  async function untilState(id: string, state: 'CONTAINER_RUNNING' | 'CONTAINER_EXITED', timeoutMs = 240_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = await client.containerStatus(id);
      if (status.state === state || Date.now() > deadline) return status;
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async function removePod(id: string): Promise<void> {
    await client.stopPodSandbox(id);
    await client.removePodSandbox(id);
  }

  async function vmpodShimPids(): Promise<number[]> {
    const pids: number[] = [];
    for (const pid of await processesMentioning(node.dir)) {
      if (pid === node.pid()) continue;
      const exe = await readExe(pid);
      const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (!exe.endsWith('containerd-shim-runc-v2') && /node$/u.test(exe) && /shim/u.test(cmdline)) pids.push(pid);
    }
    return pids;
  }

  const shimServer = () => serverPaths(node.address, K8S_NAMESPACE, { VMPOD_SHIM_DIR: shimDir });

  async function vmpodShimLog(): Promise<string> {
    return (await fs.readFile(shimServer().logPath, 'utf8').catch((err: unknown) => String(err))).slice(-6000);
  }

  async function leftovers(): Promise<string[]> {
    const left: string[] = [];
    const socket = shimServer().socketPath;
    if (await fs.lstat(socket).catch(() => undefined)) left.push(`the vmpod shim server's socket ${socket}`);
    for (const netns of netnsOfPods) if (await fs.stat(netns).catch(() => undefined)) left.push(`netns ${netns}`);
    const onBridge = (await exec('ip', ['-o', 'link', 'show', 'master', bridge]).catch(() => ({ stdout: '' }))).stdout.trim();
    if (onBridge !== '') left.push(`links on ${bridge}: ${onBridge}`);
    for (const line of (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
      const point = line.split(' ')[4] ?? '';
      if (point === dir || point.startsWith(`${dir}/`) || point === node.dir || point.startsWith(`${node.dir}/`)) left.push(`mount ${point}`);
    }
    for (const pid of await processesMentioning(node.dir)) {
      if (pid === node.pid()) continue;
      const cmdline = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ');
      left.push(`process ${pid} (${await readExe(pid)}): ${cmdline.slice(0, 200)}`);
    }
    for (const pid of await processesMentioning(stateDir)) {
      const cmdline = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ');
      left.push(`process ${pid} (${await readExe(pid)}): ${cmdline.slice(0, 200)}`);
    }
    for (const info of await Sandbox.list({ stateDir })) left.push(`vmpod sandbox ${info.id} (${info.state})`);
    const tasks = await node.ctr(['tasks', 'ls', '--quiet'], { namespace: K8S_NAMESPACE });
    if (tasks.stdout.trim() !== '') left.push(`containerd tasks: ${tasks.stdout.trim()}`);
    const containers = await node.ctr(['containers', 'ls', '--quiet'], { namespace: K8S_NAMESPACE });
    if (containers.stdout.trim() !== '') left.push(`containerd containers: ${containers.stdout.trim()}`);
    return [...new Set(left)];
  }

  async function settledLeftovers(timeoutMs = 30_000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = await leftovers();
      if (left.length === 0 || Date.now() > deadline) return left;
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  return { ctd: node, cri: client, dir, stateDir, bridge, subnet, podConfig, runPod, createContainer, untilState, removePod, vmpodShimPids, vmpodShimLog, leftovers, settledLeftovers, close };
}

/**
 * A CRI node for the tests of one `describe`: started before them; containerd's and the shim's
 * logs printed when a case fails; after them, nothing left (checked) and everything removed.
 * Returns a getter for the node.
 */
export function useCriNode(): () => CriNode {
  let node: CriNode | undefined;
  beforeAll(async () => {
    node = await startCriNode();
  });
  afterEach(async (context) => {
    if (node === undefined || context.task.result?.state !== 'fail') return;
    process.stderr.write(`--- containerd's log (tail)\n${node.ctd.log().slice(-6000)}\n--- the vmpod shim server's log (tail)\n${await node.vmpodShimLog()}\n`);
  });
  afterAll(async () => {
    if (node === undefined) return;
    const dirs = [node.dir, node.ctd.dir];
    try {
      expect(await node.settledLeftovers()).toEqual([]);
    } finally {
      await node.close();
    }
    for (const dir of dirs) expect(await fs.stat(dir).catch(() => undefined)).toBeUndefined();
  });
  return () => {
    if (node === undefined) throw new Error('the CRI node is not started (useCriNode() outside a describe, or its start failed)');
    return node;
  };
}

/**
 * A containerd of its own (CRI off) whose PATH finds the vmpod shim: folder DIR/state is the
 * library's state directory (VMPOD_STATE_DIR), DIR/shim the shim servers' (VMPOD_SHIM_DIR); the
 * guest and image caches of this process are passed on. The busybox test image is imported.
 */
export async function startShimContainerd(dir: string): Promise<{ ctd: Containerd; stateDir: string; shimDir: string }> {
  const stateDir = path.join(dir, 'state');
  const shimDir = path.join(dir, 'shim');
  const binDir = path.join(dir, 'bin');
  await fs.mkdir(stateDir, { mode: 0o700 });
  await fs.mkdir(binDir, { mode: 0o700 });
  await fs.symlink(SHIM_MAIN, path.join(binDir, 'containerd-shim-vmpod-v2'));
  const env: Record<string, string> = { VMPOD_STATE_DIR: stateDir, VMPOD_SHIM_DIR: shimDir };
  for (const name of ['VMPOD_GUEST_CACHE', 'VMPOD_IMAGE_DIR']) if (process.env[name] !== undefined) env[name] = process.env[name]!;
  const image = await busyboxImage();
  // The shim's link, and node for its #! line.
  const ctd = await startContainerd({ pathPrepend: [binDir, path.dirname(process.execPath)], env });
  try {
    const imported = await ctd.ctr(['images', 'import', '--base-name', 'localhost/vmpod-test/busybox', image.ociArchive]);
    expect(imported.code, imported.stderr).toBe(0);
  } catch (error) {
    await ctd.stop();
    throw error;
  }
  return { ctd, stateDir, shimDir };
}
