// The console in a browser against a real `ferry serve`: sign in, apply manifests (pasted,
// uploaded, invalid), follow a run live to its end across a server crash, see a failed
// run's error, suspend and resume, delete, the pipeline graph and the data planes; the
// screenshots in docs/console are taken here. Every wait is on what the page shows.

import { expect, test, type Page } from "@playwright/test";
import { mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Ferry, TOKEN } from "./server";

// Screenshots go to docs/console (the README's) with `scripts/console test --screenshots`,
// else under test-results, so that a test run leaves the working tree as it was.
const SHOTS = fileURLToPath(
  new URL(process.env.FERRY_CONSOLE_SCREENSHOTS ? "../../docs/console/" : "../test-results/screenshots/", import.meta.url),
);
mkdirSync(SHOTS, { recursive: true });

/** Strictly between 0 and 100, as the progress bar's data-percent writes it. */
const BETWEEN_0_AND_100 = /^(0\.[1-9]|[1-9]\d?(\.\d)?)$/;

async function signIn(page: Page, ferry: Ferry, path = "/ui/") {
  await page.goto(`${ferry.url}${path}`);
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("navigation", { name: "Main" })).toBeVisible();
}

async function applyManifest(page: Page, text: string) {
  await page.getByRole("button", { name: "Apply manifest" }).click();
  const dialog = page.getByRole("dialog", { name: "Apply a manifest" });
  await dialog.getByLabel("Manifest").fill(text);
  await dialog.getByRole("button", { name: "Apply" }).click();
  return dialog;
}

const heading = (page: Page) => page.locator("main .page-head").first();

// No script errors and no Content-Security-Policy refusals on any page. Failed requests
// while a test has stopped the server are expected and not counted.
const problems = new WeakMap<Page, string[]>();
test.beforeEach(({ page }) => {
  const seen: string[] = [];
  problems.set(page, seen);
  page.on("pageerror", (e) => seen.push(`script error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/net::ERR_|Failed to load resource/.test(m.text())) seen.push(m.text());
  });
});
test.afterEach(({ page }) => {
  expect(problems.get(page) ?? []).toEqual([]);
});

test.describe("a run followed live", () => {
  let ferry: Ferry;

  test.beforeAll(async () => {
    ferry = await Ferry.create();
    ferry.files("in", 60, 256 * 1024);
    // Every file task stops after the 4th file is recorded: the run holds at about a
    // third, until the server is killed and started again without the hook.
    await ferry.start({ FERRY_FAILPOINT: "pause-after-files:4" });
  });
  test.afterAll(async () => ferry?.stop());

  test("goes from Running with a moving progress bar to Succeeded, across a server crash", async ({ page }) => {
    await page.goto(`${ferry.url}/ui/`);
    // A wrong token is refused on the sign-in page.
    await page.getByLabel("API token").fill("not-the-token");
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect(page.getByRole("alert")).toContainText("does not accept this token");
    await page.getByLabel("API token").fill(TOKEN);
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect(page.getByText("No transfers yet")).toBeVisible();
    // The token is kept for this tab only.
    expect(await page.evaluate(() => [sessionStorage.getItem("ferry.token"), localStorage.length])).toEqual([TOKEN, 0]);

    await applyManifest(
      page,
      `apiVersion: ferry.dev/v1
kind: BatchTransfer
metadata:
  name: nightly-blobs
  labels: {team: lake, tier: gold}
spec:
  source:      {type: file, path: in/}
  destination: {type: file, path: out/}
`,
    );
    await expect(page).toHaveURL(/\/ui\/transfers\/nightly-blobs$/);
    await expect(heading(page).locator(".phase")).toHaveText("Running");
    const bar = page.getByRole("progressbar", { name: "nightly-blobs progress" });
    await expect(bar).toHaveAttribute("data-percent", BETWEEN_0_AND_100);
    const seen = Number(await bar.getAttribute("data-percent"));
    expect(seen).toBeGreaterThan(0);
    expect(seen).toBeLessThan(100);
    // The 25% milestone arrived on the event stream.
    await expect(page.locator('.events li[data-reason="Progress"]').first()).toBeVisible();

    // The list shows the same run with its bar, beside others made through the API.
    await ferry.api("POST", "/v1/transfers", {
      apiVersion: "ferry.dev/v1",
      kind: "BatchTransfer",
      metadata: { name: "orders-daily", labels: { team: "shop" } },
      spec: {
        source: { type: "file", path: "exports/orders.csv", format: "csv" },
        destination: { type: "file", path: "lake/orders/", format: "parquet" },
        schedule: "15 3 * * *",
        timeZone: "Europe/Berlin",
      },
    });
    await ferry.api("POST", "/v1/transfers", {
      apiVersion: "ferry.dev/v1",
      kind: "BatchTransfer",
      metadata: { name: "crm-export", labels: { team: "sales" } },
      spec: {
        source: { type: "file", path: "crm/contacts.csv", format: "csv" },
        destination: { type: "file", path: "lake/contacts/", format: "parquet" },
      },
    });
    await page.getByRole("link", { name: "Transfers" }).first().click();
    const row = page.locator('tr[data-transfer="nightly-blobs"]');
    await expect(row.getByRole("progressbar")).toHaveAttribute("data-percent", BETWEEN_0_AND_100);
    await expect(row.locator(".phase")).toHaveText("Running");
    await expect(page.locator('tr[data-transfer="crm-export"] .phase')).toHaveText(/^(Fatal|Failed|ConfigurationError)$/);
    await expect(page.locator('tr[data-transfer="orders-daily"] .phase')).toHaveText("Pending");
    await page.screenshot({ path: `${SHOTS}transfers.png` });
    // Filters: by phase and by label.
    await page.getByLabel("Phase").selectOption("Succeeded");
    await expect(page.getByText("No transfers match these filters")).toBeVisible();
    await page.getByLabel("Phase").selectOption("Running");
    await expect(row).toBeVisible();
    await page.getByRole("searchbox", { name: "Labels" }).fill("team=lake");
    await page.getByRole("searchbox", { name: "Labels" }).press("Enter");
    await expect(page).toHaveURL(/labels=team%3Dlake/);
    await expect(row).toBeVisible();
    await page.getByLabel("Phase").selectOption("");
    await page.getByRole("searchbox", { name: "Labels" }).fill("");
    await page.getByRole("searchbox", { name: "Labels" }).press("Enter");

    await row.getByRole("link", { name: "nightly-blobs" }).click();
    await expect(bar).toHaveAttribute("data-percent", BETWEEN_0_AND_100);
    await expect(page.getByRole("status").filter({ hasText: "live" })).toBeVisible();

    // The server dies mid-run; started again, it resumes the run from its checkpoint.
    // The page reconnects by itself and follows the run to its end.
    await ferry.kill();
    await expect(page.getByRole("status").filter({ hasText: "reconnecting" })).toBeVisible();
    await ferry.start();
    await expect(heading(page).locator(".phase")).toHaveText("Succeeded", { timeout: 120_000 });
    await expect(page.getByRole("status").filter({ hasText: "live" })).toBeVisible();
    await expect(page.locator('.events li[data-reason="RunSucceeded"]')).toHaveCount(1);
    const run = page.locator("table.runs tbody tr").first();
    await expect(run).toHaveAttribute("data-phase", "Succeeded");
    await expect(run.locator('td[data-label="Bytes"]')).not.toHaveText("0 B");
    await expect(page.locator(".facts")).toContainText("MiB");
    await page.screenshot({ path: `${SHOTS}transfer-detail.png`, fullPage: true });
  });
});

test.describe("the console", () => {
  let ferry: Ferry;

  test.beforeAll(async () => {
    ferry = await Ferry.create();
    ferry.files("in", 3, 64 * 1024);
    await ferry.start();
  });
  test.afterAll(async () => ferry?.stop());

  test("shows a failed run's error (manifest uploaded as JSON), and deletes after asking", async ({ page }) => {
    await signIn(page, ferry);
    await page.getByRole("button", { name: "Apply manifest" }).click();
    const dialog = page.getByRole("dialog", { name: "Apply a manifest" });
    const manifest = {
      apiVersion: "ferry.dev/v1",
      kind: "BatchTransfer",
      metadata: { name: "missing-source" },
      spec: {
        source: { type: "file", path: "no-such-dir/orders.csv", format: "csv" },
        destination: { type: "file", path: "out-missing/", format: "parquet" },
      },
    };
    await dialog.getByLabel("Or upload a file").setInputFiles({
      name: "missing-source.json",
      mimeType: "application/json",
      buffer: Buffer.from(JSON.stringify(manifest, null, 2)),
    });
    await expect(dialog.getByLabel("Manifest")).toHaveValue(/"missing-source"/);
    await dialog.getByRole("button", { name: "Apply" }).click();
    await expect(page).toHaveURL(/\/ui\/transfers\/missing-source$/);
    await expect(heading(page).locator(".phase")).toHaveText(/^(Fatal|Failed|ConfigurationError)$/);
    await expect(page.getByTestId("transfer-error")).toContainText("no-such-dir");
    const run = page.locator("table.runs tbody tr").first();
    await expect(run.locator(".run-error")).toContainText("no-such-dir");
    await expect(page.locator('.events li[data-reason^="Run"]').first()).toBeVisible();

    // Delete asks first: Cancel keeps it, Escape too, Delete removes it.
    const remove = page.getByRole("group", { name: "Actions" }).getByRole("button", { name: "Delete" });
    const confirm = page.getByRole("dialog", { name: "Delete missing-source?" });
    await remove.click();
    await expect(confirm).toBeVisible();
    await confirm.getByRole("button", { name: "Cancel" }).click();
    await expect(confirm).toBeHidden();
    await remove.click();
    await expect(confirm.getByRole("button", { name: "Cancel" })).toBeFocused();
    await page.keyboard.press("Escape");
    await expect(confirm).toBeHidden();
    await expect(remove).toBeFocused();
    await remove.click();
    await expect(confirm).toBeVisible();
    await confirm.getByRole("button", { name: "Delete" }).click();
    await expect(page).toHaveURL(/\/ui\/transfers$/);
    await expect(page.locator('tr[data-transfer="missing-source"]')).toHaveCount(0);
  });

  test("shows a record transfer's schemas in and out, and runs it again on request", async ({ page }) => {
    ferry.write(
      "exports/orders.csv",
      "id,email,amount,country\n" +
        Array.from({ length: 50 }, (_, i) => `${i},user${i}@example.com,${i * 3}.5,DE`).join("\n") +
        "\n",
    );
    await ferry.api("POST", "/v1/transfers", {
      apiVersion: "ferry.dev/v1",
      kind: "BatchTransfer",
      metadata: { name: "orders-to-lake", labels: { team: "lake" } },
      spec: {
        source: { type: "file", path: "exports/orders.csv", format: "csv" },
        destination: { type: "file", path: "lake/orders/", format: "parquet" },
        transformation: [{ action: "RemoveColumn", columns: ["email"] }],
      },
    });
    await signIn(page, ferry, "/ui/transfers/orders-to-lake");
    await expect(heading(page).locator(".phase")).toHaveText("Succeeded");
    const schemas = page.getByRole("region", { name: "Schemas" });
    await expect(schemas.locator("table").first()).toContainText("email");
    await expect(schemas.locator("table").nth(1)).not.toContainText("email");
    await expect(schemas.locator("table").nth(1)).toContainText("amount");
    await expect(page.locator(".facts")).toContainText("50");
    const runs = page.locator("table.runs tbody tr");
    await expect(runs).toHaveCount(1);
    await page.getByRole("button", { name: "Run now" }).click();
    await expect(runs).toHaveCount(2);
    await expect(runs.first()).toHaveAttribute("data-phase", "Succeeded");
    await expect(runs.first().locator('td[data-label="Trigger"]')).toHaveText("manual");
  });

  test("suspends and resumes a transfer", async ({ page }) => {
    await ferry.api("POST", "/v1/transfers", {
      apiVersion: "ferry.dev/v1",
      kind: "BatchTransfer",
      metadata: { name: "new-year-archive", labels: { team: "finance" } },
      spec: {
        source: { type: "file", path: "in/" },
        destination: { type: "file", path: "archive/" },
        schedule: "0 3 1 1 *",
      },
    });
    await signIn(page, ferry, "/ui/transfers/new-year-archive");
    await expect(heading(page).locator(".phase")).toHaveText("Pending");
    await page.getByRole("button", { name: "Suspend" }).click();
    await expect(heading(page).locator(".phase")).toHaveText("Suspended");
    await page.getByRole("button", { name: "Resume" }).click();
    await expect(heading(page).locator(".phase")).toHaveText("Pending");
    await expect(page.getByRole("button", { name: "Suspend" })).toBeVisible();
    await expect(page.locator('.events li[data-reason="Suspended"], .events li[data-reason="Resumed"]')).not.toHaveCount(0);
  });

  test("shows a 422's invalid fields next to the lines that hold them", async ({ page }) => {
    await signIn(page, ferry);
    // Keyboard: the dialog opens from the keyboard, Escape closes it, focus comes back.
    const open = page.getByRole("button", { name: "Apply manifest" });
    await open.focus();
    await page.keyboard.press("Enter");
    const dialog = page.getByRole("dialog", { name: "Apply a manifest" });
    await expect(dialog.getByLabel("Manifest")).toBeVisible();
    await page.keyboard.press("Escape");
    await expect(dialog).toBeHidden();
    await expect(open).toBeFocused();

    await applyManifest(
      page,
      `apiVersion: ferry.dev/v1
kind: BatchTransfer
metadata: {name: bad-one}
spec:
  source:      {type: file, path: in/}
  destination: {type: file, path: out/}
  schedule: "61 * * * *"
  maxFailedRetries: 1000
`,
    );
    const annotated = dialog.getByRole("group", { name: "Invalid fields" });
    await expect(annotated.getByRole("heading")).toHaveText("2 invalid fields");
    const schedule = annotated.locator("li.bad").filter({ has: page.locator('[data-field="spec.schedule"]') });
    await expect(schedule.locator(".src")).toContainText('schedule: "61 * * * *"');
    await expect(schedule.locator('[data-field="spec.schedule"]')).toContainText("61");
    const retries = annotated.locator("li.bad").filter({ has: page.locator('[data-field="spec.maxFailedRetries"]') });
    await expect(retries.locator(".src")).toContainText("maxFailedRetries: 1000");
    await expect(dialog.getByLabel("Manifest")).toHaveAttribute("aria-invalid", "true");
    // A message leads to its line in the editor.
    await schedule.locator('[data-field="spec.schedule"]').click();
    await expect(dialog.getByLabel("Manifest")).toBeFocused();
    await page.screenshot({ path: `${SHOTS}apply-422.png` });
    await page.keyboard.press("Escape");
    await expect(dialog).toBeHidden();
  });

  test("draws a pipeline run as a graph of tasks coloured by state", async ({ page }) => {
    await signIn(page, ferry);
    await applyManifest(
      page,
      `apiVersion: ferry.dev/v1
kind: Pipeline
metadata: {name: nightly-report}
spec:
  tasks:
    - name: extract
      command: {argv: [sh, -c, 'echo 100%']}
    - name: load-eu
      dependsOn: [{task: extract}]
      command: {argv: ["true"]}
    - name: load-us
      dependsOn: [{task: extract}]
      command: {argv: [sh, -c, 'echo "partner feed missing" >&2; exit 3']}
    - name: summary
      dependsOn: [{task: load-eu}, {task: load-us}]
      command: {argv: ["true"]}
    - name: page-on-call
      dependsOn: [{task: load-us, when: failed}]
      command: {argv: ["true"]}
`,
    );
    await expect(page).toHaveURL(/\/ui\/pipelines\/nightly-report$/);
    await expect(page.locator('.node[data-task="summary"]')).toHaveAttribute("data-phase", "NotRun");
    await page.getByRole("button", { name: "Run now" }).click();
    await expect(page.locator('.node[data-task="load-us"]')).toHaveAttribute("data-phase", "Failed");
    await expect(page.locator('.node[data-task="extract"]')).toHaveAttribute("data-phase", "Succeeded");
    await expect(page.locator('.node[data-task="page-on-call"]')).toHaveAttribute("data-phase", "Succeeded");
    await expect(page.locator("#run-title ~ .phase")).toHaveText("Failed");
    await expect(page.locator('tr[data-task="load-us"] .run-error')).toContainText("partner feed missing");
    await page.screenshot({ path: `${SHOTS}pipeline.png`, fullPage: true });

    await page.getByRole("link", { name: "Pipelines" }).first().click();
    await expect(page.getByRole("link", { name: "nightly-report" })).toBeVisible();

    // The transfers made for its tasks are in the transfers list on request only.
    await page.getByRole("link", { name: "Transfers" }).first().click();
    const task = page.locator('tr[data-transfer^="nightly-report-"]');
    await expect(page.locator("main table.cards, main .empty")).toBeVisible();
    await expect(task).toHaveCount(0);
    await page.getByLabel("Show pipeline tasks").check();
    await expect(task.first()).toBeVisible();
    await page.getByLabel("Show pipeline tasks").uncheck();
    await expect(task).toHaveCount(0);
  });

  test("reads well at phone width", async ({ page }) => {
    await ferry.api("POST", "/v1/transfers", {
      apiVersion: "ferry.dev/v1",
      kind: "BatchTransfer",
      metadata: { name: "quarterly-ledger-archive-to-cold-storage", labels: { team: "finance", tier: "cold" } },
      spec: { source: { type: "file", path: "in/" }, destination: { type: "file", path: "cold/" }, schedule: "0 2 1 */3 *" },
    });
    await page.setViewportSize({ width: 375, height: 812 });
    await signIn(page, ferry);
    await expect(page.locator('tr[data-transfer="quarterly-ledger-archive-to-cold-storage"]')).toBeVisible();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
    expect(overflow).toBeLessThanOrEqual(0);
    await page.screenshot({ path: `${SHOTS}transfers-phone.png` });
  });
});

test.describe("data planes", () => {
  let ferry: Ferry;

  // A server of its own: data planes registered here are not real, and would be chosen
  // for the runs of the other tests.
  test.beforeAll(async () => {
    ferry = await Ferry.create();
    await ferry.start();
    const planes = [
      { id: "dp-eu-1", region: "eu", capacity: 8, active: 3, rate: 180 * 1024 * 1024 },
      { id: "dp-eu-2", region: "eu", capacity: 8, active: 1, rate: 42 * 1024 * 1024 },
      { id: "dp-us-1", region: "us", capacity: 4, active: 0, rate: 0 },
    ];
    for (const p of planes) {
      await ferry.api("POST", "/v1/dataplanes", {
        id: p.id,
        url: `http://${p.id}.ferry.svc:8080`,
        labels: { region: p.region },
        allowedSourceTypes: ["file", "s3", "postgres"],
        allowedDestinationTypes: ["s3", "azure"],
      });
      await ferry.api("POST", `/v1/dataplanes/${p.id}/heartbeat`, {
        activeRuns: p.active,
        bytesPerSecond: p.rate,
        capacity: p.capacity,
      });
    }
    await ferry.api("PUT", "/v1/dataplanes/dp-us-1/state", { state: "Unavailable" });
  });
  test.afterAll(async () => ferry?.stop());

  test("lists them with state, labels and load", async ({ page }) => {
    await signIn(page, ferry, "/ui/dataplanes");
    const eu = page.locator('tr[data-dataplane="dp-eu-1"]');
    await expect(eu.locator(".phase")).toHaveText("Available");
    await expect(eu).toContainText("region=eu");
    await expect(eu.locator('td[data-label="Active runs"]')).toHaveText("3 / 8");
    await expect(eu.locator('td[data-label="Throughput"]')).toHaveText("180 MiB/s");
    await expect(page.locator('tr[data-dataplane="dp-us-1"] .phase')).toHaveText("Unavailable");
    await page.screenshot({ path: `${SHOTS}dataplanes.png` });
  });
});
