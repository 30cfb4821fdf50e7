/**
 * One boot of a sandbox's VM, as the host sees it: its private folder (`<state root>/boots/<id>`:
 * QMP, agent and stream sockets, so no boot ever uses another's), the guest assets it boots, the
 * VM configuration (the agent's ports plus what each resource contributes), the capped console
 * log, the connection to the agent, and its end from the record alone (the VM and its log writer
 * killed through pidfds after their identity was checked; no control channel needed).
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { AgentClient } from '../agent/client.js';
import { InvalidArgumentError, VmpodError } from '../errors.js';
import { DEFAULT_AGENT_BINARY, buildGuestAssets, rebuildOptions } from '../guest/build.js';
import { resolveGuestAssets, type GuestAssets } from '../guest/assets.js';
import { sha256FileStamped } from '../guest/hash.js';
import type { Hypervisor, MemoryConfig, VmConfig, VmDevice } from '../hypervisor/hypervisor.js';
import { isAlive, terminate, waitForProcessExit } from '../host/process.js';
import { FileLock } from '../state/lock.js';
import type { ResolvedSandboxConfig } from './config.js';
import type { BootRecord, SandboxRecord } from './record.js';
import type { VmContribution } from './resources/resource.js';

/** Name prefix of the agent's virtio-serial ports (the agent looks for it). */
export const AGENT_PORT_PREFIX = 'vmpod.agent.';

/** The VM or its agent failed to come up, or went away. */
export class SandboxError extends VmpodError {
  constructor(readonly sandboxId: string, message: string, options: { cause?: unknown } = {}) {
    super('ERR_VMPOD_SANDBOX', `sandbox "${sandboxId}": ${message}`, options);
  }
}

/** The folder of boot `id` under state root `root`. */
export function bootDirOf(root: string, id: string): string {
  return path.join(root, 'boots', id);
}

/** The files of a sandbox's own folder. */
export function sandboxFiles(dir: string) {
  return { consoleLog: path.join(dir, 'console.log') };
}

/** The agent's sockets in a boot's folder, and their lock files (one process per port). */
export function agentPorts(bootDir: string, count: number): { socket: string; lock: string }[] {
  return Array.from({ length: count }, (_, i) => ({ socket: path.join(bootDir, `agent-${i}.sock`), lock: path.join(bootDir, `agent-${i}.lock`) }));
}

/** Makes a boot's folder (0700) with a note naming its sandbox folder, for cleanup without a record. */
export async function makeBootDir(boot: { dir: string }, sandboxDir: string): Promise<void> {
  await fs.mkdir(path.dirname(boot.dir), { recursive: true, mode: 0o700 });
  await fs.mkdir(boot.dir, { recursive: true, mode: 0o700 });
  await fs.writeFile(path.join(boot.dir, 'sandbox'), `${sandboxDir}\n`, { mode: 0o600 });
}

/** The boot folders whose note names `sandboxDir` (for a delete without a readable record). */
export async function bootDirsOf(root: string, sandboxDir: string): Promise<string[]> {
  const base = path.join(root, 'boots');
  const found: string[] = [];
  for (const name of await fs.readdir(base).catch(() => [])) {
    if (!/^[0-9a-f]{12}$/u.test(name)) continue;
    const note = await fs.readFile(path.join(base, name, 'sandbox'), 'utf8').catch(() => '');
    if (note.trim() === sandboxDir) found.push(path.join(base, name));
  }
  return found;
}

/**
 * The guest assets to boot: the user's kernel/initramfs, or the built ones (built when missing,
 * or again when this package's agent changed: the assets carry it).
 */
export async function guestAssetsFor(
  sandboxId: string,
  config: ResolvedSandboxConfig,
  onProgress: (message: string) => void,
  signal: AbortSignal | undefined,
): Promise<GuestAssets> {
  const overrides = {
    cacheDir: config.guest.cacheDir,
    verify: 'size' as const,
    ...(config.guest.kernel === undefined ? {} : { kernel: config.guest.kernel }),
    ...(config.guest.initramfs === undefined ? {} : { initramfs: config.guest.initramfs }),
  };
  if (config.guest.kernel !== undefined && config.guest.initramfs !== undefined) return resolveGuestAssets(overrides);
  let assets: GuestAssets | undefined;
  let previous: GuestAssets['manifest'];
  try {
    assets = await resolveGuestAssets(overrides);
    previous = assets.manifest;
    const agentSha = await sha256FileStamped(DEFAULT_AGENT_BINARY, path.join(config.guest.cacheDir, 'agent.stamp')).catch(() => undefined);
    if (agentSha !== undefined && assets.manifest && agentSha !== assets.manifest.inputs.agentSha256) assets = undefined;
  } catch (error) {
    if (config.guest.build === 'never') throw error;
  }
  if (assets) return assets;
  if (config.guest.build === 'never') throw new SandboxError(sandboxId, 'the guest assets are older than the agent; run "vmpod guest build"');
  onProgress('building the guest assets (kernel, initramfs, agent): this happens once');
  await buildGuestAssets({
    ...(previous ? rebuildOptions(previous) : {}), // the same kernel, modules and features as before
    cacheDir: config.guest.cacheDir,
    onProgress: (p) => onProgress(p.message),
    ...(signal ? { signal } : {}),
  });
  return resolveGuestAssets(overrides);
}

/** The VM configuration of a boot: the agent's ports plus what each resource contributed. */
export function vmConfigFor(
  record: SandboxRecord,
  boot: { dir: string },
  assets: GuestAssets,
  contributions: readonly VmContribution[],
  sandboxDir: string,
  output: { fd: number } | undefined,
): VmConfig {
  const config = record.config;
  const devices: VmDevice[] = [
    {
      kind: 'virtio-serial',
      id: 'agent',
      ports: agentPorts(boot.dir, config.agentPorts).map((port, i) => ({ name: `${AGENT_PORT_PREFIX}${i}`, socket: port.socket })),
    },
  ];
  devices.push(...config.extraDevices);
  const kernelArgs = [...config.guest.kernelArgs];
  if (config.debug) kernelArgs.push('vmpod.debug=1');
  let backend: MemoryConfig['backend'];
  for (const c of contributions) {
    devices.push(...(c.devices ?? []));
    kernelArgs.push(...(c.kernelArgs ?? []));
    if (c.memoryBackend) {
      if (backend) throw new InvalidArgumentError('memory', 'two resources ask for a memory backend');
      backend = c.memoryBackend;
    }
  }
  const shared = contributions.some((c) => c.sharedMemory);
  const memory: MemoryConfig = {
    sizeMiB: config.memoryMiB,
    backend: backend ?? (shared ? { kind: 'memfd' } : { kind: 'anonymous' }),
    ...(shared || backend ? { shared: true } : {}),
    ...(contributions.some((c) => c.prealloc) ? { prealloc: true } : {}),
    merge: config.ksm === true,
  };
  return {
    id: config.id,
    machine: config.machine,
    cpus: config.cpus,
    memory,
    kernel: assets.kernel,
    initramfs: assets.initramfs,
    kernelArgs,
    devices,
    consoleLog: sandboxFiles(sandboxDir).consoleLog,
    ...(output ? { output } : {}),
    ...(config.runAs ? { runAs: config.runAs } : {}),
    runDir: boot.dir,
  };
}

/** How long a boot's log writer may take to copy what its VM left in the pipe. */
const LOGGER_DRAIN_MS = 1_000;

/**
 * Ends a boot's processes from its record: SIGKILL to the VM (through a pidfd, after checking it
 * is still the recorded process; its control channel is not needed), then to its log writer
 * unless it ended by itself within {@link LOGGER_DRAIN_MS}, each waited for; then to any daemon of the boot that was spawned but never recorded (a crash in
 * between). Throws when a process outlived SIGKILL.
 */
export async function killBoot(boot: BootRecord, sandboxDir: string, hypervisor: Hypervisor): Promise<void> {
  if (boot.vm) await hypervisor.kill(boot.vm);
  // With the VM gone the writer reads what is left in its pipe and exits: the last lines are kept.
  if (boot.logger && isAlive(boot.logger)) await waitForProcessExit(boot.logger, LOGGER_DRAIN_MS);
  if (boot.logger && isAlive(boot.logger) && !(await terminate(boot.logger, 0))) {
    throw new VmpodError('ERR_VMPOD_SANDBOX', `the console log writer (pid ${boot.logger.pid}) did not die from SIGKILL`);
  }
  await killStrays([boot.dir, sandboxDir]);
}

/** An agent connection of this process, with the port lock it holds. */
export interface AgentLink {
  readonly agent: AgentClient;
  readonly lock: FileLock;
}

/**
 * Connects to the first agent port of the boot that no other process holds (each port serves one
 * process: its lock file says who). The handshake has a deadline (`timeoutMs`), and every call
 * on the connection has the client's default deadline.
 */
export async function connectAgent(sandboxId: string, bootDir: string, count: number, options: { signal?: AbortSignal | undefined; timeoutMs: number }): Promise<AgentLink> {
  for (const port of agentPorts(bootDir, count)) {
    let lock: FileLock;
    try {
      lock = await FileLock.acquire(port.lock, { timeoutMs: 0 });
    } catch {
      continue;
    }
    try {
      const agent = await AgentClient.connectUnix(port.socket, {
        timeoutMs: options.timeoutMs,
        clientName: `vmpod-node/${process.pid}`,
        ...(options.signal ? { signal: options.signal } : {}),
      });
      agent.on('close', () => void lock.release());
      return { agent, lock };
    } catch (error) {
      await lock.release();
      throw error;
    }
  }
  throw new SandboxError(sandboxId, `all ${count} agent ports are in use by other processes`);
}

/** The daemons a sandbox runs, by the basename of their argv[0] (vmpod-agent: a VM run on the host, in tests). */
const DAEMONS = new Set(['qemu-system-x86_64', 'virtiofsd', 'vmpod-logger', 'vmpod-agent']);

/**
 * Kills the sandbox daemons (QEMU, virtiofsd, log writers) whose command line names one of
 * `paths` (the sandbox's folder, a boot's folder): what a process that died between spawning one
 * and recording it leaves running. Returns how many it killed.
 */
export async function killStrays(paths: readonly string[]): Promise<number> {
  let killed = 0;
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/u.test(name) || Number(name) === process.pid) continue;
    const argv = (await fs.readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (!DAEMONS.has(path.basename(argv[0] ?? ''))) continue;
    if (!argv.some((arg) => paths.some((p) => arg.includes(`${p}/`)))) continue;
    const stat = await fs.readFile(`/proc/${name}/stat`, 'latin1').catch(() => '');
    const startTime = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    if (Number.isFinite(startTime) && (await terminate({ pid: Number(name), startTime }, 0))) killed++;
  }
  return killed;
}
