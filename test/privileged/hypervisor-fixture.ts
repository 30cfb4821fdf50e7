// Helpers of the privileged hypervisor tests: a VM config with the test shell port, a client of
// that shell, and cleanup of everything a test started.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { GuestAssets } from '../../src/guest/index.js';
import type { MachineProfile, VmConfig, VmDevice } from '../../src/hypervisor/hypervisor.js';
import { isAlive, type ProcessIdentity } from '../../src/host/process.js';
import { TEST_PORT } from './guest-fixture.js';

/** `vt` + 4 random hex characters. */
export function uniqueName(): string {
  return `vt${randomBytes(2).toString('hex')}`;
}

/** A short-pathed temp dir (unix socket paths are limited to 107 bytes). */
export function makeRunDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'vt-'));
}

export function vmConfig(assets: GuestAssets, runDir: string, machine: MachineProfile, extra: Partial<VmConfig> = {}, devices: VmDevice[] = []): VmConfig {
  return {
    id: uniqueName(),
    machine,
    cpus: 1,
    memory: { sizeMiB: 256 },
    kernel: assets.kernel,
    initramfs: assets.initramfs,
    consoleLog: path.join(runDir, 'console.log'),
    runDir,
    devices: [{ kind: 'virtio-serial', id: 'vs0', ports: [{ name: TEST_PORT, socket: path.join(runDir, 'test.sock') }] }, ...devices],
    ...extra,
  };
}

/** A client of the test agent's shell on the virtio-serial port. */
export class GuestShell {
  #socket: net.Socket;
  #buffer = '';
  #waiters: (() => void)[] = [];
  #seq = 0;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.#buffer += chunk;
      for (const w of this.#waiters.splice(0)) w();
    });
    socket.on('error', () => undefined);
  }

  static async connect(socketPath: string): Promise<GuestShell> {
    const socket = net.connect(socketPath);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new GuestShell(socket);
  }

  /** Runs a command in the guest; resolves with its output and exit status. */
  async run(command: string, timeoutMs = 30_000): Promise<{ output: string; status: number }> {
    const token = `@@done-${++this.#seq}-${randomBytes(3).toString('hex')}@@`;
    this.#socket.write(`${command}\necho "${token}$?"\n`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = this.#buffer.indexOf(token);
      const end = at >= 0 ? this.#buffer.indexOf('\n', at) : -1;
      if (end >= 0) {
        const output = this.#buffer.slice(0, at);
        const status = Number(this.#buffer.slice(at + token.length, end));
        this.#buffer = this.#buffer.slice(end + 1);
        return { output, status };
      }
      if (Date.now() > deadline) throw new Error(`guest command timed out: ${command}\n${this.#buffer.slice(-500)}`);
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
  }

  /** Sends a command without waiting (e.g. `poweroff -f`). */
  send(command: string): void {
    this.#socket.write(`${command}\n`);
  }

  close(): void {
    this.#socket.destroy();
  }
}

/** Kills what a test left running, by identity (never by name). */
export function killIfAlive(identity: ProcessIdentity | undefined): void {
  if (identity && isAlive(identity)) {
    try {
      process.kill(identity.pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
}
