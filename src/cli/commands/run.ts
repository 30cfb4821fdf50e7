/** `vmpod run`: a container in a new sandbox. */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Sandbox } from '../../sandbox/sandbox.js';
import type { ContainerConfig } from '../../sandbox/sandbox.js';
import type { SandboxConfig, SharedFsCache } from '../../sandbox/config.js';
import type { ContainerVolume } from '../../volume/spec.js';
import * as validate from '../../validate.js';
import { printableField } from '../../printable.js';
import { integerOption, type ParsedArgs } from '../args.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { printJson, UsageError } from '../io.js';
import { CPUS, DEFAULT_MEMORY_MIB, MEMORY_MIB, USER_ID, memoryMiB } from '../limits.js';
import { PROCESS_OPTIONS, PROCESS_USAGE, attachStdio, processOverrides, shellExitCode } from '../process-options.js';
import { nfvOptions } from '../nfv-options.js';
import { Image } from '../../image/image.js';
import { isImageReference, progressLine } from './image.js';

const FORWARDED_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];
/** Signals that interrupt a run whose container does not run yet. */
const INTERRUPT_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/**
 * Cleans up after a run interrupted by `name` before its container ran: deletes the sandbox
 * with `rm`, else stops it if it got to run (`vmpod delete` removes it). Resolves with the
 * exit code a shell gives a process killed by `name`.
 */
async function interrupted(sandbox: Sandbox | undefined, name: NodeJS.Signals, rm: boolean): Promise<number> {
  const cleanup = !sandbox ? '' : rm ? `, deleting sandbox ${sandbox.id}` : `; "vmpod delete ${sandbox.id}" removes the sandbox`;
  process.stderr.write(`vmpod: interrupted by ${name}${cleanup}\n`);
  if (rm) await sandbox?.delete({ force: true });
  else if (sandbox?.state === 'running' || sandbox?.state === 'paused') await sandbox.stop();
  return 128 + os.constants.signals[name];
}

/**
 * The sandbox config and the container's volume mounts that `run`'s options ask for; throws
 * {@link UsageError} (or InvalidArgumentError for a bad id) before anything is made.
 */
export function runSandboxConfig(o: ParsedArgs['options']): { config: SandboxConfig; mounts: ContainerVolume[] } {
  const config: SandboxConfig = {};
  if (typeof o['name'] === 'string') config.id = validate.id(o['name'], '--name');
  if (typeof o['cpus'] === 'string') config.cpus = integerOption('--cpus', o['cpus'], CPUS.min, CPUS.max);
  if (o['machine'] === 'q35' || o['machine'] === 'microvm') config.machine = o['machine'];
  else if (o['machine'] !== undefined) throw new UsageError('--machine must be q35 or microvm');
  if (typeof o['memory'] === 'string') {
    const range = memoryMiB(config.machine ?? 'q35');
    config.memoryMiB = integerOption('--memory', o['memory'], range.min, range.max, config.machine === 'microvm' ? 'with --machine microvm' : undefined);
  }
  if (typeof o['shared-fs-cache'] === 'string') config.sharedFsCache = o['shared-fs-cache'] as SharedFsCache;
  if (typeof o['kernel'] === 'string' || typeof o['initramfs'] === 'string' || typeof o['rootfs-image'] === 'string') {
    config.guest = {};
    if (typeof o['kernel'] === 'string') config.guest.kernel = path.resolve(o['kernel']);
    if (typeof o['initramfs'] === 'string') config.guest.initramfs = path.resolve(o['initramfs']);
    if (typeof o['rootfs-image'] === 'string') config.guest.rootfsImage = path.resolve(o['rootfs-image']);
  }
  if (o['debug']) config.debug = true;
  if (typeof o['run-as'] === 'string') {
    const [uid, gid] = numericIds('--run-as', o['run-as'], 2);
    config.runAs = { uid: uid!, gid: gid! };
  }
  if (typeof o['shared-fs-user'] === 'string') {
    const [uid, gid, count] = numericIds('--shared-fs-user', o['shared-fs-user'], 3);
    config.sharedFsUser = { uid: uid!, gid: gid!, ...(count === undefined ? {} : { count }) };
  }
  if (Array.isArray(o['network'])) config.network = { cni: o['network'].map((file) => ({ file: path.resolve(file) })) };
  const mounts = nfvOptions(o, config);
  return { config, mounts };
}

/** `UID:GID` (and `:COUNT` when `most` is 3): decimal ids; the library checks the rest. */
function numericIds(option: string, value: string, most: 2 | 3): number[] {
  const parts = value.split(':');
  if (parts.length < 2 || parts.length > most) throw new UsageError(`${option} ${JSON.stringify(value)}: give UID:GID${most === 3 ? '[:COUNT]' : ''}`);
  return parts.map((part, i) => integerOption(`${option} ${['UID', 'GID', 'COUNT'][i]}`, part, i === 2 ? 1 : USER_ID.min, USER_ID.max));
}

export const run: Command = {
  words: ['run'],
  summary: 'run a container in a new sandbox (VM)',
  usage: `Usage: vmpod run [OPTIONS] [BUNDLE_OR_ROOTFS | IMAGE] [-- CMD [ARG...]]

Boots a sandbox, runs one container in it, streams its output and exits with its exit code.
BUNDLE_OR_ROOTFS is an OCI bundle (a directory with config.json) or a root filesystem
directory; without it the builtin busybox rootfs is used. IMAGE is an OCI image:
oci:DIR[:REF] (an OCI image layout), oci-archive:FILE[:REF] or docker-archive:FILE[:NAME:TAG];
its layers are unpacked once into the image store ($VMPOD_IMAGE_DIR, default
/var/lib/vmpod/images; see "vmpod image"); CMD replaces its Cmd and follows its
Entrypoint, as with podman run (docs/images.md).

Options:
      --rm              delete the sandbox when the container exits (or when the
                        run fails; without it a failed sandbox stays listed,
                        stopped, for "vmpod logs --console ID")
  -q, --quiet           no progress messages on stderr (boot progress is shown
                        only when stderr is a terminal; the first guest build's
                        always)
  -d, --detach          start the container and exit (the sandbox keeps running)
      --name ID         sandbox and container id (default: random)
      --cpus N          vCPUs, ${CPUS.min}-${CPUS.max} (default 1)
  -m, --memory MIB      guest RAM in MiB, ${MEMORY_MIB.min}-${MEMORY_MIB.max} (default ${DEFAULT_MEMORY_MIB});
                        at least ${memoryMiB('microvm').min} with --machine microvm
      --machine M       q35 (default) or microvm
      --kernel PATH     boot this kernel instead of the built one
      --initramfs PATH  boot this initramfs instead of the built one
      --rootfs-image PATH
                        an ext4 image (raw or qcow2 file, or block device) in
                        place of the builtin rootfs, copy-on-write per container
      --network FILE    add the sandbox to the CNI network of a .conflist/.conf file
                        (repeatable: one interface each, eth0, eth1, ...)
      --debug           agent and kernel debug output in the console log
      --run-as UID:GID  run QEMU as this unprivileged user once it started
      --shared-fs-user UID:GID[:COUNT]
                        run virtiofsd unprivileged, root only in a user
                        namespace mapping 0..COUNT-1 (default 65536) to
                        UID..; see docs/sandbox.md
      --shared-fs-cache MODE
                        guest caching of the shared filesystem: auto (default),
                        always (fastest; host changes may be seen late) or none
  -v, --volume HOST:GUEST[:ro]
                        share host directory HOST at GUEST in the container
                        (virtio-fs; ":ro" read-only); repeatable
      --hugepages       back guest RAM with host hugepages (2 MiB)
      --guest-hugepages N
                        reserve N 2 MiB hugepages in the guest and mount a
                        hugetlbfs at /dev/hugepages in the container; N is
                        1 to (MIB - 128) / 2, so that the guest keeps 128 MiB
      --device PCI_ADDR pass host PCI device DDDD:BB:DD.F to the VM (VFIO,
                        q35); repeatable
${PROCESS_USAGE}
      --json            print the result as JSON (with --detach)`,
  spec: {
    options: [
      ...COMMON_OPTIONS,
      ...PROCESS_OPTIONS,
      { long: 'rm', type: 'boolean' },
      { long: 'quiet', short: 'q', type: 'boolean' },
      { long: 'detach', short: 'd', type: 'boolean' },
      { long: 'name', type: 'string' },
      { long: 'cpus', type: 'string' },
      { long: 'memory', short: 'm', type: 'string' },
      { long: 'machine', type: 'string' },
      { long: 'kernel', type: 'string' },
      { long: 'initramfs', type: 'string' },
      { long: 'rootfs-image', type: 'string' },
      { long: 'debug', type: 'boolean' },
      { long: 'shared-fs-cache', type: 'string' },
      { long: 'run-as', type: 'string' },
      { long: 'shared-fs-user', type: 'string' },
      { long: 'volume', short: 'v', type: 'string', multiple: true },
      { long: 'hugepages', type: 'boolean' },
      { long: 'guest-hugepages', type: 'string' },
      { long: 'device', type: 'string', multiple: true },
      { long: 'network', type: 'string', multiple: true },
    ],
  },
  async run(parsed) {
    const o = parsed.options;
    if (parsed.positionals.length > 1) {
      throw new UsageError(`unexpected argument "${parsed.positionals[1]}": put the command after "--"`);
    }
    if (o['rm'] && o['detach']) throw new UsageError('--rm and --detach cannot be combined');
    const interactive = o['interactive'] === true;
    const tty = o['tty'] === true;
    const detach = o['detach'] === true;

    const { config, mounts } = runSandboxConfig(o);

    const container: ContainerConfig = {
      process: processOverrides(parsed),
      // Detached, the output goes to the container's log, written by a writer that outlives this process.
      stdio: detach && !tty ? { stdin: interactive, detached: true } : { stdin: interactive, stdout: !detach, stderr: !detach },
      volumes: mounts,
    };
    const source = parsed.positionals[0];
    let image: Image | undefined;
    if (source !== undefined && isImageReference(source)) {
      // Opened (and checked) before any VM is made; unpacked when the container is created.
      const quietImage = o['quiet'] === true;
      image = await Image.open(source, quietImage ? {} : { onProgress: (p) => void process.stderr.write(`vmpod: ${printableField(progressLine(source, p))}\n`) });
      container.image = image;
      // As with podman and docker: CMD replaces the image's Cmd, its Entrypoint stays in front.
      const entrypoint = image.config.config?.Entrypoint ?? [];
      if (container.process?.args !== undefined && entrypoint.length > 0) container.process.args = [...entrypoint, ...container.process.args];
    } else if (source !== undefined) {
      const dir = path.resolve(source);
      const isBundle = await fs.stat(path.join(dir, 'config.json')).then(() => true, () => false);
      if (isBundle) container.bundle = dir;
      else container.rootfs = dir;
    }

    // From here on SIGINT, SIGTERM and SIGHUP must not kill the CLI half way: until the container
    // runs they abort the boot and the sandbox is deleted (--rm) or stopped; once it runs they are
    // forwarded to it (without a tty).
    const interrupt = new AbortController();
    const { signal } = interrupt;
    const onInterrupt = (name: NodeJS.Signals): void => {
      if (!signal.aborted) interrupt.abort(name); // a second signal is ignored: the cleanup must finish
    };
    const stopInterrupts = (): void => {
      for (const s of INTERRUPT_SIGNALS) process.off(s, onInterrupt);
    };
    for (const s of INTERRUPT_SIGNALS) process.on(s, onInterrupt);
    let sandbox: Sandbox | undefined;
    let started = false;
    let exitCode = 0;
    const quiet = o['quiet'] === true;
    const say = (message: string): boolean => process.stderr.write(`vmpod: ${printableField(message)}\n`);
    // Boot progress on a terminal (a person waits for it), never into a pipe or a file.
    const progress = !quiet && process.stderr.isTTY === true;
    try {
      sandbox = await Sandbox.create(config, { signal });
      if (container.id === undefined) container.id = sandbox.id;
      if (!quiet) sandbox.on('progress', (message) => say(message));
      const { machine, cpus, memoryMiB } = sandbox.config;
      const bootStart = Date.now();
      if (progress) say(`booting sandbox ${sandbox.id} (${machine}, ${cpus} vCPU${cpus === 1 ? '' : 's'}, ${memoryMiB} MiB)`);
      await sandbox.start({ signal });
      started = true;
      if (progress) say(`sandbox ${sandbox.id} is running (${((Date.now() - bootStart) / 1000).toFixed(1)} s); starting the container`);
      const ctr = await sandbox.createContainer({ ...container, signal });
      const done = detach ? undefined : attachStdio(ctr.init!, { interactive, tty });
      await ctr.start({ signal });
      signal.throwIfAborted(); // a signal that came while it started still counts as an interrupted run
      stopInterrupts();
      if (detach) {
        if (o['json']) printJson({ id: sandbox.id, container: ctr.id, pid: sandbox.pid });
        else process.stdout.write(`${sandbox.id}\n`);
        sandbox.detach();
        return 0;
      }
      const forward = (s: NodeJS.Signals): void => {
        void ctr.kill(s).catch(() => undefined);
      };
      if (!tty) for (const s of FORWARDED_SIGNALS) process.on(s, forward);
      try {
        const status = await ctr.wait();
        await done?.();
        exitCode = shellExitCode(status);
        if (status.oomKilled) process.stderr.write('vmpod: the container was killed for lack of memory (OOM)\n');
      } finally {
        for (const s of FORWARDED_SIGNALS) process.off(s, forward);
      }
    } catch (error) {
      if (signal.aborted) return await interrupted(sandbox, signal.reason as NodeJS.Signals, o['rm'] === true);
      if (o['rm'] || !sandbox) {
        // The run's own error is what the user needs first; a cleanup that failed too is named, not hidden.
        const failed = sandbox;
        await failed?.delete({ force: true }).catch((cleanup: unknown) => {
          Object.assign(error as object, { hint: `the sandbox could not be deleted (${printableField((cleanup as Error).message)}): "vmpod delete -f ${failed.id}" removes it` });
        });
      } else {
        // Without --rm the sandbox stays listed (stopped), so that "vmpod logs" can show why it failed.
        if (sandbox.state === 'running' || sandbox.state === 'paused') await sandbox.stop().catch(() => undefined);
        if (!started) Object.assign(error as object, { hint: `the sandbox stays listed: "vmpod logs --console ${sandbox.id}" shows its console, "vmpod delete ${sandbox.id}" removes it` });
      }
      throw error;
    } finally {
      stopInterrupts();
      await image?.close();
    }
    if (o['rm']) await sandbox.delete({ force: true });
    else await sandbox.stop();
    return exitCode;
  },
};
