/**
 * The VM layer: the {@link Hypervisor} interface, its QEMU implementation, virtiofsd.
 *
 * @module
 */
export * from './config.js';
export * from './console.js';
export * from './errors.js';
export * from './host.js';
export * from './hypervisor.js';
export * from './qemu/index.js';
export * from './virtiofsd.js';
