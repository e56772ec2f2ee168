/**
 * Building blocks of the fault scenarios: a fault registry serving a test image with a
 * scenario's handler in front, and small judges (`expect`, `exactly`) for scenario checks.
 * Used by {@link ../hostile_scenarios.ts} and the scenario modules beside this one.
 * @module
 */
import {
  cutAfter,
  type FaultContext,
  type FaultRegistry,
  type FaultRequest,
  serveBytes,
  startFaultRegistry,
} from "../fault_registry.ts";
import {
  buildImage,
  expectedArchive,
  type ImageOptions,
  KiB,
  MiB,
  type TestImage,
} from "../hostile_image.ts";
import type { Prepared, PullOutcome, RunDirs, Scenario, Services } from "../hostile_runner.ts";

export type Target = "manifest" | "config" | "layer";
export type Handler = (req: Request, ctx: FaultContext) => Response | Promise<Response> | undefined;

/** A running fault registry with the image it serves. */
export interface FaultRun {
  registry: FaultRegistry;
  image: TestImage;
  /** Requests whose path is `target`'s (or equals a path). */
  requests(target: Target | string): FaultRequest[];
  count(target: Target | string): number;
  blobRequests(): FaultRequest[];
}

export function manifestPath(image: TestImage, reference = image.tag): string {
  return `/v2/${image.repository}/manifests/${reference}`;
}

export function blobPath(image: TestImage, digest: string): string {
  return `/v2/${image.repository}/blobs/${digest}`;
}

export function targetPath(image: TestImage, target: Target | string): string {
  if (target === "manifest") return manifestPath(image);
  if (target === "config") return blobPath(image, image.config.digest);
  if (target === "layer") return blobPath(image, image.layers[0].digest);
  return target;
}

export function pathOf(req: Request): string {
  return new URL(req.url).pathname;
}

/** Header of a manifest or blob response, so that cut/stall bodies look like the real one. */
export function contentHeaders(image: TestImage, target: Target, bytes: Uint8Array): HeadersInit {
  const headers: Record<string, string> = { "content-length": String(bytes.byteLength) };
  if (target === "manifest") headers["content-type"] = image.manifest.mediaType;
  return headers;
}

/** Bodies that never end (or end at `limit`), counting what the server produced. */
export function endlessBody(
  prefix: Uint8Array,
  counter: { bytes: number },
  limit = 1024 * MiB,
  fill = 0x20,
): ReadableStream<Uint8Array> {
  const chunk = new Uint8Array(64 * KiB).fill(fill);
  let sentPrefix = false;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (!sentPrefix) {
        sentPrefix = true;
        controller.enqueue(prefix.slice());
        counter.bytes += prefix.byteLength;
        return;
      }
      const n = Math.min(chunk.byteLength, limit - counter.bytes);
      if (n <= 0) {
        controller.close();
        return;
      }
      controller.enqueue(chunk.slice(0, n));
      counter.bytes += n;
    },
  });
}

/** Answers held back until {@link release} (a server that never answers, until cleanup). */
export class Held {
  readonly #pending: (() => void)[] = [];
  /** A response that only comes at cleanup time. */
  never(): Promise<Response> {
    return new Promise((resolve) =>
      this.#pending.push(() => resolve(new Response(null, { status: 503 })))
    );
  }
  release(): void {
    for (const resolve of this.#pending.splice(0)) resolve();
  }
}

/** A promise with its resolve function. */
export function signal(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => resolve = r);
  return { promise, resolve };
}

export interface FaultSetup {
  image?: TestImage;
  imageOptions?: ImageOptions;
  handler?: (image: TestImage) => Handler;
  /** Serve HTTPS with the test PKI (and pass --ca-cert). */
  tls?: boolean;
  /** Hold every answer but `/v2/`'s this long: a far registry (segments from the start). */
  latencyMs?: number;
  /** Reference to pull; default `<host>/<repository>:<tag>`. */
  ref?: (image: TestImage, registry: FaultRegistry) => string;
  /** Extra CLI arguments; a function when they name the registry (e.g. a second image). */
  args?: string[] | ((image: TestImage, registry: FaultRegistry) => string[]);
  /** Default: the image's config and layers. `null`: nothing to verify beyond the format. */
  expected?: Prepared["expected"] | null;
  secrets?: string[];
  stdin?: string;
  check?: (run: FaultRun, outcome: PullOutcome, dirs: RunDirs) => string[] | Promise<string[]>;
  extraClose?: () => Promise<void>;
  interrupt?: (run: () => FaultRun) => Prepared["interrupt"];
  /** Archive path when not `dirs.output`. */
  output?: string;
  /** The setup took care of the destination (see {@link Prepared.ownsDestination}). */
  ownsDestination?: boolean;
}

/** A scenario against one fault registry. */
export function fault(
  base: Omit<Scenario, "prepare">,
  setup: (dirs: RunDirs, services: Services) => FaultSetup | Promise<FaultSetup>,
): Scenario {
  return {
    ...base,
    async prepare(dirs, services) {
      const s = await setup(dirs, services);
      const image = s.image ?? buildImage(s.imageOptions);
      const pki = s.tls ? await services.pki() : undefined;
      const registry = startFaultRegistry({
        blobs: image.blobs,
        manifests: image.manifests,
        fault: s.handler?.(image),
        tls: pki ? { cert: pki.serverCertPem, key: pki.serverKeyPem } : undefined,
        quiet: true,
        latencyMs: s.latencyMs,
      });
      const run: FaultRun = {
        registry,
        image,
        requests: (t) => registry.requests.filter((r) => r.path === targetPath(image, t)),
        count: (t) => registry.requests.filter((r) => r.path === targetPath(image, t)).length,
        blobRequests: () => registry.requests.filter((r) => r.path.includes("/blobs/")),
      };
      return {
        ref: s.ref?.(image, registry) ?? `${registry.host}/${image.repository}:${image.tag}`,
        args: [
          ...(pki ? ["--ca-cert", pki.caCertPath] : []),
          ...(typeof s.args === "function" ? s.args(image, registry) : s.args ?? []),
        ],
        stdin: s.stdin,
        expected: s.expected === null ? undefined : s.expected ?? expectedArchive(image),
        secrets: s.secrets,
        output: s.output,
        ownsDestination: s.ownsDestination,
        interrupt: s.interrupt?.(() => run),
        check: s.check ? (outcome) => s.check!(run, outcome, dirs) : undefined,
        close: async () => {
          await s.extraClose?.();
          await registry.close();
        },
      };
    },
  };
}

/** Problem text unless `ok`. */
export function expect(ok: boolean, problem: string): string[] {
  return ok ? [] : [problem];
}

/** `n` requests to `target`, exactly. */
export function exactly(run: FaultRun, target: Target | string, n: number, why: string): string[] {
  const count = run.count(target);
  return expect(count === n, `${count} requests for the ${target}, expected ${n} (${why})`);
}

/** `Range` start of a request, or undefined. */
export function rangeStart(request: FaultRequest | undefined): number | undefined {
  const m = request?.range?.match(/^bytes=(\d+)-/);
  return m ? Number(m[1]) : undefined;
}

/** The same bytes with one byte flipped in the middle. */
export function corrupt(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  const bad = bytes.slice();
  bad[bad.length >> 1] ^= 0xff;
  return bad;
}

/** A registry's 404 for an unknown `what` (MANIFEST, BLOB): `{what}_UNKNOWN`. */
export function notFound(what: string): Response {
  return Response.json(
    { errors: [{ code: `${what}_UNKNOWN`, message: `${what.toLowerCase()} unknown` }] },
    { status: 404 },
  );
}

/**
 * Serves the blob from the requested offset, cutting the connection at the next multiple of
 * `every` bytes (or, with `fixed`, always at that same byte), announcing the full remainder.
 */
export function cutEvery(
  every: number,
  fixed = false,
): (req: Request, ctx: FaultContext) => Response | undefined {
  return (_req, ctx) => {
    if (!ctx.bytes) return undefined;
    const total = ctx.bytes.byteLength;
    const start = ctx.range?.start ?? 0;
    const cut = fixed ? Math.max(every, start) : (Math.floor(start / every) + 1) * every;
    if (cut >= total) return serveBytes(ctx.bytes, ctx.range);
    const headers: Record<string, string> = { "content-length": String(total - start) };
    if (ctx.range) headers["content-range"] = `bytes ${start}-${total - 1}/${total}`;
    return cutAfter(ctx.bytes.slice(start, cut), ctx.range ? 206 : 200, headers);
  };
}
