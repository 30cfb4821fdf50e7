import { describe, expect, it } from 'vitest';
import { MIN_MEMORY_MIB, resolveSandboxConfig } from '../../src/sandbox/config.js';
import { InvalidArgumentError } from '../../src/errors.js';

describe('sandbox config', () => {
  it('fills in defaults', () => {
    const c = resolveSandboxConfig({ id: 'a', stateDir: '/tmp/x' });
    expect(c).toMatchObject({ id: 'a', stateDir: '/tmp/x', cpus: 1, memoryMiB: 256, machine: 'q35', sharedFs: true, sharedFsCache: 'auto', agentPorts: 4, debug: false, extraDevices: [] });
    expect(c.guest).toMatchObject({ kernelArgs: [], build: 'if-missing' });
    expect(resolveSandboxConfig({}).id).toMatch(/^vp-[0-9a-f]{12}$/);
    expect(resolveSandboxConfig({ sharedFsCache: 'always' }).sharedFsCache).toBe('always');
  });
  it('takes no less guest RAM than boots the guest, per machine type (q35 128 MiB, microvm 192 MiB)', () => {
    expect(MIN_MEMORY_MIB).toEqual({ q35: 128, microvm: 192 });
    expect(resolveSandboxConfig({ memoryMiB: 128 }).memoryMiB).toBe(128);
    expect(resolveSandboxConfig({ machine: 'microvm', memoryMiB: 192 }).memoryMiB).toBe(192);
    // 64 passed and the guest panicked ("System is deadlocked on memory"): now create() says why.
    expect(() => resolveSandboxConfig({ memoryMiB: 64 })).toThrow('memoryMiB: 64 MiB is less than the 128 MiB a q35 sandbox needs to boot its guest');
    expect(() => resolveSandboxConfig({ memoryMiB: 127 })).toThrow(InvalidArgumentError);
    expect(() => resolveSandboxConfig({ machine: 'microvm', memoryMiB: 191 })).toThrow('memoryMiB: 191 MiB is less than the 192 MiB a microvm sandbox needs to boot its guest');
    expect(() => resolveSandboxConfig({ memoryMiB: Number.NaN })).toThrow('memoryMiB: NaN is not an integer');
  });
  it('rejects every bad field with its name', () => {
    const cases: [object, RegExp][] = [
      [{ id: 'a/b' }, /^id: /],
      [{ id: '..' }, /^id: /],
      [{ cpus: 0 }, /^cpus: /],
      [{ cpus: 2.5 }, /^cpus: /],
      [{ memoryMiB: 10 }, /^memoryMiB: /],
      [{ machine: 'pc' }, /^machine: /],
      [{ stateDir: 'relative' }, /^stateDir: /],
      [{ guest: { kernel: 'vmlinux' } }, /^guest.kernel: /],
      [{ guest: { rootfsImage: 'rootfs.ext4' } }, /^guest.rootfsImage: /],
      [{ guest: { kernelArgs: ['a b'] } }, /^guest.kernelArgs: /],
      [{ guest: { build: 'always' } }, /^guest.build: /],
      [{ guest: { nope: 1 } }, /^guest.nope: unknown field/],
      [{ sharedFs: 'yes' }, /^sharedFs: /],
      [{ sharedFsCache: 'loose' }, /^sharedFsCache: must be "auto", "always" or "none"/],
      [{ agentPorts: 0 }, /^agentPorts: /],
      [{ extraDevices: [{ kind: 'virtio-serial', id: 'x', ports: [] }] }, /^extraDevices\[0\]\.ports: /],
      [{ colour: 'red' }, /^colour: unknown field/],
    ];
    for (const [config, message] of cases) {
      let error: unknown;
      try {
        resolveSandboxConfig(config as never);
      } catch (e) {
        error = e;
      }
      expect(error, JSON.stringify(config)).toBeInstanceOf(InvalidArgumentError);
      expect((error as Error).message, JSON.stringify(config)).toMatch(message);
    }
  });
});
