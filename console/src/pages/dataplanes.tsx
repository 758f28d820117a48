import { api } from "../api";
import { ErrorNote, Labels, StreamBadge } from "../components";
import { epochMs, number, rate } from "../format";
import { useLoaded, useStream } from "../live";

/** Data planes: their heartbeats are not events, so the list is read again when runs move. */
export function DataPlanes() {
  const list = useLoaded(api.dataplanes, "dataplanes");
  const stream = useStream(
    "/v1/events",
    false,
    (m) => {
      if (/^(Run|Delegated)/.test(m.event)) list.reload();
    },
    list.reload,
  );
  return (
    <section aria-labelledby="dataplanes-title">
      <div class="page-head">
        <h1 id="dataplanes-title">Data planes</h1>
        <StreamBadge state={stream} />
        <button type="button" onClick={list.reload}>
          Refresh
        </button>
      </div>
      <ErrorNote error={list.error} />
      {list.data === undefined && !list.error && <p aria-busy="true">Loading…</p>}
      {list.data?.length === 0 && (
        <p class="empty">
          No data planes are registered: this server runs its transfers itself (its embedded data plane). Start{" "}
          <code>ferry dataplane</code> processes to see them here.
        </p>
      )}
      {list.data && list.data.length > 0 && (
        <table class="cards">
          <thead>
            <tr>
              <th scope="col">Id</th>
              <th scope="col">State</th>
              <th scope="col">Labels</th>
              <th scope="col" class="num">Active runs</th>
              <th scope="col" class="num">Throughput</th>
              <th scope="col">Reads / writes</th>
              <th scope="col">Engines</th>
              <th scope="col">Last heartbeat</th>
            </tr>
          </thead>
          <tbody>
            {list.data.map((d) => (
              <tr key={d.id} data-dataplane={d.id}>
                <th scope="row" data-label="Id">
                  {d.id}
                  <div class="muted small">{d.url}</div>
                </th>
                <td data-label="State">
                  <span class={`phase phase-${d.state.toLowerCase()}`}>{d.state}</span>
                </td>
                <td data-label="Labels">
                  <Labels labels={d.labels} />
                </td>
                <td data-label="Active runs" class="num">
                  {d.load ? (
                    <>
                      {number(d.load.activeRuns)}
                      {d.load.capacity != null && <> / {number(d.load.capacity)}</>}
                    </>
                  ) : (
                    <span class="muted">–</span>
                  )}
                </td>
                <td data-label="Throughput" class="num">
                  {rate(d.load?.bytesPerSecond)}
                </td>
                <td data-label="Reads / writes">
                  {types(d.allowedSourceTypes)} → {types(d.allowedDestinationTypes)}
                </td>
                <td data-label="Engines">
                  {d.engines && d.engines.length > 0 ? (
                    d.engines.map((e) => `${e.name} (${e.type})`).join(", ")
                  ) : (
                    <span class="muted">built-in</span>
                  )}
                </td>
                <td data-label="Last heartbeat">{epochMs(d.lastHeartbeatMs)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function types(list: string[]): string {
  return list.length === 0 || list.includes("*") ? "any" : list.join(", ");
}
