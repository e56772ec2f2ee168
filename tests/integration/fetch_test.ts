/**
 * Blob downloads: Range segmentation and its fallbacks, resume after a cut
 * connection, and verification failures, against the fault registry (and a
 * real Distribution behind a CDN for the happy path).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { digestOf } from "../../lib/digest.ts";
import { IntegrityError, InvalidContentError, NetworkError } from "../../lib/errors.ts";
import { downloadBlob, fetchPolicy } from "../../lib/fetch.ts";
import type { Descriptor } from "../../lib/manifest.ts";
import { RegistryClient } from "../../lib/registry.ts";
import { BlobStore } from "../../lib/store.ts";
import {
  cutAfter,
  type FaultHandler,
  serveBytes,
  startFaultRegistry,
} from "../helpers/fault_registry.ts";
import { pushBlob } from "../helpers/push.ts";
import { cutEvery } from "../helpers/scenarios/kit.ts";
import { startBlobCdn, startRegistry } from "../helpers/registry.ts";
import { pseudoRandomBytes } from "../helpers/random.ts";

const MiB = 1024 * 1024;

const BLOB = pseudoRandomBytes(10 * MiB + 12345);
const DIGEST = digestOf(BLOB);
const DESCRIPTOR: Descriptor = { mediaType: "", digest: DIGEST, size: BLOB.byteLength };
const SMALL_SEGMENTS = { connections: 4, maxSegmentBytes: 2 * MiB, retries: 2 };

async function withFault(
  fault: FaultHandler | undefined,
  body: (ctx: {
    client: RegistryClient;
    store: BlobStore;
    requests: { range: string | null; path: string }[];
  }) => Promise<void>,
): Promise<void> {
  const registry = startFaultRegistry({ blobs: new Map([[DIGEST, BLOB]]), fault, quiet: true });
  const dir = await Deno.makeTempDir();
  const store = await BlobStore.createIn(dir);
  const client = new RegistryClient({ registry: registry.host, repository: "test/blob" });
  try {
    await client.ping();
    await body({ client, store, requests: registry.requests });
  } finally {
    client.close();
    await store.remove();
    await registry.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const isBlobRequest = (r: { path: string }) => r.path.includes("/blobs/");

Deno.test("fetch: a large blob arrives in Range segments and verifies", async () => {
  await withFault(undefined, async ({ client, store, requests }) => {
    const { path } = await downloadBlob(client, DESCRIPTOR, store, {
      policy: fetchPolicy(SMALL_SEGMENTS),
    });
    assert.deepEqual(await Deno.readFile(path!), BLOB);
    const ranges = requests.filter(isBlobRequest).map((r) => r.range);
    assert.equal(ranges.length, 6);
    assert.ok(ranges.every((r) => r?.startsWith("bytes=")));
  });
});

Deno.test("fetch: segments go straight to their offset in the output, and nowhere else", async () => {
  await withFault(undefined, async ({ client, store }) => {
    const output = `${store.root}/tmp/archive`;
    await Deno.writeFile(output, new Uint8Array(1000 + BLOB.byteLength + 10).fill(0xee));
    const result = await downloadBlob(client, DESCRIPTOR, store, {
      policy: fetchPolicy(SMALL_SEGMENTS),
      output: { path: output, offset: 1000 },
    });
    assert.deepEqual(result, { inOutput: true });
    const bytes = await Deno.readFile(output);
    assert.deepEqual(bytes.subarray(1000, 1000 + BLOB.byteLength), BLOB);
    assert.ok(bytes.subarray(0, 1000).every((b) => b === 0xee), "bytes before are untouched");
    assert.ok(bytes.subarray(1000 + BLOB.byteLength).every((b) => b === 0xee), "and after");
    assert.equal(await store.size(DIGEST), undefined, "a scratch store keeps no copy");
  });
});

Deno.test("fetch: many blobs segmented at once share the budget and all complete", async () => {
  const blobs = Array.from({ length: 8 }, (_, i) => pseudoRandomBytes(3 * MiB + i * 1000, i + 2));
  const registry = startFaultRegistry({
    blobs: new Map(blobs.map((b) => [digestOf(b), b])),
    // Uneven answers shuffle when segments finish, and so when workers retire or grow.
    fault: (_req, ctx) => {
      if (!ctx.bytes) return undefined;
      const delay = Math.floor(Math.random() * 15);
      const response = serveBytes(ctx.bytes, ctx.range);
      return delay === 0
        ? response
        : new Promise<Response>((r) => setTimeout(() => r(response), delay));
    },
  });
  const dir = await Deno.makeTempDir();
  const store = await BlobStore.createIn(dir);
  const client = new RegistryClient({ registry: registry.host, repository: "test/many" });
  try {
    await client.ping();
    for (let round = 0; round < 3; round++) {
      const policy = fetchPolicy({ connections: 6, retries: 0 });
      const results = await Promise.all(
        blobs.map((b) =>
          downloadBlob(client, { mediaType: "", digest: digestOf(b), size: b.byteLength }, store, {
            policy,
          })
        ),
      );
      for (const [i, r] of results.entries()) {
        assert.deepEqual(await Deno.readFile(r.path!), blobs[i]);
        await Deno.remove(r.path!);
      }
      assert.equal(policy.segmentedBlobs, 0);
    }
  } finally {
    client.close();
    await store.remove();
    await registry.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fetch: a server that ignores Range falls back to one connection", async () => {
  await withFault(
    (_req, ctx) => (ctx.bytes && ctx.range ? serveBytes(ctx.bytes) : undefined),
    async ({ client, store }) => {
      const { path } = await downloadBlob(client, DESCRIPTOR, store, {
        policy: fetchPolicy(SMALL_SEGMENTS),
      });
      assert.deepEqual(await Deno.readFile(path!), BLOB);
    },
  );
});

Deno.test("fetch: a wrong Content-Range is not trusted; the blob still verifies", async () => {
  await withFault((_req, ctx) => {
    if (!ctx.bytes || !ctx.range || ctx.range.start === 0) return undefined;
    // Claims the requested range but sends the bytes of the start of the blob.
    const length = (ctx.range.end ?? BLOB.byteLength - 1) - ctx.range.start + 1;
    return new Response(ctx.bytes.slice(0, length), {
      status: 206,
      headers: { "content-range": `bytes 0-${length - 1}/${BLOB.byteLength}` },
    });
  }, async ({ client, store }) => {
    const { path } = await downloadBlob(client, DESCRIPTOR, store, {
      policy: fetchPolicy(SMALL_SEGMENTS),
    });
    assert.deepEqual(await Deno.readFile(path!), BLOB);
  });
});

Deno.test("fetch: a cut connection resumes with Range from the bytes written", async () => {
  await withFault((_req, ctx) => {
    if (ctx.bytes && ctx.attempt === 1 && !ctx.range) {
      return cutAfter(ctx.bytes.slice(0, 3 * MiB), 200, {
        "content-length": String(ctx.bytes.byteLength),
      });
    }
    return undefined;
  }, async ({ client, store, requests }) => {
    // One connection and one segment: the plain-GET path, as for small blobs.
    const policy = fetchPolicy({ connections: 1, maxSegmentBytes: 64 * MiB, retries: 2 });
    const { path } = await downloadBlob(client, DESCRIPTOR, store, { policy });
    assert.deepEqual(await Deno.readFile(path!), BLOB);
    const ranges = requests.filter(isBlobRequest).map((r) => r.range);
    assert.equal(ranges[0], null);
    assert.match(ranges[1] ?? "", /^bytes=\d+-/);
    assert.ok(Number(ranges[1]!.slice(6, -1).split("-")[0]) > 0, "resumed, not restarted");
  });
});

Deno.test("fetch: corrupt, short and long bodies fail with IntegrityError and leave nothing", async () => {
  const faults: [string, FaultHandler][] = [
    ["corrupt", (_r, ctx) => {
      if (!ctx.bytes) return undefined;
      const bad = ctx.bytes.slice();
      bad[bad.length - 1] ^= 1;
      return new Response(bad);
    }],
    ["long", (_r, ctx) => ctx.bytes && new Response(new Uint8Array([...ctx.bytes, 1, 2, 3]))],
    ["short", (_r, ctx) => ctx.bytes && new Response(ctx.bytes.slice(0, 100))],
  ];
  for (const [name, fault] of faults) {
    await withFault(fault, async ({ client, store }) => {
      const policy = fetchPolicy({ connections: 1, maxSegmentBytes: 64 * MiB, retries: 0 });
      await assert.rejects(
        downloadBlob(client, DESCRIPTOR, store, { policy }),
        (e) => e instanceof IntegrityError || (name === "short" && e instanceof Error),
        name,
      );
      assert.equal(await store.size(DIGEST), undefined, `${name}: nothing in the store`);
      const tmp = [...Deno.readDirSync(join(store.root, "tmp"))];
      assert.deepEqual(tmp, [], `${name}: no temporary file left`);
    });
  }
});

Deno.test("fetch: real Distribution behind a CDN serves segments without Authorization", async () => {
  const root = await Deno.makeTempDir();
  const storageDir = join(root, "storage");
  const registry = await startRegistry({ mode: "http", storageDir });
  const cdn = await startBlobCdn(storageDir);
  const redirecting = await startRegistry({ mode: "http", storageDir, redirectBlobsTo: cdn.url });
  const store = await BlobStore.createIn(root);
  const client = new RegistryClient({ registry: redirecting.host, repository: "test/big" });
  try {
    await pushBlob(registry.url, "test/big", BLOB);
    await client.ping();
    const { path } = await downloadBlob(client, DESCRIPTOR, store, {
      policy: fetchPolicy(SMALL_SEGMENTS),
    });
    assert.deepEqual(await Deno.readFile(path!), BLOB);
    const served = cdn.requests.filter((r) => r.method === "GET");
    assert.equal(served.length, 6);
    assert.ok(served.every((r) => r.status === 206 && !r.hadAuthorization));
  } finally {
    client.close();
    await store.remove();
    await redirecting.close();
    await cdn.close();
    await registry.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("fetch: retries that resume and progress do not use up --retries", async () => {
  // 10 MiB through a link that drops every 1 MiB: 10 cuts, with 2 retries.
  await withFault(cutEvery(MiB), async ({ client, store, requests }) => {
    const policy = fetchPolicy({ connections: 1, maxSegmentBytes: 64 * MiB, retries: 2 });
    const { path } = await downloadBlob(client, DESCRIPTOR, store, { policy });
    assert.deepEqual(await Deno.readFile(path!), BLOB);
    assert.equal(requests.filter(isBlobRequest).length, 11);
  });
});

Deno.test("fetch: a transfer cut at the same byte every time still gives up", async () => {
  await withFault(cutEvery(3 * MiB, true), async ({ client, store, requests }) => {
    const policy = fetchPolicy({ connections: 1, maxSegmentBytes: 64 * MiB, retries: 2 });
    await assert.rejects(downloadBlob(client, DESCRIPTOR, store, { policy }), NetworkError);
    // The first attempt got to 3 MiB; then two retries (--retries 2) that got nowhere.
    assert.equal(requests.filter(isBlobRequest).length, 3);
  });
});

Deno.test("fetch: a longer body never writes past the member in the output", async () => {
  const fault: FaultHandler = (_r, ctx) =>
    ctx.bytes && new Response(new Uint8Array([...ctx.bytes, ...new Uint8Array(100_000).fill(7)]));
  await withFault(fault, async ({ client, store }) => {
    const output = `${store.root}/tmp/archive`;
    await Deno.writeFile(output, new Uint8Array(1000 + BLOB.byteLength + 200_000).fill(0xee));
    const policy = fetchPolicy({ connections: 1, maxSegmentBytes: 64 * MiB, retries: 0 });
    await assert.rejects(
      downloadBlob(client, DESCRIPTOR, store, { policy, output: { path: output, offset: 1000 } }),
      IntegrityError,
    );
    const bytes = await Deno.readFile(output);
    assert.ok(bytes.subarray(1000 + BLOB.byteLength).every((b) => b === 0xee), "nothing after");
  });
});

Deno.test("fetch: a blob of unknown size (schema1) stops at the limit", async () => {
  let served = 0;
  const fault: FaultHandler = (_r, ctx) => {
    if (!ctx.bytes) return undefined;
    // Endless: the blob's bytes, then more.
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        const chunk = new Uint8Array(64 * 1024).fill(1);
        served += chunk.byteLength;
        controller.enqueue(chunk);
      },
    });
    return new Response(body);
  };
  await withFault(fault, async ({ client, store }) => {
    const policy = fetchPolicy({ connections: 1, retries: 0, maxLayerBytes: 2 * MiB });
    await assert.rejects(
      downloadBlob(client, { mediaType: "", digest: DIGEST, size: -1 }, store, { policy }),
      (e) => e instanceof InvalidContentError && /larger than 2 MiB/.test(e.message),
    );
    assert.ok(served < 8 * MiB, `served ${served} bytes`);
    assert.deepEqual([...Deno.readDirSync(join(store.root, "tmp"))], []);
  });
});

Deno.test("fetch: a descriptor larger than --max-layer-size is refused before any request", async () => {
  await withFault(undefined, async ({ client, store, requests }) => {
    const policy = fetchPolicy({ maxLayerBytes: 5 * MiB });
    await assert.rejects(
      downloadBlob(client, DESCRIPTOR, store, { policy }),
      (e) => e instanceof InvalidContentError && /more than the limit of 5 MiB/.test(e.message),
    );
    assert.equal(requests.filter(isBlobRequest).length, 0);
  });
});

/**
 * A body of `bytes[start, end)` in 64 KiB pieces, `delayMs` apart; when the client leaves (its
 * tail went to another connection), no timer outlives the test.
 */
function trickleBody(bytes: Uint8Array, start: number, end: number, delayMs: number) {
  let at = start;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let wake = () => {};
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (at >= end) return controller.close();
      await new Promise<void>((resolve) => {
        wake = resolve;
        timer = setTimeout(resolve, delayMs);
      });
      if (timer === undefined) return; // cancelled meanwhile
      controller.enqueue(bytes.slice(at, Math.min(end, at + 64 * 1024)));
      at += 64 * 1024;
    },
    cancel() {
      clearTimeout(timer);
      timer = undefined;
      wake();
    },
  });
}

Deno.test("fetch: a slow segment's tail is split off for a connection that is idle", async () => {
  // The request for the first segment (from byte 0) trickles: 64 KiB every 50 ms; the rest
  // comes at once. Idle connections take the second half of what it has left, repeatedly.
  const slow: FaultHandler = (_req, ctx) => {
    if (!ctx.bytes || ctx.range?.start !== 0) return undefined;
    const end = Math.min((ctx.range.end ?? Infinity) + 1, ctx.bytes.byteLength);
    const body = trickleBody(ctx.bytes, 0, end, 50);
    return new Response(body, {
      status: 206,
      headers: {
        "content-length": String(end),
        "content-range": `bytes 0-${end - 1}/${ctx.bytes.byteLength}`,
      },
    });
  };
  await withFault(slow, async ({ client, store, requests }) => {
    const output = `${store.root}/tmp/archive`;
    await Deno.writeFile(output, new Uint8Array(100 + BLOB.byteLength + 100).fill(0xee));
    // 10 MiB in 4 segments of 2.5 MiB: alone, the first would take 2 s.
    const policy = fetchPolicy({ connections: 4, maxSegmentBytes: 4 * MiB, retries: 0 });
    const started = performance.now();
    await downloadBlob(client, DESCRIPTOR, store, {
      policy,
      output: { path: output, offset: 100 },
    });
    const elapsed = performance.now() - started;
    const bytes = await Deno.readFile(output);
    assert.deepEqual(bytes.subarray(100, 100 + BLOB.byteLength), BLOB);
    assert.ok(bytes.subarray(0, 100).every((b) => b === 0xee), "nothing before the member");
    assert.ok(bytes.subarray(100 + BLOB.byteLength).every((b) => b === 0xee), "nothing after");
    const starts = requests.filter(isBlobRequest).map((r) =>
      Number(/bytes=(\d+)-/.exec(r.range ?? "")?.[1])
    );
    const firstEnd = Math.ceil(BLOB.byteLength / 4);
    assert.ok(
      starts.some((s) => s > 0 && s < firstEnd),
      `a request starts inside the slow segment: ${starts}`,
    );
    assert.ok(elapsed < 1500, `took ${Math.round(elapsed)} ms`);
  });
});

Deno.test("fetch: a near source's blob starts over one connection and is spread when slow", async () => {
  // Every request trickles (64 KiB per 20 ms, ~3 MiB/s): slower than a near connection should be.
  const trickle: FaultHandler = (_req, ctx) => {
    if (!ctx.bytes) return undefined;
    const start = ctx.range?.start ?? 0;
    const end = Math.min((ctx.range?.end ?? Infinity) + 1, ctx.bytes.byteLength);
    const body = trickleBody(ctx.bytes, start, end, 20);
    return new Response(body, {
      status: 206,
      headers: {
        "content-length": String(end - start),
        "content-range": `bytes ${start}-${end - 1}/${ctx.bytes.byteLength}`,
      },
    });
  };
  await withFault(trickle, async ({ client, store, requests }) => {
    // A registry that answered its first request within 10 ms: near.
    const near = { latencyMs: 1, openBlob: client.openBlob.bind(client) };
    const events: string[] = [];
    const policy = fetchPolicy({ connections: 8, retries: 0 });
    const { path } = await downloadBlob(near, DESCRIPTOR, store, {
      policy,
      onEvent: (e) => e.type === "debug" && events.push(e.message),
    });
    assert.deepEqual(await Deno.readFile(path!), BLOB);
    const ranges = requests.filter(isBlobRequest).map((r) => r.range);
    assert.equal(ranges[0], `bytes=0-${BLOB.byteLength - 1}`, "one request for the whole blob");
    assert.ok(ranges.length > 2, `spread over more connections: ${ranges}`);
    assert.ok(events.some((m) => /one connection is not enough/.test(m)), events.join("\n"));
  });
});

Deno.test("fetch: a near source's fast blob stays on one connection", async () => {
  await withFault(undefined, async ({ client, store, requests }) => {
    const near = { latencyMs: 1, openBlob: client.openBlob.bind(client) };
    const policy = fetchPolicy({ connections: 8, retries: 0 });
    const { path } = await downloadBlob(near, DESCRIPTOR, store, { policy });
    assert.deepEqual(await Deno.readFile(path!), BLOB);
    assert.equal(requests.filter(isBlobRequest).length, 1);
  });
});

Deno.test("fetch: a near source's slow blob from a server ignoring Range still arrives whole", async () => {
  // Every request gets the whole blob with 200, slowly: the spread's segments are refused as
  // ranges and the blob is fetched once more over one connection.
  const ignoring: FaultHandler = (_req, ctx) => {
    if (!ctx.bytes) return undefined;
    const body = trickleBody(ctx.bytes, 0, ctx.bytes.byteLength, 5);
    return new Response(body, { headers: { "content-length": String(ctx.bytes.byteLength) } });
  };
  await withFault(ignoring, async ({ client, store, requests }) => {
    const near = { latencyMs: 1, openBlob: client.openBlob.bind(client) };
    const events: string[] = [];
    const policy = fetchPolicy({ connections: 4, retries: 0 });
    const { path } = await downloadBlob(near, DESCRIPTOR, store, {
      policy,
      onEvent: (e) => e.type === "debug" && events.push(e.message),
    });
    assert.deepEqual(await Deno.readFile(path!), BLOB);
    assert.ok(events.some((m) => /ignores Range/.test(m)), events.join("\n"));
    assert.ok(requests.filter(isBlobRequest).length >= 3);
  });
});
