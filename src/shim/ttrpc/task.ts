/**
 * The Task service on ttRPC: {@link registerTaskApi} puts a {@link TaskApi} on a server (each
 * method's request decoded to the plain object of task-api.ts, its answer encoded back), and
 * {@link callTask} is the other side, for the tests.
 *
 * @module
 */
import type { CallContext, TaskApi } from '../proto/task-api.js';
import { TASK_METHODS, TASK_SERVICE } from '../proto/task-api.js';
import { decodeMessage, encodeMessage } from '../proto/index.js';
import type { CallOptions, TtrpcClient } from './client.js';
import type { TtrpcServer } from './server.js';
import { GrpcCode, TtrpcError } from './status.js';

export type TaskMethodName = keyof typeof TASK_METHODS;

/** Registers every method of `containerd.task.v2.Task` on `server`, served by `api`. */
export function registerTaskApi(server: TtrpcServer, api: TaskApi): void {
  for (const [method, { handler, request, response }] of Object.entries(TASK_METHODS)) {
    server.register(TASK_SERVICE, method, async (payload: Buffer, ctx: CallContext) => {
      const decoded = decodeMessage(request, payload);
      const fn = api[handler] as (r: unknown, c: CallContext) => Promise<object>;
      const answer = await fn.call(api, decoded, ctx);
      return encodeMessage(response, answer ?? {});
    });
  }
}

/**
 * A TaskApi that answers UNIMPLEMENTED to everything: what the server registers while no task
 * service is given to it.
 */
export function unimplementedTaskApi(): TaskApi {
  const refuse = (name: string) => (): Promise<never> => Promise.reject(new TtrpcError(GrpcCode.UNIMPLEMENTED, `${TASK_SERVICE}/${name} is not implemented by this shim`));
  const api: Record<string, unknown> = {};
  for (const [method, { handler }] of Object.entries(TASK_METHODS)) api[handler] = refuse(method);
  return api as unknown as TaskApi;
}

type RequestOf<M extends TaskMethodName> = Parameters<TaskApi[(typeof TASK_METHODS)[M]['handler']]>[0];
type ResponseOf<M extends TaskMethodName> = Awaited<ReturnType<TaskApi[(typeof TASK_METHODS)[M]['handler']]>>;

/** Calls a Task method through a ttRPC client (the request may leave fields out). */
export async function callTask<M extends TaskMethodName>(client: TtrpcClient, method: M, request: Partial<RequestOf<M>>, options: CallOptions = {}): Promise<ResponseOf<M>> {
  const spec = TASK_METHODS[method];
  const bytes = await client.call(TASK_SERVICE, method, encodeMessage(spec.request, request), options);
  return decodeMessage<ResponseOf<M>>(spec.response, bytes);
}
