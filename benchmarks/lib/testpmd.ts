/**
 * dpdk-testpmd as a vhost-user backend for tests and benchmarks: its own hugepages (reserved
 * and read back), its own hugetlbfs mount, file prefix and mbuf pool, a `net_vhost` vdev on a
 * socket, run interactively so that its port counters can be read; {@link Testpmd.stop} quits
 * it and removes everything (the mount, /var/run/dpdk/PREFIX, the pages).
 *
 * A harness of the vhost-user benchmark and of test/privileged/nfv/data-plane.test.ts, not a
 * vmpod API: in production the vhost-user peer is OVS-DPDK, VPP or the user's own DPDK app.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { mountHugetlbfs, reserveHugepages, type HugepageReservation, type HugetlbfsMount } from '../../src/devices/hugepages.js';

export const TESTPMD = '/usr/bin/dpdk-testpmd';

/** Why testpmd cannot run here, or undefined. */
export async function testpmdSkipReason(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!(await fs.stat(TESTPMD).catch(() => undefined))) return 'needs dpdk-testpmd (package dpdk-dev, see scripts/setup-host.sh)';
  if (!(await fs.stat('/sys/kernel/mm/hugepages/hugepages-2048kB').catch(() => undefined))) return 'needs 2 MiB hugepages';
  return undefined;
}

export interface PortStats {
  rxPackets: number;
  txPackets: number;
  rxErrors: number;
}

export interface TestpmdOptions {
  /** The vhost-user socket testpmd listens on (server mode) or connects to (`client: true`). */
  socket: string;
  client?: boolean;
  /** `icmpecho` answers ARP and ping; `macswap` sends every frame back; `rxonly` counts. */
  forwardMode: 'icmpecho' | 'macswap' | 'rxonly' | 'io';
  /** Unique per process: --file-prefix and the /var/run/dpdk/PREFIX folder. */
  prefix: string;
}

export class Testpmd {
  #output = '';
  #exited: Promise<number | null>;

  private constructor(
    readonly options: TestpmdOptions,
    private readonly child: ChildProcessWithoutNullStreams,
    private readonly pages: HugepageReservation,
    private readonly mount: HugetlbfsMount,
  ) {
    child.stdout.on('data', (d: Buffer) => (this.#output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (this.#output += d.toString()));
    this.#exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  /**
   * Starts testpmd: 32 hugepages of 2 MiB of its own, both its lcores on CPU 0 (its forwarding
   * lcore busy-polls: this leaves the other core to QEMU), 2048 mbufs.
   */
  static async start(options: TestpmdOptions): Promise<Testpmd> {
    const pages = await reserveHugepages({ size: '2M', count: 32 });
    let mount: HugetlbfsMount | undefined;
    try {
      mount = await mountHugetlbfs({ pageSize: '2M', parent: path.join(os.tmpdir(), 'vmpod-testpmd') });
      const vdev = `net_vhost0,iface=${options.socket}${options.client ? ',client=1' : ''}`;
      // testpmd prints its answers with stdio, which a pipe buffers fully: make stdout line-buffered.
      const child = spawn(
        'stdbuf',
        [
          '-oL',
          TESTPMD,
          '--lcores', '0@0,1@0', '--no-pci', '--file-prefix', options.prefix, '--huge-dir', mount.path, '-m', '64',
          '--vdev', vdev, '--', '-i', '--total-num-mbufs', '2048', `--forward-mode=${options.forwardMode}`, '--auto-start',
        ],
        { stdio: ['pipe', 'pipe', 'pipe'] },
      );
      const pmd = new Testpmd(options, child, pages, mount);
      await pmd.#waitFor(/testpmd> /u, 30_000).catch(async (error: unknown) => {
        await pmd.stop();
        throw error;
      });
      if (!options.client) await pmd.#waitForSocket(10_000);
      return pmd;
    } catch (error) {
      await mount?.unmount({ detach: true }).catch(() => undefined);
      await pages.release();
      throw error;
    }
  }

  get output(): string {
    return this.#output;
  }

  async #waitFor(pattern: RegExp, timeoutMs: number, from = 0): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = this.#output.slice(from);
      if (pattern.test(text)) return text;
      if (this.child.exitCode !== null) throw new Error(`testpmd exited (${this.child.exitCode}):\n${this.#output.slice(-2000)}`);
      if (Date.now() > deadline) throw new Error(`testpmd: no ${pattern} within ${timeoutMs} ms:\n${this.#output.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async #waitForSocket(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await fs.stat(this.options.socket).catch(() => undefined))?.isSocket()) {
      if (Date.now() > deadline) throw new Error(`testpmd did not create ${this.options.socket}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Port 0's counters (`show port stats 0`). */
  async stats(): Promise<PortStats> {
    const from = this.#output.length;
    this.child.stdin.write('show port stats 0\n');
    const text = await this.#waitFor(/Tx-bps:.*\n/u, 10_000, from);
    const num = (re: RegExp): number => Number(re.exec(text)?.[1] ?? NaN);
    return { rxPackets: num(/RX-packets:\s+(\d+)/u), txPackets: num(/TX-packets:\s+(\d+)/u), rxErrors: num(/RX-errors:\s+(\d+)/u) };
  }

  /** Quits testpmd (SIGKILL after 10 s) and removes its mount, runtime folder and pages. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.stdin.end('quit\n');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
      await this.#exited;
      clearTimeout(timer);
    }
    await fs.rm(path.join('/var/run/dpdk', this.options.prefix), { recursive: true, force: true });
    if (!this.options.client) await fs.rm(this.options.socket, { force: true });
    await this.mount.unmount({ detach: true });
    await fs.rmdir(path.dirname(this.mount.path)).catch(() => undefined); // the parent, once no testpmd uses it
    await this.pages.release();
  }
}
