// bench/console's browser half: the console's first load (every asset, as compressed on
// the wire) and how long the transfers page takes to show 1,000 transfers, in headless
// Chromium against a real `ferry serve` ($FERRY_BIN). Writes $BENCH_JSON.

import { writeFileSync } from "node:fs";

import { expect, test } from "@playwright/test";

import { Ferry, TOKEN } from "../tests/server";

const TRANSFERS = Number(process.env.BENCH_TRANSFERS ?? "1000");
const REPS = Number(process.env.BENCH_REPS ?? "5");

test("first load and a page of 1,000 transfers", async ({ browser }) => {
  const ferry = await Ferry.create();
  await ferry.start();
  try {
    ferry.files("in", 1, 16);
    // Suspended transfers: listed, never run.
    for (let i = 0; i < TRANSFERS; i++) {
      await ferry.api("POST", "/v1/transfers", {
        apiVersion: "ferry.dev/v1",
        kind: "BatchTransfer",
        metadata: { name: `t-${String(i).padStart(5, "0")}`, labels: { team: i % 2 ? "lake" : "shop" } },
        spec: {
          source: { type: "file", path: "in/" },
          destination: { type: "file", path: `out/${i}/` },
          schedule: "0 3 * * *",
          suspend: true,
        },
      });
    }

    const renders: number[] = [];
    let firstLoad = { bytes: 0, raw: 0, files: 0 };
    for (let rep = 0; rep < REPS; rep++) {
      // A new context each time: nothing cached, signed in as the sign-in page leaves it.
      const context = await browser.newContext();
      await context.addInitScript((token) => sessionStorage.setItem("ferry.token", token), TOKEN);
      const page = await context.newPage();
      const started = Date.now();
      await page.goto(`${ferry.url}/ui/transfers`);
      await page.waitForFunction(
        (n) => document.querySelectorAll("main table tbody tr").length >= n,
        TRANSFERS,
        { polling: "raf", timeout: 60_000 },
      );
      renders.push(Date.now() - started);
      if (rep === 0) {
        // What the first load fetched, API calls left out: sizes as they crossed the wire.
        firstLoad = await page.evaluate(() => {
          const nav = performance.getEntriesByType("navigation") as PerformanceNavigationTiming[];
          const assets = (performance.getEntriesByType("resource") as PerformanceResourceTiming[]).filter(
            (r) => new URL(r.name).pathname.startsWith("/ui/"),
          );
          const all = [...nav, ...assets];
          return {
            bytes: all.reduce((n, r) => n + r.encodedBodySize, 0),
            raw: all.reduce((n, r) => n + r.decodedBodySize, 0),
            files: all.length,
          };
        });
      }
      await expect(page.locator("main table tbody tr")).toHaveCount(TRANSFERS);
      await context.close();
    }
    const result = { transfers: TRANSFERS, renders_ms: renders, first_load: firstLoad };
    console.log(JSON.stringify(result));
    if (process.env.BENCH_JSON) writeFileSync(process.env.BENCH_JSON, JSON.stringify(result));
  } finally {
    await ferry.stop();
  }
});
