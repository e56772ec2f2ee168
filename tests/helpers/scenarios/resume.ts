/**
 * Reliability scenarios, dropped and stalled transfers: a cut blob is resumed with `Range`, and
 * a server that stalls forever ends in a clean timeout.
 * @module
 */
import { cutAfter, type FaultContext, serveBytes, stallAfter } from "../fault_registry.ts";
import { KiB, MiB } from "../hostile_image.ts";
import type { Scenario } from "../hostile_runner.ts";
import {
  exactly,
  expect,
  fault,
  type FaultRun,
  Held,
  manifestPath,
  pathOf,
  rangeStart,
  targetPath,
} from "./kit.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [
  { id: "resume", title: "resume a dropped blob transfer with Range" },
  { id: "stall-forever", title: "server stalls forever" },
];

/** Where the first request for a blob was cut, and how many bytes it had sent. */
interface Cut {
  start: number;
  sent: number;
}

/**
 * Cuts the first request for the blob after `sent` bytes, whether it asks for the whole blob
 * (200 + Content-Length) or for a Range segment (206 + Content-Range); imgpull's choice of
 * segments is its own. Returns undefined for every later request.
 */
function cutFirst(state: { cut?: Cut }, ctx: FaultContext, sent: number): Response | undefined {
  if (state.cut || !ctx.bytes) return undefined;
  const bytes = ctx.bytes;
  if (!ctx.range) {
    state.cut = { start: 0, sent };
    return cutAfter(bytes.slice(0, sent), 200, { "content-length": String(bytes.byteLength) });
  }
  const { start } = ctx.range;
  const end = Math.min(ctx.range.end ?? bytes.byteLength - 1, bytes.byteLength - 1);
  const part = Math.min(sent, end - start); // always short of the segment's end
  state.cut = { start, sent: part };
  return cutAfter(bytes.slice(start, start + part), 206, {
    "content-length": String(end - start + 1),
    "content-range": `bytes ${start}-${end}/${bytes.byteLength}`,
  });
}

/** A later request resumed inside the cut part: `Range: bytes=N-` with start < N <= start+sent. */
function resumedInside(run: FaultRun, cut: Cut | undefined): string[] {
  if (!cut) return ["the layer was never requested"];
  const later = run.requests("layer").slice(1);
  const ok = later.some((r) => {
    const n = rangeStart(r);
    return n !== undefined && n > cut.start && n <= cut.start + cut.sent;
  });
  return expect(
    ok,
    `no request resumed after byte ${cut.start} (cut after ${cut.sent} bytes): ` +
      JSON.stringify(run.requests("layer").map((r) => r.range)),
  );
}

const resume: Scenario[] = [
  fault({
    id: "resume-range",
    cls: "resume",
    title: "a cut layer (one connection) resumes with Range from the bytes written",
    code: 0,
  }, () => {
    const state: { cut?: Cut } = {};
    return {
      imageOptions: { layers: [MiB, 48 * KiB] },
      handler: (image) => (req, ctx) =>
        pathOf(req) === targetPath(image, "layer") ? cutFirst(state, ctx, 512 * KiB) : undefined,
      args: ["--connections", "1", "--retries", "2"],
      check: (run) => [
        ...exactly(run, "layer", 2, "one cut, one resume"),
        ...expect(state.cut?.start === 0, "the first request asked for a Range"),
        ...resumedInside(run, state.cut),
      ],
    };
  }),
  fault({
    id: "resume-answered-200",
    cls: "resume",
    title: "the registry answers the resume with 200 (whole blob): restarts cleanly",
    code: 0,
  }, () => {
    const state: { cut?: Cut } = {};
    return {
      imageOptions: { layers: [MiB, 48 * KiB] },
      handler: (image) => (req, ctx) => {
        if (pathOf(req) !== targetPath(image, "layer") || !ctx.bytes) return undefined;
        return cutFirst(state, ctx, 512 * KiB) ?? serveBytes(ctx.bytes); // ignores Range
      },
      args: ["--connections", "1", "--retries", "2"],
      check: (run) => {
        const n = run.count("layer");
        return expect(n >= 2 && n <= 3, `${n} layer requests, expected 2 or 3`);
      },
    };
  }),
  fault({
    id: "resume-wrong-content-range",
    cls: "resume",
    title: "the resume gets 206 with a Content-Range for other bytes: not trusted",
    code: 0,
  }, () => {
    const state: { cut?: Cut } = {};
    return {
      imageOptions: { layers: [MiB, 48 * KiB] },
      handler: (image) => (req, ctx) => {
        if (pathOf(req) !== targetPath(image, "layer") || !ctx.bytes) return undefined;
        const first = cutFirst(state, ctx, 512 * KiB);
        if (first) return first;
        if (ctx.range && ctx.range.start > 0) {
          // Claims to start at byte 0 and sends the start of the blob.
          const length = ctx.bytes.byteLength - ctx.range.start;
          return new Response(ctx.bytes.slice(0, length), {
            status: 206,
            headers: { "content-range": `bytes 0-${length - 1}/${ctx.bytes.byteLength}` },
          });
        }
        return undefined;
      },
      args: ["--connections", "1", "--retries", "2"],
    };
  }),
  fault({
    id: "resume-segment",
    cls: "resume",
    title: "a cut Range segment of a 3 MiB layer resumes from its own written bytes",
    code: 0,
  }, () => {
    const state: { cut?: Cut } = {};
    return {
      imageOptions: { layers: [3 * MiB, 48 * KiB] },
      // Far (answers after 15 ms): fetched in Range segments from the start.
      latencyMs: 15,
      handler: (image) => (req, ctx) =>
        pathOf(req) === targetPath(image, "layer") && (ctx.range?.start ?? 0) > 0
          ? cutFirst(state, ctx, 300 * KiB)
          : undefined,
      args: ["--segment-size", "1", "--retries", "2"],
      check: (run) => [
        ...expect(
          run.requests("layer").every((r) => r.range !== null),
          "the layer was not fetched in Range segments",
        ),
        ...resumedInside(run, state.cut),
      ],
    };
  }),
];

// ---------------------------------------------------------------------------------------------
// Stalls that never end.

const stallForever: Scenario[] = [
  fault({
    id: "stall-layer-forever",
    cls: "stall-forever",
    title: "a layer stalls mid-body forever: exit 6 after --stall-timeout and retries",
    code: 6,
    message: /no data for 2 s/,
    preexisting: true,
  }, () => ({
    handler: (image) => (req, ctx) =>
      pathOf(req) === targetPath(image, "layer") && ctx.bytes
        ? stallAfter(ctx.bytes.slice(0, 64 * KiB), {
          "content-length": String(ctx.bytes.byteLength),
        })
        : undefined,
    args: ["--retries", "1", "--stall-timeout", "2"],
    check: (run, outcome) => [
      // The stalled resume is answered with 200 (Range ignored), which restarts the blob.
      ...expect(
        run.count("layer") >= 2 && run.count("layer") <= 3,
        `${run.count("layer")} requests for the layer, expected 2 (3 with a restart)`,
      ),
      ...expect(outcome.elapsedMs < 15_000, `took ${Math.round(outcome.elapsedMs)} ms`),
    ],
  })),
  fault({
    id: "stall-manifest-no-headers",
    cls: "stall-forever",
    title: "the manifest request is never answered: exit 6 after --stall-timeout and retries",
    code: 6,
    message: /no data for 2 s/,
  }, () => {
    const held = new Held();
    return {
      handler: (image) => (req) => pathOf(req) === manifestPath(image) ? held.never() : undefined,
      args: ["--retries", "1", "--stall-timeout", "2"],
      check: (run) => exactly(run, "manifest", 2, "one retry"),
      extraClose: () => Promise.resolve(held.release()),
    };
  }),
  fault({
    id: "stall-config-forever",
    cls: "stall-forever",
    title: "the config stalls mid-body forever: exit 6",
    code: 6,
    message: /no data for 2 s/,
  }, () => ({
    handler: (image) => (req, ctx) =>
      pathOf(req) === targetPath(image, "config") && ctx.bytes
        ? stallAfter(ctx.bytes.slice(0, 10), { "content-length": String(ctx.bytes.byteLength) })
        : undefined,
    args: ["--retries", "1", "--stall-timeout", "2"],
    check: (run) => exactly(run, "config", 2, "one retry"),
  })),
];

/** Every scenario of this family, in class order. */
export const SCENARIOS: Scenario[] = [
  ...resume,
  ...stallForever,
];
