// The coverage port of test VMs (src/hypervisor/qemu/coverage.ts): only with
// VMPOD_GUEST_COVERAGE_DIR, on a controller of its own, written to a new file in that folder.
import { describe, expect, it } from 'vitest';
import { COVERAGE_PORT_NAME, guestCoverageArgs } from '../../src/hypervisor/qemu/coverage.js';

describe('guestCoverageArgs', () => {
  it('adds nothing without VMPOD_GUEST_COVERAGE_DIR, or with an unusable one', () => {
    expect(guestCoverageArgs('q35', {})).toEqual([]);
    expect(guestCoverageArgs('q35', { VMPOD_GUEST_COVERAGE_DIR: '' })).toEqual([]);
    expect(guestCoverageArgs('q35', { VMPOD_GUEST_COVERAGE_DIR: 'relative/dir' })).toEqual([]);
    expect(guestCoverageArgs('q35', { VMPOD_GUEST_COVERAGE_DIR: '/a,b' })).toEqual([]);
  });

  it('adds a virtio-serial port vmpod.coverage backed by a new file in the folder', () => {
    const env = { VMPOD_GUEST_COVERAGE_DIR: '/var/tmp/cov' };
    const args = guestCoverageArgs('q35', env);
    expect(args).toHaveLength(6);
    expect(args[1]).toBe('virtio-serial-pci,id=vmpodcov');
    expect(args[3]).toMatch(/^file,id=vmpodcov0,path=\/var\/tmp\/cov\/[0-9]+-[0-9]+-[0-9a-f]{8}\.gcov-stream$/u);
    expect(args[5]).toBe(`virtserialport,bus=vmpodcov.0,nr=1,chardev=vmpodcov0,name=${COVERAGE_PORT_NAME}`);
    expect(guestCoverageArgs('q35', env)[3]).not.toBe(args[3]); // one file per VM
    expect(guestCoverageArgs('microvm', env)[1]).toBe('virtio-serial-device,id=vmpodcov');
  });
});
