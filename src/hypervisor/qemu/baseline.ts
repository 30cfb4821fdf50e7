/**
 * A bare QEMU boot, the peer vmpod's boot is measured against: the command line of
 * docs/hypervisor.md ("fastest measured line") with the same kernel, initramfs and arguments,
 * console on a pipe, resolved when a marker line appears.
 *
 * @module
 */
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { AbortError, TimeoutError } from '../../errors.js';
import { kvmUsable } from '../host.js';
import { DEFAULT_QEMU_BINARY } from './hypervisor.js';

/** Options of {@link rawQemuBoot}. */
export interface RawQemuBootOptions {
  readonly kernel: string;
  readonly initramfs: string;
  /** The exact `-append` string. */
  readonly append: string;
  /** The console line that ends the measurement, e.g. `vmpod-init: ready`. */
  readonly marker: string;
  /** Default `microvm`. */
  readonly machine?: 'microvm' | 'q35';
  readonly cpus?: number;
  readonly memoryMiB?: number;
  readonly binary?: string;
  /** Default 60 s. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

/** The outcome of {@link rawQemuBoot}. */
export interface RawQemuBootResult {
  /** Milliseconds from spawn to the marker line on the console. */
  readonly markerMs: number;
  /** The command line that ran (after the binary). */
  readonly args: readonly string[];
}

/**
 * Boots `qemu-system-x86_64 -M microvm,x-option-roms=off,isa-serial=on -cpu max -smp 1 -m 256M
 * -nodefaults -no-user-config -nographic -serial stdio -kernel K -initrd I -append A` (KVM and
 * `-cpu host` when available), resolves when `marker` appears, then kills QEMU and waits for it.
 */
export async function rawQemuBoot(options: RawQemuBootOptions): Promise<RawQemuBootResult> {
  const kvm = await kvmUsable(options.binary ?? DEFAULT_QEMU_BINARY);
  const machine = options.machine ?? 'microvm';
  const args = [
    '-M',
    machine === 'microvm' ? 'microvm,x-option-roms=off,isa-serial=on' : 'q35',
    ...(kvm ? ['-accel', 'kvm', '-cpu', 'host'] : ['-cpu', 'max']),
    '-smp',
    String(options.cpus ?? 1),
    '-m',
    `${options.memoryMiB ?? 256}M`,
    '-nodefaults',
    '-no-user-config',
    '-nographic',
    '-serial',
    'stdio',
    '-kernel',
    options.kernel,
    '-initrd',
    options.initramfs,
    '-append',
    options.append,
  ];
  if (options.signal?.aborted) throw new AbortError('raw QEMU boot', { cause: options.signal.reason });
  const timeoutMs = options.timeoutMs ?? 60_000;
  const start = performance.now();
  const child = spawn(options.binary ?? DEFAULT_QEMU_BINARY, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  try {
    const markerMs = await new Promise<number>((resolve, reject) => {
      let text = '';
      const timer = setTimeout(() => reject(new TimeoutError('raw QEMU boot', timeoutMs)), timeoutMs);
      const onAbort = (): void => reject(new AbortError('raw QEMU boot', { cause: options.signal?.reason }));
      options.signal?.addEventListener('abort', onAbort, { once: true });
      const done = (): void => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
      };
      child.stdout.on('data', (chunk: Buffer) => {
        text = (text + chunk.toString('latin1')).slice(-64 * 1024);
        if (text.includes(options.marker)) {
          done();
          resolve(performance.now() - start);
        }
      });
      child.stderr.resume();
      child.once('error', (error) => {
        done();
        reject(error);
      });
      child.once('exit', (code) => {
        done();
        reject(new Error(`QEMU exited (${code}) before "${options.marker}": ${text.slice(-500)}`));
      });
    });
    return { markerMs, args };
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
}
