// How the console writes numbers, sizes and times: binary units, the viewer's time zone.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function bytes(n: number | undefined | null): string {
  if (n == null || !Number.isFinite(n)) return "–";
  let value = n;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${value} B`;
  return `${value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0)} ${UNITS[unit]}`;
}

export function rate(bytesPerSecond: number | undefined | null): string {
  if (!bytesPerSecond || !Number.isFinite(bytesPerSecond)) return "–";
  return `${bytes(bytesPerSecond)}/s`;
}

const count = new Intl.NumberFormat();

export function number(n: number | undefined | null): string {
  return n == null ? "–" : count.format(n);
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** A time of the API (RFC 3339, UTC) in the viewer's zone. */
export function time(iso: string | undefined | null): string {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : dateTime.format(d);
}

export function epochMs(ms: number | undefined | null): string {
  return ms == null ? "–" : dateTime.format(new Date(ms));
}

export function duration(seconds: number | undefined | null): string {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds % 60);
  if (m < 60) return `${m} min ${s} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** Seconds between two API times (or until now). */
export function between(start?: string, end?: string): number | undefined {
  if (!start) return undefined;
  const a = Date.parse(start);
  const b = end ? Date.parse(end) : Date.now();
  return Number.isNaN(a) || Number.isNaN(b) ? undefined : Math.max(0, (b - a) / 1000);
}
