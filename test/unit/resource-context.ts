// A resource context over an in-memory record, as the sandbox gives one (without its lock and
// file): every update parses the state afresh, runs, and records what it saved.
import type { GuestContext, ResourceContext, SandboxResource } from '../../src/sandbox/resources/resource.js';
import type { ResolvedSandboxConfig } from '../../src/sandbox/config.js';

export interface MemoryRecord {
  /** The resource's state as last saved. */
  state: unknown;
  /** Every state saved, in order (a copy each). */
  saves: unknown[];
}

export function memoryContext<S>(
  resource: Pick<SandboxResource<S>, 'parse'>,
  base: { sandboxId?: string; dir: string; config: ResolvedSandboxConfig; boot?: { id: string; dir: string } },
  initial?: unknown,
): { ctx: ResourceContext<S>; record: MemoryRecord } {
  const record: MemoryRecord = { state: initial === undefined ? undefined : structuredClone(initial), saves: [] };
  const ctx: ResourceContext<S> = {
    sandboxId: base.sandboxId ?? 'sb',
    dir: base.dir,
    config: base.config,
    boot: base.boot ?? { id: '000000000000', dir: base.dir },
    share: undefined,
    get state() {
      return resource.parse(structuredClone(record.state));
    },
    async update<T>(fn: (state: S, save: () => Promise<void>) => T | Promise<T>): Promise<T> {
      const state = resource.parse(structuredClone(record.state));
      const save = async (): Promise<void> => {
        record.state = structuredClone(state);
        record.saves.push(record.state);
      };
      const result = await fn(state, save);
      await save();
      return result;
    },
  };
  return { ctx, record };
}

/** The same context with guest parts (a fake agent and VM). */
export function withGuest<S>(ctx: ResourceContext<S>, guest: { agent: unknown; vm: unknown; guestStateDir?: string }): GuestContext<S> {
  const g = Object.create(ctx) as GuestContext<S>;
  Object.defineProperties(g, {
    agent: { value: guest.agent },
    vm: { value: guest.vm },
    guestStateDir: { value: guest.guestStateDir ?? '/run/vmpod' },
  });
  return g;
}
