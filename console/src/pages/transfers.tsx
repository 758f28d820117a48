import { api, type Transfer } from "../api";
import { ErrorNote, Labels, Phase, ProgressBar, StreamBadge, Time } from "../components";
import { bytes, number } from "../format";
import { useLoaded, useStream } from "../live";
import { Link, navigate, useLocation } from "../router";

const PHASES = ["Pending", "Running", "Succeeded", "Failed", "Fatal", "Suspended", "ConfigurationError"];

export function Transfers() {
  const { query } = useLocation();
  const phase = query.get("phase") ?? "";
  const labels = query.get("labels") ?? "";
  // The transfers pipelines make for their tasks are shown on the pipeline's page.
  const showTasks = query.get("tasks") === "1";
  const list = useLoaded(() => api.transfers(phase, labels), `${phase}|${labels}`);
  // Every transfer's events, from now on: any of them may change a row.
  const stream = useStream(
    "/v1/events",
    false,
    (m) => {
      if (!m.data.includes('"transfer":"pipeline/')) list.reload();
    },
    list.reload,
  );

  const shown = list.data?.filter((t) => showTasks || !t.metadata.labels?.["ferry.dev/pipeline"]);

  const setFilter = (name: string, value: string) => {
    const q = new URLSearchParams(query);
    if (value) q.set(name, value);
    else q.delete(name);
    const s = q.toString();
    navigate(`/transfers${s ? `?${s}` : ""}`, { replace: true });
  };

  return (
    <section aria-labelledby="transfers-title">
      <div class="page-head">
        <h1 id="transfers-title">Transfers</h1>
        <StreamBadge state={stream} />
      </div>
      <form class="filters" role="search" onSubmit={(e) => e.preventDefault()}>
        <label>
          Phase
          <select value={phase} onChange={(e) => setFilter("phase", e.currentTarget.value)}>
            <option value="">any</option>
            {PHASES.map((p) => (
              <option key={p} value={p}>
                {p}
              </option>
            ))}
          </select>
        </label>
        <label>
          Labels
          <input
            type="search"
            placeholder="team=lake,tier=gold"
            value={labels}
            onChange={(e) => setFilter("labels", e.currentTarget.value.trim())}
          />
        </label>
        <label class="check">
          <input type="checkbox" checked={showTasks} onChange={(e) => setFilter("tasks", e.currentTarget.checked ? "1" : "")} />
          Show pipeline tasks
        </label>
      </form>
      <ErrorNote error={list.error} />
      {list.data === undefined && !list.error && <p aria-busy="true">Loading…</p>}
      {shown?.length === 0 && (
        <p class="empty">
          No transfers{phase || labels ? " match these filters" : " yet"}. Apply a manifest to create one.
        </p>
      )}
      {shown && shown.length > 0 && <TransferTable transfers={shown} />}
    </section>
  );
}

function TransferTable({ transfers }: { transfers: Transfer[] }) {
  return (
    <table class="cards">
      <thead>
        <tr>
          <th scope="col">Name</th>
          <th scope="col">Phase</th>
          <th scope="col">Schedule</th>
          <th scope="col">Last success</th>
          <th scope="col" class="num">Records</th>
          <th scope="col" class="num">Bytes</th>
          <th scope="col">Progress</th>
          <th scope="col">Labels</th>
        </tr>
      </thead>
      <tbody>
        {transfers.map((t) => (
          <tr key={t.metadata.name} data-transfer={t.metadata.name}>
            <th scope="row" data-label="Name">
              <Link to={`/transfers/${encodeURIComponent(t.metadata.name)}`}>{t.metadata.name}</Link>
              <div class="muted small">{t.kind}</div>
            </th>
            <td data-label="Phase">
              <Phase phase={t.status.phase} />
            </td>
            <td data-label="Schedule">
              {t.spec.schedule ? <code>{t.spec.schedule}</code> : <span class="muted">once</span>}
            </td>
            <td data-label="Last success">
              <Time iso={t.status.lastSuccessTime} />
            </td>
            <td data-label="Records" class="num">
              {number(t.status.numRecords)}
            </td>
            <td data-label="Bytes" class="num">
              {bytes(t.status.bytes)}
            </td>
            <td data-label="Progress">
              {t.status.phase === "Running" ? (
                <ProgressBar progress={t.status.progress} label={`${t.metadata.name} progress`} />
              ) : t.status.error ? (
                <span class="error-text" title={t.status.error}>
                  {t.status.error}
                </span>
              ) : (
                <span class="muted">–</span>
              )}
            </td>
            <td data-label="Labels">
              <Labels labels={t.metadata.labels} />
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
