/**
 * vmpod-runtime's public pieces (the bin is dist/runtime/main.js): the annotations that choose a
 * container's VM, the OCI state it prints, and its error class. docs/oci-runtime.md.
 *
 * @module
 */
export { SANDBOX_ANNOTATION, CPUS_ANNOTATION, MEMORY_ANNOTATION, sandboxName, librarySandboxId } from './sandbox-choice.js';
export { DEFAULT_ROOT, type OciState, type RuntimeStatus } from './state.js';
export { RuntimeError } from './log.js';
export { features } from './features.js';
