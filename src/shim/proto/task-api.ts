/**
 * The `containerd.task.v2.Task` service as TypeScript sees it: its requests and responses as
 * the shim's ttRPC server decodes them (protobufjs `toObject` with `longs: Number, enums: Number,
 * bytes: Buffer, defaults: true`: every field present, camelCase names), with two conversions done
 * by the server in both directions: a `google.protobuf.Timestamp` is a `Date`, a
 * `google.protobuf.Any` is `{ typeUrl, value }`. An Any or Timestamp that is absent on the wire is
 * `null` in a request; in a response, `null`/`undefined` leaves it out.
 *
 * @module
 */

/** A `google.protobuf.Any`: the type URL and the encoded message. */
export interface AnyMessage {
  typeUrl: string;
  value: Buffer;
}

/** `google.protobuf.Empty`. */
export type Empty = Record<string, never>;

/** `containerd.types.Mount`: one of the rootfs mounts containerd hands to Create. */
export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

/** `containerd.v1.types.Status`. */
export const TaskStatus = {
  UNKNOWN: 0,
  CREATED: 1,
  RUNNING: 2,
  STOPPED: 3,
  PAUSED: 4,
  PAUSING: 5,
} as const;
export type TaskStatus = (typeof TaskStatus)[keyof typeof TaskStatus];

/** `containerd.v1.types.ProcessInfo`. */
export interface ProcessInfo {
  pid: number;
  info?: AnyMessage | null;
}

export interface CreateTaskRequest {
  id: string;
  bundle: string;
  rootfs: Mount[];
  terminal: boolean;
  stdin: string;
  stdout: string;
  stderr: string;
  checkpoint: string;
  parentCheckpoint: string;
  options: AnyMessage | null;
}
export interface CreateTaskResponse {
  pid: number;
}

export interface DeleteRequest {
  id: string;
  execId: string;
}
export interface DeleteResponse {
  pid: number;
  exitStatus: number;
  exitedAt: Date | null;
}

export interface ExecProcessRequest {
  id: string;
  execId: string;
  terminal: boolean;
  stdin: string;
  stdout: string;
  stderr: string;
  /** A runtime-spec Process as JSON (typeUrl `types.containerd.io/opencontainers/runtime-spec/1/Process`). */
  spec: AnyMessage | null;
}

export interface ResizePtyRequest {
  id: string;
  execId: string;
  width: number;
  height: number;
}

export interface StateRequest {
  id: string;
  execId: string;
}
export interface StateResponse {
  id: string;
  bundle: string;
  pid: number;
  status: TaskStatus;
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
  exitStatus: number;
  exitedAt: Date | null;
  execId: string;
}

export interface KillRequest {
  id: string;
  execId: string;
  signal: number;
  all: boolean;
}

export interface CloseIORequest {
  id: string;
  execId: string;
  stdin: boolean;
}

export interface PidsRequest {
  id: string;
}
export interface PidsResponse {
  processes: ProcessInfo[];
}

export interface CheckpointTaskRequest {
  id: string;
  path: string;
  options: AnyMessage | null;
}

export interface UpdateTaskRequest {
  id: string;
  /** A runtime-spec LinuxResources as JSON (typeUrl `types.containerd.io/opencontainers/runtime-spec/1/LinuxResources`). */
  resources: AnyMessage | null;
  annotations: Record<string, string>;
}

export interface StartRequest {
  id: string;
  execId: string;
}
export interface StartResponse {
  pid: number;
}

export interface WaitRequest {
  id: string;
  execId: string;
}
export interface WaitResponse {
  exitStatus: number;
  exitedAt: Date | null;
}

export interface StatsRequest {
  id: string;
}
export interface StatsResponse {
  stats: AnyMessage | null;
}

export interface ConnectRequest {
  id: string;
}
export interface ConnectResponse {
  shimPid: number;
  taskPid: number;
  version: string;
}

export interface ShutdownRequest {
  id: string;
  now: boolean;
}

export interface PauseRequest {
  id: string;
}
export interface ResumeRequest {
  id: string;
}

/** What a handler knows about the call besides its request. */
export interface CallContext {
  /** Aborted when the call's deadline (ttRPC timeout_nano) passes or its connection closes. */
  signal: AbortSignal;
  /** The containerd namespace, from the request metadata `containerd-namespace-ttrpc` (where containerd puts it), else `containerd-namespace`. */
  namespace: string | undefined;
  /** Every metadata key with its values, in the order sent. */
  metadata: Record<string, string[]>;
}

/** The handlers of `containerd.task.v2.Task`. Throw a TtrpcError to answer with a gRPC code. */
export interface TaskApi {
  create(r: CreateTaskRequest, ctx: CallContext): Promise<CreateTaskResponse>;
  start(r: StartRequest, ctx: CallContext): Promise<StartResponse>;
  delete(r: DeleteRequest, ctx: CallContext): Promise<DeleteResponse>;
  exec(r: ExecProcessRequest, ctx: CallContext): Promise<Empty>;
  resizePty(r: ResizePtyRequest, ctx: CallContext): Promise<Empty>;
  closeIO(r: CloseIORequest, ctx: CallContext): Promise<Empty>;
  kill(r: KillRequest, ctx: CallContext): Promise<Empty>;
  wait(r: WaitRequest, ctx: CallContext): Promise<WaitResponse>;
  state(r: StateRequest, ctx: CallContext): Promise<StateResponse>;
  pids(r: PidsRequest, ctx: CallContext): Promise<PidsResponse>;
  pause(r: PauseRequest, ctx: CallContext): Promise<Empty>;
  resume(r: ResumeRequest, ctx: CallContext): Promise<Empty>;
  update(r: UpdateTaskRequest, ctx: CallContext): Promise<Empty>;
  stats(r: StatsRequest, ctx: CallContext): Promise<StatsResponse>;
  connect(r: ConnectRequest, ctx: CallContext): Promise<ConnectResponse>;
  shutdown(r: ShutdownRequest, ctx: CallContext): Promise<Empty>;
  checkpoint(r: CheckpointTaskRequest, ctx: CallContext): Promise<Empty>;
}

/** The Task service's methods: the ttRPC method name → the TaskApi handler, request and response types. */
export const TASK_METHODS = {
  State: { handler: 'state', request: 'containerd.task.v2.StateRequest', response: 'containerd.task.v2.StateResponse' },
  Create: { handler: 'create', request: 'containerd.task.v2.CreateTaskRequest', response: 'containerd.task.v2.CreateTaskResponse' },
  Start: { handler: 'start', request: 'containerd.task.v2.StartRequest', response: 'containerd.task.v2.StartResponse' },
  Delete: { handler: 'delete', request: 'containerd.task.v2.DeleteRequest', response: 'containerd.task.v2.DeleteResponse' },
  Pids: { handler: 'pids', request: 'containerd.task.v2.PidsRequest', response: 'containerd.task.v2.PidsResponse' },
  Pause: { handler: 'pause', request: 'containerd.task.v2.PauseRequest', response: 'google.protobuf.Empty' },
  Resume: { handler: 'resume', request: 'containerd.task.v2.ResumeRequest', response: 'google.protobuf.Empty' },
  Checkpoint: { handler: 'checkpoint', request: 'containerd.task.v2.CheckpointTaskRequest', response: 'google.protobuf.Empty' },
  Kill: { handler: 'kill', request: 'containerd.task.v2.KillRequest', response: 'google.protobuf.Empty' },
  Exec: { handler: 'exec', request: 'containerd.task.v2.ExecProcessRequest', response: 'google.protobuf.Empty' },
  ResizePty: { handler: 'resizePty', request: 'containerd.task.v2.ResizePtyRequest', response: 'google.protobuf.Empty' },
  CloseIO: { handler: 'closeIO', request: 'containerd.task.v2.CloseIORequest', response: 'google.protobuf.Empty' },
  Update: { handler: 'update', request: 'containerd.task.v2.UpdateTaskRequest', response: 'google.protobuf.Empty' },
  Wait: { handler: 'wait', request: 'containerd.task.v2.WaitRequest', response: 'containerd.task.v2.WaitResponse' },
  Stats: { handler: 'stats', request: 'containerd.task.v2.StatsRequest', response: 'containerd.task.v2.StatsResponse' },
  Connect: { handler: 'connect', request: 'containerd.task.v2.ConnectRequest', response: 'containerd.task.v2.ConnectResponse' },
  Shutdown: { handler: 'shutdown', request: 'containerd.task.v2.ShutdownRequest', response: 'google.protobuf.Empty' },
} as const satisfies Record<string, { handler: keyof TaskApi; request: string; response: string }>;

/** The ttRPC service name of the Task API. */
export const TASK_SERVICE = 'containerd.task.v2.Task';
