/**
 * `vmpod/hypervisor`: the VM layer under a sandbox. The {@link Hypervisor} interface (a sandbox's
 * `hypervisor` option), its QEMU implementation with the typed VM config, the QMP client and
 * hot plug, and the virtiofsd launcher. See docs/hypervisor.md.
 *
 * @module vmpod/hypervisor
 */
export * from '../hypervisor/index.js';
