/**
 * This process's connections to a sandbox's current boot: the agent connection (one of the boot's
 * agent ports, held through its lock file), the hypervisor's control channel, and, when there is
 * no control channel, a watch of the VM's pid. Each is made on demand, with a deadline, and is
 * bound to one boot: a connection to a boot that has ended is never used for the next.
 *
 * @module
 */
import type { AgentClient } from '../agent/client.js';
import { isAlive } from '../host/process.js';
import type { Hypervisor, VirtualMachine, VmExit } from '../hypervisor/hypervisor.js';
import type { CallOptions } from '../options.js';
import { connectAgent, SandboxError, type AgentLink } from './boot.js';
import type { BootRecord } from './record.js';

/** How a watched VM's pid is polled when this process has no control channel to it. */
const WATCH_INTERVAL_MS = 500;

/** What the connections tell their sandbox. */
export interface ConnectionHandlers {
  /** The VM of boot `bootId` is gone (its control channel said so, or its pid is). */
  vmGone(bootId: string, exit: VmExit): void;
  /** The agent broke the protocol or hung up while in use, or the control channel broke. */
  error(error: Error, source: 'agent' | 'vm'): void;
  paused(): void;
  resumed(): void;
}

export class BootConnections {
  #vm: { boot: string; vm: VirtualMachine } | undefined;
  #link: { boot: string; link: AgentLink } | undefined;
  #watch: { boot: string; timer: NodeJS.Timeout } | undefined;

  constructor(
    private readonly sandboxId: string,
    private readonly hypervisor: Hypervisor,
    private readonly agentPorts: number,
    private readonly handlers: ConnectionHandlers,
  ) {}

  /** The agent connection to `boot` (connected on demand; the handshake within `timeoutMs`). */
  async agent(boot: BootRecord, options: { signal?: AbortSignal | undefined; timeoutMs: number }): Promise<AgentLink> {
    const held = this.#link;
    if (held?.boot === boot.id && !held.link.agent.closed) return held.link;
    if (held) this.#link = undefined;
    const link = await connectAgent(this.sandboxId, boot.dir, this.agentPorts, options);
    this.#link = { boot: boot.id, link };
    link.agent.on('close', (error) => {
      if (error && this.#link?.link === link) this.handlers.error(error, 'agent');
    });
    return link;
  }

  /** The agent connection to boot `bootId` if this process has one open now. */
  currentAgent(bootId: string | undefined): AgentClient | undefined {
    const held = this.#link;
    return held && held.boot === bootId && !held.link.agent.closed ? held.link.agent : undefined;
  }

  /** The hypervisor's control channel to `boot` (connected on demand, within `timeoutMs`, default 10 s). */
  async vmControl(boot: BootRecord, options: CallOptions = {}): Promise<VirtualMachine> {
    if (this.#vm?.boot === boot.id && !this.#vm.vm.exited) return this.#vm.vm;
    if (!boot.vm) throw new SandboxError(this.sandboxId, 'the VM of this boot was never spawned');
    const vm = await this.hypervisor.attach(boot.vm, { timeoutMs: options.timeoutMs ?? 10_000, ...(options.signal ? { signal: options.signal } : {}) });
    this.adopt(boot.id, vm);
    return vm;
  }

  /** Takes `vm` as the control channel of boot `bootId` (the one start() spawned, or one attached). */
  adopt(bootId: string, vm: VirtualMachine): void {
    this.#unwatch();
    this.#vm = { boot: bootId, vm };
    vm.on('paused', () => this.handlers.paused());
    vm.on('resumed', () => this.handlers.resumed());
    vm.on('exit', (exit) => this.handlers.vmGone(bootId, exit));
    // The control channel broke while the VM lives on: calls that need it connect again.
    vm.on('error', (error) => this.handlers.error(error, 'vm'));
  }

  /** Watches the VM of `boot` through its pid, unless this process already has a control channel or a watch. */
  watch(boot: BootRecord): void {
    if (this.#vm || this.#watch || !boot.vm) return;
    const identity = boot.vm;
    const timer = setInterval(() => {
      if (isAlive(identity)) return;
      this.#unwatch();
      this.handlers.vmGone(boot.id, { reason: 'unexpected', detail: 'the VM process is gone' });
    }, WATCH_INTERVAL_MS);
    timer.unref();
    this.#watch = { boot: boot.id, timer };
  }

  /** Closes the connections (only those to boot `bootId` when given: a newer boot's stay). */
  drop(bootId?: string): void {
    if (this.#watch && (bootId === undefined || this.#watch.boot === bootId)) this.#unwatch();
    if (this.#link && (bootId === undefined || this.#link.boot === bootId)) {
      const { link } = this.#link;
      this.#link = undefined;
      link.agent.close();
      void link.lock.release();
    }
    if (this.#vm && (bootId === undefined || this.#vm.boot === bootId)) {
      const { vm } = this.#vm;
      this.#vm = undefined;
      vm.detach();
    }
  }

  #unwatch(): void {
    if (this.#watch) clearInterval(this.#watch.timer);
    this.#watch = undefined;
  }
}
