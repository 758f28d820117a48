import { defineConfig } from "@playwright/test";

import base from "./playwright.config";

// bench/console: the same browser and settings as the tests, the benchmark's own directory.
export default defineConfig({
  ...base,
  testDir: "bench",
  testMatch: "**/*.bench.ts",
  timeout: 600_000,
  retries: 0,
});
