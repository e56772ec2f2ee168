/**
 * Under load: eight imgpull processes pull three images that share layers into one
 * --cache-dir at once. All succeed; each archive is byte-identical to a sequential pull's and
 * verifies on its own; every file under the cache's blobs/ hashes to its name.
 */
import assert from "node:assert/strict";
import { describeBad } from "../helpers/hostile_runner.ts";
import { runLoad } from "../helpers/hostile_scenarios.ts";

Deno.test("load: 8 concurrent pulls of overlapping images into one cache", async () => {
  const results = await runLoad(8);
  assert.equal(results.length, 8);
  const bad = describeBad(results);
  assert.ok(bad === "", `\n${bad}`);
});
