/**
 * Errors of the agent channel. Every failure of an {@link AgentClient} call is one of these (or
 * an {@link InvalidArgumentError}, {@link AbortError} or {@link TimeoutError} from `src/errors.ts`).
 *
 * @module
 */
import { VmpodError, type VmpodErrorOptions } from '../errors.js';

/** Error codes the agent puts in its error responses (docs/agent-protocol.md, "Errors"). */
export type AgentErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'FAILED_PRECONDITION'
  | 'BUSY'
  | 'UNIMPLEMENTED'
  | 'PERMISSION_DENIED'
  | 'INTERNAL';

/** The agent answered a request with an error. */
export class AgentError extends VmpodError {
  /** The agent's error code, e.g. `NOT_FOUND`. */
  readonly agentCode: AgentErrorCode;
  /** The errno name behind the error, when a system call failed in the guest (e.g. `ENOENT`). */
  readonly errnoName: string | undefined;
  /** The request method that failed, e.g. `CreateContainer`. */
  readonly method: string;

  constructor(method: string, agentCode: AgentErrorCode, message: string, errnoName?: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_AGENT', `${method}: ${message}`, options);
    this.method = method;
    this.agentCode = agentCode;
    this.errnoName = errnoName;
  }
}

/**
 * The peer broke the protocol (bad frame, oversized frame, invalid JSON, a message that does not
 * match its schema, credit exceeded, unknown stream). The connection is closed when this happens.
 */
export class AgentProtocolError extends VmpodError {
  constructor(message: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_AGENT_PROTOCOL', `agent protocol error: ${message}`, options);
  }
}

/** The connection to the agent is closed (or closed while the call was pending). */
export class AgentClosedError extends VmpodError {
  constructor(message = 'the connection to the agent is closed', options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_AGENT_CLOSED', message, options);
  }
}
