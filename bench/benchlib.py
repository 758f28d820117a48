"""What the benchmark report scripts share: reading a run's metadata and outputs,
summarising repeated runs, formatting, and replacing one section of the report."""

import json
import os
import statistics
import sys


def read_meta(path):
    meta = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" in line:
                key, value = line.split("=", 1)
                meta[key] = value
    return meta


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


def read_outputs(path):
    out = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t", 2)
                if len(parts) == 3:
                    out[(parts[0], parts[1])] = json.loads(parts[2])
    return out


def fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def human_bytes(n):
    n = float(n)
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"]:
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Summary:
    def __init__(self, runs):
        self.timed = [r for r in runs if r["rep"] != "w"]
        self.ok = [r for r in self.timed if r["ok"]]
        self.failed = [r for r in self.timed if not r["ok"]]

    def spread(self, key):
        vals = [r[key] for r in self.ok if r[key] is not None]
        return (min(vals), max(vals)) if vals else None

    def median(self, key):
        vals = [r[key] for r in self.ok if r[key] is not None]
        return statistics.median(vals) if vals else None

    @property
    def disturbed(self):
        """Successful timed runs during which the rest of the machine (other than what
        `other_cpu` excludes) used more than a quarter of a CPU on average."""
        return sum(1 for r in self.ok
                   if r["other_cpu"] is not None and r["wall"]
                   and r["other_cpu"] > 0.25 * r["wall"])

    @property
    def peak_rss(self):
        vals = [r["rss_mib"] for r in self.ok]
        return max(vals) if vals else None

    @property
    def complete(self):
        return bool(self.timed) and not self.failed


def splice(text, head, new_lines):
    """Replace the section starting at the line `head` (up to the next level-1 or level-2
    heading outside code fences) with new_lines, or append it."""
    lines = text.split("\n") if text else []
    start = next((i for i, line in enumerate(lines) if line.rstrip() == head), None)
    if start is None:
        while lines and lines[-1].strip() == "":
            lines.pop()
        if lines:
            lines.append("")
        return "\n".join(lines + new_lines)
    end, fence = len(lines), False
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            fence = not fence
        elif not fence and (lines[i].startswith("# ") or lines[i].startswith("## ")):
            end = i
            break
    tail = lines[end:]
    return "\n".join(lines[:start] + new_lines + ([""] + tail if tail else []))


def write_section(script, out_path, head, new, problems):
    """Replace the section `head` of the markdown file `out_path` with the lines `new`,
    report `problems` on stderr, and return the exit status (3 when there are any)."""
    while new and new[-1] == "":
        new.pop()
    text = ""
    if os.path.exists(out_path):
        with open(out_path, encoding="utf-8") as f:
            text = f.read()
    result = splice(text, head, new)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(result.rstrip("\n") + "\n")
    for p in problems:
        print(f"{script}: {p}", file=sys.stderr)
    return 3 if problems else 0


def run_status(r):
    """A run's status for the table of all runs."""
    if r["ok"]:
        return r["status"].replace("|", " ")
    return "failed (see above)" if r["status"].startswith("failed") else r["status"].replace("|", " ")


def main(script, read_results, section, heading):
    """The command line of a report script: META RESULTS OUTPUTS OUT."""
    meta_path, results_path, outputs_path, out_path = sys.argv[1:5]
    meta = read_meta(meta_path)
    new, problems = section(meta, read_results(results_path), read_outputs(outputs_path))
    head = heading(meta.get("sf", "1"))
    return write_section(script, out_path, head, new, problems)
