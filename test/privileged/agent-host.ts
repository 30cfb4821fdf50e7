// Runs the real vmpod-agent on the host (as root) with --listen unix:..., in a temporary state
// dir, with a busybox rootfs, and removes everything it made afterwards, even on failure.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AgentClient } from '../../src/agent/client.js';
import type { OciSpec } from '../../src/agent/messages.js';
import { packageRoot } from '../../src/native.js';

export const AGENT_BINARY = process.env['VMPOD_AGENT'] ?? path.join(packageRoot, 'build', 'Release', 'vmpod-agent');
export const BUSYBOX = '/bin/busybox';
export const RUNC = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => fs.existsSync(p));
export const isRoot = process.getuid?.() === 0;
export const haveAgent = fs.existsSync(AGENT_BINARY);
export const haveBusybox = fs.existsSync(BUSYBOX);

/** A cgroup2 hierarchy the agent may use on this host, or null (the agent then runs without cgroups). */
export function hostCgroup2(): string | null {
  for (const dir of ['/sys/fs/cgroup/unified', '/sys/fs/cgroup']) {
    const out = spawnSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' });
    if (out.stdout.trim() === 'cgroup2fs') return dir;
  }
  return null;
}

/** Lays out a minimal busybox rootfs (the same shape as the guest's builtin one). */
export function makeBusyboxRootfs(dir: string): void {
  for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp', 'etc', 'root', 'run', 'home/nobody']) {
    fs.mkdirSync(path.join(dir, d), { recursive: true });
  }
  fs.copyFileSync(BUSYBOX, path.join(dir, 'bin', 'busybox'));
  fs.chmodSync(path.join(dir, 'bin', 'busybox'), 0o755);
  const applets = spawnSync(BUSYBOX, ['--list'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
  for (const applet of applets) {
    if (applet !== 'busybox') fs.symlinkSync('busybox', path.join(dir, 'bin', applet));
  }
  fs.writeFileSync(path.join(dir, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home/nobody:/bin/sh\n');
  fs.writeFileSync(path.join(dir, 'etc', 'group'), 'root:x:0:\nwheel:x:10:\nnogroup:x:65534:\n');
  fs.chmodSync(path.join(dir, 'tmp'), 0o1777);
}

/** A config.json made by `runc spec` (an OCI tool), with the process replaced. */
export function runcSpec(bundle: string, args: string[], terminal = false): OciSpec {
  if (!RUNC) throw new Error('runc is not installed');
  fs.rmSync(path.join(bundle, 'config.json'), { force: true });
  const out = spawnSync(RUNC, ['spec', '--bundle', bundle], { encoding: 'utf8' });
  if (out.status !== 0) throw new Error(`runc spec failed: ${out.stderr}`);
  const spec = JSON.parse(fs.readFileSync(path.join(bundle, 'config.json'), 'utf8')) as OciSpec;
  spec.process.args = args;
  spec.process.terminal = terminal;
  return spec;
}

/** A hand-written minimal spec (what vmpod's own Container class sends). */
export function minimalSpec(args: string[], extra: Partial<OciSpec['process']> = {}): OciSpec {
  return {
    ociVersion: '1.0.2',
    process: { args, env: ['PATH=/bin', 'HOME=/root'], cwd: '/', ...extra },
    root: { path: 'rootfs' },
    hostname: 'vmpod-test',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
      { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev'] },
    ],
    linux: { namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network' }] },
  };
}

export interface HostAgent {
  dir: string;
  bundle: string;
  rootfs: string;
  stateDir: string;
  socket: string;
  cgroupRoot: string | null;
  client: AgentClient;
  process: ChildProcess;
  log(): string;
  connect(): Promise<AgentClient>;
  /** Shuts the agent down and removes everything; idempotent. Returns the agent's exit code. */
  cleanup(): Promise<number | null>;
}

/**
 * Starts the agent on the host. `netns`: run it inside that network namespace (`ip netns exec`)
 * with --manage-network, so its network methods act there and never on the host's links.
 */
export async function startHostAgent(options: { cgroups?: boolean; netns?: string; sysRoot?: string } = {}): Promise<HostAgent> {
  const tag = `vt${randomBytes(2).toString('hex')}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${tag}-agent-`));
  const bundle = path.join(dir, 'bundle');
  const rootfs = path.join(bundle, 'rootfs');
  const stateDir = path.join(dir, 'state');
  const socket = path.join(dir, 'agent.sock');
  makeBusyboxRootfs(rootfs);
  const cg2 = options.cgroups === false ? null : hostCgroup2();
  const cgroupRoot = cg2 ? path.join(cg2, `${tag}-vmpod`) : null;
  let log = '';
  const args = ['--listen', `unix:${socket}`, '--state-dir', stateDir, '--builtin-rootfs', rootfs, '--cgroup', cgroupRoot ?? 'none', '--debug'];
  if (options.sysRoot !== undefined) args.push('--sys-root', options.sysRoot);
  const child = options.netns
    ? spawn('ip', ['netns', 'exec', options.netns, AGENT_BINARY, ...args, '--manage-network'], { stdio: ['ignore', 'ignore', 'pipe'] })
    : spawn(AGENT_BINARY, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (log += s));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const clients: AgentClient[] = [];
  let cleaned: Promise<number | null> | null = null;
  const cleanup = (): Promise<number | null> => {
    cleaned ??= (async () => {
      let pids: number[] = [];
      try {
        const probe = await AgentClient.connectUnix(socket, { timeoutMs: 2000 });
        pids = (await probe.listContainers({ timeoutMs: 2000 })).flatMap((c) => [c.pid, ...c.execs.map((e) => e.pid)]);
        await probe.shutdown({ timeoutMs: 2000 });
        probe.close();
      } catch {
        // The agent may be gone already; the steps below still clean up.
      }
      for (const c of clients) c.close();
      const code = await Promise.race([exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 8000))]);
      if (code === 'timeout') {
        // The agent did not shut down: kill it and what it ran (they are host processes here).
        child.kill('SIGKILL');
        for (const pid of pids) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
      }
      if (cgroupRoot && fs.existsSync(cgroupRoot)) {
        for (const sub of fs.readdirSync(cgroupRoot, { withFileTypes: true })) {
          if (!sub.isDirectory()) continue;
          const procs = fs.readFileSync(path.join(cgroupRoot, sub.name, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
          for (const pid of procs) process.kill(Number(pid), 'SIGKILL');
          for (let i = 0; i < 50; i++) {
            try {
              fs.rmdirSync(path.join(cgroupRoot, sub.name));
              break;
            } catch {
              await new Promise((r) => setTimeout(r, 20));
            }
          }
        }
        fs.rmdirSync(cgroupRoot);
      }
      fs.rmSync(dir, { recursive: true, force: true });
      return code === 'timeout' ? null : code;
    })();
    return cleaned;
  };
  try {
    for (let i = 0; i < 250 && !fs.existsSync(socket); i++) {
      if (child.exitCode !== null) throw new Error(`vmpod-agent exited: ${log}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const connect = async () => {
      // The socket file exists from the agent's bind(); until its listen() a connect is refused.
      for (let attempt = 0; ; attempt++) {
        try {
          const c = await AgentClient.connectUnix(socket, { timeoutMs: 5000, clientName: 'agent-host-test' });
          clients.push(c);
          return c;
        } catch (error) {
          const refused = (error as { cause?: { code?: string } }).cause?.code === 'ECONNREFUSED';
          if (!refused || attempt >= 100 || child.exitCode !== null) throw error;
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    };
    const client = await connect();
    return { dir, bundle, rootfs, stateDir, socket, cgroupRoot, client, process: child, log: () => log, connect, cleanup };
  } catch (error) {
    await cleanup();
    throw error;
  }
}

/** Reads a Readable to its end. */
export async function collect(stream: NodeJS.ReadableStream | null): Promise<Buffer> {
  if (!stream) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

export function uniqueId(prefix = 'c'): string {
  return `${prefix}-${randomBytes(3).toString('hex')}`;
}
