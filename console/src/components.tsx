import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import type { Progress } from "./api";
import { bytes, duration, rate, time } from "./format";
import type { StreamState } from "./sse";

/** A phase as text with a colour; the text alone says it all. */
export function Phase({ phase }: { phase: string | null | undefined }) {
  const p = phase ?? "Unknown";
  return <span class={`phase phase-${p.toLowerCase()}`}>{p}</span>;
}

export function Time({ iso }: { iso: string | undefined | null }) {
  if (!iso) return <span class="muted">–</span>;
  return (
    <time dateTime={iso} title={iso}>
      {time(iso)}
    </time>
  );
}

/** Rate from what the API gives: what is left over the time left is the rate so far. */
export function progressRate(p: Progress): number | undefined {
  if (p.etaSeconds && p.etaSeconds > 0 && p.bytesTotal > p.bytesDone) {
    return (p.bytesTotal - p.bytesDone) / p.etaSeconds;
  }
  return undefined;
}

/** A running run's progress: a bar, the share done, bytes, rate and time left. */
export function ProgressBar({ progress, label }: { progress: Progress | undefined; label: string }) {
  const fraction = progress?.fraction;
  const percent = fraction == null ? undefined : Math.round(Math.min(1, Math.max(0, fraction)) * 1000) / 10;
  const r = progress ? progressRate(progress) : undefined;
  return (
    <div class="progress">
      <progress
        max={100}
        value={percent}
        aria-label={label}
        data-percent={percent ?? ""}
        aria-valuetext={percent == null ? "starting" : `${percent}%`}
      />
      <span class="progress-text">
        {percent == null ? "starting…" : `${percent.toFixed(percent < 10 ? 1 : 0)}%`}
        {progress && progress.bytesTotal > 0 && (
          <> · {bytes(progress.bytesDone)} of {bytes(progress.bytesTotal)}</>
        )}
        {r != null && <> · {rate(r)}</>}
        {progress?.etaSeconds != null && progress.etaSeconds > 0 && <> · {duration(progress.etaSeconds)} left</>}
      </span>
    </div>
  );
}

export function StreamBadge({ state }: { state: StreamState }) {
  const text = { connecting: "connecting…", open: "live", reconnecting: "reconnecting…" }[state];
  return (
    <span class={`stream stream-${state}`} role="status" aria-live="polite" title="Updates from the server's event stream">
      {text}
    </span>
  );
}

export function ErrorNote({ error }: { error: Error | undefined }) {
  if (!error) return null;
  return (
    <p class="error" role="alert">
      {error.message}
    </p>
  );
}

/**
 * A modal dialog: the page behind it is inert (focus stays inside), Escape closes it,
 * and focus goes back to where it was.
 */
export function Dialog({
  title,
  open,
  onClose,
  children,
  wide,
}: {
  title: string;
  open: boolean;
  onClose: () => void;
  children: ComponentChildren;
  wide?: boolean;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (open && !dialog.open) {
      const before = document.activeElement as HTMLElement | null;
      dialog.showModal();
      return () => {
        if (dialog.open) dialog.close();
        before?.focus();
      };
    }
  }, [open]);
  return (
    <dialog
      ref={ref}
      class={wide ? "wide" : undefined}
      aria-labelledby="dialog-title"
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
      // Closed by the browser itself (Escape without a cancel event): follow it.
      onClose={() => {
        if (open) onClose();
      }}
    >
      {open && (
        <>
          <header class="dialog-head">
            <h2 id="dialog-title">{title}</h2>
            <button type="button" class="icon" aria-label="Close" onClick={onClose}>
              ×
            </button>
          </header>
          {children}
        </>
      )}
    </dialog>
  );
}

/** Asks before something that cannot be undone. */
export function Confirm({
  title,
  children,
  confirmLabel,
  open,
  onConfirm,
  onClose,
}: {
  title: string;
  children: ComponentChildren;
  confirmLabel: string;
  open: boolean;
  onConfirm: () => Promise<void>;
  onClose: () => void;
}) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<Error | undefined>();
  return (
    <Dialog title={title} open={open} onClose={onClose}>
      <form
        method="dialog"
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(undefined);
          try {
            await onConfirm();
            onClose();
          } catch (err) {
            setError(err as Error);
          } finally {
            setBusy(false);
          }
        }}
      >
        {children}
        <ErrorNote error={error} />
        <div class="buttons">
          <button type="button" onClick={onClose} autoFocus>
            Cancel
          </button>
          <button type="submit" class="danger" disabled={busy}>
            {confirmLabel}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

/** A small JSON block, for specs and schemas. */
export function Json({ value }: { value: unknown }) {
  return <pre class="json">{JSON.stringify(value, null, 2)}</pre>;
}

export function Labels({ labels }: { labels: Record<string, string> | undefined }) {
  const entries = Object.entries(labels ?? {});
  if (entries.length === 0) return <span class="muted">–</span>;
  return (
    <ul class="labels" aria-label="labels">
      {entries.map(([k, v]) => (
        <li key={k}>
          {k}={v}
        </li>
      ))}
    </ul>
  );
}
