/**
 * Wire types of the VrunGPU gateway, as the sidebar sees them through the
 * Jupyter server proxy (`<base_url>/vrungpu/...`).
 */

/** Task statuses, exactly as the gateway reports them. */
export type TaskStatus = 'pending' | 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';

/** Statuses in which a task can still be cancelled. */
export const LIVE_STATUSES: ReadonlySet<string> = new Set<TaskStatus>([
  'pending',
  'queued',
  'running'
]);

/** One GPU as reported by `GET /gpu` and the WebSocket. */
export interface IGpuDevice {
  index: number;
  uuid?: string | null;
  name: string;
  memory_total_mb: number | null;
  memory_used_mb: number | null;
  memory_free_mb?: number | null;
  utilization_percent: number | null;
  temperature_c?: number | null;
  task_id?: string | null;
  /** Who holds the GPU (gateways with remote kernels); absent on older gateways. */
  holder?: GpuHolder | null;
  simulated?: boolean;
}

/** The holder of a GPU, as `GET /gpu` and the WebSocket's `gpu_update` name it. */
export type GpuHolder =
  | { kind: 'kernel'; id: string; session: string | null; name: string }
  | { kind: 'task'; id: string }
  | { kind: 'worker'; id: string; model_id: string };

/** `GET /gpu`. */
export interface IGpuInfo {
  available: boolean;
  devices: IGpuDevice[];
  error?: string | null;
}

/** `GET /gpu/pool`. */
export interface IGpuPool {
  total_gpus: number;
  available_gpus: number[];
  busy_gpus: Record<string, number>;
  allocations?: Record<string, number[]>;
}

/** A task; list items carry no full logs. */
export interface ITask {
  task_id: string;
  name?: string | null;
  status: TaskStatus;
  task_type?: string | null;
  device?: string | null;
  gpu_id?: number | null;
  gpu_ids?: number[] | null;
  created_at?: string | null;
  started_at?: string | null;
  completed_at?: string | null;
  duration?: number | null;
  progress?: number | null;
  progress_message?: string | null;
  error?: string | null;
  queue_position?: number | null;
}

/** `GET /tasks`: a bare array, as the seed server answers (the total is a header). */
export type ITaskList = ITask[];

/** `GET /task/{id}/logs`. */
export interface ITaskLogs {
  task_id: string;
  stream: string;
  offset: number;
  content: string;
}

/** A remote kernel, as `GET /api/kernels` lists it (Jupyter's model plus ours). */
export interface IKernel {
  id: string;
  /** The kernelspec, e.g. `vrungpu-1gpu`. */
  name: string;
  last_activity: string | null;
  execution_state: string;
  connections: number;
  session: string | null;
  gpus: number[];
  device: string | null;
  created_at: string | null;
  idle_s: number | null;
  queue_position?: number | null;
}

/** `GET <base_url>/vrungpu/dashboard` (served by the Jupyter server extension). */
export interface IDashboardLink {
  url: string;
}

/** Output lines of one task, as the model hands them to the log view. */
export interface ITaskOutput {
  taskId: string;
  stream: string;
  lines: string[];
}

/** Messages the gateway sends over `/ws`. */
export type ServerMessage =
  | { type: 'init'; gpus: unknown; pool?: IGpuPool; tasks?: ITask[] }
  | { type: 'gpu_update'; gpus: unknown; pool?: IGpuPool }
  | { type: 'task_update'; task: ITask }
  | {
      type: 'task_output';
      task_id: string;
      stream: string;
      line?: string;
      lines?: string[];
      offset?: number;
    }
  | { type: 'subscribed'; task_id: string; offsets?: Record<string, number> }
  | { type: 'unsubscribed'; task_id: string }
  | { type: 'gap'; task_id?: string; stream?: string; offset?: number }
  | { type: 'error'; detail?: string; code?: string; task_id?: string };

/** Messages the sidebar sends over `/ws`. */
export type ClientMessage =
  | { type: 'subscribe'; task_id: string; offsets: Record<string, number> }
  | { type: 'unsubscribe'; task_id: string };
