/**
 * The QEMU backend: command line, QMP client, VM process, hotplug, raw baseline boot.
 *
 * @module
 */
export * from './baseline.js';
export * from './cmdline.js';
export * from './hotplug.js';
export * from './hypervisor.js';
export * from './qmp.js';
export * from './vm.js';
