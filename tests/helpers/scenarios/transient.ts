/**
 * Reliability scenarios, transient failures: 5xx, 429, cut and stalled bodies are retried and the
 * pull completes (with `--retries 0` they end in exit 6); Docker Hub rate limits; and what is
 * never retried (401, 403, 404, integrity failures).
 * @module
 */
import { cutAfter, stallAfter } from "../fault_registry.ts";
import { buildImage, putManifest, type TestImage } from "../hostile_image.ts";
import type { Scenario } from "../hostile_runner.ts";
import {
  contentHeaders,
  corrupt,
  exactly,
  expect,
  fault,
  type Handler,
  manifestPath,
  notFound,
  pathOf,
  rangeStart,
  type Target,
  targetPath,
} from "./kit.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [
  { id: "transient-503", title: "HTTP 503 on manifest, config or layer" },
  { id: "transient-502", title: "HTTP 502 on manifest, config or layer" },
  { id: "transient-500", title: "HTTP 500 on manifest, config or layer" },
  { id: "transient-429", title: "HTTP 429 with Retry-After: 1 on manifest, config or layer" },
  { id: "transient-cut", title: "connection cut mid-body on manifest, config or layer" },
  { id: "transient-stall", title: "stall mid-body on manifest, config or layer" },
  { id: "rate-limit", title: "Docker Hub TOOMANYREQUESTS after retries" },
  { id: "not-retried", title: "401/403/404 and integrity failures are not retried" },
];

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

const notRetried: Scenario[] = [
  fault({
    id: "404-manifest",
    cls: "not-retried",
    title: "404 on the manifest: exit 4, one request",
    code: 4,
    message: /not found/,
  }, () => ({
    handler: (image) => (req) =>
      pathOf(req) === manifestPath(image) ? notFound("MANIFEST") : undefined,
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
      pathOf(req) === targetPath(image, "layer") ? notFound("BLOB") : undefined,
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

/** Every scenario of this family, in class order. */
export const SCENARIOS: Scenario[] = [
  ...(["503", "502", "500", "429", "cut", "stall"] as const).flatMap(transientScenarios),
  ...rateLimit,
  ...notRetried,
];
