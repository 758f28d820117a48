import { useState } from "preact/hooks";
import { api, type EventView, type Run, type Transfer } from "../api";
import { Confirm, ErrorNote, Json, Labels, Phase, ProgressBar, StreamBadge, Time } from "../components";
import { between, bytes, duration, number, rate } from "../format";
import { useLoaded, useStream } from "../live";
import { Link, navigate } from "../router";

const SHOWN_EVENTS = 200;

export function TransferDetail({ name }: { name: string }) {
  const transfer = useLoaded(() => api.transfer(name), name);
  const runs = useLoaded(() => api.runs(name), name);
  const [events, setEvents] = useState<EventView[]>([]);
  const [actionError, setActionError] = useState<Error | undefined>();
  const [confirming, setConfirming] = useState(false);
  const [cleanup, setCleanup] = useState(false);

  // The transfer's events: its backlog first, then live; each one may change the status
  // and runs, which are read again (calls made meanwhile fold into one).
  const stream = useStream(
    `/v1/transfers/${encodeURIComponent(name)}/events?follow=true`,
    true,
    (m) => {
      let e: EventView;
      try {
        e = JSON.parse(m.data) as EventView;
      } catch {
        return;
      }
      setEvents((list) => (list.some((x) => x.seq === e.seq) ? list : [e, ...list].slice(0, SHOWN_EVENTS)));
      transfer.reload();
      runs.reload();
    },
  );

  const act = async (what: "run" | "suspend" | "resume") => {
    setActionError(undefined);
    try {
      await api.action("transfers", name, what);
      transfer.reload();
      runs.reload();
    } catch (e) {
      setActionError(e as Error);
    }
  };

  const t = transfer.data;
  if (transfer.error && !t) {
    return (
      <section>
        <h1>{name}</h1>
        <ErrorNote error={transfer.error} />
        <p>
          <Link to="/transfers">All transfers</Link>
        </p>
      </section>
    );
  }
  if (!t) return <p aria-busy="true">Loading…</p>;
  const suspended = t.spec.suspend === true || t.status.phase === "Suspended";

  return (
    <section aria-labelledby="transfer-title">
      <nav aria-label="Breadcrumb" class="crumbs">
        <Link to="/transfers">Transfers</Link> / <span aria-current="page">{name}</span>
      </nav>
      <div class="page-head">
        <h1 id="transfer-title">{name}</h1>
        <Phase phase={t.status.phase} />
        <StreamBadge state={stream} />
      </div>
      <div class="actions" role="group" aria-label="Actions">
        <button type="button" onClick={() => act("run")}>
          Run now
        </button>
        {suspended ? (
          <button type="button" onClick={() => act("resume")}>
            Resume
          </button>
        ) : (
          <button type="button" onClick={() => act("suspend")}>
            Suspend
          </button>
        )}
        <button type="button" class="danger" onClick={() => setConfirming(true)}>
          Delete
        </button>
      </div>
      <ErrorNote error={actionError} />
      <Confirm
        title={`Delete ${name}?`}
        confirmLabel="Delete"
        open={confirming}
        onClose={() => setConfirming(false)}
        onConfirm={async () => {
          await api.remove("transfers", name, cleanup);
          navigate("/transfers");
        }}
      >
        <p>The transfer, its runs and its events are removed. This cannot be undone.</p>
        <label class="check">
          <input type="checkbox" checked={cleanup} onChange={(e) => setCleanup(e.currentTarget.checked)} />
          Also remove what its runs wrote at the destination
        </label>
      </Confirm>

      <Status t={t} />
      <RunsTable runs={runs.data} error={runs.error} />

      <section aria-labelledby="events-title">
        <h2 id="events-title">Events</h2>
        {events.length === 0 ? (
          <p class="muted">No events yet.</p>
        ) : (
          <ol class="events" aria-live="polite" aria-relevant="additions">
            {events.map((e) => (
              <li key={e.seq} class={e.type === "Warning" ? "warning" : undefined} data-reason={e.reason}>
                <Time iso={e.time} /> <strong>{e.reason}</strong> <span>{e.message}</span>
              </li>
            ))}
          </ol>
        )}
      </section>

      <section aria-labelledby="spec-title">
        <h2 id="spec-title">Spec</h2>
        <p class="muted small">As stored, with secrets redacted by the server.</p>
        <Labels labels={t.metadata.labels} />
        <Json value={{ apiVersion: t.apiVersion, kind: t.kind, metadata: t.metadata, spec: t.spec }} />
      </section>

      {(t.status.sourceSchema != null || t.status.destinationSchema != null) && (
        <section aria-labelledby="schemas-title" class="schemas">
          <h2 id="schemas-title">Schemas</h2>
          <div class="two">
            <div>
              <h3>In (source)</h3>
              <Schema schema={t.status.sourceSchema} />
            </div>
            <div>
              <h3>Out (destination)</h3>
              <Schema schema={t.status.destinationSchema} />
            </div>
          </div>
        </section>
      )}
    </section>
  );
}

function Status({ t }: { t: Transfer }) {
  const s = t.status;
  return (
    <section aria-labelledby="status-title">
      <h2 id="status-title">Status</h2>
      {s.phase === "Running" && <ProgressBar progress={s.progress} label={`${t.metadata.name} progress`} />}
      {s.error && (
        <p class="error" data-testid="transfer-error">
          {s.error}
        </p>
      )}
      <dl class="facts">
        <dt>Schedule</dt>
        <dd>{t.spec.schedule ? <code>{t.spec.schedule}</code> : "once, when created"}</dd>
        <dt>Next schedule</dt>
        <dd>
          <Time iso={s.nextScheduleTime} />
        </dd>
        <dt>Last success</dt>
        <dd>
          <Time iso={s.lastSuccessTime} />
        </dd>
        <dt>Records (last run)</dt>
        <dd>{number(s.numRecords)}</dd>
        <dt>Bytes (last run)</dt>
        <dd>{bytes(s.bytes)}</dd>
        <dt>Active run</dt>
        <dd>{s.activeRun ?? <span class="muted">–</span>}</dd>
      </dl>
    </section>
  );
}

function RunsTable({ runs, error }: { runs: Run[] | undefined; error: Error | undefined }) {
  return (
    <section aria-labelledby="runs-title">
      <h2 id="runs-title">Runs</h2>
      <ErrorNote error={error} />
      {runs?.length === 0 && <p class="muted">No runs yet.</p>}
      {runs && runs.length > 0 && (
        <table class="cards runs">
          <thead>
            <tr>
              <th scope="col">Run</th>
              <th scope="col">Phase</th>
              <th scope="col">Trigger</th>
              <th scope="col">Started</th>
              <th scope="col">Duration</th>
              <th scope="col" class="num">Records</th>
              <th scope="col" class="num">Bytes</th>
              <th scope="col" class="num">Rate</th>
              <th scope="col">Error</th>
            </tr>
          </thead>
          <tbody>
            {runs.map((r) => (
              <tr key={r.id} data-run={r.id} data-phase={r.phase}>
                <th scope="row" data-label="Run">
                  <code class="small">{r.id}</code>
                  {r.attempt > 1 && <div class="muted small">attempt {r.attempt}</div>}
                </th>
                <td data-label="Phase">
                  <Phase phase={r.phase} />
                </td>
                <td data-label="Trigger">{r.trigger}</td>
                <td data-label="Started">
                  <Time iso={r.startedAt} />
                </td>
                <td data-label="Duration">
                  {r.stats.durationSeconds
                    ? duration(r.stats.durationSeconds)
                    : duration(between(r.startedAt, r.finishedAt))}
                </td>
                <td data-label="Records" class="num">
                  {number(r.stats.numRecords)}
                </td>
                <td data-label="Bytes" class="num">
                  {bytes(r.stats.bytes)}
                </td>
                <td data-label="Rate" class="num">
                  {rate(r.stats.bytesPerSecond)}
                </td>
                <td data-label="Error" class="run-error">
                  {r.error ?? <span class="muted">–</span>}
                  {r.nextAttemptAt && (
                    <div class="muted small">
                      retry at <Time iso={r.nextAttemptAt} />
                    </div>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

/** A schema as the API reports it: a list of `{name, type, nullable}`; anything else as JSON. */
function Schema({ schema }: { schema: unknown }) {
  if (schema == null) return <p class="muted">Not known yet.</p>;
  if (!Array.isArray(schema)) return <Json value={schema} />;
  const fields = schema as { name?: string; type?: unknown; nullable?: boolean }[];
  if (fields.length === 0) return <p class="muted">No columns (a byte copy).</p>;
  return (
    <table class="schema">
      <thead>
        <tr>
          <th scope="col">Column</th>
          <th scope="col">Type</th>
          <th scope="col">Nullable</th>
        </tr>
      </thead>
      <tbody>
        {fields.map((f, i) => (
          <tr key={i}>
            <td>
              <code>{f.name}</code>
            </td>
            <td>{typeof f.type === "string" ? f.type : JSON.stringify(f.type)}</td>
            <td>{f.nullable === false ? "no" : "yes"}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
