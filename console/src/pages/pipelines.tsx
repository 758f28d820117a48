import { useState } from "preact/hooks";
import { api, type Pipeline, type PipelineRun, type TaskRun, type TaskSpec } from "../api";
import { Confirm, ErrorNote, Json, Phase, ProgressBar, StreamBadge, Time } from "../components";
import { useLoaded, useStream } from "../live";
import { Link, navigate, useLocation } from "../router";

export function Pipelines() {
  const list = useLoaded(api.pipelines, "pipelines");
  const stream = useStream(
    "/v1/events",
    false,
    (m) => {
      if (m.data.includes('"transfer":"pipeline/')) list.reload();
    },
    list.reload,
  );
  return (
    <section aria-labelledby="pipelines-title">
      <div class="page-head">
        <h1 id="pipelines-title">Pipelines</h1>
        <StreamBadge state={stream} />
      </div>
      <ErrorNote error={list.error} />
      {list.data === undefined && !list.error && <p aria-busy="true">Loading…</p>}
      {list.data?.length === 0 && <p class="empty">No pipelines yet. Apply a manifest of kind Pipeline.</p>}
      {list.data && list.data.length > 0 && (
        <table class="cards">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">State</th>
              <th scope="col">Tasks</th>
              <th scope="col">Schedule</th>
              <th scope="col">Last run</th>
              <th scope="col">Active runs</th>
            </tr>
          </thead>
          <tbody>
            {list.data.map((p) => (
              <tr key={p.metadata.name}>
                <th scope="row" data-label="Name">
                  <Link to={`/pipelines/${encodeURIComponent(p.metadata.name)}`}>{p.metadata.name}</Link>
                </th>
                <td data-label="State">
                  <Phase phase={p.status.phase} />
                </td>
                <td data-label="Tasks">{p.spec.tasks?.length ?? 0}</td>
                <td data-label="Schedule">{p.spec.schedule ? <code>{p.spec.schedule}</code> : <span class="muted">–</span>}</td>
                <td data-label="Last run">
                  {p.status.lastRun ? (
                    <>
                      <Phase phase={p.status.lastRun.phase} /> <Time iso={p.status.lastRun.finishedAt} />
                    </>
                  ) : (
                    <span class="muted">–</span>
                  )}
                </td>
                <td data-label="Active runs">{p.status.activeRuns.length}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

export function PipelineDetail({ name }: { name: string }) {
  const { query } = useLocation();
  const pipeline = useLoaded(() => api.pipeline(name), name);
  const runs = useLoaded(() => api.pipelineRuns(name), name);
  const chosen = query.get("run") ?? runs.data?.[0]?.id ?? "";
  const run = useLoaded(
    () => (chosen ? api.pipelineRun(name, chosen) : Promise.resolve(undefined)),
    `${name}|${chosen}`,
  );
  const [actionError, setActionError] = useState<Error | undefined>();
  const [confirming, setConfirming] = useState(false);
  const stream = useStream(`/v1/pipelines/${encodeURIComponent(name)}/events?follow=true`, true, () => {
    pipeline.reload();
    runs.reload();
    run.reload();
  });

  const act = async (what: "run" | "suspend" | "resume") => {
    setActionError(undefined);
    try {
      const answer = await api.action("pipelines", name, what);
      if (what === "run") {
        const id = (answer as PipelineRun).id;
        navigate(`/pipelines/${encodeURIComponent(name)}?run=${encodeURIComponent(id)}`, { replace: true });
      }
      pipeline.reload();
      runs.reload();
    } catch (e) {
      setActionError(e as Error);
    }
  };

  const p = pipeline.data;
  if (pipeline.error && !p) {
    return (
      <section>
        <h1>{name}</h1>
        <ErrorNote error={pipeline.error} />
      </section>
    );
  }
  if (!p) return <p aria-busy="true">Loading…</p>;
  const suspended = p.status.phase === "Suspended";
  return (
    <section aria-labelledby="pipeline-title">
      <nav aria-label="Breadcrumb" class="crumbs">
        <Link to="/pipelines">Pipelines</Link> / <span aria-current="page">{name}</span>
      </nav>
      <div class="page-head">
        <h1 id="pipeline-title">{name}</h1>
        <Phase phase={p.status.phase} />
        <StreamBadge state={stream} />
      </div>
      <div class="actions" role="group" aria-label="Actions">
        <button type="button" onClick={() => act("run")}>
          Run now
        </button>
        <button type="button" onClick={() => act(suspended ? "resume" : "suspend")}>
          {suspended ? "Resume" : "Suspend"}
        </button>
        <button type="button" class="danger" onClick={() => setConfirming(true)}>
          Delete
        </button>
      </div>
      <ErrorNote error={actionError} />
      <Confirm
        title={`Delete pipeline ${name}?`}
        confirmLabel="Delete"
        open={confirming}
        onClose={() => setConfirming(false)}
        onConfirm={async () => {
          await api.remove("pipelines", name);
          navigate("/pipelines");
        }}
      >
        <p>The pipeline is removed and its unfinished runs are cancelled. This cannot be undone.</p>
      </Confirm>

      <section aria-labelledby="run-title">
        <div class="page-head">
          <h2 id="run-title">Run</h2>
          {runs.data && runs.data.length > 0 && (
            <label>
              <span class="visually-hidden">Run shown</span>
              <select
                value={chosen}
                onChange={(e) =>
                  navigate(`/pipelines/${encodeURIComponent(name)}?run=${encodeURIComponent(e.currentTarget.value)}`, {
                    replace: true,
                  })
                }
              >
                {runs.data.map((r) => (
                  <option key={r.id} value={r.id}>
                    {r.id} · {r.phase}
                  </option>
                ))}
              </select>
            </label>
          )}
          {run.data && <Phase phase={run.data.phase} />}
        </div>
        {runs.data?.length === 0 && <p class="muted">No runs yet.</p>}
        {run.data?.error && <p class="error">{run.data.error}</p>}
        <Graph tasks={p.spec.tasks ?? []} run={run.data} />
        {run.data && <TaskTable tasks={run.data.tasks} />}
      </section>

      <section aria-labelledby="pspec-title">
        <h2 id="pspec-title">Spec</h2>
        <Json value={{ apiVersion: p.apiVersion, kind: p.kind, metadata: p.metadata, spec: p.spec }} />
      </section>
    </section>
  );
}

const NODE_W = 168;
const NODE_H = 52;
const GAP_X = 64;
const GAP_Y = 20;

/** Each task's column: one more than the deepest task it depends on. */
export function layers(tasks: TaskSpec[]): Map<string, number> {
  const byName = new Map(tasks.map((t) => [t.name, t]));
  const depth = new Map<string, number>();
  const visit = (name: string, seen: Set<string>): number => {
    const known = depth.get(name);
    if (known !== undefined) return known;
    if (seen.has(name)) return 0; // a cycle: the server refuses them, draw it flat anyway
    seen.add(name);
    const deps = byName.get(name)?.dependsOn ?? [];
    const d = deps.reduce((m, dep) => (byName.has(dep.task) ? Math.max(m, visit(dep.task, seen) + 1) : m), 0);
    depth.set(name, d);
    return d;
  };
  tasks.forEach((t) => visit(t.name, new Set()));
  return depth;
}

/** The pipeline's tasks as a graph, left to right, each coloured by its phase in the run. */
function Graph({ tasks, run }: { tasks: TaskSpec[]; run: PipelineRun | undefined }) {
  if (tasks.length === 0) return null;
  const depth = layers(tasks);
  const columns: string[][] = [];
  tasks.forEach((t) => {
    const d = depth.get(t.name) ?? 0;
    (columns[d] ??= []).push(t.name);
  });
  const place = new Map<string, { x: number; y: number }>();
  columns.forEach((names, c) =>
    names.forEach((n, r) => place.set(n, { x: 8 + c * (NODE_W + GAP_X), y: 8 + r * (NODE_H + GAP_Y) })),
  );
  const width = 16 + columns.length * NODE_W + (columns.length - 1) * GAP_X;
  const height = 16 + Math.max(...columns.map((c) => c.length)) * (NODE_H + GAP_Y) - GAP_Y;
  const state = new Map(run?.tasks.map((t) => [t.name, t]) ?? []);
  return (
    <figure class="graph">
      <svg
        viewBox={`0 0 ${width} ${height}`}
        width={width}
        height={height}
        role="img"
        aria-label={`Task graph: ${tasks
          .map((t) => `${t.name} ${state.get(t.name)?.phase ?? "not run"}`)
          .join(", ")}`}
      >
        <defs>
          <marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="8" markerHeight="8" orient="auto">
            <path d="M0,0 L8,4 L0,8 z" class="edge-head" />
          </marker>
        </defs>
        {tasks.flatMap((t) =>
          (t.dependsOn ?? []).map((dep) => {
            const a = place.get(dep.task);
            const b = place.get(t.name);
            if (!a || !b) return null;
            const x1 = a.x + NODE_W;
            const y1 = a.y + NODE_H / 2;
            const x2 = b.x;
            const y2 = b.y + NODE_H / 2;
            const mid = (x1 + x2) / 2;
            return (
              <g key={`${dep.task}->${t.name}`}>
                <path
                  d={`M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`}
                  class={`edge${dep.when && dep.when !== "succeeded" ? " edge-conditional" : ""}`}
                  marker-end="url(#arrow)"
                />
                {dep.when && dep.when !== "succeeded" && (
                  <text x={mid} y={(y1 + y2) / 2 - 4} class="edge-label">
                    {dep.when}
                  </text>
                )}
              </g>
            );
          }),
        )}
        {tasks.map((t) => {
          const at = place.get(t.name)!;
          const task = state.get(t.name);
          const phase = task?.phase ?? "NotRun";
          return (
            <g key={t.name} class={`node phase-${phase.toLowerCase()}`} data-task={t.name} data-phase={phase}>
              <rect x={at.x} y={at.y} width={NODE_W} height={NODE_H} rx="8" />
              <text x={at.x + 12} y={at.y + 21} class="node-name">
                {t.name.length > 20 ? `${t.name.slice(0, 19)}…` : t.name}
              </text>
              <text x={at.x + 12} y={at.y + 40} class="node-phase">
                {task ? phase : "not run"}
                {task?.progress?.fraction != null && task.phase === "Running"
                  ? ` ${Math.round(task.progress.fraction * 100)}%`
                  : ""}
              </text>
            </g>
          );
        })}
      </svg>
      <figcaption class="legend">
        {["Pending", "Waiting", "Running", "Succeeded", "Failed", "Skipped", "Cancelled"].map((p) => (
          <span key={p} class={`phase phase-${p.toLowerCase()}`}>
            {p}
          </span>
        ))}
      </figcaption>
    </figure>
  );
}

function TaskTable({ tasks }: { tasks: TaskRun[] }) {
  return (
    <table class="cards">
      <thead>
        <tr>
          <th scope="col">Task</th>
          <th scope="col">Phase</th>
          <th scope="col">Attempt</th>
          <th scope="col">Started</th>
          <th scope="col">Finished</th>
          <th scope="col">Progress / condition</th>
          <th scope="col">Error</th>
        </tr>
      </thead>
      <tbody>
        {tasks.map((t) => (
          <tr key={t.name} data-task={t.name}>
            <th scope="row" data-label="Task">
              {t.transfer ? <Link to={`/transfers/${encodeURIComponent(t.transfer)}`}>{t.name}</Link> : t.name}
            </th>
            <td data-label="Phase">
              <Phase phase={t.phase} />
              {t.handled && <span class="muted small"> (handled)</span>}
            </td>
            <td data-label="Attempt">{t.attempt}</td>
            <td data-label="Started">
              <Time iso={t.startedAt} />
            </td>
            <td data-label="Finished">
              <Time iso={t.finishedAt} />
            </td>
            <td data-label="Progress / condition">
              {t.phase === "Running" && t.progress ? (
                <ProgressBar progress={t.progress} label={`${t.name} progress`} />
              ) : (
                (t.condition ?? <span class="muted">–</span>)
              )}
            </td>
            <td data-label="Error" class="run-error">
              {t.error ?? <span class="muted">–</span>}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export type { Pipeline };
