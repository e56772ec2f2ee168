/**
 * Conformance corpus (issue #7): every image shape in tests/helpers/corpus/rows.ts is pushed to a
 * real Distribution, pulled with the imgpull CLI cold (fresh cache) and warm (second pull, same
 * cache), and each archive is proven with docker (load, run, export), podman (load, run, export)
 * and containerd (`ctr images import`, unpacked snapshot), its root filesystem compared with
 * skopeo's copy of the same manifest.
 *
 * One test per row group, one step per row, sub-steps cold/warm. The services are shared by all
 * groups, so these tests run without the op/resource sanitizers; the last test stops them, and an
 * `unload` handler does it synchronously when a filter left that test out.
 *
 * Env: CORPUS_CONCURRENCY (rows at once, default 3), CORPUS_ROWS (regex on row ids).
 */
import { type CorpusServices, startCorpusServices } from "../helpers/corpus/services.ts";
import { GROUPS, ROWS } from "../helpers/corpus/rows.ts";
import {
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
      const pending = pool(CONCURRENCY, groupRows.map((row) => () => runRow(s, row, busybox)));
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
    },
  });
}

Deno.test({
  name: "corpus: summary, then stop the shared services",
  ...noSanitizers,
  async fn() {
    const elapsed = ((performance.now() - started) / 1000).toFixed(1);
    if (results.length > 0) {
      console.log(`\n${summaryTable(results)}\n\ncorpus: ${results.length} rows in ${elapsed} s`);
    }
    if (services) await (await services).close();
  },
});
