/**
 * Containers in a sandbox, their processes, and OCI specs on the host side.
 *
 * @module
 */
export { Container, Process } from './container.js';
export type { ContainerEvents, ContainerResources, ContainerStats, ExecOptions, ExitStatus, SignalOptions, StdioOptions } from './container.js';
export { checkResources, resourcesFromOci, type OciResourcesUpdate } from '../agent/resources.js';
export { InvalidBundleError, readBundle, defaultSpec, DEFAULT_CAPABILITIES } from './spec.js';
export type { HostBundle, OciMount, OciProcess, OciSpec, ProcessOverrides } from './spec.js';
export { ContainerLogReader, DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_MAX_FILES } from './log-file.js';
export type { ContainerLogConfig, LogLine, LogOptions } from './log-file.js';
export { parseRecord, type LogRecord, type LogStream } from './log-format.js';
