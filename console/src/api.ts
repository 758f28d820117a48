// The parts of ferry's API the console uses, typed as the server sends them.

export interface FieldError {
  field: string;
  message: string;
}

export interface Progress {
  fraction?: number | null;
  bytesDone: number;
  bytesTotal: number;
  eventsDone?: number;
  eventsTotal?: number;
  etaSeconds?: number | null;
}

export interface RunRef {
  id: string;
  phase: string;
  finishedAt?: string;
  error?: string;
}

export interface TransferStatus {
  phase: string | null;
  error?: string;
  numRecords: number;
  bytes: number;
  progress?: Progress;
  observedGeneration: number;
  lastScheduleTime?: string;
  nextScheduleTime?: string;
  lastSuccessTime?: string;
  lastRecordTime?: string;
  activeRun?: string;
  lastCompletedRun?: RunRef;
  lastFailedRun?: RunRef;
  sourceSchema?: unknown;
  destinationSchema?: unknown;
  stream?: Record<string, unknown>;
}

export interface Metadata {
  name: string;
  labels?: Record<string, string>;
  [key: string]: unknown;
}

export interface Transfer {
  apiVersion: string;
  kind: string;
  metadata: Metadata;
  spec: Record<string, unknown> & { schedule?: string; suspend?: boolean };
  status: TransferStatus;
}

export interface RunStats {
  numRecords: number;
  bytes: number;
  objects: number;
  durationSeconds: number;
  bytesPerSecond: number;
  recordsPerSecond: number;
  progress?: Progress;
}

export interface Run {
  id: string;
  transfer: string;
  phase: string;
  trigger: string;
  attempt: number;
  generation: number;
  scheduledFor?: string;
  nextAttemptAt?: string;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  owner?: string;
  stats: RunStats;
  error?: string;
}

export interface EventView {
  seq: number;
  transfer: string;
  run?: string;
  time: string;
  type: string;
  reason: string;
  message: string;
  data: Record<string, unknown>;
}

export interface DataPlane {
  id: string;
  url: string;
  allowedSourceTypes: string[];
  allowedDestinationTypes: string[];
  labels: Record<string, string>;
  properties: Record<string, unknown>;
  state: string;
  turnCount: number;
  lastActiveMs?: number;
  load?: { activeRuns: number; bytesPerSecond: number; capacity?: number };
  lastHeartbeatMs?: number;
  engines?: { name: string; type: string; sourceTypes: string[]; destinationTypes: string[] }[];
}

export interface TaskSpec {
  name: string;
  dependsOn?: { task: string; when?: string }[];
  [key: string]: unknown;
}

export interface Pipeline {
  apiVersion: string;
  kind: string;
  metadata: Metadata;
  spec: { tasks?: TaskSpec[]; schedule?: string; suspend?: boolean; [key: string]: unknown };
  status: {
    phase: string;
    generation: number;
    createdAt: string;
    activeRuns: string[];
    lastRun?: RunRef;
    lastScheduleTime?: string;
  };
}

export interface TaskRun {
  name: string;
  phase: string;
  attempt: number;
  transfer?: string;
  run?: string;
  startedAt?: string;
  finishedAt?: string;
  nextAt?: string;
  condition?: string;
  progress?: Progress;
  stats?: Record<string, unknown>;
  error?: string;
  handled?: boolean;
}

export interface PipelineRun {
  id: string;
  pipeline: string;
  phase: string;
  trigger: string;
  params: Record<string, string>;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  error?: string;
  tasks: TaskRun[];
}

/** An answer other than 2xx: the server's one-line error and, for a 422, every field. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly details: FieldError[] = [],
  ) {
    super(message);
  }
}

const TOKEN_KEY = "ferry.token";

/** The token lives in this tab's sessionStorage only: closing the tab signs out. */
export const session = {
  token: (): string | null => sessionStorage.getItem(TOKEN_KEY),
  signIn: (token: string) => sessionStorage.setItem(TOKEN_KEY, token),
  signOut: () => sessionStorage.removeItem(TOKEN_KEY),
};

let onUnauthorized: () => void = () => {};

/** Called when the server refuses the token, so the app can ask for another. */
export function whenUnauthorized(handler: () => void) {
  onUnauthorized = handler;
}

export function unauthorized() {
  onUnauthorized();
}

export async function call<T>(
  method: string,
  path: string,
  body?: { text: string; contentType: string },
  token = session.token(),
): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body) headers["Content-Type"] = body.contentType;
  const response = await fetch(path, { method, headers, body: body?.text });
  const text = await response.text();
  let parsed: unknown = undefined;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = text;
  }
  if (!response.ok) {
    if (response.status === 401) unauthorized();
    const e = (parsed ?? {}) as { error?: string; details?: FieldError[] };
    const message = typeof parsed === "string" ? parsed : (e.error ?? response.statusText);
    throw new ApiError(response.status, message || `HTTP ${response.status}`, e.details ?? []);
  }
  return parsed as T;
}

export const api = {
  transfers: (phase?: string, labels?: string) => {
    const q = new URLSearchParams();
    if (phase) q.set("phase", phase);
    if (labels) q.set("labelSelector", labels);
    const query = q.toString();
    return call<Transfer[]>("GET", `/v1/transfers${query ? `?${query}` : ""}`);
  },
  transfer: (name: string) => call<Transfer>("GET", `/v1/transfers/${enc(name)}`),
  runs: (name: string) => call<Run[]>("GET", `/v1/transfers/${enc(name)}/runs`),
  action: (kind: "transfers" | "pipelines", name: string, what: "run" | "suspend" | "resume") =>
    call<unknown>("POST", `/v1/${kind}/${enc(name)}/${what}`),
  remove: (kind: "transfers" | "pipelines", name: string, cleanup = false) =>
    call<unknown>("DELETE", `/v1/${kind}/${enc(name)}${cleanup ? "?cleanup=true" : ""}`),
  dataplanes: () => call<DataPlane[]>("GET", "/v1/dataplanes"),
  pipelines: () => call<Pipeline[]>("GET", "/v1/pipelines"),
  pipeline: (name: string) => call<Pipeline>("GET", `/v1/pipelines/${enc(name)}`),
  pipelineRuns: (name: string) => call<PipelineRun[]>("GET", `/v1/pipelines/${enc(name)}/runs`),
  pipelineRun: (name: string, id: string) =>
    call<PipelineRun>("GET", `/v1/pipelines/${enc(name)}/runs/${enc(id)}`),
};

export const enc = encodeURIComponent;
