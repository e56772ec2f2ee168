/**
 * `--limit-rate` (FetchPolicy.limitRateBytes): on loopback, where nothing else limits it, the
 * average rate of a download of some tens of MB lands within 5 % of the limit, also when the
 * bytes are spread over several blobs and connections at once (one bucket for the whole pull),
 * and progress events follow the limited pace.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { downloadBlob, fetchPolicy, RateLimiter } from "../../lib/fetch.ts";
import type { PullEvent } from "../../lib/events.ts";
import { MT } from "../helpers/fixtures.ts";
import { RegistryClient } from "../../lib/registry.ts";
import { BlobStore } from "../../lib/store.ts";
import { pushBlob } from "../helpers/push.ts";
import { startRegistry } from "../helpers/registry.ts";

const MiB = 1024 * 1024;

Deno.test("limit-rate: a pull's average rate is within 5 % of the limit", async (t) => {
  const work = await Deno.makeTempDir({ prefix: "imgpull-rate-" });
  const registry = await startRegistry({ mode: "http", storageDir: join(work, "storage") });
  const client = new RegistryClient({ registry: registry.host, repository: "rate/blobs" });
  try {
    const blobs = [24 * MiB + 123, 12 * MiB + 45, 6 * MiB].map((size, i) => {
      const bytes = new Uint8Array(size);
      for (let o = 0; o < size; o += 65536) {
        crypto.getRandomValues(bytes.subarray(o, Math.min(size, o + 65536)));
      }
      bytes[0] = i;
      return bytes;
    });
    const digests = await Promise.all(
      blobs.map((b) => pushBlob(registry.url, "rate/blobs", b)),
    );
    await client.ping();

    const pull = async (indexes: number[], limit: number, connections: number) => {
      const store = await BlobStore.createIn(work);
      const events: { at: number; event: PullEvent }[] = [];
      const policy = fetchPolicy({ connections, limitRateBytes: limit, maxSegmentBytes: 4 * MiB });
      try {
        const started = performance.now();
        const onEvent = (event: PullEvent) =>
          events.push({ at: (performance.now() - started) / 1000, event });
        await Promise.all(indexes.map((i) =>
          downloadBlob(
            client,
            {
              mediaType: MT.ociLayerGzip,
              digest: digests[i],
              size: blobs[i].byteLength,
            },
            store,
            { policy, onEvent },
          )
        ));
        const seconds = (performance.now() - started) / 1000;
        const bytes = indexes.reduce((n, i) => n + blobs[i].byteLength, 0);
        return { seconds, rate: bytes / seconds, events };
      } finally {
        await store.remove();
      }
    };

    await t.step("one 24 MiB blob over one connection at 8 MiB/s", async () => {
      const { rate, seconds } = await pull([0], 8 * MiB, 1);
      const ratio = rate / (8 * MiB);
      console.log(`  ${seconds.toFixed(2)} s, ${(rate / MiB).toFixed(2)} MiB/s (${ratio})`);
      assert.ok(Math.abs(ratio - 1) <= 0.05, `rate ${ratio} of the limit`);
    });

    await t.step("three blobs (42 MiB) over 16 connections at 12 MiB/s, one bucket", async () => {
      const { rate, seconds, events } = await pull([0, 1, 2], 12 * MiB, 16);
      const ratio = rate / (12 * MiB);
      console.log(`  ${seconds.toFixed(2)} s, ${(rate / MiB).toFixed(2)} MiB/s (${ratio})`);
      assert.ok(Math.abs(ratio - 1) <= 0.05, `rate ${ratio} of the limit`);
      // Progress reports the limited pace: what was received by any moment stays within a
      // read or two per connection of what the limit allows by then.
      const latest = new Map<string, number>();
      let worst = 0;
      for (const { at, event } of events) {
        if (event.type !== "blob-progress") continue;
        latest.set(event.digest, event.received);
        const received = [...latest.values()].reduce((a, b) => a + b, 0);
        worst = Math.max(worst, received - 12 * MiB * at);
      }
      assert.ok(
        worst <= 2 * MiB,
        `progress ran ${(worst / MiB).toFixed(2)} MiB ahead of the limit`,
      );
      const progress = events.filter((e) => e.event.type === "blob-progress");
      assert.ok(progress.length > 10, `only ${progress.length} progress events`);
    });
  } finally {
    client.close();
    await registry.close();
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("limit-rate: RateLimiter books bytes and aborts its wait", async () => {
  assert.throws(() => new RateLimiter(0), RangeError);
  const limiter = new RateLimiter(1024 * 1024);
  assert.equal(limiter.chunkBytes, 52428);
  const started = performance.now();
  await limiter.take(256 * 1024); // 250 ms of link, 50 ms of burst allowed
  const waited = performance.now() - started;
  assert.ok(waited >= 180 && waited < 400, `waited ${waited} ms`);
  const controller = new AbortController();
  const pending = limiter.take(10 * 1024 * 1024, controller.signal);
  controller.abort(new Error("stop"));
  await assert.rejects(pending, /stop/);
});
