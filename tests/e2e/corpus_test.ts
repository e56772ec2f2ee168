/**
 * Conformance corpus (issue #7): every image shape in tests/helpers/corpus/rows.ts is pushed to a
 * real Distribution, pulled with the imgpull CLI cold (fresh cache) and warm (second pull, same
 * cache), and each archive is proven with docker (load, run, export), podman (load, run, export)
 * and containerd (`ctr images import`, unpacked snapshot), its root filesystem compared with
 * skopeo's copy of the same manifest.
 *
 * One test per row group, one step per row, sub-steps cold/warm. The services are shared by all
 * groups, so these tests run without the op/resource sanitizers; the last test stops them, and an
 * `unload` handler does it synchronously when a filter left that test out. The proxy rows'
 * services (two tinyproxies, a TLS registry on the same storage) live only as long as their group.
 *
 * Env: CORPUS_CONCURRENCY (rows at once, default 3), CORPUS_ROWS (regex on row ids),
 * CORPUS_VERBOSE (print imgpull's stderr and RepoTags per pull), CORPUS_MAIN (another main.ts).
 */
import assert from "node:assert/strict";
import {
  type CorpusProxies,
  type CorpusServices,
  startCorpusProxies,
  startCorpusServices,
} from "../helpers/corpus/services.ts";
import { encodeLayer, filter, sha256 } from "../helpers/corpus/compress.ts";
import { diffListings, flattenLayers, type TarInput, writeTar } from "../helpers/corpus/tar.ts";
import { GROUPS, ROWS } from "../helpers/corpus/rows.ts";
import {
  details,
  phaseFailure,
  pool,
  type RowResult,
  runRow,
  summaryTable,
} from "../helpers/corpus/runner.ts";

const CONCURRENCY = Number(Deno.env.get("CORPUS_CONCURRENCY") ?? "3");
const ONLY = Deno.env.get("CORPUS_ROWS");
const rows = ONLY ? ROWS.filter((r) => new RegExp(ONLY).test(r.id)) : ROWS;

let services: Promise<CorpusServices> | undefined;
const results: RowResult[] = [];
const started = performance.now();

function shared(): Promise<CorpusServices> {
  services ??= startCorpusServices().then((s) => {
    globalThis.addEventListener("unload", () => s.closeSync());
    return s;
  });
  return services;
}

Deno.test("corpus: the harness's own tar, flattener and encodings are right", async () => {
  const enc = new TextEncoder();
  const file = (path: string, text: string, mode = 0o644): TarInput => ({
    path,
    type: "file",
    mode,
    content: enc.encode(text),
  });
  const dir = (path: string): TarInput => ({ path, type: "dir", mode: 0o755 });
  const lower = writeTar([
    dir("a"),
    file("a/x", "x"),
    file("a/y", "yy"),
    dir("b"),
    file("b/z", "z"),
  ]);
  const upper = writeTar([
    file("a/.wh.x", ""),
    dir("b"),
    file("b/.wh..wh..opq", ""),
    file("b/new", "new", 0o600),
    { path: "l", type: "symlink", mode: 0o777, linkTarget: "a/y" },
  ]);
  const fs = flattenLayers([lower, upper]);
  assert.deepEqual([...fs.keys()].sort(), ["a", "a/y", "b", "b/new", "l"]);
  assert.deepEqual(fs.get("b/new"), { type: "file", mode: 0o600, uid: 0, gid: 0, size: 3 });
  assert.equal(fs.get("l")?.target, "a/y");
  const changed = flattenLayers([lower]);
  assert.ok(diffListings(fs, changed).length > 0, "a differing tree is noticed");
  assert.deepEqual(diffListings(fs, flattenLayers([lower, upper])), []);

  // Every encoding decodes (with the system tools) to the tar its diff_id names.
  const entries = [dir("d"), file("d/f", "x".repeat(200_000))];
  for (const encoding of ["gzip-multi-member", "estargz", "zstd", "zstd-multi-frame"] as const) {
    const layer = await encodeLayer(entries, encoding);
    const tool = encoding.startsWith("zstd") ? "zstd" : "gzip";
    const tar = await filter(tool, ["-dcq"], layer.bytes);
    assert.equal(sha256(tar), layer.diffId, encoding);
  }
  const estargz = await encodeLayer(entries, "estargz");
  const tail = estargz.bytes.subarray(estargz.bytes.byteLength - 51);
  assert.equal(new TextDecoder().decode(tail.subarray(16, 38)).slice(16), "STARGZ", "footer");
  const multi = await encodeLayer(entries, "zstd-multi-frame");
  const frames = multi.bytes.reduce(
    (n, _, i, b) =>
      n + (b[i] === 0x28 && b[i + 1] === 0xb5 && b[i + 2] === 0x2f && b[i + 3] === 0xfd ? 1 : 0),
    0,
  );
  assert.ok(frames >= 4, `${frames} zstd frames`);
});

const noSanitizers = { sanitizeOps: false, sanitizeResources: false, sanitizeExit: false };

for (const group of GROUPS) {
  const groupRows = rows.filter((r) => r.group === group);
  Deno.test({
    name: `corpus: ${group}`,
    ignore: groupRows.length === 0,
    ...noSanitizers,
    async fn(t) {
      const s = await shared();
      const busybox = await Deno.readFile("/bin/busybox");
      // Only this group's rows use the proxies: they start with it and stop when it ends. A
      // failure to start fails those rows (at setup), not the group's other rows.
      let proxies: Promise<CorpusProxies> | undefined;
      if (groupRows.some((r) => r.needs === "proxies")) {
        proxies = startCorpusProxies(s);
        proxies.catch(() => {});
      }
      const pending = pool(
        CONCURRENCY,
        groupRows.map((row) => () => runRow(s, row, busybox, proxies)),
      );
      try {
        await stepsOf(t, groupRows, pending);
      } finally {
        await Promise.allSettled(pending);
        await proxies?.then((p) => p.close(), () => {});
      }
    },
  });
}

/** One step per row, sub-steps cold and warm. */
async function stepsOf(
  t: Deno.TestContext,
  groupRows: typeof ROWS,
  pending: Promise<RowResult>[],
): Promise<void> {
  for (const [i, row] of groupRows.entries()) {
    await t.step({
      name: `${row.id}: ${row.title}`,
      ...noSanitizers,
      async fn(t) {
        const result = await pending[i];
        results.push(result);
        for (const phase of ["cold", "warm"] as const) {
          await t.step({
            name: phase,
            ...noSanitizers,
            fn() {
              const failure = phaseFailure(result[phase], result.setup);
              if (failure) throw new Error(`${row.id} (${phase}):\n${failure}`);
            },
          });
        }
      },
    });
  }
}

Deno.test({
  name: "corpus: summary, then stop the shared services",
  ...noSanitizers,
  async fn() {
    const elapsed = ((performance.now() - started) / 1000).toFixed(1);
    if (results.length > 0) {
      if (Deno.env.get("CORPUS_VERBOSE")) console.log(`\n${details(results)}`);
      console.log(`\n${summaryTable(results)}\n\ncorpus: ${results.length} rows in ${elapsed} s`);
    }
    if (services) await (await services).close();
  },
});
