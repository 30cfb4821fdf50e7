/**
 * gRPC status codes as ttRPC carries them (google.rpc.Status.code), and the error a handler
 * throws to answer with one. containerd turns NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION,
 * UNIMPLEMENTED... into its own errdefs errors, so the code matters, not only the message.
 *
 * @module
 */
import { AbortError, AlreadyExistsError, InvalidArgumentError, InvalidStateError, NotFoundError, TimeoutError, VmpodError } from '../../errors.js';

export const GrpcCode = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;
export type GrpcCode = (typeof GrpcCode)[keyof typeof GrpcCode];

const NAMES = new Map<number, string>(Object.entries(GrpcCode).map(([name, code]) => [code, name]));

/** The name of a code (`NOT_FOUND`), or `CODE(n)` for one outside the table. */
export function grpcCodeName(code: number): string {
  return NAMES.get(code) ?? `CODE(${code})`;
}

/**
 * A ttRPC call failed with a gRPC status (thrown by handlers; rejected by the client). The gRPC
 * code is `grpcCode`; `code` is, as on every VmpodError, the string `ERR_VMPOD_TTRPC`.
 */
export class TtrpcError extends VmpodError {
  constructor(
    readonly grpcCode: GrpcCode | number,
    message: string,
    options: { cause?: unknown } = {},
  ) {
    super('ERR_VMPOD_TTRPC', message, options);
  }
}

/** The status to answer with for an error a handler threw. */
export function statusOf(error: unknown): { code: number; message: string } {
  if (error instanceof TtrpcError) return { code: error.grpcCode, message: error.message };
  if (error instanceof NotFoundError) return { code: GrpcCode.NOT_FOUND, message: error.message };
  if (error instanceof AlreadyExistsError) return { code: GrpcCode.ALREADY_EXISTS, message: error.message };
  if (error instanceof InvalidArgumentError) return { code: GrpcCode.INVALID_ARGUMENT, message: error.message };
  if (error instanceof InvalidStateError) return { code: GrpcCode.FAILED_PRECONDITION, message: error.message };
  if (error instanceof AbortError || error instanceof TimeoutError) return { code: GrpcCode.DEADLINE_EXCEEDED, message: error.message };
  if (error instanceof Error && (error.name === 'AbortError' || error.name === 'TimeoutError')) return { code: GrpcCode.DEADLINE_EXCEEDED, message: error.message };
  if (error instanceof Error) return { code: GrpcCode.UNKNOWN, message: error.message };
  return { code: GrpcCode.UNKNOWN, message: String(error) };
}
