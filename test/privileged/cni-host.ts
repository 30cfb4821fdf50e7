/**
 * Helpers of the privileged CNI tests: run `ip`/`tc` (argument arrays, no shell), make unique
 * names, and track every kernel object and directory a test creates so that it is removed
 * afterwards even when the test fails.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const PLUGIN_DIR = '/usr/lib/cni';

/** Runs a command and returns its stdout. */
export async function cmd(file: string, args: string[]): Promise<string> {
  return (await run(file, args, { encoding: 'utf8' })).stdout;
}

/** Runs a command and parses its JSON output (`ip -j`, `tc -j`). */
export async function json<T>(file: string, args: string[]): Promise<T> {
  const out = await cmd(file, args);
  return (out.trim() === '' ? [] : JSON.parse(out)) as T;
}

/** Whether the privileged CNI tests can run here, and if not, why. */
export async function cniSkipReason(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root';
  for (const plugin of ['bridge', 'host-local', 'tuning', 'bandwidth']) {
    const ok = await fs.access(path.join(PLUGIN_DIR, plugin), fs.constants.X_OK).then(() => true, () => false);
    if (!ok) return `needs ${PLUGIN_DIR}/${plugin} (Debian package containernetworking-plugins)`;
  }
  return undefined;
}

/** The ifb device the bandwidth plugin makes: "bwp" + sha512(network name + container id), 15 chars. */
export function bandwidthIfb(network: string, containerId: string): string {
  return `bwp${createHash('sha512').update(network + containerId).digest('hex')}`.slice(0, 15);
}

export interface IpAddr {
  ifname: string;
  address: string;
  master?: string;
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

/**
 * One test's world: a unique prefix, a netns, a bridge name, a subnet, temp dirs; `cleanup()`
 * removes all of it and any extra links registered with `track`.
 */
export class Scene {
  readonly prefix = `vt${randomBytes(2).toString('hex')}`;
  readonly netnsName = `${this.prefix}ns`;
  readonly netns = `/run/netns/${this.netnsName}`;
  readonly bridge = `${this.prefix}br`;
  readonly subnet = `10.${200 + Math.floor(Math.random() * 50)}.${Math.floor(Math.random() * 256)}`;
  dir = '';
  readonly #links = new Set<string>();
  readonly #namespaces = new Set<string>();

  async setup(): Promise<this> {
    this.dir = await fs.mkdtemp(path.join(os.tmpdir(), `vmpod-${this.prefix}-`));
    await this.addNetns(this.netnsName);
    this.track(this.bridge);
    return this;
  }

  async addNetns(name: string): Promise<string> {
    this.#namespaces.add(name);
    await cmd('ip', ['netns', 'add', name]);
    return `/run/netns/${name}`;
  }

  /** Registers a host link to delete at cleanup (the bridge, an ifb...). */
  track(link: string): void {
    this.#links.add(link);
  }

  /** A bridge + host-local plugin configuration on this scene's bridge and subnet. */
  bridgePlugin(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      type: 'bridge',
      bridge: this.bridge,
      // No gateway address on the host bridge, no masquerading: the host's routes,
      // forwarding and firewall stay untouched.
      isGateway: false,
      ipMasq: false,
      ipam: { type: 'host-local', subnet: `${this.subnet}.0/24`, dataDir: path.join(this.dir, 'ipam') },
      ...extra,
    };
  }

  /** Addresses in the scene's netns (`ip -n NS -j addr`). */
  async addrs(netns = this.netnsName): Promise<IpAddr[]> {
    return json<IpAddr[]>('ip', ['-n', netns, '-j', 'addr', 'show']);
  }

  /** Host links enslaved to the scene's bridge. */
  async bridgePorts(): Promise<string[]> {
    const links = await json<IpAddr[]>('ip', ['-j', 'link', 'show']);
    return links.filter((l) => l.master === this.bridge).map((l) => l.ifname);
  }

  /** Whether a host link exists. */
  async hostLinkExists(name: string): Promise<boolean> {
    return cmd('ip', ['link', 'show', 'dev', name]).then(() => true, () => false);
  }

  /** IPs host-local still holds reserved (files named after addresses in its data dir). */
  async reservedIps(network: string): Promise<string[]> {
    const names = await fs.readdir(path.join(this.dir, 'ipam', network)).catch(() => []);
    return names.filter((n) => /^[0-9.]+$/u.test(n) || n.includes(':'));
  }

  async cleanup(): Promise<void> {
    for (const ns of this.#namespaces) await cmd('ip', ['netns', 'del', ns]).catch(() => undefined);
    for (const link of this.#links) await cmd('ip', ['link', 'del', 'dev', link]).catch(() => undefined);
    if (this.dir !== '') await fs.rm(this.dir, { recursive: true, force: true });
  }

  /** What of this scene is still there (for an after-test check): netns and links by prefix. */
  async leftovers(): Promise<string[]> {
    const links = (await json<IpAddr[]>('ip', ['-j', 'link', 'show'])).map((l) => l.ifname);
    const nss = (await cmd('ip', ['netns', 'list'])).split('\n').map((l) => l.split(' ')[0] ?? '');
    return [...links, ...nss].filter((n) => n.startsWith(this.prefix) || [...this.#links].includes(n));
  }
}

/** Writes an executable shell-script plugin (a fake, for failure tests) into `dir`. */
export async function writeScriptPlugin(dir: string, name: string, body: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, name), `#!/bin/sh\ncat >/dev/null\n${body}\n`, { mode: 0o755 });
}
