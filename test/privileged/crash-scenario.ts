/**
 * The life of one sandbox, for the crash-point tests (test/privileged/crash-points.test.ts): run
 * with VMPOD_FAILPOINT set, it dies with SIGKILL at that point (src/failpoint.ts), anywhere in
 * create, start, container create and delete, hotplug, stop and delete. Prints `done` when it got
 * through. Run as `node --import tsx crash-scenario.ts JSON` with JSON the {@link ScenarioArgs}.
 */
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { Volume } from '../../src/volume/volume.js';
import { recordWrites } from '../../src/failpoint.js';
import { standInSandboxConfig } from './stand-in-hypervisor.js';
import type { SandboxConfig } from '../../src/sandbox/config.js';

/** What the scenario is run with. */
export interface ScenarioArgs {
  stateDir: string;
  id: string;
  /** An OCI bundle (busybox rootfs) whose config binds `data` at /data. */
  bundle: string;
  /** A host directory shared as a volume (read-write). */
  data: string;
  /** Back guest RAM with hugepages (the host must have some). */
  hugepages: boolean;
  /** Real QEMU instead of the stand-in. */
  qemu: boolean;
  /** Extra sandbox config (e.g. a network). */
  extra?: Partial<SandboxConfig>;
  /** Only create and start, then delete (a shorter life, for real QEMU). */
  startOnly?: boolean;
}

const args = JSON.parse(process.argv[2] ?? '{}') as ScenarioArgs;
process.on('exit', () => process.stderr.write(`record writes: ${recordWrites()}\n`));

const base = args.qemu ? {} : standInSandboxConfig();
const sandbox = await Sandbox.create({
  ...base,
  ...args.extra,
  stateDir: args.stateDir,
  id: args.id,
  volumes: [Volume.tmpfs('scratch', { sizeMiB: 4 })],
  ...(args.hugepages ? { memoryMiB: args.qemu ? 256 : 128, hugepages: { backRam: true, prealloc: false } } : {}),
});
await sandbox.start();
if (args.startOnly) {
  await sandbox.delete({ force: true });
  process.stdout.write('done\n');
  process.exit(0);
}
const one = await sandbox.createContainer({ id: 'one', bundle: args.bundle });
await one.start();
// A second container of the same rootfs shares its bind.
const two = await sandbox.createContainer({ id: 'two', bundle: args.bundle, process: { args: ['true'] } });
await two.start();
await two.wait();
await two.delete();
await sandbox.addVolume(Volume.directory('data', args.data));
await sandbox.addVolume(Volume.tmpfs('more', { sizeMiB: 2 }));
await sandbox.removeVolume('more');
await one.delete({ force: true });
await sandbox.stop({ timeoutMs: 2000 });
await sandbox.start();
await sandbox.delete({ force: true });
process.stdout.write('done\n');
process.exit(0);
