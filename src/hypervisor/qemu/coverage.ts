/**
 * Coverage runs only (docs/testing.md, "Coverage"): when `VMPOD_GUEST_COVERAGE_DIR` is set, each
 * QEMU VM gets one more virtio-serial port, `vmpod.coverage`, which QEMU writes to a new file in
 * that folder. An agent built with coverage (cmake -DVMPOD_COVERAGE=ON) sends its gcov profile
 * there when it powers the guest off; any other agent leaves the port alone. Without the
 * variable nothing changes: the port is a test hook, never part of a production VM.
 *
 * @internal
 * @module
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { MachineProfile } from '../hypervisor.js';

/** The guest's name of the port (the agent looks it up in /sys/class/virtio-ports). */
export const COVERAGE_PORT_NAME = 'vmpod.coverage';

/** The extra QEMU arguments of a coverage run, or none. */
export function guestCoverageArgs(machine: MachineProfile, env: NodeJS.ProcessEnv = process.env): string[] {
  const dir = env['VMPOD_GUEST_COVERAGE_DIR'];
  if (dir === undefined || dir === '' || !path.isAbsolute(dir) || dir.includes(',')) return [];
  // Its own controller, last on the command line: no other device moves.
  const controller = machine === 'microvm' ? 'virtio-serial-device' : 'virtio-serial-pci';
  const file = path.join(dir, `${Date.now()}-${process.pid}-${randomBytes(4).toString('hex')}.gcov-stream`);
  return [
    '-device', `${controller},id=vmpodcov`,
    '-chardev', `file,id=vmpodcov0,path=${file}`,
    '-device', `virtserialport,bus=vmpodcov.0,nr=1,chardev=vmpodcov0,name=${COVERAGE_PORT_NAME}`,
  ];
}
