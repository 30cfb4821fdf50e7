/**
 * Helpers for privileged networking tests: unique names, `ip`/`tc` JSON output to cross-check the
 * library, cleanup that does not depend on the library under test, and raw frames.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const exec = promisify(execFile);

/** Why privileged network tests are skipped, or undefined when they can run. */
export const skipReason: string | undefined = process.getuid?.() === 0 ? undefined : 'needs root (real namespaces and links)';

/** A fresh prefix for kernel object names: `vt` + 4 hex chars (names stay within 15 bytes). */
export function uniquePrefix(): string {
  return `vt${randomBytes(2).toString('hex')}`;
}

/** Runs a command (argument array, no shell) and returns stdout. */
export async function run(cmd: string, args: string[]): Promise<string> {
  return (await exec(cmd, args)).stdout;
}

/** `ip [-n NS] -j -d ARGS...` parsed. */
export async function ipJson<T = any>(args: string[], netns?: string): Promise<T> {
  const out = await run('ip', [...(netns ? ['-n', netns] : []), '-j', '-d', ...args]);
  return JSON.parse(out || '[]') as T;
}

/** `tc [-n NS] -j ARGS...` parsed. */
export async function tcJson<T = any>(args: string[], netns?: string): Promise<T> {
  const out = await run('tc', [...(netns ? ['-n', netns] : []), '-j', ...args]);
  return JSON.parse(out || '[]') as T;
}

/** Names of the links of a namespace, per `ip link`. */
export async function ipLinkNames(netns?: string): Promise<string[]> {
  return (await ipJson<Array<{ ifname: string }>>(['link', 'show'], netns)).map((l) => l.ifname);
}

/** Names in /run/netns, per `ip netns list`. */
export async function ipNetnsNames(): Promise<string[]> {
  const out = await run('ip', ['-j', 'netns', 'list']);
  return (JSON.parse(out || '[]') as Array<{ name: string }>).map((n) => n.name);
}

/**
 * Records what a test creates and removes it with `ip` alone (so cleanup works even when the
 * library is broken). Host links first (a veth takes its peer), then namespaces.
 */
export class KernelObjects {
  readonly #links = new Set<string>();
  readonly #netns = new Set<string>();

  constructor(readonly prefix: string) {}

  /** A name `PREFIX + suffix`, recorded as a host link to remove. */
  link(suffix: string): string {
    const name = `${this.prefix}${suffix}`;
    if (Buffer.byteLength(name) > 15) throw new Error(`test link name too long: ${name}`);
    this.#links.add(name);
    return name;
  }

  /** A namespace name `PREFIX-suffix`, recorded to remove. */
  netns(suffix: string): string {
    const name = `${this.prefix}-${suffix}`;
    this.#netns.add(name);
    return name;
  }

  async cleanup(): Promise<void> {
    const hostLinks = await ipLinkNames().catch(() => [] as string[]);
    for (const l of hostLinks.filter((n) => n.startsWith(this.prefix))) {
      await run('ip', ['link', 'del', l]).catch(() => undefined);
    }
    for (const ns of this.#netns) {
      await run('ip', ['netns', 'del', ns]).catch(() => undefined);
    }
    // Anything with the prefix that a test made without recording it.
    for (const ns of (await ipNetnsNames().catch(() => [] as string[])).filter((n) => n.startsWith(this.prefix))) {
      await run('ip', ['netns', 'del', ns]).catch(() => undefined);
    }
  }

  /** Throws if anything with the prefix is left (host links or namespaces). */
  async assertNothingLeft(): Promise<void> {
    const links = (await ipLinkNames()).filter((n) => n.startsWith(this.prefix));
    const namespaces = (await ipNetnsNames()).filter((n) => n.startsWith(this.prefix));
    if (links.length > 0 || namespaces.length > 0) {
      throw new Error(`left behind: links ${links.join(',') || '-'}; netns ${namespaces.join(',') || '-'}`);
    }
  }
}

/** An Ethernet frame: dst, src (aa:bb:..), ethertype, payload (padded to the 60-byte minimum). */
export function ethernetFrame(dst: string, src: string, ethertype: number, payload: Buffer): Buffer {
  const mac = (m: string): Buffer => Buffer.from(m.split(':').map((h) => parseInt(h, 16)));
  const type = Buffer.alloc(2);
  type.writeUInt16BE(ethertype);
  const frame = Buffer.concat([mac(dst), mac(src), type, payload]);
  return frame.length >= 60 ? frame : Buffer.concat([frame, Buffer.alloc(60 - frame.length)]);
}

/** A zeroed virtio_net_hdr (10 bytes): what a vnet_hdr tap or macvtap puts before each frame. */
export const VNET_HDR = Buffer.alloc(10);

/** Ethertype for local experiments (IEEE 802 local experimental 1). */
export const TEST_ETHERTYPE = 0x88b5;

/**
 * Reads frames from a non-blocking fd until one satisfies `match` (others, e.g. IPv6 router
 * solicitations, are skipped). Throws after `timeoutMs`.
 */
export async function readFrame(fd: number, match: (frame: Buffer) => boolean, timeoutMs = 3000): Promise<Buffer> {
  const buf = Buffer.alloc(65536);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    let n: number;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      await sleep(5);
      continue;
    }
    const frame = Buffer.from(buf.subarray(0, n));
    if (match(frame)) return frame;
  }
  throw new Error(`no matching frame within ${timeoutMs} ms`);
}

/** True if `frame` (from its Ethernet header on) has `ethertype` and contains `marker`. */
export function carries(frame: Buffer, ethertype: number, marker: Buffer): boolean {
  return frame.length >= 14 && frame.readUInt16BE(12) === ethertype && frame.includes(marker);
}

/** The net namespace link of every thread of this process (`/proc/self/task/T/ns/net`). */
export async function threadNetns(): Promise<string[]> {
  const { readdir, readlink } = await import('node:fs/promises');
  const tasks = await readdir('/proc/self/task');
  const links = await Promise.all(tasks.map((t) => readlink(`/proc/self/task/${t}/ns/net`).catch(() => 'gone')));
  return links.filter((l) => l !== 'gone');
}
