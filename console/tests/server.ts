// `ferry serve` for the browser tests: a real process on a free loopback port, with its data
// in a temporary directory, started and stopped by the tests themselves.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

export const TOKEN = "console-e2e-token-3f9d";

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export class Ferry {
  private child: ChildProcess | undefined;
  private stderr = "";

  private constructor(
    readonly root: string,
    readonly port: number,
  ) {}

  /** A temporary root (the server's working directory, data under `server/`) and a port. */
  static async create(): Promise<Ferry> {
    const root = mkdtempSync(join(tmpdir(), "ferry-console-"));
    return new Ferry(root, await freePort());
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Writes `count` files of `size` bytes under `dir` (relative to the root). */
  files(dir: string, count: number, size: number) {
    mkdirSync(join(this.root, dir), { recursive: true });
    for (let i = 0; i < count; i++) {
      const data = Buffer.alloc(size, (i * 7 + 1) % 256);
      writeFileSync(join(this.root, dir, `part-${String(i).padStart(3, "0")}.bin`), data);
    }
  }

  /** Writes `text` at `path` (relative to the root). */
  write(path: string, text: string) {
    const full = join(this.root, path);
    mkdirSync(dirname(full), { recursive: true });
    writeFileSync(full, text);
  }

  /** Starts `ferry serve` and waits until it listens. `env` adds to its environment. */
  async start(env: Record<string, string> = {}): Promise<void> {
    const bin = process.env.FERRY_BIN;
    if (!bin) throw new Error("FERRY_BIN is not set (scripts/console test sets it)");
    this.stderr = "";
    const child = spawn(
      bin,
      ["serve", "--listen", `127.0.0.1:${this.port}`, "--data-dir", join(this.root, "server")],
      {
        cwd: this.root,
        env: {
          PATH: process.env.PATH ?? "/usr/bin:/bin",
          HOME: this.root,
          FERRY_API_TOKEN: TOKEN,
          FERRY_STATE_DIR: join(this.root, "state"),
          RUST_LOG: "warn",
          ...env,
        },
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    this.child = child;
    await new Promise<void>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        this.stderr += chunk.toString();
        if (this.stderr.includes("listening on")) {
          child.stderr?.off("data", onData);
          child.stderr?.on("data", (c: Buffer) => (this.stderr += c.toString()));
          resolve();
        }
      };
      child.stderr?.on("data", onData);
      child.once("exit", (code) => reject(new Error(`ferry serve exited (${code}) before listening:\n${this.stderr}`)));
    });
  }

  /** What the server wrote on stderr since it started. */
  log(): string {
    return this.stderr;
  }

  /** SIGKILL, as a crash would; resolves once the process is gone. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill(signal);
    await gone;
    this.child = undefined;
  }

  async stop(): Promise<void> {
    await this.kill("SIGTERM");
    rmSync(this.root, { recursive: true, force: true });
  }

  /** An authenticated API call, for setting up what the console then shows. */
  async api(method: string, path: string, body?: unknown): Promise<unknown> {
    const response = await fetch(`${this.url}${path}`, {
      method,
      headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
    return text ? JSON.parse(text) : undefined;
  }
}
