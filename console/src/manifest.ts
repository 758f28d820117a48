// What the console needs to know of a manifest before sending it (its kind and name, to
// pick the endpoint), and where a field the server names is written in it. The server
// parses and validates; this only reads enough text to route and annotate.

export interface ManifestInfo {
  format: "json" | "yaml";
  kind?: string;
  name?: string;
}

export function inspect(text: string): ManifestInfo {
  try {
    const value = JSON.parse(text) as { kind?: unknown; metadata?: { name?: unknown } };
    return {
      format: "json",
      kind: typeof value?.kind === "string" ? value.kind : undefined,
      name: typeof value?.metadata?.name === "string" ? value.metadata.name : undefined,
    };
  } catch {
    // YAML: top-level `kind:`, and `name:` in `metadata` (block or flow style).
    const kind = /^kind:\s*["']?([A-Za-z]+)/m.exec(text)?.[1];
    const flow = /^metadata:\s*\{[^}]*\bname:\s*["']?([^,"'}\s]+)/m.exec(text)?.[1];
    const block = /^metadata:\s*\n(?:[ \t]+.*\n)*?[ \t]+name:\s*["']?([^"'\s#]+)/m.exec(text)?.[1];
    return { format: "yaml", kind, name: flow ?? block };
  }
}

/**
 * The line (0-based) where `field` (`spec.transformation[1].columns`) is written: each
 * key is looked for after the line of the one before it, an index skips that many
 * occurrences of the key that follows. Undefined when the text does not show it.
 */
export function lineOf(text: string, field: string): number | undefined {
  const lines = text.split("\n");
  const parts = field.split(/\.|(?=\[)/).filter(Boolean);
  let from = 0;
  let found: number | undefined;
  let skip = 0;
  for (const part of parts) {
    const index = /^\[(\d+)\]$/.exec(part);
    if (index) {
      skip = Number(index[1]);
      continue;
    }
    const key = part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const pattern = new RegExp(`(^|[\\s{,-])["']?${key}["']?\\s*:`);
    let at: number | undefined;
    for (let i = from; i < lines.length; i++) {
      if (pattern.test(lines[i])) {
        if (skip === 0) {
          at = i;
          break;
        }
        skip -= 1;
      }
    }
    skip = 0;
    if (at === undefined) return found;
    found = at;
    from = at;
  }
  return found;
}
