/**
 * A generated sysfs tree in a temp directory, for the device tests. It lays out what the kernel
 * shows (PCI devices with vendor/device/class, driver and iommu_group symlinks, net/ subdirs,
 * driver dirs with bind/unbind/new_id, drivers_probe, driver_override, SR-IOV files, hugepage
 * pools, KSM) and, since writing to a plain file does nothing by itself, plays the kernel's part
 * for the writes that matter: it records every write in order and updates the tree the way the
 * kernel would (bind/unbind/drivers_probe move the `driver` link, sriov_numvfs creates VFs,
 * nr_hugepages grows the pool up to a configurable capacity).
 *
 * Several processes may share one tree (`new FakeSysfs(root)` in each): every write and its
 * reaction run under a flock of the tree (`.fake/kernel.lock`), as the kernel serialises them
 * (device_lock, hugetlb_lock), and the hugepage counts are replaced atomically (rename), so a
 * reader never sees a half-written number. What vmpod itself must serialise is left to vmpod.
 * The hidden folders `.fake` (the fake kernel's own files) and `.vmpod-lock` (vmpod's host locks
 * for this tree) are not part of {@link FakeSysfs.snapshot}.
 *
 * {@link crashHugepageCall} runs hugepage calls in a child process that kills itself (SIGKILL) at a
 * chosen write of `nr_hugepages`, on a fake tree or on the real /sys.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { systemErrorFrom } from '../../src/devices/errors.js';
import { Sysfs } from '../../src/devices/sysfs.js';
import { FileLock } from '../../src/state/lock.js';

/** The fake kernel's own files (locks, limits), inside the tree. */
const FAKE = '.fake';
const NR_HUGEPAGES = /^(kernel\/mm\/hugepages|devices\/system\/node\/node(\d+)\/hugepages)\/hugepages-(\d+)kB\/nr_hugepages$/u;

export interface FakeNetdev {
  name: string;
  operstate?: string;
  /** `flags` as the kernel prints it, e.g. 0x1003 (IFF_UP set). */
  flags?: number;
}

export interface FakeDevice {
  address: string;
  vendor?: string;
  device?: string;
  class?: string;
  /** Driver bound now (its dir is created if missing). */
  driver?: string;
  /** Driver the fake kernel picks on drivers_probe when no override is set (default: `driver`). */
  nativeDriver?: string;
  iommuGroup?: number;
  numaNode?: number;
  netdevs?: FakeNetdev[];
  /** Makes the device a PF: its VFs get addresses `vfAddress(index)` and this vendor's VF device id. */
  sriov?: { totalVfs: number; numVfs?: number; vfDevice?: string; vfDriver?: string; vfAddress: (index: number) => string; vfGroup?: (index: number) => number };
  driverOverride?: string;
}

type Write = [path: string, value: string];

function errnoError(code: string, errno: number, message: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: ${message}`), { code, errno: -errno });
}

export class FakeSysfs extends Sysfs {
  /** Every write, in order, as [path relative to the root, value]. */
  readonly writes: Write[] = [];
  /** Devices whose probe by these drivers fails silently (drivers_probe/bind leave them unbound), as `address driver`. */
  readonly failProbe = new Set<string>();
  /** Writes that fail with an errno: `path` or `path=value` (relative) -> errno name. */
  readonly failWrite = new Map<string, string>();
  private readonly native = new Map<string, string>();
  private readonly pfs = new Map<string, NonNullable<FakeDevice['sriov']> & { vendor: string }>();
  /** Pages the fake kernel can still find, by `sizeKb node` (default: unlimited). */
  readonly hugepageCapacity = new Map<string, number>();

  static async create(): Promise<FakeSysfs> {
    return new FakeSysfs(await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-fake-sysfs-')));
  }

  async cleanup(): Promise<void> {
    await fs.rm(this.root, { recursive: true, force: true });
  }

  async file(rel: string, content: string): Promise<void> {
    await fs.mkdir(path.dirname(this.path(rel)), { recursive: true });
    await fs.writeFile(this.path(rel), content.endsWith('\n') || content === '' ? content : `${content}\n`);
  }

  async link(rel: string, target: string): Promise<void> {
    await fs.mkdir(path.dirname(this.path(rel)), { recursive: true });
    await fs.rm(this.path(rel), { force: true });
    await fs.symlink(target, this.path(rel));
  }

  async addDriver(name: string, options: { unbind?: boolean } = {}): Promise<void> {
    const dir = `bus/pci/drivers/${name}`;
    await this.file(`${dir}/bind`, '');
    if (options.unbind !== false) await this.file(`${dir}/unbind`, '');
    await this.file(`${dir}/new_id`, '');
    await this.file(`${dir}/remove_id`, '');
    await this.file('bus/pci/drivers_probe', '');
  }

  async addDevice(d: FakeDevice): Promise<void> {
    const dir = `bus/pci/devices/${d.address}`;
    await this.file(`${dir}/vendor`, `0x${d.vendor ?? '8086'}`);
    await this.file(`${dir}/device`, `0x${d.device ?? '1572'}`);
    await this.file(`${dir}/class`, `0x${d.class ?? '020000'}`);
    await this.file(`${dir}/subsystem_vendor`, `0x${d.vendor ?? '8086'}`);
    await this.file(`${dir}/subsystem_device`, '0x0000');
    await this.file(`${dir}/numa_node`, String(d.numaNode ?? -1));
    await this.file(`${dir}/driver_override`, d.driverOverride ?? '(null)');
    if (d.driver !== undefined) {
      await this.addDriverIfMissing(d.driver);
      await this.link(`${dir}/driver`, `../../drivers/${d.driver}`);
    }
    const nativeDriver = d.nativeDriver ?? d.driver;
    if (nativeDriver !== undefined) {
      await this.addDriverIfMissing(nativeDriver);
      this.native.set(d.address, nativeDriver);
    }
    if (d.iommuGroup !== undefined) await this.joinGroup(d.address, d.iommuGroup);
    for (const n of d.netdevs ?? []) {
      await this.file(`${dir}/net/${n.name}/operstate`, n.operstate ?? 'down');
      await this.file(`${dir}/net/${n.name}/flags`, `0x${(n.flags ?? 0x1002).toString(16)}`);
      await this.file(`${dir}/net/${n.name}/ifindex`, '7');
    }
    if (d.sriov !== undefined) {
      this.pfs.set(d.address, { ...d.sriov, vendor: d.vendor ?? '8086' });
      await this.file(`${dir}/sriov_totalvfs`, String(d.sriov.totalVfs));
      await this.file(`${dir}/sriov_numvfs`, '0');
      await this.file(`${dir}/sriov_drivers_autoprobe`, '1');
      if (d.sriov.numVfs) await this.enableVfs(d.address, d.sriov.numVfs);
    }
  }

  private async addDriverIfMissing(name: string): Promise<void> {
    if (!(await this.exists(`bus/pci/drivers/${name}`))) await this.addDriver(name);
  }

  private async joinGroup(address: string, group: number): Promise<void> {
    await this.link(`bus/pci/devices/${address}/iommu_group`, `../../../../kernel/iommu_groups/${group}`);
    await this.link(`kernel/iommu_groups/${group}/devices/${address}`, `../../../../bus/pci/devices/${address}`);
  }

  private async enableVfs(pf: string, count: number): Promise<void> {
    const spec = this.pfs.get(pf)!;
    for (let i = 0; i < count; i++) {
      const vf = spec.vfAddress(i);
      const device: FakeDevice = { address: vf, vendor: spec.vendor, device: spec.vfDevice ?? '154c' };
      if (spec.vfDriver !== undefined) device.driver = spec.vfDriver;
      if (spec.vfGroup !== undefined) device.iommuGroup = spec.vfGroup(i);
      await this.addDevice(device);
      await this.link(`bus/pci/devices/${vf}/physfn`, `../${pf}`);
      await this.link(`bus/pci/devices/${pf}/virtfn${i}`, `../${vf}`);
    }
    await fs.writeFile(this.path(`bus/pci/devices/${pf}/sriov_numvfs`), `${count}\n`);
  }

  private async disableVfs(pf: string): Promise<void> {
    for (const entry of await this.list(`bus/pci/devices/${pf}`)) {
      if (!entry.startsWith('virtfn')) continue;
      const vf = (await this.linkName(`bus/pci/devices/${pf}/${entry}`))!;
      const group = await this.linkName(`bus/pci/devices/${vf}/iommu_group`);
      if (group !== undefined) await fs.rm(this.path(`kernel/iommu_groups/${group}`), { recursive: true, force: true });
      await fs.rm(this.path(`bus/pci/devices/${vf}`), { recursive: true, force: true });
      await fs.rm(this.path(`bus/pci/devices/${pf}/${entry}`));
      this.native.delete(vf);
    }
    await fs.writeFile(this.path(`bus/pci/devices/${pf}/sriov_numvfs`), '0\n');
  }

  /** Adds a hugepage pool of `sizeKb` with `nodes` NUMA nodes of `memKb` each. */
  async addHugepages(sizeKb: number, nodes: number[], memKb = 8 * 1024 * 1024): Promise<void> {
    for (const f of ['nr_hugepages', 'free_hugepages', 'surplus_hugepages', 'resv_hugepages', 'nr_overcommit_hugepages']) {
      await this.file(`kernel/mm/hugepages/hugepages-${sizeKb}kB/${f}`, '0');
    }
    for (const n of nodes) {
      for (const f of ['nr_hugepages', 'free_hugepages', 'surplus_hugepages']) {
        await this.file(`devices/system/node/node${n}/hugepages/hugepages-${sizeKb}kB/${f}`, '0');
      }
      await this.file(`devices/system/node/node${n}/meminfo`, `Node ${n} MemTotal:       ${memKb} kB\nNode ${n} MemFree:        ${memKb} kB\n`);
    }
  }

  /**
   * Caps a node's pool of `sizeKb` pages at `max` pages in total, for every process sharing the
   * tree (a file under `.fake`); writes asking for more get what fits, like the kernel when memory
   * runs out.
   */
  async limitHugepages(sizeKb: number, node: number, max: number): Promise<void> {
    await this.file(`${FAKE}/hugepages-${sizeKb}kB-node${node}.max`, String(max));
  }

  /** Adds kernel/mm/ksm with the given attribute values (file name -> text). */
  async addKsm(values: Record<string, string>): Promise<void> {
    for (const [file, text] of Object.entries(values)) await this.file(`kernel/mm/ksm/${file}`, text);
  }

  override async write(rel: string, value: string): Promise<void> {
    const key = path.normalize(rel);
    this.writes.push([key, value]);
    const fail = this.failWrite.get(`${key}=${value.trim()}`) ?? this.failWrite.get(key);
    if (fail !== undefined) throw systemErrorFrom(`write ${this.path(key)}`, errnoError(fail, 5, 'injected failure'));
    await fs.mkdir(this.path(FAKE), { recursive: true });
    const kernel = await FileLock.acquire(this.path(`${FAKE}/kernel.lock`));
    try {
      const old = await this.readOptional(key).catch(() => undefined);
      if (NR_HUGEPAGES.test(key)) {
        // The written text is not the state: the pool is resized and its count replaced at once.
        if (old === undefined) throw systemErrorFrom(`write ${this.path(key)}`, errnoError('ENOENT', 2, 'no such file or directory'));
      } else {
        await super.write(key, value);
      }
      try {
        await this.react(key, value.trim(), old);
      } catch (e) {
        throw systemErrorFrom(`write ${this.path(key)}`, e);
      }
    } finally {
      await kernel.release();
    }
  }

  /** The kernel's reaction to a write. */
  private async react(rel: string, value: string, old: string | undefined): Promise<void> {
    let m: RegExpExecArray | null;
    if (rel === 'bus/pci/drivers_probe') {
      const dev = `bus/pci/devices/${value}`;
      if (!(await this.exists(dev))) throw errnoError('ENODEV', 19, 'no such device');
      if ((await this.linkName(`${dev}/driver`)) !== undefined) return;
      const override = await this.read(`${dev}/driver_override`);
      const driver = override !== '(null)' ? override : this.native.get(value);
      if (driver === undefined || !(await this.exists(`bus/pci/drivers/${driver}`))) return;
      if (this.failProbe.has(`${value} ${driver}`)) return;
      await this.link(`${dev}/driver`, `../../drivers/${driver}`);
    } else if ((m = /^bus\/pci\/drivers\/([^/]+)\/(bind|unbind)$/u.exec(rel))) {
      const [, driver, op] = m;
      const dev = `bus/pci/devices/${value}`;
      if (!(await this.exists(dev))) throw errnoError('ENODEV', 19, 'no such device');
      const current = await this.linkName(`${dev}/driver`);
      if (op === 'unbind') {
        if (current !== driver) throw errnoError('ENODEV', 19, 'not bound to this driver');
        await fs.rm(this.path(`${dev}/driver`));
      } else {
        if (current !== undefined) throw errnoError('EBUSY', 16, 'already bound');
        const override = await this.read(`${dev}/driver_override`);
        if ((override !== '(null)' && override !== driver) || this.failProbe.has(`${value} ${driver}`)) {
          throw errnoError('ENODEV', 19, 'driver does not match');
        }
        await this.link(`${dev}/driver`, `../../drivers/${driver}`);
      }
    } else if ((m = /^bus\/pci\/devices\/([^/]+)\/driver_override$/u.exec(rel))) {
      await fs.writeFile(this.path(rel), `${value === '' ? '(null)' : value}\n`);
    } else if ((m = /^bus\/pci\/devices\/([^/]+)\/sriov_numvfs$/u.exec(rel))) {
      const pf = m[1]!;
      const n = Number(value);
      const spec = this.pfs.get(pf)!;
      const current = await this.vfCount(pf);
      await fs.writeFile(this.path(rel), `${current}\n`); // the written text is not the state
      if (n === current) return;
      if (n > spec.totalVfs) throw errnoError('ERANGE', 34, 'too many VFs');
      if (n === 0) return this.disableVfs(pf);
      if (current !== 0) throw errnoError('EBUSY', 16, 'VFs already enabled');
      await this.enableVfs(pf, n);
    } else if (rel === 'kernel/mm/ksm/run' && value === '2') {
      // Like the kernel: run=2 unmerges every page before the write returns.
      for (const counter of ['pages_shared', 'pages_sharing']) {
        if (await this.exists(`kernel/mm/ksm/${counter}`)) await fs.writeFile(this.path(`kernel/mm/ksm/${counter}`), '0\n');
      }
    } else if (rel === 'kernel/mm/ksm/merge_across_nodes') {
      // Like the kernel: only while nothing is merged.
      if ((await this.readInt('kernel/mm/ksm/pages_shared'))! > 0 && value !== old) {
        await fs.writeFile(this.path(rel), `${old}\n`);
        throw errnoError('EBUSY', 16, 'pages are shared');
      }
    } else if ((m = NR_HUGEPAGES.exec(rel))) {
      const node = m[2] === undefined ? undefined : Number(m[2]);
      await this.resizeHugepages(m[3]!, node, Number(value));
    }
  }

  private async vfCount(pf: string): Promise<number> {
    return (await this.list(`bus/pci/devices/${pf}`)).filter((e) => e.startsWith('virtfn')).length;
  }

  /** Replaces a file's content at once (a reader sees the old or the new text, never a part). */
  private async replace(rel: string, content: string): Promise<void> {
    const tmp = this.path(`${FAKE}/tmp-${process.pid}`);
    await fs.writeFile(tmp, content);
    await fs.rename(tmp, this.path(rel));
  }

  /**
   * Grows or shrinks a pool like the kernel: up to the capacity left (and the node's limit, see
   * {@link limitHugepages}), spread over nodes for the global pool.
   */
  private async resizeHugepages(sizeKb: string, node: number | undefined, wanted: number): Promise<void> {
    const nodes = (await this.list('devices/system/node')).map((n) => Number(n.slice(4)));
    const nodeFile = (n: number, f: string): string => `devices/system/node/node${n}/hugepages/hugepages-${sizeKb}kB/${f}`;
    const counts = new Map<number, number>();
    for (const n of nodes) counts.set(n, (await this.readInt(nodeFile(n, 'nr_hugepages')))!);
    const total = [...counts.values()].reduce((a, b) => a + b, 0);
    // Before the write, the global file still holds the old total (written text is not the state).
    const targets = node === undefined ? nodes : [node];
    let delta = wanted - (node === undefined ? total : counts.get(node)!);
    for (const n of targets) {
      if (delta === 0) break;
      const cur = counts.get(n)!;
      const cap = this.hugepageCapacity.get(`${sizeKb} ${n}`) ?? Infinity;
      const max = Number((await this.readOptional(`${FAKE}/hugepages-${sizeKb}kB-node${n}.max`)) ?? Infinity);
      const change = delta > 0 ? Math.max(0, Math.min(delta, cap, max - cur)) : Math.max(delta, -cur);
      this.hugepageCapacity.set(`${sizeKb} ${n}`, cap - change);
      counts.set(n, cur + change);
      delta -= change;
    }
    let sum = 0;
    for (const [n, c] of counts) {
      await this.replace(nodeFile(n, 'nr_hugepages'), `${c}\n`);
      await this.replace(nodeFile(n, 'free_hugepages'), `${c}\n`);
      sum += c;
    }
    // Pages still mapped cannot go: like the kernel, the pool keeps them as surplus (counted in
    // nr_hugepages) and frees them once unmapped.
    const mapped = Number((await this.readOptional(`${FAKE}/hugepages-${sizeKb}kB.mapped`)) ?? 0);
    const surplus = Math.max(0, mapped - sum);
    await this.replace(`kernel/mm/hugepages/hugepages-${sizeKb}kB/nr_hugepages`, `${sum + surplus}\n`);
    await this.replace(`kernel/mm/hugepages/hugepages-${sizeKb}kB/free_hugepages`, `${Math.max(0, sum - mapped)}\n`);
    await this.replace(`kernel/mm/hugepages/hugepages-${sizeKb}kB/surplus_hugepages`, `${surplus}\n`);
  }

  /** Marks `pages` pages of the global pool of `sizeKb` as mapped by some process (they survive a shrink as surplus). */
  async mapHugepages(sizeKb: number, pages: number): Promise<void> {
    await this.replace(`${FAKE}/hugepages-${sizeKb}kB.mapped`, `${pages}\n`);
  }

  /** Every file's content and every symlink's target, for before/after comparisons. */
  async snapshot(): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    const walk = async (rel: string): Promise<void> => {
      for (const entry of await fs.readdir(this.path(rel), { withFileTypes: true })) {
        const r = path.join(rel, entry.name);
        if (r === FAKE || r === '.vmpod-lock') continue;
        if (entry.isSymbolicLink()) out[r] = `-> ${await fs.readlink(this.path(r))}`;
        else if (entry.isDirectory()) await walk(r);
        // The attribute files bind/unbind/drivers_probe keep the last text written: not state.
        else if (!/(^|\/)(bind|unbind|new_id|remove_id|drivers_probe)$/u.test(r)) out[r] = (await fs.readFile(this.path(r), 'utf8')).trimEnd();
      }
    };
    await walk('.');
    return out;
  }
}

/** A hugepage call a {@link crashHugepageCall} child makes, in order. */
export type HugepageCrashStep =
  | { reserve: { size: string; count: number; node?: number; allowPartial?: boolean; claimId?: string; owner?: string } }
  | { releaseClaim: { claimId: string; size?: string } };

export interface HugepageCrashOptions {
  /** Root of a fake tree (the child uses a {@link FakeSysfs} on it); omitted: the real /sys. */
  sysfs?: string;
  /** Host lock folder to pass to vmpod; omitted: its default for the tree. */
  lockDir?: string;
  steps: HugepageCrashStep[];
  /**
   * The child kills itself with SIGKILL at its `write`-th write to an `nr_hugepages` file (counted
   * from 1 over all its steps), `before` the write reaches the (fake) kernel or right `after` it.
   * Omitted: it runs every step and exits 0.
   */
  kill?: { write: number; when: 'before' | 'after' };
}

export interface HugepageCrashResult {
  /** The child's pid. */
  pid: number;
  /** The signal that ended the child (SIGKILL when it died where it was told), or null. */
  signal: NodeJS.Signals | null;
  code: number | null;
  /** One JSON line per finished step: what it returned (a record, a release, null) or `{ error }`. */
  results: unknown[];
  stderr: string;
}

/**
 * Runs hugepage calls in a child process that dies (SIGKILL, no clean-up of any kind) at a given
 * write to `nr_hugepages`, to test what the next process finds: the host lock dropped by the
 * kernel, the ledger as the dead process left it, the pool as its last write left it. The child
 * is vmpod's own code with a Sysfs whose `write` kills the process around the real write.
 */
export async function crashHugepageCall(options: HugepageCrashOptions): Promise<HugepageCrashResult> {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const modules = {
    fake: path.join(here, 'devices-fake-sysfs.ts'),
    sysfs: path.join(here, '../../src/devices/sysfs.ts'),
    hugepages: path.join(here, '../../src/devices/hugepages.ts'),
  };
  const code = `
    const opts = JSON.parse(process.argv[1]);
    const { FakeSysfs } = await import(opts.modules.fake);
    const { Sysfs } = await import(opts.modules.sysfs);
    const hp = await import(opts.modules.hugepages);
    const Base = opts.sysfs === undefined ? Sysfs : FakeSysfs;
    let writes = 0;
    class Crashing extends Base {
      async write(rel, value) {
        const hit = /nr_hugepages$/.test(rel) && opts.kill !== undefined && ++writes === opts.kill.write;
        if (hit && opts.kill.when === 'before') process.kill(process.pid, 'SIGKILL');
        await super.write(rel, value);
        if (hit && opts.kill.when === 'after') process.kill(process.pid, 'SIGKILL');
      }
    }
    const sysfs = new Crashing(opts.sysfs ?? '/sys');
    const common = { sysfs, ...(opts.lockDir === undefined ? {} : { lockDir: opts.lockDir }) };
    for (const step of opts.steps) {
      let result;
      try {
        if (step.reserve) {
          const { claimId, owner, ...request } = step.reserve;
          result = (await hp.reserveHugepages(request, { ...common, ...(claimId ? { claimId } : {}), ...(owner ? { owner } : {}) })).toJSON();
        } else {
          const size = step.releaseClaim.size;
          result = (await hp.releaseHugepageClaim(step.releaseClaim.claimId, { ...common, ...(size ? { size } : {}) })) ?? null;
        }
      } catch (e) {
        result = { error: { name: e?.name, code: e?.code, message: String(e?.message ?? e) } };
      }
      process.stdout.write(JSON.stringify(result) + '\\n');
    }
  `;
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '--eval', code, JSON.stringify({ ...options, modules })],
      { timeout: 60_000 },
      (error, stdout, stderr) => {
        const e = error as (Error & { code?: number | string; signal?: NodeJS.Signals | null }) | null;
        resolve({
          pid: child.pid!,
          signal: e?.signal ?? null,
          code: e === null ? 0 : typeof e.code === 'number' ? e.code : null,
          results: stdout
            .split('\n')
            .filter((l) => l.trim() !== '')
            .map((l) => JSON.parse(l) as unknown),
          stderr,
        });
      },
    );
  });
}
