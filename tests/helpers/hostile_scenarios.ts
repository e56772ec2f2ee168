/**
 * The fault scenarios of the reliability suite, shared by `tests/integration/*` and
 * `scripts/reliability.ts`. Each scenario sets up a misbehaving registry (the in-test fault
 * registry, over HTTP or HTTPS, or real Distribution with a token server), pulls once with the
 * CLI and states the exit code and message a user must see; {@link ./hostile_runner.ts} judges
 * the rest (no stack trace, no file left behind, archive and cache verified, no secret printed).
 *
 * Scenarios are grouped in classes ({@link CLASSES}); a class is one test and one report row.
 * @module
 */
import { join } from "node:path";
import {
  cutAfter,
  type FaultContext,
  type FaultRegistry,
  type FaultRequest,
  serveBytes,
  stallAfter,
  startFaultRegistry,
} from "./fault_registry.ts";
import {
  buildImage,
  buildIndex,
  expectedArchive,
  type ImageOptions,
  jsonBytes,
  KiB,
  listFiles,
  manifestBlob,
  MiB,
  MT,
  putManifest,
  sha256,
  type TestImage,
} from "./hostile_image.ts";
import {
  describeBad,
  mountTmpfs,
  pool,
  type PullOutcome,
  type RunDirs,
  type RunResult,
  runScenario,
  type Scenario,
  Services,
  unmount,
} from "./hostile_runner.ts";
import {
  contentHeaders,
  endlessBody,
  exactly,
  expect,
  fault,
  type FaultRun,
  type FaultSetup,
  type Handler,
  Held,
  manifestPath,
  pathOf,
  rangeStart,
  signal,
  type Target,
  targetPath,
} from "./scenarios/kit.ts";
import { freePort } from "./ports.ts";
import { SECURITY_CLASSES, SECURITY_SCENARIOS } from "./scenarios/security.ts";
import { pushBlob, pushManifest } from "./push.ts";
import { type RunningRegistry, startRegistry } from "./registry.ts";
import { startTokenServer, type TokenServer } from "./token_server.ts";
import type { TestPki } from "./tls.ts";

/** The report rows / tests, in order. */
export const CLASSES: { id: string; title: string }[] = [
  { id: "transient-503", title: "HTTP 503 on manifest, config or layer" },
  { id: "transient-502", title: "HTTP 502 on manifest, config or layer" },
  { id: "transient-500", title: "HTTP 500 on manifest, config or layer" },
  { id: "transient-429", title: "HTTP 429 with Retry-After: 1 on manifest, config or layer" },
  { id: "transient-cut", title: "connection cut mid-body on manifest, config or layer" },
  { id: "transient-stall", title: "stall mid-body on manifest, config or layer" },
  { id: "rate-limit", title: "Docker Hub TOOMANYREQUESTS after retries" },
  { id: "not-retried", title: "401/403/404 and integrity failures are not retried" },
  { id: "resume", title: "resume a dropped blob transfer with Range" },
  { id: "stall-forever", title: "server stalls forever" },
  { id: "blob-integrity", title: "blob bytes or sizes differ from the descriptor" },
  { id: "manifest-integrity", title: "manifest bytes differ from the digest pulled or indexed" },
  { id: "invalid-content", title: "malformed, oversized or unsupported manifests and configs" },
  { id: "bad-digests", title: "digests that are not algorithm:hex (traversal, algorithms)" },
  { id: "redirects", title: "redirect loops and HTTPS to HTTP downgrades" },
  { id: "redirect-credentials", title: "redirect to another host carries no Authorization" },
  { id: "www-authenticate", title: "malformed WWW-Authenticate" },
  { id: "token-endpoint", title: "token endpoint answers garbage, huge bodies or errors" },
  { id: "plain-http-fallback", title: "errors behind the loopback plain-HTTP fallback" },
  { id: "huge-bodies", title: "huge error bodies and manifests" },
  { id: "interrupt", title: "SIGINT / SIGTERM during a download" },
  { id: "local-disk", title: "disk full, read-only or unusable output" },
  { id: "token-expiry", title: "token expires mid-pull" },
  { id: "secrets-token", title: "secrets: token auth (Distribution), --verbose" },
  { id: "secrets-basic", title: "secrets: Basic auth (Distribution), --verbose" },
  { id: "secrets-failing-token-server", title: "secrets: failing or hostile token server" },
  { id: "load", title: "8 concurrent pulls of overlapping images into one cache" },
  ...SECURITY_CLASSES,
];

// ---------------------------------------------------------------------------------------------
// 1. Transient failures: retried, then the pull completes; with --retries 0 they end in exit 6.

type Transient = "503" | "502" | "500" | "429" | "cut" | "stall";

function transientResponse(
  kind: Transient,
  image: TestImage,
  target: Target,
  bytes: Uint8Array,
): Response {
  switch (kind) {
    case "503":
      return new Response(
        "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
        {
          status: 503,
          headers: { "content-type": "text/html" },
        },
      );
    case "502":
      return new Response("Bad Gateway\n", { status: 502 });
    case "500":
      return Response.json({ errors: [{ code: "UNKNOWN", message: "internal server error" }] }, {
        status: 500,
      });
    case "429":
      return Response.json({ errors: [{ code: "TOOMANYREQUESTS", message: "slow down" }] }, {
        status: 429,
        headers: { "retry-after": "1" },
      });
    case "cut":
      return cutAfter(
        bytes.slice(0, bytes.byteLength >> 1),
        200,
        contentHeaders(image, target, bytes),
      );
    case "stall":
      return stallAfter(
        bytes.slice(0, bytes.byteLength >> 1),
        contentHeaders(image, target, bytes),
      );
  }
}

const TRANSIENT_MESSAGE: Record<Transient, RegExp> = {
  "503": /HTTP 503/,
  "502": /HTTP 502/,
  "500": /HTTP 500.*internal server error/,
  "429": /rate limit/,
  "cut": /cannot reach|connection|closed|error reading/i,
  "stall": /no data for 2 s/,
};

function transientScenarios(kind: Transient): Scenario[] {
  const out: Scenario[] = [];
  for (const target of ["manifest", "config", "layer"] as const) {
    const handler = (failAlways: boolean) => (image: TestImage): Handler => (req, ctx) => {
      if (pathOf(req) !== targetPath(image, target) || !ctx.bytes) return undefined;
      if (!failAlways && ctx.attempt > 1) return undefined;
      return transientResponse(kind, image, target, ctx.bytes);
    };
    out.push(fault({
      id: `retry-${kind}-${target}`,
      cls: `transient-${kind}`,
      title: `${kind} on the ${target}, once: retried, the pull completes`,
      code: 0,
    }, () => ({
      handler: handler(false),
      args: ["--retries", "1", "--stall-timeout", "2"],
      check: (run) => {
        const problems = exactly(run, target, 2, "one failure, one retry");
        const [first, second] = run.requests(target);
        if (kind === "429" && first && second && second.time - first.time < 900) {
          problems.push(`retried ${Math.round(second.time - first.time)} ms after Retry-After: 1`);
        }
        if (target === "layer" && (kind === "cut" || kind === "stall")) {
          const start = rangeStart(second);
          if (!(start !== undefined && start > 0)) {
            problems.push(`the retry did not resume with Range (got ${second?.range})`);
          }
        }
        return problems;
      },
    })));
    out.push(fault({
      id: `noretry-${kind}-${target}`,
      cls: `transient-${kind}`,
      title: `${kind} on the ${target} with --retries 0: exit 6`,
      code: 6,
      message: TRANSIENT_MESSAGE[kind],
    }, () => ({
      handler: handler(true),
      args: ["--retries", "0", "--stall-timeout", "2"],
      check: (run) => exactly(run, target, 1, "--retries 0"),
    })));
  }
  return out;
}

const HUB_429 = {
  errors: [{
    code: "TOOMANYREQUESTS",
    message: "You have reached your pull rate limit. You may increase the limit by " +
      "authenticating and upgrading: https://www.docker.com/increase-rate-limit",
  }],
};

const rateLimit: Scenario[] = [
  fault({
    id: "hub-429-manifest",
    cls: "rate-limit",
    title: "Docker Hub 429 on every manifest request: exit 6 with a login/mirror hint",
    code: 6,
    message: /rate limit[\s\S]*Hint:.*log in[\s\S]*mirror/,
  }, () => ({
    handler: (image) => (req) =>
      pathOf(req) === manifestPath(image) ? Response.json(HUB_429, { status: 429 }) : undefined,
    args: ["--retries", "1"],
    check: (run, outcome) => [
      ...exactly(run, "manifest", 2, "one retry"),
      ...expect(
        outcome.stderr.split("\n").filter((l) => l.startsWith("[-] Hint:")).length === 1,
        "no one-line hint",
      ),
    ],
  })),
  fault({
    id: "hub-429-layer",
    cls: "rate-limit",
    title: "Docker Hub 429 on every layer request: exit 6 with a login/mirror hint",
    code: 6,
    message: /rate limit[\s\S]*Hint:.*log in[\s\S]*mirror/,
  }, () => ({
    handler: (image) => (req) =>
      pathOf(req) === targetPath(image, "layer")
        ? Response.json(HUB_429, { status: 429 })
        : undefined,
    args: ["--retries", "1"],
    check: (run) => exactly(run, "layer", 2, "one retry"),
  })),
];

// ---------------------------------------------------------------------------------------------
// Not retried: 401, 403, 404 and integrity failures (default --retries 3).

const NOT_FOUND = (what: string) =>
  Response.json(
    { errors: [{ code: `${what}_UNKNOWN`, message: `${what.toLowerCase()} unknown` }] },
    {
      status: 404,
    },
  );

function corrupt(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  const bad = bytes.slice();
  bad[bad.length >> 1] ^= 0xff;
  return bad;
}

const notRetried: Scenario[] = [
  fault({
    id: "404-manifest",
    cls: "not-retried",
    title: "404 on the manifest: exit 4, one request",
    code: 4,
    message: /not found/,
  }, () => ({
    handler: (image) => (req) =>
      pathOf(req) === manifestPath(image) ? NOT_FOUND("MANIFEST") : undefined,
    check: (run) => exactly(run, "manifest", 1, "404 is final"),
  })),
  fault({
    id: "404-layer",
    cls: "not-retried",
    title: "404 on a layer: exit 4, one request",
    code: 4,
    message: /not found/,
  }, () => ({
    handler: (image) => (req) =>
      pathOf(req) === targetPath(image, "layer") ? NOT_FOUND("BLOB") : undefined,
    check: (run) => exactly(run, "layer", 1, "404 is final"),
  })),
  fault({
    id: "403-config",
    cls: "not-retried",
    title: "403 on the config: exit 3, one request",
    code: 3,
    message: /denied/,
  }, () => ({
    handler: (image) => (req) =>
      pathOf(req) === targetPath(image, "config")
        ? Response.json({
          errors: [{ code: "DENIED", message: "requested access to the resource is denied" }],
        }, {
          status: 403,
        })
        : undefined,
    check: (run) => exactly(run, "config", 1, "403 is final"),
  })),
  fault({
    id: "401-layer",
    cls: "not-retried",
    title: "401 (Basic challenge, no credentials) on a layer: exit 3, one request",
    code: 3,
    message: /authentication|unauthorized/,
  }, () => ({
    handler: (image) => (req) =>
      pathOf(req) === targetPath(image, "layer")
        ? new Response("unauthorized", {
          status: 401,
          headers: { "www-authenticate": 'Basic realm="fault"' },
        })
        : undefined,
    check: (run) => exactly(run, "layer", 1, "401 is final"),
  })),
  fault({
    id: "401-manifest-bearer",
    cls: "not-retried",
    title: "401 on the manifest even with a fresh token: exit 3, one re-authenticated retry",
    code: 3,
    message: /unauthorized|denied|authentication/,
  }, () => ({
    handler: (image) => (req) => {
      const path = pathOf(req);
      if (path === "/token") return Response.json({ token: "t0k3n-fault", expires_in: 300 });
      if (path !== manifestPath(image)) return undefined;
      const origin = new URL(req.url).origin;
      return Response.json({
        errors: [{ code: "UNAUTHORIZED", message: "authentication required" }],
      }, {
        status: 401,
        headers: {
          "www-authenticate":
            `Bearer realm="${origin}/token",service="fault",scope="repository:test/img:pull"`,
        },
      });
    },
    secrets: ["t0k3n-fault"],
    check: (run) => {
      const n = run.count("manifest");
      return expect(n >= 1 && n <= 2, `${n} manifest requests (one, plus one with a new token)`);
    },
  })),
  fault({
    id: "integrity-layer",
    cls: "not-retried",
    title: "corrupt layer bytes: exit 5, one request",
    code: 5,
    message: /digest|integrity/i,
    preexisting: true,
  }, () => ({
    handler: (image) => (req, ctx) =>
      pathOf(req) === targetPath(image, "layer") && ctx.bytes
        ? new Response(corrupt(ctx.bytes))
        : undefined,
    check: (run) => exactly(run, "layer", 1, "integrity failures are final"),
  })),
  fault({
    id: "integrity-config",
    cls: "not-retried",
    title: "corrupt config bytes: exit 5, one request",
    code: 5,
    message: /digest/,
  }, () => ({
    handler: (image) => (req, ctx) =>
      pathOf(req) === targetPath(image, "config") && ctx.bytes
        ? new Response(corrupt(ctx.bytes))
        : undefined,
    check: (run) => exactly(run, "config", 1, "integrity failures are final"),
  })),
  fault({
    id: "integrity-manifest-by-digest",
    cls: "not-retried",
    title: "pull by digest, the registry sends other bytes: exit 5, one request",
    code: 5,
    message: /digest/,
  }, () => {
    const image = buildImage();
    const other = buildImage({ seed: 2 });
    putManifest(image, image.manifest.digest, other.manifest);
    return {
      image,
      ref: (img, reg) => `${reg.host}/${img.repository}@${img.manifest.digest}`,
      check: (run) => exactly(run, manifestPath(image, image.manifest.digest), 1, "final"),
    };
  }),
];

// ---------------------------------------------------------------------------------------------
// 2. Resume.

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

// ---------------------------------------------------------------------------------------------
// 4. Hostile registries: blob integrity.

function layerFault(
  id: string,
  title: string,
  respond: (bytes: Uint8Array, ctx: FaultContext) => Response,
  options: Partial<Scenario> & {
    target?: Target;
    imageOptions?: ImageOptions;
    args?: string[];
    /** Which requests count for "not retried" (default: all of the target's). */
    counted?: (r: FaultRequest) => boolean;
  } = {},
): Scenario {
  const target = options.target ?? "layer";
  const counted = options.counted ?? (() => true);
  return fault({
    id,
    cls: "blob-integrity",
    title,
    code: options.code ?? 5,
    message: options.message ?? /digest|bytes|size/,
    preexisting: options.preexisting,
    cache: options.cache,
  }, () => ({
    imageOptions: options.imageOptions,
    handler: (image) => (req, ctx) =>
      pathOf(req) === targetPath(image, target) && ctx.bytes ? respond(ctx.bytes, ctx) : undefined,
    args: options.args,
    check: (run) => {
      const n = run.requests(target).filter(counted).length;
      return expect(n === 1, `${n} requests for the ${target}: integrity failures are final`);
    },
  }));
}

function streamOf(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(bytes.slice());
      controller.close();
    },
  });
}

const blobIntegrity: Scenario[] = [
  layerFault(
    "blob-corrupt",
    "layer bytes do not match the digest",
    (b) => new Response(corrupt(b)),
    { preexisting: true },
  ),
  layerFault(
    "blob-longer-declared",
    "layer has 3 bytes more than the descriptor (Content-Length says so)",
    (b) => new Response(new Uint8Array([...b, 1, 2, 3])),
  ),
  layerFault(
    "blob-longer-chunked",
    "layer has 3 bytes more than the descriptor (chunked)",
    (b) => new Response(streamOf(new Uint8Array([...b, 1, 2, 3]))),
  ),
  layerFault(
    "blob-shorter-declared",
    "layer has 100 bytes fewer than the descriptor (Content-Length says so)",
    (b) => new Response(b.slice(0, b.byteLength - 100)),
  ),
  layerFault(
    "blob-shorter-chunked",
    "layer body ends cleanly 100 bytes early (chunked)",
    (b) => new Response(streamOf(b.slice(0, b.byteLength - 100))),
    { args: ["--retries", "1"] },
  ),
  fault({
    id: "blob-segment-corrupt",
    cls: "blob-integrity",
    title: "one Range segment of a 3 MiB layer is corrupt",
    code: 5,
    message: /digest/,
    cache: true,
  }, () => {
    // The first segment after byte 0 that is asked for (imgpull chooses the segments).
    let corrupted: number | undefined;
    return {
      imageOptions: { layers: [3 * MiB, 48 * KiB] },
      handler: (image) => (req, ctx) => {
        if (pathOf(req) !== targetPath(image, "layer") || !ctx.bytes || !ctx.range) {
          return undefined;
        }
        const { start } = ctx.range;
        if (start > 0 && (corrupted === undefined || corrupted === start)) {
          corrupted = start;
          const bad = ctx.bytes.slice();
          bad[start] ^= 0xff; // the first byte this segment sends
          return serveBytes(bad, ctx.range);
        }
        return undefined;
      },
      args: ["--segment-size", "1"],
      check: (run) => {
        const n = run.requests("layer").filter((r) => rangeStart(r) === corrupted).length;
        return [
          ...expect(corrupted !== undefined, "the layer was not fetched in Range segments"),
          ...expect(n === 1, `the corrupt segment was requested ${n} times: integrity is final`),
        ];
      },
    };
  }),
  layerFault(
    "config-corrupt",
    "config bytes do not match the digest",
    (b) => new Response(corrupt(b)),
    { target: "config", cache: true },
  ),
  layerFault(
    "config-longer-declared",
    "config has 3 bytes more than the descriptor",
    (b) => new Response(new Uint8Array([...b, 0x20, 0x20, 0x20])),
    { target: "config" },
  ),
  fault({
    id: "config-longer-endless",
    cls: "blob-integrity",
    title: "config body goes on far beyond the descriptor size: exit 5, read stops early",
    code: 5,
    message: /digest|bytes|size/,
  }, () => {
    const counter = { bytes: 0 };
    return {
      handler: (image) => (req, ctx) =>
        pathOf(req) === targetPath(image, "config") && ctx.bytes
          ? new Response(endlessBody(ctx.bytes, counter))
          : undefined,
      check: () =>
        expect(
          counter.bytes < 8 * MiB,
          `the registry had to produce ${(counter.bytes / MiB).toFixed(1)} MiB for a ` +
            `config of a few hundred bytes`,
        ),
    };
  }),
];

// ---------------------------------------------------------------------------------------------
// Manifest integrity.

/** An index whose only entry points (by digest and size) at the index's own bytes. */
function selfReferencingIndex(): { bytes: Uint8Array; digest: string } {
  const loop = `sha256:${"0".repeat(63)}1`;
  let size = 0;
  for (let i = 0; i < 5; i++) {
    const bytes = jsonBytes({
      schemaVersion: 2,
      mediaType: MT.ociIndex,
      manifests: [{
        mediaType: MT.ociIndex,
        digest: loop,
        size,
        platform: { os: "linux", architecture: "amd64" },
      }],
    });
    if (bytes.byteLength === size) return { bytes, digest: loop };
    size = bytes.byteLength;
  }
  throw new Error("no fixed point for the self-referencing index");
}

const manifestIntegrity: Scenario[] = [
  fault({
    id: "by-digest-mismatch",
    cls: "manifest-integrity",
    title: "pull by @sha256, the manifest served has another digest",
    code: 5,
    message: /digest/,
  }, () => {
    const image = buildImage();
    putManifest(image, image.manifest.digest, buildImage({ seed: 3 }).manifest);
    return { image, ref: (img, reg) => `${reg.host}/${img.repository}@${img.manifest.digest}` };
  }),
  fault({
    id: "index-child-digest-mismatch",
    cls: "manifest-integrity",
    title: "the manifest an index points at has another digest",
    code: 5,
    message: /digest|bytes/,
  }, () => {
    const image = buildImage();
    const other = buildImage({ seed: 4 }).manifest;
    const index = buildIndex([{
      manifest: { ...image.manifest, size: other.size },
    }]);
    putManifest(image, "latest", index);
    putManifest(image, image.manifest.digest, other);
    return { image };
  }),
  fault({
    id: "index-child-size-mismatch",
    cls: "manifest-integrity",
    title: "the index gives a wrong size for the manifest",
    code: 5,
    message: /bytes|size/,
  }, () => {
    const image = buildImage();
    putManifest(
      image,
      "latest",
      buildIndex([{ manifest: { ...image.manifest, size: image.manifest.size + 7 } }]),
    );
    return { image };
  }),
  fault({
    id: "index-points-at-itself",
    cls: "manifest-integrity",
    title: "an index whose entry is served as the index itself: no loop, exit 5",
    code: 5,
    message: /digest/,
  }, () => {
    const image = buildImage();
    const self = selfReferencingIndex();
    putManifest(image, "latest", { bytes: self.bytes, mediaType: MT.ociIndex });
    putManifest(image, self.digest, { bytes: self.bytes, mediaType: MT.ociIndex });
    return {
      image,
      check: (run) => {
        const n = run.registry.requests.filter((r) => r.path.includes("/manifests/")).length;
        return expect(n === 2, `${n} manifest requests, expected 2`);
      },
    };
  }),
];

// ---------------------------------------------------------------------------------------------
// Invalid content.

function manifestFault(
  id: string,
  title: string,
  body: (image: TestImage) => { bytes: Uint8Array; mediaType: string },
  options: { code?: number; message?: RegExp; check?: FaultSetup["check"] } = {},
): Scenario {
  return fault({
    id,
    cls: "invalid-content",
    title,
    code: options.code ?? 8,
    message: options.message ?? /invalid manifest|unsupported|not valid|manifest/,
  }, () => {
    const image = buildImage();
    putManifest(image, "latest", body(image));
    return { image, check: options.check };
  });
}

function schema1WithTail(image: TestImage): Uint8Array {
  const header = { formatLength: 10, formatTail: "!!!!" };
  const protectedHeader = btoa(JSON.stringify(header)).replace(/=+$/, "");
  return jsonBytes({
    schemaVersion: 1,
    name: image.repository,
    tag: "latest",
    architecture: "amd64",
    fsLayers: [{ blobSum: image.layers[0].digest }],
    history: [{ v1Compatibility: JSON.stringify({ id: "a".repeat(64), os: "linux" }) }],
    signatures: [{ header: { alg: "ES256" }, signature: "c2ln", protected: protectedHeader }],
  });
}

/** A chain of `depth` indexes over the image's manifest; the outermost is tagged. */
function nestedIndexes(image: TestImage, depth: number): void {
  let inner = image.manifest;
  for (let i = 0; i < depth; i++) {
    inner = buildIndex([{ manifest: inner }]);
    putManifest(image, inner.digest, inner);
  }
  putManifest(image, "latest", inner);
}

const noLayerRequests = (run: FaultRun) => exactly(run, "layer", 0, "rejected before any download");

const invalidContent: Scenario[] = [
  manifestFault("manifest-malformed-json", "the manifest is not JSON", () => ({
    bytes: new TextEncoder().encode('{"schemaVersion": 2, "mediaType": '),
    mediaType: MT.dockerManifest,
  })),
  manifestFault("manifest-not-utf8", "the manifest is not UTF-8", () => ({
    bytes: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]),
    mediaType: MT.dockerManifest,
  })),
  manifestFault("manifest-empty", "the manifest body is empty", () => ({
    bytes: new Uint8Array(0),
    mediaType: MT.dockerManifest,
  })),
  manifestFault("manifest-unknown-type", "unknown manifest media type", () => ({
    bytes: jsonBytes({ schemaVersion: 2, mediaType: "application/vnd.example.thing.v1+json" }),
    mediaType: "application/vnd.example.thing.v1+json",
  }), { message: /unsupported manifest media type/ }),
  manifestFault(
    "manifest-unknown-type-image-shaped",
    "a manifest that declares an unknown media type but has config and layers",
    (image) => {
      const m = JSON.parse(new TextDecoder().decode(image.manifest.bytes));
      m.mediaType = "application/vnd.example.artifact.v1+json";
      return { bytes: jsonBytes(m), mediaType: m.mediaType };
    },
    { message: /unsupported manifest media type/, check: noLayerRequests },
  ),
  manifestFault(
    "schema1-bad-signature",
    "a signed schema1 manifest whose signature header has an invalid formatTail",
    (image) => ({ bytes: schema1WithTail(image), mediaType: MT.schema1Signed }),
  ),
  fault({
    id: "layer-unknown-media-type",
    cls: "invalid-content",
    title: "unknown layer media type: exit 8 before any layer is downloaded",
    code: 8,
    message: /unsupported layer media type/,
  }, () => ({
    imageOptions: { layerMediaType: "application/vnd.example.layer.v1+weird" },
    check: noLayerRequests,
  })),
  fault({
    id: "config-not-an-image",
    cls: "invalid-content",
    title: "the config media type is not an image's (a Helm chart)",
    code: 8,
    message: /not a container image/,
  }, () => ({
    imageOptions: { configMediaType: "application/vnd.cncf.helm.config.v1+json" },
    check: noLayerRequests,
  })),
  fault({
    id: "config-not-json",
    cls: "invalid-content",
    title: "the config is not JSON (digest and size match)",
    code: 8,
    message: /config/,
  }, () => {
    const image = buildImage();
    const config = new TextEncoder().encode("<html>not a config</html>");
    const digest = sha256(config);
    const m = JSON.parse(new TextDecoder().decode(image.manifest.bytes));
    m.config = { mediaType: MT.dockerConfig, digest, size: config.byteLength };
    image.blobs.set(digest, config);
    putManifest(image, "latest", manifestBlob(m, MT.dockerManifest));
    return { image, expected: null };
  }),
  fault({
    id: "config-diff-ids-mismatch",
    cls: "invalid-content",
    title: "the config lists fewer diff_ids than the manifest has layers",
    code: 8,
    message: /diff_ids/,
  }, () => {
    const image = buildImage();
    const config = jsonBytes({
      architecture: "amd64",
      os: "linux",
      rootfs: { type: "layers", diff_ids: [image.layers[0].digest] },
    });
    const digest = sha256(config);
    const m = JSON.parse(new TextDecoder().decode(image.manifest.bytes));
    m.config = { mediaType: MT.dockerConfig, digest, size: config.byteLength };
    image.blobs.set(digest, config);
    putManifest(image, "latest", manifestBlob(m, MT.dockerManifest));
    return { image, expected: null };
  }),
  fault({
    id: "index-too-deep",
    cls: "invalid-content",
    title: "indexes nested 6 deep (more than allowed)",
    code: 8,
    message: /nest/,
  }, () => {
    const image = buildImage();
    nestedIndexes(image, 6);
    return {
      image,
      check: (run) => {
        const n = run.registry.requests.filter((r) => r.path.includes("/manifests/")).length;
        return expect(n <= 6, `${n} manifest requests for a 6-deep chain`);
      },
    };
  }),
  fault({
    id: "index-nested-ok",
    cls: "invalid-content",
    title: "an index of an index (2 deep, allowed) pulls fine",
    code: 0,
  }, () => {
    const image = buildImage();
    nestedIndexes(image, 2);
    return { image };
  }),
];

// ---------------------------------------------------------------------------------------------
// Digests that are not algorithm:hex.

/** Replaces a digest in the manifest (layer 0, the config, or in a wrapping index). */
function badDigest(
  id: string,
  title: string,
  digest: (canary: string) => string,
  where: "layer" | "config" | "index",
): Scenario {
  return fault({
    id,
    cls: "bad-digests",
    title,
    code: 8,
    message: /invalid .*digest|digest/,
    cache: true,
  }, () => {
    const canary = `imgpull-pwned-${crypto.randomUUID().slice(0, 8)}`;
    const image = buildImage();
    const value = digest(canary);
    const m = JSON.parse(new TextDecoder().decode(image.manifest.bytes));
    if (where === "layer") m.layers[0].digest = value;
    if (where === "config") m.config.digest = value;
    if (where === "index") {
      putManifest(
        image,
        "latest",
        manifestBlob({
          schemaVersion: 2,
          mediaType: MT.ociIndex,
          manifests: [{
            mediaType: MT.dockerManifest,
            digest: value,
            size: image.manifest.size,
            platform: { os: "linux", architecture: "amd64" },
          }],
        }, MT.ociIndex),
      );
    } else putManifest(image, "latest", manifestBlob(m, MT.dockerManifest));
    // Serve something under the bad name too, in case it is asked for.
    image.blobs.set(value, image.layers[0].bytes);
    return {
      image,
      check: async (run, _outcome, dirs) => {
        const problems: string[] = [];
        const leaked = [`/tmp/${canary}`, join(dirs.work, "x"), join(dirs.cache, "x")];
        for (const path of leaked) {
          if (await Deno.lstat(path).then(() => true, () => false)) {
            problems.push(`created ${path}`);
            await Deno.remove(path, { recursive: true }).catch(() => {});
          }
        }
        const strays = (await listFiles(dirs.work).catch(() => [])).filter((f) =>
          f.includes(canary) || /(^|\/)x$/.test(f)
        );
        if (strays.length > 0) problems.push(`stray files ${strays.join(", ")}`);
        const asked = run.blobRequests().filter((r) => !/[0-9a-f]{64}$/.test(r.path));
        if (asked.length > 0) problems.push(`requested ${asked.map((r) => r.path).join(", ")}`);
        return problems;
      },
    };
  });
}

const badDigests: Scenario[] = [
  badDigest(
    "digest-traversal-layer",
    "layer digest sha256:../../x",
    () => "sha256:../../x",
    "layer",
  ),
  badDigest(
    "digest-traversal-deep-config",
    "config digest sha256:../../../../../../../../../../tmp/<canary>",
    (canary) => `sha256:${"../".repeat(10)}tmp/${canary}`,
    "config",
  ),
  badDigest(
    "digest-traversal-index",
    "index entry digest sha256:../../x",
    () => "sha256:../../x",
    "index",
  ),
  badDigest(
    "digest-short",
    "layer digest with 63 hex digits",
    () => `sha256:${"a".repeat(63)}`,
    "layer",
  ),
  badDigest(
    "digest-uppercase",
    "layer digest in upper-case hex",
    () => `sha256:${"A".repeat(64)}`,
    "layer",
  ),
  badDigest("digest-md5", "layer digest md5:<32 hex>", () => `md5:${"a".repeat(32)}`, "layer"),
  badDigest(
    "digest-sha384",
    "config digest sha384 (unsupported algorithm)",
    () => `sha384:${"b".repeat(96)}`,
    "config",
  ),
  fault({
    id: "digest-header-traversal",
    cls: "bad-digests",
    title: "a Docker-Content-Digest header of sha256:../../x is ignored; the pull completes",
    code: 0,
    cache: true,
  }, () => ({
    handler: (image) => (req, ctx) => {
      if (!ctx.bytes) return undefined;
      const headers = {
        "docker-content-digest": "sha256:../../x",
        "content-type": pathOf(req).includes("/manifests/")
          ? image.manifest.mediaType
          : "application/octet-stream",
      };
      return ctx.range ? undefined : new Response(ctx.bytes.slice(), { headers });
    },
    check: async (_run, _outcome, dirs) => {
      const strays = (await listFiles(dirs.work).catch(() => [])).filter((f) => /(^|\/)x$/.test(f));
      return expect(strays.length === 0, `stray files ${strays.join(", ")}`);
    },
  })),
  fault({
    id: "reference-md5",
    cls: "bad-digests",
    title: "pull by @md5:… is a usage error, no request is made",
    code: 2,
    message: /digest/,
  }, () => ({
    ref: (img, reg) => `${reg.host}/${img.repository}@md5:${"a".repeat(32)}`,
    check: (run) =>
      expect(run.registry.requests.length === 0, `${run.registry.requests.length} requests`),
  })),
];

// ---------------------------------------------------------------------------------------------
// Redirects.

const redirects: Scenario[] = [
  fault({
    id: "redirect-loop-blob",
    cls: "redirects",
    title: "a layer redirects to itself forever: exit 6, bounded",
    code: 6,
    message: /redirect/,
  }, () => ({
    handler: (image) => (req) =>
      pathOf(req) === targetPath(image, "layer")
        ? new Response(null, { status: 302, headers: { location: pathOf(req) } })
        : undefined,
    check: (run) => {
      const n = run.count("layer");
      return expect(n >= 2 && n <= 12, `${n} layer requests`);
    },
  })),
  fault({
    id: "redirect-pingpong-manifest",
    cls: "redirects",
    title: "the manifest redirects between two URLs forever: exit 6, bounded",
    code: 6,
    message: /redirect/,
  }, () => ({
    handler: (image) => (req) => {
      const path = pathOf(req);
      if (path === manifestPath(image)) {
        return new Response(null, { status: 307, headers: { location: "/elsewhere/a" } });
      }
      if (path === "/elsewhere/a") {
        return new Response(null, { status: 308, headers: { location: manifestPath(image) } });
      }
      return undefined;
    },
    check: (run) => {
      const n = run.registry.requests.filter((r) =>
        r.path.includes("/manifests/") || r.path.startsWith("/elsewhere")
      ).length;
      return expect(n >= 2 && n <= 12, `${n} redirect requests`);
    },
  })),
  fault({
    id: "redirect-without-location",
    cls: "redirects",
    title: "a 302 without Location on a layer: exit 6",
    code: 6,
    message: /redirect|Location/,
  }, () => ({
    handler: (image) => (req) =>
      pathOf(req) === targetPath(image, "layer") ? new Response(null, { status: 302 }) : undefined,
  })),
  ...(["layer", "manifest"] as const).map((target) =>
    fault({
      id: `https-to-http-${target}`,
      cls: "redirects",
      title: `an HTTPS registry redirects the ${target} to plain HTTP: refused, exit 6`,
      code: 6,
      message: /plain HTTP|HTTPS/,
    }, () => {
      const image = buildImage();
      const server = startFaultRegistry({
        blobs: image.blobs,
        manifests: image.manifests,
        quiet: true,
      });
      return {
        image,
        tls: true,
        handler: () => (req) =>
          pathOf(req) === targetPath(image, target)
            ? new Response(null, {
              status: 307,
              headers: { location: `${server.url}${pathOf(req)}` },
            })
            : undefined,
        check: (run) => [
          ...expect(server.requests.length === 0, `the HTTP server got ${server.requests.length}`),
          ...exactly(run, target, 1, "a refused redirect is final"),
        ],
        extraClose: () => server.close(),
      };
    })
  ),
];

// ---------------------------------------------------------------------------------------------
// Credentials and redirects to another host.

/** A server on `localhost` (another host than 127.0.0.1) that serves blobs under /cdn/. */
function startCdn(image: TestImage): FaultRegistry {
  return startFaultRegistry({
    quiet: true,
    fault: (req) => {
      const digest = pathOf(req).replace(/^\/cdn\//, "");
      const bytes = image.blobs.get(digest);
      return bytes ? serveBytes(bytes) : new Response("no", { status: 404 });
    },
  });
}

function redirectWithAuth(mode: "basic" | "bearer"): Scenario {
  const user = "cdn-user";
  const password = `Pw-${crypto.randomUUID()}`;
  const token = `tok-${crypto.randomUUID()}`;
  const basic = `Basic ${btoa(`${user}:${password}`)}`;
  const expectedAuth = mode === "basic" ? basic : `Bearer ${token}`;
  return fault({
    id: `redirect-other-host-${mode}`,
    cls: "redirect-credentials",
    title: `${mode} auth: blobs redirected to another host are fetched without Authorization`,
    code: 0,
    verbose: true,
  }, () => {
    const image = buildImage();
    const cdn = startCdn(image);
    return {
      image,
      handler: () => (req) => {
        const path = pathOf(req);
        const origin = new URL(req.url).origin;
        const auth = req.headers.get("authorization");
        if (path === "/token") {
          return auth === basic ? Response.json({ token, expires_in: 300 }) : Response.json(
            { errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] },
            { status: 401 },
          );
        }
        if (auth !== expectedAuth) {
          return new Response("{}", {
            status: 401,
            headers: {
              "www-authenticate": mode === "basic"
                ? 'Basic realm="fault"'
                : `Bearer realm="${origin}/token",service="fault"`,
            },
          });
        }
        const blob = path.match(/\/blobs\/(.+)$/);
        if (blob) {
          return new Response(null, {
            status: 307,
            headers: {
              location: `http://localhost:${cdn.port}/cdn/${blob[1]}`,
              "set-cookie": "session=registry-cookie",
            },
          });
        }
        return undefined;
      },
      args: ["--username", user, "--password-stdin"],
      stdin: password,
      secrets: [password, btoa(`${user}:${password}`), token],
      check: (run) => {
        const carried = cdn.requests.filter((r) =>
          r.authorization !== null || r.headers.has("cookie")
        );
        return [
          ...expect(cdn.requests.length >= 3, `the other host got ${cdn.requests.length} requests`),
          ...expect(
            carried.length === 0,
            `${carried.length} requests to the other host carried Authorization or Cookie`,
          ),
          ...expect(
            run.blobRequests().every((r) => r.authorization === expectedAuth),
            "the registry's own blob requests lacked Authorization",
          ),
        ];
      },
      extraClose: () => cdn.close(),
    };
  });
}

// ---------------------------------------------------------------------------------------------
// Authentication challenges and token endpoints (over HTTPS, so no plain-HTTP fallback).

function challengeScenario(
  id: string,
  title: string,
  header: string | null,
  options: { tls?: boolean; cls?: string } = {},
): Scenario {
  return fault({
    id,
    cls: options.cls ?? "www-authenticate",
    title,
    code: 3,
    message: /authenticat|challenge|realm/,
  }, () => ({
    tls: options.tls ?? true,
    handler: () => (req) =>
      pathOf(req).startsWith("/v2/")
        ? new Response("{}", {
          status: 401,
          headers: header === null ? {} : { "www-authenticate": header },
        })
        : undefined,
  }));
}

const wwwAuthenticate: Scenario[] = [
  challengeScenario("challenge-bearer-bare", "WWW-Authenticate: Bearer (no realm)", "Bearer"),
  challengeScenario(
    "challenge-ftp-realm",
    'Bearer realm="ftp://127.0.0.1/token"',
    'Bearer realm="ftp://127.0.0.1/token",service="x"',
  ),
  challengeScenario(
    "challenge-realm-not-url",
    'Bearer realm="not a url"',
    'Bearer realm="not a url",service="x"',
  ),
  challengeScenario("challenge-missing", "401 without WWW-Authenticate", null),
  challengeScenario(
    "challenge-negotiate",
    "only Negotiate is offered",
    "Negotiate YIIGhgYJKoZIhvcSAQICAQBuggZ1",
  ),
  challengeScenario("challenge-junk", "WWW-Authenticate of commas and quotes", ',,,=,"";;;\\"=='),
  challengeScenario(
    "challenge-oversized",
    "WWW-Authenticate of 20 KiB without a realm",
    `Bearer ${"x=y,".repeat(5000)}`,
  ),
];

function tokenEndpoint(
  id: string,
  title: string,
  code: number,
  respond: (counter: { bytes: number }) => Response,
  options: { message?: RegExp; args?: string[]; tls?: boolean; cls?: string } = {},
): Scenario {
  return fault({
    id,
    cls: options.cls ?? "token-endpoint",
    title,
    code,
    message: options.message,
  }, () => {
    const counter = { bytes: 0 };
    return {
      tls: options.tls ?? true,
      handler: () => (req) => {
        const path = pathOf(req);
        if (path === "/token") return respond(counter);
        if (!path.startsWith("/v2/")) return undefined;
        const origin = new URL(req.url).origin;
        return new Response("{}", {
          status: 401,
          headers: { "www-authenticate": `Bearer realm="${origin}/token",service="fault"` },
        });
      },
      args: options.args,
      check: (run) => [
        ...expect(
          counter.bytes < 32 * MiB,
          `read ${(counter.bytes / MiB).toFixed(0)} MiB of token`,
        ),
        ...expect(
          run.registry.requests.filter((r) => r.path === "/token").length <= 2,
          "token endpoint asked too often",
        ),
      ],
    };
  });
}

const tokenEndpoints: Scenario[] = [
  tokenEndpoint(
    "token-garbage",
    "token endpoint answers 200 with HTML",
    8,
    () => new Response("<html><body>Welcome to nginx!</body></html>"),
    { message: /token/ },
  ),
  tokenEndpoint(
    "token-missing",
    "token endpoint answers JSON without a token",
    8,
    () => Response.json({ expires_in: 300 }),
    { message: /token/ },
  ),
  tokenEndpoint(
    "token-with-spaces",
    "token endpoint answers a token with spaces and quotes",
    8,
    () => Response.json({ token: 'a b"c' }),
    { message: /token/ },
  ),
  tokenEndpoint(
    "token-huge-chunked",
    "token endpoint sends an endless body",
    8,
    (counter) =>
      new Response(endlessBody(new TextEncoder().encode('{"token":"'), counter, 1024 * MiB, 0x61)),
    { message: /token/ },
  ),
  tokenEndpoint(
    "token-huge-declared",
    "token endpoint announces a 50 MiB body",
    8,
    (counter) =>
      new Response(
        endlessBody(new TextEncoder().encode('{"token":"'), counter, 50 * MiB, 0x61),
        { headers: { "content-length": String(50 * MiB) } },
      ),
    { message: /token/ },
  ),
  tokenEndpoint(
    "token-500",
    "token endpoint fails with 500",
    6,
    () =>
      Response.json({ errors: [{ code: "UNKNOWN", message: "backend down" }] }, { status: 500 }),
    { message: /500/, args: ["--retries", "1"] },
  ),
  tokenEndpoint(
    "token-401",
    "token endpoint refuses anonymous access",
    3,
    () =>
      Response.json({ errors: [{ code: "UNAUTHORIZED", message: "no anonymous pulls" }] }, {
        status: 401,
      }),
    { message: /authentication|refused/ },
  ),
];

/** The same faults over plain HTTP to 127.0.0.1, where imgpull first tries HTTPS. */
const plainHttpFallback: Scenario[] = [
  challengeScenario(
    "plain-http-challenge-bare",
    "plain HTTP: WWW-Authenticate: Bearer (no realm) is an auth error, not a TLS error",
    "Bearer",
    { tls: false, cls: "plain-http-fallback" },
  ),
  tokenEndpoint(
    "plain-http-token-garbage",
    "plain HTTP: token endpoint answers HTML",
    8,
    () => new Response("<html>garbage</html>"),
    { tls: false, cls: "plain-http-fallback", message: /token/ },
  ),
  fault({
    id: "plain-http-basic-no-credentials",
    cls: "plain-http-fallback",
    title: "plain HTTP: Basic challenge and no credentials is an auth error",
    code: 3,
    message: /authenticat/,
  }, () => ({
    handler: () => (req) =>
      pathOf(req).startsWith("/v2/")
        ? new Response("{}", {
          status: 401,
          headers: { "www-authenticate": 'Basic realm="fault"' },
        })
        : undefined,
  })),
  fault({
    id: "plain-http-ping-503",
    cls: "plain-http-fallback",
    title: "plain HTTP: /v2/ answers 503 every time: exit 6 naming the 503, retried",
    code: 6,
    message: /503/,
  }, () => ({
    handler: () => (req) =>
      pathOf(req) === "/v2/" ? new Response("down", { status: 503 }) : undefined,
    args: ["--retries", "1"],
    check: (run) => {
      const n = run.count("/v2/");
      return expect(n === 2, `${n} /v2/ requests over HTTP, expected 2 (one retry)`);
    },
  })),
];

// ---------------------------------------------------------------------------------------------
// Huge bodies.

function hugeBody(
  id: string,
  title: string,
  code: number,
  target: Target,
  respond: (counter: { bytes: number }) => Response,
  options: { message?: RegExp; args?: string[] } = {},
): Scenario {
  return fault({ id, cls: "huge-bodies", title, code, message: options.message }, () => {
    const counter = { bytes: 0 };
    return {
      handler: (image) => (req) =>
        pathOf(req) === targetPath(image, target) ? respond(counter) : undefined,
      args: options.args,
      check: (_run, outcome) => [
        ...expect(
          counter.bytes < 32 * MiB,
          `the server produced ${(counter.bytes / MiB).toFixed(0)} MiB before imgpull stopped`,
        ),
        ...expect(outcome.elapsedMs < 15_000, `took ${Math.round(outcome.elapsedMs)} ms`),
      ],
    };
  });
}

const ERROR_PREFIX = new TextEncoder().encode('{"errors":[{"code":"NOT_FOUND","message":"');

const hugeBodies: Scenario[] = [
  hugeBody(
    "huge-404-manifest-endless",
    "404 on the manifest with an endless body",
    4,
    "manifest",
    (c) => new Response(endlessBody(ERROR_PREFIX, c), { status: 404 }),
    { message: /not found/ },
  ),
  hugeBody(
    "huge-404-layer-declared",
    "404 on a layer with a 50 MiB body (Content-Length)",
    4,
    "layer",
    (c) =>
      new Response(endlessBody(ERROR_PREFIX, c, 50 * MiB), {
        status: 404,
        headers: { "content-length": String(50 * MiB) },
      }),
    { message: /not found/ },
  ),
  hugeBody(
    "huge-500-layer-endless",
    "500 on a layer with an endless body, --retries 0",
    6,
    "layer",
    (c) => new Response(endlessBody(ERROR_PREFIX, c), { status: 500 }),
    { message: /500/, args: ["--retries", "0"] },
  ),
  hugeBody(
    "huge-manifest-declared",
    "a 5 MiB manifest (more than 4 MiB, Content-Length)",
    8,
    "manifest",
    (c) =>
      new Response(endlessBody(new TextEncoder().encode('{"schemaVersion":2,"x":"'), c, 5 * MiB), {
        headers: { "content-length": String(5 * MiB), "content-type": MT.dockerManifest },
      }),
    { message: /bytes|large/ },
  ),
  hugeBody(
    "huge-manifest-endless",
    "an endless manifest (chunked)",
    8,
    "manifest",
    (c) =>
      new Response(endlessBody(new TextEncoder().encode('{"schemaVersion":2,"x":"'), c), {
        headers: { "content-type": MT.dockerManifest },
      }),
    { message: /bytes|large/ },
  ),
];

// ---------------------------------------------------------------------------------------------
// 3. Stopping cleanly: signals, disk full, unwritable output.

function interruptScenario(sig: "SIGINT" | "SIGTERM", cache: boolean): Scenario {
  return fault({
    id: `${sig.toLowerCase()}-${cache ? "cache" : "no-cache"}`,
    cls: "interrupt",
    title: `${sig} during a stalled layer download (${cache ? "--cache-dir" : "--no-cache"})`,
    code: 130,
    message: /Interrupted/,
    cache,
    preexisting: sig === "SIGINT" && !cache,
  }, () => {
    const started = signal();
    return {
      imageOptions: { layers: [400 * KiB, 48 * KiB] },
      handler: (image) => (req, ctx) => {
        if (pathOf(req) !== targetPath(image, "layer") || !ctx.bytes) return undefined;
        setTimeout(started.resolve, 300);
        return stallAfter(ctx.bytes.slice(0, 200 * KiB), {
          "content-length": String(ctx.bytes.byteLength),
        });
      },
      interrupt: () => ({ signal: sig, after: started.promise }),
      check: async (run, _outcome, dirs) => {
        if (!cache) return [];
        const hex = run.image.layers[0].digest.slice(7);
        const partial = join(dirs.cache, "partial", "sha256", hex);
        const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
        return expect(
          await exists(partial) && await exists(`${partial}.json`),
          "the cache kept no resumable partial of the interrupted layer",
        );
      },
    };
  });
}

const TMPFS_IMAGE: ImageOptions = { layers: [MiB, MiB, MiB] };

/** The output directory on a 2 MiB tmpfs, too small for the image. */
async function fullOutputDisk(dirs: RunDirs): Promise<FaultSetup> {
  await mountTmpfs(dirs.out, "size=2m");
  return { imageOptions: TMPFS_IMAGE, extraClose: () => unmount(dirs.out) };
}

const localDisk: Scenario[] = [
  fault({
    id: "disk-full-no-cache",
    cls: "local-disk",
    title: "output on a full 2 MiB tmpfs, --no-cache: exit 7",
    code: 7,
    message: /no space left on device/i,
    root: true,
    preexisting: true,
  }, fullOutputDisk),
  fault({
    id: "disk-full-archive",
    cls: "local-disk",
    title: "output on a full 2 MiB tmpfs, cache elsewhere: exit 7",
    code: 7,
    message: /no space left on device/i,
    cache: true,
    root: true,
  }, fullOutputDisk),
  fault({
    id: "output-read-only",
    cls: "local-disk",
    title: "read-only output directory: exit 7 before any download",
    code: 7,
    message: /read-only|permission|cannot write/i,
    root: true,
    preexisting: true,
  }, async (dirs) => {
    await mountTmpfs(dirs.out, "size=1m");
    if (dirs.preexisting) await Deno.writeTextFile(dirs.output, "an archive from before\n");
    await runMount(["-o", "remount,ro", dirs.out]);
    return {
      ownsDestination: true,
      check: (run) =>
        expect(run.blobRequests().length === 0, `${run.blobRequests().length} blob requests`),
      extraClose: () => unmount(dirs.out),
    };
  }),
  fault({
    id: "output-is-directory",
    cls: "local-disk",
    title: "the output path is a directory: exit 7 before any download",
    code: 7,
    message: /directory/,
  }, async (dirs) => {
    await Deno.mkdir(join(dirs.out, "image.tar"));
    return {
      output: join(dirs.out, "image.tar"),
      ownsDestination: true,
      check: (run) =>
        expect(run.blobRequests().length === 0, `${run.blobRequests().length} blob requests`),
    };
  }),
  fault({
    id: "output-dir-missing",
    cls: "local-disk",
    title: "the output's directory does not exist: exit 7 before any download",
    code: 7,
    message: /no such file|cannot write/i,
  }, (dirs) => ({
    output: join(dirs.out, "missing", "image.tar"),
    ownsDestination: true,
    check: (run) =>
      expect(run.blobRequests().length === 0, `${run.blobRequests().length} blob requests`),
  })),
];

async function runMount(args: string[]): Promise<void> {
  const { code, stderr } = await new Deno.Command("mount", { args, stderr: "piped" }).output();
  if (code !== 0) throw new Error(`mount ${args.join(" ")}: ${new TextDecoder().decode(stderr)}`);
}

// ---------------------------------------------------------------------------------------------
// Token expiry mid-pull, and the secrets suite against real Distribution.

/**
 * Tokens that the registry accepts for 700 ms although they claim 300 s (so imgpull does not
 * renew them early), and blobs that take 300 ms each: the token expires during the pull, the
 * registry answers 401 with a fresh challenge, and a new token must be fetched.
 */
const reactiveExpiry: Scenario = fault({
  id: "token-expires-at-registry",
  cls: "token-expiry",
  title: "the registry rejects a token 700 ms after issuing it: a new one is fetched",
  code: 0,
}, () => {
  const issuedAt = new Map<string, number>();
  return {
    imageOptions: { layers: [100 * KiB, 80 * KiB, 60 * KiB] },
    handler: () => (req, ctx) => {
      const path = pathOf(req);
      if (path === "/token") {
        const token = `short-lived-${issuedAt.size + 1}-${crypto.randomUUID()}`;
        issuedAt.set(token, performance.now());
        return Response.json({ token, expires_in: 300 });
      }
      const token = req.headers.get("authorization")?.replace(/^Bearer /, "") ?? "";
      const issued = issuedAt.get(token);
      if (issued === undefined || performance.now() - issued > 700) {
        const origin = new URL(req.url).origin;
        return new Response(
          JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "token expired" }] }),
          {
            status: 401,
            headers: { "www-authenticate": `Bearer realm="${origin}/token",service="fault"` },
          },
        );
      }
      if (!path.includes("/blobs/") || !ctx.bytes) return undefined;
      const bytes = ctx.bytes;
      return new Promise((resolve) => setTimeout(() => resolve(serveBytes(bytes, ctx.range)), 300));
    },
    args: ["--max-concurrent-downloads", "1"],
    check: () => expect(issuedAt.size >= 2, `only ${issuedAt.size} token(s) issued`),
  };
});

/** Real Distribution registries sharing one storage, and their token servers. */
export interface Distribution {
  pki: TestPki;
  user: string;
  password: string;
  refreshToken: string;
  image: TestImage;
  basic: RunningRegistry;
  token: RunningRegistry;
  tokenServer: TokenServer;
  expiring: RunningRegistry;
  expiringTokens: TokenServer;
  failing: RunningRegistry;
  failingTokens: FaultRegistry;
  tokenDown: RunningRegistry;
  close(): Promise<void>;
}

/** The hostile token server behind `failing`: behaviour chosen by the user name. */
function failingTokenHandler(req: Request): Response {
  const auth = req.headers.get("authorization") ?? "";
  let user = "", password = "";
  if (auth.startsWith("Basic ")) {
    const decoded = atob(auth.slice(6));
    user = decoded.slice(0, decoded.indexOf(":"));
    password = decoded.slice(decoded.indexOf(":") + 1);
  }
  const echo = `rejected ${auth} for ${user} with password ${password}`;
  switch (user) {
    case "echo401":
      return Response.json({ errors: [{ code: "UNAUTHORIZED", message: echo }] }, { status: 401 });
    case "echo500":
      return Response.json({ errors: [{ code: "UNKNOWN", message: echo }] }, { status: 500 });
    case "garbage":
      return new Response(`<html>${echo}</html>`);
    default:
      return Response.json({ errors: [{ code: "UNAVAILABLE", message: "backend down" }] }, {
        status: 500,
      });
  }
}

/** Starts Basic and token-mode Distribution registries and pushes a small image to them. */
export async function startDistribution(services: Services): Promise<Distribution> {
  const pki = await services.pki();
  const root = join(await services.root(), `dist-${crypto.randomUUID().slice(0, 8)}`);
  const storageDir = join(root, "storage");
  const user = "imgpull-tester";
  const password = `Sekr1t-${crypto.randomUUID()}`;
  const refreshToken = `refresh-${crypto.randomUUID()}`;
  const users = { [user]: password };
  const closers: (() => Promise<void>)[] = [];
  const close = async () => {
    for (const c of closers.reverse()) await c().catch(() => {});
  };
  try {
    const tokenServer = await startTokenServer({
      pki,
      service: "imgpull-test-registry",
      issuer: "imgpull-test-issuer",
      users,
      refreshToken,
    });
    closers.push(tokenServer.close);
    const expiringTokens = await startTokenServer({
      pki,
      service: "imgpull-expiring",
      issuer: "imgpull-expiring-issuer",
      expiresIn: 1,
    });
    closers.push(expiringTokens.close);
    const failingTokens = startFaultRegistry({
      tls: { cert: pki.serverCertPem, key: pki.serverKeyPem },
      quiet: true,
      fault: failingTokenHandler,
    });
    closers.push(failingTokens.close);
    const closedPort = await freePort();
    const starts = [
      startRegistry({ mode: "basic", storageDir, pki, users }),
      startRegistry({
        mode: "token",
        storageDir,
        pki,
        token: {
          realm: tokenServer.url,
          service: "imgpull-test-registry",
          issuer: "imgpull-test-issuer",
        },
      }),
      startRegistry({
        mode: "token",
        storageDir,
        pki,
        token: {
          realm: expiringTokens.url,
          service: "imgpull-expiring",
          issuer: "imgpull-expiring-issuer",
        },
      }),
      startRegistry({
        mode: "token",
        storageDir,
        pki,
        token: { realm: `${failingTokens.url}/token`, service: "failing", issuer: "failing" },
      }),
      startRegistry({
        mode: "token",
        storageDir,
        pki,
        token: { realm: `https://127.0.0.1:${closedPort}/token`, service: "down", issuer: "down" },
      }),
    ];
    const settled = await Promise.allSettled(starts);
    for (const s of settled) if (s.status === "fulfilled") closers.push(s.value.close);
    const failed = settled.find((s) => s.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    const [basic, token, expiring, failing, tokenDown] = settled.map((s) =>
      (s as PromiseFulfilledResult<RunningRegistry>).value
    );
    const image = buildImage({ repository: "test/img", layers: [300 * KiB, 40 * KiB] });
    const client = Deno.createHttpClient({ caCerts: [pki.caCertPem] });
    try {
      const opts = { client, headers: { Authorization: `Basic ${btoa(`${user}:${password}`)}` } };
      for (const b of [image.config, ...image.layers]) {
        await pushBlob(basic.url, image.repository, b.bytes, opts);
      }
      await pushManifest(
        basic.url,
        image.repository,
        image.tag,
        image.manifest.bytes,
        image.manifest.mediaType,
        opts,
      );
    } finally {
      client.close();
    }
    return {
      pki,
      user,
      password,
      refreshToken,
      image,
      basic,
      token,
      tokenServer,
      expiring,
      expiringTokens,
      failing,
      failingTokens,
      tokenDown,
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

interface DistributionSetup {
  registry: (d: Distribution) => RunningRegistry;
  user?: string;
  password?: string;
  passwordFlag?: boolean;
  args?: string[];
  dockerConfig?: (d: Distribution, registry: RunningRegistry) => unknown;
  check?: (d: Distribution, outcome: PullOutcome, mark: number) => string[];
  /** Where the check's `mark` is taken before the pull. */
  mark?: (d: Distribution) => number;
}

/** A pull from one of the Distribution registries, with --verbose unless said otherwise. */
function distribution(base: Omit<Scenario, "prepare">, s: DistributionSetup): Scenario {
  return {
    verbose: true,
    ...base,
    async prepare(dirs, services) {
      const d = await services.shared("distribution", () => startDistribution(services));
      const registry = s.registry(d);
      const password = s.password ?? d.password;
      const user = s.user ?? d.user;
      const args = ["--ca-cert", d.pki.caCertPath, ...(s.args ?? [])];
      if (s.user !== undefined || s.password !== undefined || s.passwordFlag !== undefined) {
        args.push("--username", user);
        if (s.passwordFlag) args.push("--password", password);
        else args.push("--password-stdin");
      }
      if (s.dockerConfig) {
        await Deno.mkdir(join(dirs.home, ".docker"));
        await Deno.writeTextFile(
          join(dirs.home, ".docker", "config.json"),
          JSON.stringify(s.dockerConfig(d, registry)),
        );
      }
      const mark = s.mark?.(d) ?? 0;
      return {
        ref: `${registry.host}/${d.image.repository}:${d.image.tag}`,
        args,
        stdin: args.includes("--password-stdin") ? password : undefined,
        expected: expectedArchive(d.image),
        secrets: [
          password,
          d.password,
          btoa(`${user}:${password}`),
          btoa(`${d.user}:${d.password}`),
          d.refreshToken,
        ],
        check: s.check ? (outcome) => s.check!(d, outcome, mark) : undefined,
      };
    },
  };
}

const WRONG = `Wr0ng-${crypto.randomUUID()}`;

const secretsToken: Scenario[] = [
  distribution({
    id: "token-good-credentials",
    cls: "secrets-token",
    title: "token auth with --password-stdin, --verbose: completes, no secret printed",
    code: 0,
  }, { registry: (d) => d.token, password: undefined, user: "imgpull-tester" }),
  distribution({
    id: "token-password-flag",
    cls: "secrets-token",
    title: "--password on the command line: warns to use --password-stdin, no secret printed",
    code: 0,
  }, {
    registry: (d) => d.token,
    user: "imgpull-tester",
    passwordFlag: true,
    check: (_d, outcome) =>
      expect(/Warning.*--password-stdin/.test(outcome.stderr), "no --password-stdin warning"),
  }),
  distribution({
    id: "token-bad-password",
    cls: "secrets-token",
    title: "token auth with a wrong password: exit 3, neither password printed",
    code: 3,
    message: /authentication|rejected|unauthorized/,
  }, { registry: (d) => d.token, user: "imgpull-tester", password: WRONG }),
  distribution({
    id: "token-identitytoken",
    cls: "secrets-token",
    title: "identitytoken from docker config (refresh grant): completes, token not printed",
    code: 0,
  }, {
    registry: (d) => d.token,
    dockerConfig: (d, r) => ({ auths: { [r.host]: { identitytoken: d.refreshToken } } }),
    mark: (d) => d.tokenServer.requests.length,
    check: (d, _outcome, mark) =>
      expect(
        d.tokenServer.requests.slice(mark).some((r) => r.grantType === "refresh_token"),
        "the refresh token was not used",
      ),
  }),
];

const secretsBasic: Scenario[] = [
  distribution({
    id: "basic-good-credentials",
    cls: "secrets-basic",
    title: "Basic auth over TLS, --verbose: completes, no secret printed",
    code: 0,
  }, { registry: (d) => d.basic, user: "imgpull-tester" }),
  distribution({
    id: "basic-bad-password",
    cls: "secrets-basic",
    title: "Basic auth with a wrong password: exit 3, no secret printed",
    code: 3,
    message: /unauthorized|authentication/,
  }, { registry: (d) => d.basic, user: "imgpull-tester", password: WRONG }),
  distribution({
    id: "basic-no-credentials",
    cls: "secrets-basic",
    title: "Basic auth without credentials: exit 3 with a login hint",
    code: 3,
    message: /authentication[\s\S]*Hint/,
  }, { registry: (d) => d.basic }),
];

const secretsFailing: Scenario[] = [
  distribution({
    id: "token-server-500",
    cls: "secrets-failing-token-server",
    title: "the token server fails with 500: exit 6, no secret printed",
    code: 6,
    message: /500|token/,
  }, { registry: (d) => d.failing, user: "someone", password: WRONG, args: ["--retries", "1"] }),
  distribution({
    id: "token-server-down",
    cls: "secrets-failing-token-server",
    title: "the token server is down (connection refused): exit 6",
    code: 6,
    message: /cannot reach|token/,
  }, { registry: (d) => d.tokenDown, user: "someone", password: WRONG, args: ["--retries", "1"] }),
  distribution({
    id: "token-server-echo-401",
    cls: "secrets-failing-token-server",
    title: "the token server rejects and echoes the credentials: exit 3, nothing echoed printed",
    code: 3,
    message: /authentication|rejected/,
  }, { registry: (d) => d.failing, user: "echo401", password: WRONG }),
  distribution({
    id: "token-server-echo-500",
    cls: "secrets-failing-token-server",
    title: "the token server fails with 500 and echoes the credentials: nothing echoed printed",
    code: 6,
    message: /500|token/,
  }, { registry: (d) => d.failing, user: "echo500", password: WRONG, args: ["--retries", "0"] }),
  distribution({
    id: "token-server-echo-500-quiet",
    cls: "secrets-failing-token-server",
    title: "the same without --verbose: nothing echoed printed",
    code: 6,
    message: /500|token/,
    verbose: false,
  }, { registry: (d) => d.failing, user: "echo500", password: WRONG, args: ["--retries", "0"] }),
  distribution({
    id: "token-server-garbage",
    cls: "secrets-failing-token-server",
    title: "the token server answers HTML that echoes the credentials: exit 8, nothing printed",
    code: 8,
    message: /token/,
  }, { registry: (d) => d.failing, user: "garbage", password: WRONG }),
];

const distributionExpiry: Scenario = distribution({
  id: "token-lifetime-1s",
  cls: "token-expiry",
  title: "Distribution with 1 s tokens: renewed during the pull, completes",
  code: 0,
}, {
  registry: (d) => d.expiring,
  mark: (d) => d.expiringTokens.requests.length,
  check: (d, _outcome, mark) => {
    const n = d.expiringTokens.requests.length - mark;
    return expect(n >= 2, `${n} token requests: never renewed`);
  },
});

/** Every single-pull scenario, in class order. */
export const SCENARIOS: Scenario[] = [
  ...(["503", "502", "500", "429", "cut", "stall"] as const).flatMap(transientScenarios),
  ...rateLimit,
  ...notRetried,
  ...resume,
  ...stallForever,
  ...blobIntegrity,
  ...manifestIntegrity,
  ...invalidContent,
  ...badDigests,
  ...redirects,
  redirectWithAuth("basic"),
  redirectWithAuth("bearer"),
  ...wwwAuthenticate,
  ...tokenEndpoints,
  ...plainHttpFallback,
  ...hugeBodies,
  interruptScenario("SIGINT", false),
  interruptScenario("SIGTERM", false),
  interruptScenario("SIGINT", true),
  interruptScenario("SIGTERM", true),
  ...localDisk,
  reactiveExpiry,
  distributionExpiry,
  ...secretsToken,
  ...secretsBasic,
  ...secretsFailing,
  ...SECURITY_SCENARIOS,
];

/** The scenarios of one class. */
export function scenariosOf(cls: string): Scenario[] {
  return SCENARIOS.filter((s) => s.cls === cls);
}

/** Concurrency that suits a class: runs that mostly wait on stall timers overlap well. */
export function concurrencyOf(cls: string): number {
  return cls.includes("stall") ? 10 : 6;
}

// ---------------------------------------------------------------------------------------------
// 7. Under load.

export { runLoad } from "./hostile_load.ts";

/** Runs every scenario of a class once (concurrently), with shared services. */
export async function runClass(
  cls: string,
  services: Services,
  options: { preexisting?: boolean } = {},
): Promise<RunResult[]> {
  const scenarios = scenariosOf(cls);
  if (scenarios.length === 0) throw new Error(`no scenarios in class ${cls}`);
  return await pool(
    scenarios.map((s) => () => runScenario(s, services, options)),
    concurrencyOf(cls),
  );
}

/** The title of a class. */
export function classTitle(cls: string): string {
  return CLASSES.find((c) => c.id === cls)?.title ?? cls;
}

/**
 * Registers one Deno test per fault class: every scenario of the class must end as expected
 * (a verified archive or a clean error), with the offending ones listed on failure.
 */
export function testClasses(prefix: string, classes: readonly string[]): void {
  for (const cls of classes) {
    Deno.test(`${prefix}: ${classTitle(cls)}`, async () => {
      const services = new Services();
      try {
        const bad = describeBad(await runClass(cls, services));
        if (bad !== "") throw new Error(`\n${bad}`);
      } finally {
        await services.close();
      }
    });
  }
}
