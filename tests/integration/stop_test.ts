/**
 * Stopping cleanly: SIGINT/SIGTERM during a download exit with 130 within 2 s and leave no
 * temporary file (and, with a cache, only verified blobs and resumable partials); a full disk,
 * a read-only output directory and an output path that is a directory end in exit 7, the last
 * two before any blob is requested. The disk cases mount small tmpfs file systems, so this file
 * needs root (as the test machines run).
 */
import assert from "node:assert/strict";
import { describeBad, Services } from "../helpers/hostile_runner.ts";
import { classTitle, runClass } from "../helpers/hostile_scenarios.ts";

for (const cls of ["interrupt", "local-disk"]) {
  Deno.test(`stop: ${classTitle(cls)}`, async () => {
    const services = new Services();
    try {
      const results = await runClass(cls, services);
      const bad = describeBad(results);
      assert.ok(bad === "", `\n${bad}`);
    } finally {
      await services.close();
    }
  });
}
