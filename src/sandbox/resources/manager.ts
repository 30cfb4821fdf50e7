/**
 * The resource manager: which resources a sandbox has (from its config), the order they are
 * prepared, attached and released in, and the contexts through which each one records its state
 * before it changes anything on the host.
 *
 * @internal
 * @module
 */
import { runAll } from '../../cleanup.js';
import type { ResolvedSandboxConfig } from '../config.js';
import type { Journal, SandboxRecord } from '../record.js';
import type { BootInfo, GuestContext, ResourceContext, SandboxResource, VmContribution } from './resource.js';
import { SHARED_FS_KIND, Share, type SharedFsState } from './share.js';
import { SharedFsResource } from './shared-fs.js';
import { GuestRootfsResource } from './guest-rootfs.js';
import { HugepagesResource } from './hugepages.js';
import { PciDevicesResource } from './pci-devices.js';
import { VhostUserResource } from './vhost-user.js';
import { VolumesResource } from './volumes/index.js';
import { NetworkResource } from './network.js';
import { StreamPortsResource } from './stream-ports.js';

/**
 * The resources of a sandbox in the order they are prepared (and the reverse order they are
 * released): the share first (volumes and containers bind into it), guest RAM (hugepages) before
 * the devices that map it. Adding a resource kind means adding one line here.
 */
export function sandboxResources(config: ResolvedSandboxConfig): SandboxResource[] {
  const resources: SandboxResource[] = [];
  if (config.sharedFs) resources.push(new SharedFsResource());
  if (config.guest.rootfsImage !== undefined) resources.push(new GuestRootfsResource());
  resources.push(new HugepagesResource(), new PciDevicesResource(), new VhostUserResource(), new VolumesResource());
  if (config.network) resources.push(new NetworkResource());
  if ((config.streamPorts ?? 0) > 0) resources.push(new StreamPortsResource());
  return resources as SandboxResource[];
}

/** What a context is for: the boot, the check that the operation still owns the sandbox, the cancellation. */
export interface ContextOptions {
  boot: BootInfo | undefined;
  /** Throws when the record shows that the operation was superseded (run in every update). */
  guard?: (record: SandboxRecord) => void;
  signal?: AbortSignal | undefined;
}

/** The guest parts of a context. */
export type GuestParts = Pick<GuestContext<unknown>, 'agent' | 'vm' | 'guestStateDir'>;

/** A sandbox's resources, and the contexts they work in. */
export class ResourceManager {
  readonly resources: readonly SandboxResource[];

  constructor(
    private readonly journal: Journal,
    private readonly sandboxDir: string,
    readonly config: ResolvedSandboxConfig,
  ) {
    this.resources = sandboxResources(config);
  }

  /** The resource of `kind` (a sandbox without it gets a fresh instance: its state may still need releasing). */
  find<S>(kind: string): SandboxResource<S> | undefined {
    return this.resources.find((r) => r.kind === kind) as SandboxResource<S> | undefined;
  }

  /** The context of `resource`, starting from `record`'s state. */
  context<S>(resource: SandboxResource<S>, record: SandboxRecord, options: ContextOptions): ResourceContext<S> {
    const { journal } = this;
    let latest = resource.parse(record.resources[resource.kind]);
    const share = resource.kind === SHARED_FS_KIND ? undefined : this.shareOf(record, options);
    return {
      sandboxId: record.id,
      dir: this.sandboxDir,
      config: record.config,
      boot: options.boot,
      share,
      get state() {
        return latest;
      },
      async update<T>(fn: (state: S, save: () => Promise<void>) => T | Promise<T>): Promise<T> {
        return journal.transact(async (tx) => {
          options.guard?.(tx.record);
          const state = resource.parse(tx.record.resources[resource.kind]);
          const save = async (): Promise<void> => {
            tx.record.resources[resource.kind] = state;
            latest = state;
            await tx.save();
          };
          const result = await fn(state, save);
          await save();
          return result;
        }, options.signal ? { signal: options.signal } : {});
      },
      ...(options.signal ? { signal: options.signal } : {}),
    };
  }

  /** The share of the sandbox (undefined without `sharedFs`), its changes recorded with `options`. */
  shareOf(record: SandboxRecord, options: ContextOptions): Share | undefined {
    const sharedFs = this.resources.find((r) => r.kind === SHARED_FS_KIND) as SandboxResource<SharedFsState> | undefined;
    return sharedFs && new Share(this.sandboxDir, this.context(sharedFs, record, options).update);
  }

  /** The guest context of `resource` (for attach and hotplug). */
  guestContext<S>(resource: SandboxResource<S>, record: SandboxRecord, options: ContextOptions, guest: GuestParts): GuestContext<S> {
    return Object.assign(this.context(resource, record, options), guest);
  }

  /**
   * Prepares every resource in order (host side, before the VM). On a failure, what was prepared
   * is released again (`stop` phase, every step tried) and the first failure rethrown.
   */
  async prepare(record: SandboxRecord, options: ContextOptions): Promise<VmContribution[]> {
    const contributions: VmContribution[] = [];
    const prepared: SandboxResource[] = [];
    try {
      for (const resource of this.resources) {
        prepared.push(resource);
        contributions.push(await resource.prepare(this.context(resource, record, options)));
      }
      return contributions;
    } catch (error) {
      await this.release('stop', record, options, prepared).catch((cleanup: unknown) => {
        if (error instanceof Error) Object.assign(error, { cleanupError: cleanup });
      });
      throw error;
    }
  }

  /** Attaches every resource in order (guest side). */
  async attach(record: SandboxRecord, options: ContextOptions, guest: GuestParts): Promise<void> {
    for (const resource of this.resources) {
      if (resource.attach) await resource.attach(this.guestContext(resource, record, options, guest));
    }
  }

  /**
   * Releases `resources` (default: all, and the state of kinds the config no longer has) in
   * reverse order, every one even when another fails; a {@link CleanupError} lists the failures.
   */
  async release(phase: 'stop' | 'delete', record: SandboxRecord, options: ContextOptions, resources = this.resources): Promise<void> {
    await runAll(
      [...resources].reverse().map((resource) => [resource.kind, () => resource.release(this.context(resource, record, options), phase)] as const),
      `sandbox "${record.id}": could not release everything`,
    );
  }
}
