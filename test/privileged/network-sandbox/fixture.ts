/**
 * Fixtures of the sandbox networking tests: a unique prefix per test file, CNI bridge networks
 * with their own bridge, subnet and host-local state, peer namespaces attached to them (the far
 * end of the traffic, running busybox httpd), containers run to completion, and a cleanup that
 * removes everything with `ip` (not through the library under test) and then checks that
 * nothing is left: namespaces, links, host-local reservations, CNI cache entries, VMs.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'vitest';
import { CniConfig, CniRuntime, type CniResult } from '../../../src/network/cni/index.js';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { collect, expectNothingLeft, forceCleanup } from '../sandbox/fixture.js';

const exec = promisify(execFile);

export const CNI_DIR = '/usr/lib/cni';

/** Why these tests cannot run here, or undefined. */
export const skipReason: string | undefined = await (async () => {
  if (process.getuid?.() !== 0) return 'needs root (VMs, namespaces, CNI plugins)';
  if (!(await fs.stat('/usr/bin/qemu-system-x86_64').catch(() => undefined))) return 'needs qemu-system-x86_64 (scripts/setup-host.sh)';
  for (const plugin of ['bridge', 'host-local', 'bandwidth', 'macvlan']) {
    if (!(await fs.stat(path.join(CNI_DIR, plugin)).catch(() => undefined))) return `needs ${CNI_DIR}/${plugin} (containernetworking-plugins)`;
  }
  return undefined;
})();

/** Runs a command (argument array) and returns stdout. */
export async function sh(file: string, args: string[]): Promise<string> {
  return (await exec(file, args, { encoding: 'utf8' })).stdout;
}

/** `ip [-n NS] -j ARGS` parsed. */
export async function ipj<T = any>(args: string[], netns?: string): Promise<T> {
  const out = await sh('ip', [...(netns ? ['-n', netns] : []), '-j', ...args]);
  return JSON.parse(out.trim() || '[]') as T;
}

/** What a container printed and how it ended. */
export interface Run {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs a command in a new container of `sandbox` (builtin rootfs) to its end. */
export async function runIn(sandbox: Sandbox, args: string[], options: { hostname?: string } = {}): Promise<Run> {
  const c = await sandbox.createContainer({ process: { args }, ...(options.hostname ? { hostname: options.hostname } : {}) });
  const out = collect(c.stdout);
  const err = collect(c.stderr);
  await c.start();
  const status = await c.wait();
  const result = { exitCode: status.exitCode, stdout: (await out).toString(), stderr: (await err).toString() };
  await c.delete();
  return result;
}

/** A CNI bridge network of its own: bridge, subnet, host-local state. */
export interface BridgeNet {
  name: string;
  bridge: string;
  /** `10.X.Y` of the /24 subnet. */
  net: string;
  config: Record<string, any>;
}

/** A peer namespace attached to a network: the far end of the traffic. */
export interface Peer {
  netns: string;
  ip: string;
  result: CniResult;
}

/** One test file's world, removed by {@link World.cleanup}. */
export class World {
  readonly tag = randomBytes(2).toString('hex');
  readonly prefix = `vt${this.tag}`;
  dir = '';
  stateDir = '';
  readonly #bridges: string[] = [];
  readonly #peers: { netns: string; network: CniConfig; containerId: string }[] = [];
  readonly #children: ChildProcess[] = [];
  readonly #netns: string[] = [];
  #subnet = Math.floor(Math.random() * 40);

  async init(): Promise<this> {
    this.dir = await fs.mkdtemp(path.join(os.tmpdir(), `${this.prefix}-net-`));
    this.stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-st-'));
    return this;
  }

  get ipamDir(): string {
    return path.join(this.dir, 'ipam');
  }

  /** The CNI runtime of the peers (its own cache). */
  get peerCni(): CniRuntime {
    return new CniRuntime({ cacheDir: path.join(this.dir, 'peer-cache') });
  }

  /** A new bridge network (conflist object); `chain` plugins go after bridge. */
  bridgeNet(options: { mtu?: number; chain?: Record<string, unknown>[]; dns?: Record<string, unknown>; routes?: { dst: string; gw?: string }[] } = {}): BridgeNet {
    const n = this.#bridges.length;
    const bridge = `${this.prefix}b${n}`;
    this.#bridges.push(bridge);
    const net = `10.${150 + this.#subnet}.${(Number.parseInt(this.tag, 16) + n) % 256}`;
    this.#subnet = (this.#subnet + 1) % 40;
    const name = `${this.prefix}-net${n}`;
    const config = {
      cniVersion: '1.0.0',
      name,
      plugins: [
        {
          type: 'bridge',
          bridge,
          isGateway: false,
          ipMasq: false,
          ...(options.mtu ? { mtu: options.mtu } : {}),
          ...(options.dns ? { dns: options.dns } : {}),
          ipam: {
            type: 'host-local',
            ranges: [[{ subnet: `${net}.0/24`, gateway: `${net}.1` }]],
            ...(options.routes ? { routes: options.routes } : {}),
            dataDir: this.ipamDir,
          },
        },
        ...(options.chain ?? []),
      ],
    };
    return { name, bridge, net, config };
  }

  /** A namespace of its own (recorded for cleanup). */
  async netns(suffix: string): Promise<string> {
    const name = `${this.prefix}-${suffix}`;
    await sh('ip', ['netns', 'add', name]);
    this.#netns.push(name);
    await sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    return name;
  }

  /** A peer namespace on `net` (CNI ADD as a plain container would be), with lo up. */
  async peer(net: BridgeNet, suffix: string): Promise<Peer> {
    const netns = await this.netns(suffix);
    const network = CniConfig.fromObject(net.config);
    const containerId = `${this.prefix}-${suffix}`;
    this.#peers.push({ netns, network, containerId });
    const result = await this.peerCni.add(network, { containerId, netns: `/run/netns/${netns}`, ifName: 'eth0' });
    return { netns, ip: (result.ips[0]?.address ?? '').split('/')[0] as string, result };
  }

  /** `busybox httpd` serving `files` in `netns` on port 8080 (killed at cleanup). */
  async httpd(netns: string, files: Record<string, string | Buffer>): Promise<void> {
    const root = await fs.mkdtemp(path.join(this.dir, 'www-'));
    for (const [name, content] of Object.entries(files)) await fs.writeFile(path.join(root, name), content);
    const child = spawn('ip', ['netns', 'exec', netns, 'busybox', 'httpd', '-f', '-p', '8080', '-h', root], { stdio: 'ignore' });
    this.#children.push(child);
    // httpd listens at once; wait until the port answers.
    for (let i = 0; i < 100; i++) {
      const listening = await sh('ip', ['netns', 'exec', netns, 'busybox', 'netstat', '-ltn']).catch(() => '');
      if (listening.includes(':8080')) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`httpd did not start in ${netns}`);
  }

  /** Removes everything (ip, not the library), then checks that nothing is left. */
  async cleanup(): Promise<void> {
    for (const child of this.#children) child.kill('SIGKILL');
    // Sandboxes a failed test left: deleted through vmpod first (it knows their CNI attachments).
    for (const info of await Sandbox.list({ stateDir: this.stateDir }).catch(() => [])) {
      try {
        await (await Sandbox.attach(info.id, { stateDir: this.stateDir })).delete({ force: true });
      } catch {
        await sh('ip', ['netns', 'del', `vmpod-${info.id}`]).catch(() => undefined);
      }
    }
    await forceCleanup(this.stateDir);
    for (const p of this.#peers) await this.peerCni.del(p.network, { containerId: p.containerId, ifName: 'eth0', netns: `/run/netns/${p.netns}` }).catch(() => undefined);
    const namespaces = JSON.parse((await sh('ip', ['-j', 'netns', 'list'])) || '[]') as { name: string }[];
    for (const { name } of namespaces) if (name.startsWith(this.prefix)) await sh('ip', ['netns', 'del', name]).catch(() => undefined);
    for (const l of await ipj<{ ifname: string }[]>(['link', 'show'])) {
      if (l.ifname.startsWith(this.prefix)) await sh('ip', ['link', 'del', l.ifname]).catch(() => undefined);
    }
    await fs.rm(this.dir, { recursive: true, force: true });
  }

  /** Asserts that the sandboxes left nothing: VMs, state, namespaces, links, IP reservations. */
  async expectNothingLeft(sandboxIds: readonly string[]): Promise<void> {
    await expectNothingLeft(this.stateDir);
    const namespaces = (JSON.parse((await sh('ip', ['-j', 'netns', 'list'])) || '[]') as { name: string }[]).map((n) => n.name);
    for (const id of sandboxIds) expect(namespaces).not.toContain(`vmpod-${id}`);
    // host-local keeps one file per reserved address: only the peers' may remain.
    const reserved: string[] = [];
    for (const network of await fs.readdir(this.ipamDir).catch(() => [] as string[])) {
      for (const file of await fs.readdir(path.join(this.ipamDir, network))) {
        if (!/^\d+\.\d+\.\d+\.\d+$/u.test(file)) continue;
        const owner = (await fs.readFile(path.join(this.ipamDir, network, file), 'utf8')).split(/\s/u)[0] as string;
        if (sandboxIds.includes(owner)) reserved.push(`${network}/${file} (${owner})`);
      }
    }
    expect(reserved).toEqual([]);
  }
}
