import { useRef, useState } from "preact/hooks";
import { ApiError, call, enc, type FieldError } from "../api";
import { Dialog, ErrorNote } from "../components";
import { inspect, lineOf } from "../manifest";
import { navigate } from "../router";

const EXAMPLE = `apiVersion: ferry.dev/v1
kind: BatchTransfer
metadata: {name: orders-to-lake, labels: {team: lake}}
spec:
  source:      {type: file, path: examples/data/orders.csv, format: csv}
  destination: {type: file, path: out/lake/orders/, format: parquet}
`;

/** Applies a pasted or uploaded manifest (YAML or JSON): creates it, or replaces it. */
export function ApplyDialog({ open, onClose }: { open: boolean; onClose: () => void }) {
  const [text, setText] = useState("");
  const [sent, setSent] = useState("");
  const [details, setDetails] = useState<FieldError[]>([]);
  const [error, setError] = useState<Error | undefined>();
  const [busy, setBusy] = useState(false);
  const area = useRef<HTMLTextAreaElement>(null);

  const apply = async (e: Event) => {
    e.preventDefault();
    setError(undefined);
    setDetails([]);
    const info = inspect(text);
    const body = { text, contentType: info.format === "json" ? "application/json" : "application/yaml" };
    const pipeline = info.kind === "Pipeline";
    const kind = pipeline ? "pipelines" : "transfers";
    setBusy(true);
    setSent(text);
    try {
      try {
        await call("POST", `/v1/${kind}`, body);
      } catch (err) {
        // A transfer of that name exists: apply means replace its spec.
        if (err instanceof ApiError && err.status === 409 && !pipeline && info.name) {
          await call("PUT", `/v1/transfers/${enc(info.name)}`, body);
        } else {
          throw err;
        }
      }
      onClose();
      setText("");
      if (info.name) navigate(`/${kind}/${enc(info.name)}`);
    } catch (err) {
      setError(err as Error);
      if (err instanceof ApiError) setDetails(err.details);
    } finally {
      setBusy(false);
    }
  };

  const load = async (file: File | undefined) => {
    if (!file) return;
    setText(await file.text());
    setDetails([]);
    setError(undefined);
  };

  const goTo = (line: number) => {
    const el = area.current;
    if (!el) return;
    const lines = text.split("\n");
    const start = lines.slice(0, line).reduce((n, l) => n + l.length + 1, 0);
    el.focus();
    el.setSelectionRange(start, start + (lines[line]?.length ?? 0));
  };

  const annotated = details.length > 0 && sent === text;
  return (
    <Dialog title="Apply a manifest" open={open} onClose={onClose} wide>
      <form onSubmit={apply} class="apply">
        <p class="muted small">
          A BatchTransfer, StreamTransfer or Pipeline, in YAML or JSON. A transfer that exists is replaced.
        </p>
        <label for="manifest">Manifest</label>
        <textarea
          id="manifest"
          ref={area}
          rows={14}
          spellcheck={false}
          placeholder={EXAMPLE}
          value={text}
          onInput={(e) => setText(e.currentTarget.value)}
          aria-invalid={details.length > 0}
          aria-describedby={details.length > 0 ? "manifest-errors" : undefined}
        />
        <div class="row">
          <label class="file">
            Or upload a file
            <input type="file" accept=".yaml,.yml,.json,application/json,application/yaml,text/yaml" onChange={(e) => load(e.currentTarget.files?.[0])} />
          </label>
        </div>
        <ErrorNote error={error} />
        {annotated && <Annotated text={text} details={details} goTo={goTo} />}
        <div class="buttons">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy || text.trim() === ""}>
            {busy ? "Applying…" : "Apply"}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

/** The manifest's lines, each invalid field's message written next to the line that holds it. */
function Annotated({ text, details, goTo }: { text: string; details: FieldError[]; goTo: (line: number) => void }) {
  const lines = text.replace(/\n$/, "").split("\n");
  const byLine = new Map<number, FieldError[]>();
  const unplaced: FieldError[] = [];
  for (const d of details) {
    const line = lineOf(text, d.field);
    if (line === undefined) unplaced.push(d);
    else byLine.set(line, [...(byLine.get(line) ?? []), d]);
  }
  return (
    <div id="manifest-errors" class="annotated" role="group" aria-label="Invalid fields">
      <h3>
        {details.length} invalid field{details.length === 1 ? "" : "s"}
      </h3>
      {unplaced.length > 0 && (
        <ul class="field-errors">
          {unplaced.map((d, i) => (
            <li key={i} data-field={d.field}>
              <code>{d.field}</code>: {d.message}
            </li>
          ))}
        </ul>
      )}
      <ol class="lines">
        {lines.map((line, i) => {
          const errors = byLine.get(i);
          return (
            <li key={i} class={errors ? "bad" : undefined}>
              <code class="src">{line || " "}</code>
              {errors?.map((d, j) => (
                <button type="button" key={j} class="field-error" data-field={d.field} onClick={() => goTo(i)}>
                  <code>{d.field}</code>: {d.message}
                </button>
              ))}
            </li>
          );
        })}
      </ol>
    </div>
  );
}
