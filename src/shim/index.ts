/**
 * The containerd shim (`containerd-shim-vmpod-v2`): mostly a bin; what is public here is the wire
 * layer a caller may reuse (the Task API's types and the protobuf conversions).
 *
 * @module
 */
export type * from './proto/task-api.js';
export { TASK_METHODS, TASK_SERVICE, TaskStatus } from './proto/task-api.js';
export { GrpcCode, TtrpcError } from './ttrpc/status.js';
