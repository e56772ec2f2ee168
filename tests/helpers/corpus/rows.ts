/**
 * The conformance corpus table (conformance issue #7): one row per image shape, what to build
 * and push, how to pull it, and what must happen, as data. Expectations follow the spec,
 * not today's behaviour: rows whose fixes are still being made are expected to fail until then.
 * @module
 */
import type { LoaderName } from "./loaders.ts";
import type { LayerEncoding } from "./compress.ts";
import { gzipSync } from "node:zlib";
import { writeTar } from "./tar.ts";
import {
  AMD64,
  ARM64,
  type BuildContext,
  busyboxEntries,
  CT,
  type IndexEntry,
  markerEntries,
  pushArtifact,
  pushAttestation,
  pushImage,
  pushIndex,
  pushSchema1,
  simpleImage,
} from "./images.ts";
import type { TarInput } from "./tar.ts";
import type { CorpusProxies } from "./services.ts";
import type { Tinyproxy } from "../tinyproxy.ts";

/** Row groups: one Deno test each. */
export const GROUPS = ["compression", "manifests", "platforms", "registries", "artifacts"] as const;
export type Group = typeof GROUPS[number];

/** What a row's builder hands to the runner. */
export interface Prepared {
  /** The reference given to imgpull. */
  ref: string;
  /** skopeo's source for the reference root filesystem (`HOST/repo@digest` or `:tag`). */
  skopeo?: string;
  /** Expected first RepoTag of the archive; undefined when the spec does not fix it. */
  repoTag?: string;
  /** More CLI arguments, known only once the row's services run (e.g. `--ca-cert PATH`). */
  args?: string[];
  /** More environment for imgpull, known only once the row's services run. */
  env?: Record<string, string>;
  /** Watches each pull from outside (e.g. a proxy's log). */
  probe?: Probe;
}

/** What a pull printed. */
export interface PullOutput {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Watches one pull from outside: called right before it; the function it returns is called
 * right after and resolves to the problems it saw (none: all is well).
 */
export type Probe = (phase: "cold" | "warm") => (output: PullOutput) => Promise<string[]>;

/** Hosts under which the shared registry answers. */
export interface RowContext extends BuildContext {
  /** `127.0.0.1:PORT` */
  host: string;
  /** `[::1]:PORT` (same storage). */
  host6: string;
  /** `localhost:PORT` (the 127.0.0.1 registry). */
  localhost: string;
  /** `corpus/<row id>`: every row has a repository of its own. */
  repo: string;
  /** `imgpull-corpus <row id>`: what the image's `/marker` holds. */
  marker: string;
  /** The proxies and the TLS registry behind them (rows with `needs: "proxies"` only). */
  proxies?: CorpusProxies;
}

/** What must happen when the row is pulled (cold and warm alike). */
export interface Expectation {
  exit: number;
  /** Every pattern must match stderr. */
  stderr?: RegExp[];
  /** `os/arch[/variant]` of the pulled image (exit 0 only). */
  platform?: string;
  /** `docker run`/`podman run` of the marker (images of this host's platform with a binary). */
  runnable?: boolean;
  /** Loaders that must load the archive (exit 0 only); default all three. */
  loaders?: LoaderName[];
}

/** One row of the corpus. */
export interface Row {
  id: string;
  group: Group;
  /** What the row is about, for the report. */
  title: string;
  build(ctx: RowContext): Promise<Prepared>;
  /** Extra CLI arguments. */
  args?: string[];
  /** Extra environment for imgpull. */
  env?: Record<string, string>;
  /** Services beyond the shared ones that the row's group must start. */
  needs?: "proxies";
  expect: Expectation;
}

const AMD64_RUN: Expectation = { exit: 0, platform: "linux/amd64", runnable: true };
const NOT_AN_IMAGE: Expectation = { exit: 8, stderr: [/\[-\] .*is not a container image/] };
const FOREIGN_URL = "http://127.0.0.1:9/never";

function compressionRow(id: string, encoding: LayerEncoding, title: string): Row {
  return {
    id,
    group: "compression",
    title,
    expect: AMD64_RUN,
    build: async (c) => {
      const img = await simpleImage(c, c.repo, { marker: c.marker, encoding, tag: "v1" });
      return tagged(c, img.digest);
    },
  };
}

/** The usual result: pulled as `HOST/repo:v1`, reference from the manifest `digest`. */
function tagged(c: RowContext, digest: string, tag = "v1"): Prepared {
  return {
    ref: `${c.host}/${c.repo}:${tag}`,
    skopeo: `${c.host}/${c.repo}@${digest}`,
    repoTag: `${c.host}/${c.repo}:${tag}`,
  };
}

/** The row's proxies; a row that needs them and did not get them is a harness bug. */
function proxiesOf(c: RowContext): CorpusProxies {
  if (!c.proxies) throw new Error(`${c.repo}: the proxies were not started for this row`);
  return c.proxies;
}

/**
 * Every proxy variable, upper and lower case, set explicitly: a NO_PROXY or ALL_PROXY inherited
 * from the test's environment must not let the pull bypass `proxy`.
 */
function proxyEnv(proxy: string): Record<string, string> {
  return {
    HTTP_PROXY: proxy,
    http_proxy: proxy,
    HTTPS_PROXY: proxy,
    https_proxy: proxy,
    ALL_PROXY: "",
    all_proxy: "",
    NO_PROXY: "",
    no_proxy: "",
  };
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Lines of `text` matching `re`, counted. */
function count(text: string[], re: RegExp): number {
  return text.filter((line) => re.test(line)).length;
}

/**
 * A probe that passes when, during the pull, every `expected` pattern matched a new request line
 * of `proxy` (and of `registryLog`, for `registryExpected`), and none of `secrets` was printed.
 * Log lines arrive through pipes, so the probe waits up to 2 s for them.
 */
function throughProxy(opts: {
  proxy: Tinyproxy;
  expected: (phase: "cold" | "warm") => RegExp[];
  registryLog?: () => string;
  registryExpected?: RegExp[];
  secrets: string[];
}): Probe {
  const registryLines = () => opts.registryLog?.().split("\n") ?? [];
  return (phase) => {
    const expected = opts.expected(phase);
    const registryExpected = opts.registryExpected ?? [];
    const proxyBefore = expected.map((re) => count(opts.proxy.requests(), re));
    const registryBefore = registryExpected.map((re) => count(registryLines(), re));
    return async (out) => {
      const missing = () => [
        ...expected.filter((re, i) => count(opts.proxy.requests(), re) <= proxyBefore[i])
          .map((re) => `the proxy's log has no new request ${re}`),
        ...registryExpected.filter((re, i) => count(registryLines(), re) <= registryBefore[i])
          .map((re) => `the registry's log has no new request ${re}`),
      ];
      const deadline = Date.now() + 2_000;
      while (missing().length > 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const problems = missing();
      const printed = `${out.stdout}\n${out.stderr}`;
      if (opts.secrets.some((secret) => printed.includes(secret))) {
        problems.push("a password (or its Basic token) was printed");
      }
      return problems;
    };
  };
}

/** amd64 (with the row's marker) and arm64/v8 images in one repository, by digest. */
async function twoPlatforms(c: RowContext, flavour: "oci" | "docker" = "oci") {
  const amd64 = await simpleImage(c, c.repo, { marker: c.marker, flavour });
  const arm64 = await simpleImage(c, c.repo, {
    marker: `${c.marker} arm64`,
    flavour,
    platform: ARM64,
  });
  return { amd64, arm64 };
}

/** 108 layers of a few bytes (with a whiteout and an opaque dir), then busybox and the marker. */
function manyLayers(c: RowContext): TarInput[][] {
  const enc = new TextEncoder();
  const layers: TarInput[][] = [];
  for (let i = 0; i < 108; i++) {
    const n = String(i).padStart(3, "0");
    const entries: TarInput[] = [
      { path: "layers", type: "dir", mode: 0o755 },
      { path: `layers/${n}`, type: "file", mode: 0o644, content: enc.encode(`${n}\n`) },
    ];
    if (i === 10) {
      entries.push({ path: "gone", type: "dir", mode: 0o755 });
      entries.push({ path: "gone/a", type: "file", mode: 0o600, content: enc.encode("a\n") });
    }
    if (i === 50) entries.push({ path: "layers/.wh.007", type: "file", mode: 0o644 });
    if (i === 60) {
      entries.push({ path: "gone", type: "dir", mode: 0o755 });
      entries.push({ path: "gone/.wh..wh..opq", type: "file", mode: 0o644 });
      entries.push({ path: "gone/kept", type: "file", mode: 0o644, content: enc.encode("k\n") });
    }
    layers.push(entries);
  }
  layers.push(busyboxEntries(c.busybox), markerEntries(c.marker));
  return layers;
}

/** The corpus. */
export const ROWS: Row[] = [
  // --- compression -------------------------------------------------------------------------
  compressionRow("gzip", "gzip", "gzip layers"),
  compressionRow("zstd", "zstd", "zstd, one frame (zstd CLI)"),
  compressionRow(
    "zstd-multi-frame",
    "zstd-multi-frame",
    "zstd, 4 frames + a skippable frame per layer",
  ),
  compressionRow("uncompressed", "uncompressed", "uncompressed tar layers"),
  compressionRow("gzip-multi-member", "gzip-multi-member", "gzip, 4 concatenated members"),
  compressionRow("estargz", "estargz", "eStargz-style gzip with TOC member and footer"),

  // --- manifests ---------------------------------------------------------------------------
  {
    id: "docker-v2",
    group: "manifests",
    title: "Docker schema2 manifest",
    expect: AMD64_RUN,
    build: async (c) =>
      tagged(
        c,
        (await simpleImage(c, c.repo, { marker: c.marker, flavour: "docker", tag: "v1" })).digest,
      ),
  },
  {
    id: "oci",
    group: "manifests",
    title: "OCI image manifest",
    expect: AMD64_RUN,
    build: async (c) =>
      tagged(c, (await simpleImage(c, c.repo, { marker: c.marker, tag: "v1" })).digest),
  },
  {
    id: "schema1",
    group: "manifests",
    title: "schema1 signed manifest (stored as schema1)",
    expect: AMD64_RUN,
    build: async (c) => {
      await simpleImage(c, c.repo, { marker: c.marker, flavour: "docker", tag: "v2" });
      await pushSchema1(c, c.repo, "v2", "v1");
      return { ...tagged(c, ""), skopeo: `${c.host}/${c.repo}:v1` };
    },
  },
  {
    id: "index-flat",
    group: "manifests",
    title: "OCI index amd64 + arm64/v8",
    expect: AMD64_RUN,
    build: async (c) => {
      const { amd64, arm64 } = await twoPlatforms(c);
      await pushIndex(c, c.repo, "v1", "oci", [
        { target: amd64, platform: AMD64 },
        { target: arm64, platform: ARM64 },
      ]);
      return tagged(c, amd64.digest);
    },
  },
  {
    id: "index-nested",
    group: "manifests",
    title: "index → index → manifest, outer entry without platform",
    expect: AMD64_RUN,
    build: async (c) => {
      const { amd64, arm64 } = await twoPlatforms(c);
      const inner = await pushIndex(c, c.repo, undefined, "oci", [
        { target: amd64, platform: AMD64 },
        { target: arm64, platform: ARM64 },
      ]);
      await pushIndex(c, c.repo, "v1", "oci", [{ target: inner, platform: null }]);
      return tagged(c, amd64.digest);
    },
  },
  {
    id: "index-empty",
    group: "manifests",
    title: "empty index",
    expect: { exit: 8, stderr: [/\[-\] .*(empty|no manifests|no entries)/i] },
    build: async (c) => {
      await pushIndex(c, c.repo, "v1", "oci", []);
      return { ref: `${c.host}/${c.repo}:v1` };
    },
  },
  {
    id: "index-attestations",
    group: "manifests",
    title: "buildx-style index with attestation manifests (unknown/unknown)",
    expect: AMD64_RUN,
    build: async (c) => {
      const { amd64, arm64 } = await twoPlatforms(c);
      const entries: IndexEntry[] = [
        { target: amd64, platform: AMD64 },
        { target: arm64, platform: ARM64 },
        await pushAttestation(c, c.repo, amd64),
        await pushAttestation(c, c.repo, arm64),
      ];
      await pushIndex(c, c.repo, "v1", "oci", entries);
      return tagged(c, amd64.digest);
    },
  },
  {
    id: "index-unknown-platform",
    group: "manifests",
    title: "index whose first entry has a platform nobody knows",
    expect: AMD64_RUN,
    build: async (c) => {
      const odd = { os: "imgpull-os", architecture: "imgpull-arch" };
      const other = await simpleImage(c, c.repo, { marker: `${c.marker} odd`, platform: odd });
      const amd64 = await simpleImage(c, c.repo, { marker: c.marker });
      await pushIndex(c, c.repo, "v1", "oci", [
        { target: other, platform: odd },
        { target: amd64, platform: AMD64 },
      ]);
      return tagged(c, amd64.digest);
    },
  },
  {
    id: "foreign-layer",
    group: "manifests",
    title: "Docker foreign layer (urls unreachable, blob in the registry)",
    expect: AMD64_RUN,
    build: async (c) => {
      const img = await pushImage(c, c.repo, {
        flavour: "docker",
        platform: AMD64,
        tag: "v1",
        layers: [
          { entries: busyboxEntries(c.busybox), encoding: "gzip" },
          {
            entries: [{
              path: "foreign.txt",
              type: "file",
              mode: 0o644,
              content: new TextEncoder().encode("foreign\n"),
            }],
            encoding: "gzip",
            mediaType: CT.dockerForeign,
            urls: [FOREIGN_URL],
          },
          { entries: markerEntries(c.marker), encoding: "gzip" },
        ],
      });
      return tagged(c, img.digest);
    },
  },
  {
    id: "nondistributable-layer",
    group: "manifests",
    title: "OCI non-distributable layer (urls unreachable, blob in the registry)",
    expect: AMD64_RUN,
    build: async (c) => {
      const img = await pushImage(c, c.repo, {
        flavour: "oci",
        platform: AMD64,
        tag: "v1",
        layers: [
          {
            entries: busyboxEntries(c.busybox),
            encoding: "gzip",
            mediaType: CT.ociNondistributableGzip,
            urls: [FOREIGN_URL],
          },
          { entries: markerEntries(c.marker), encoding: "gzip" },
        ],
      });
      return tagged(c, img.digest);
    },
  },
  {
    id: "zero-layers",
    group: "manifests",
    title: "image with no layers",
    expect: { exit: 0, platform: "linux/amd64", runnable: false },
    build: async (c) => {
      const img = await pushImage(c, c.repo, {
        flavour: "oci",
        platform: AMD64,
        tag: "v1",
        layers: [],
      });
      return tagged(c, img.digest);
    },
  },
  {
    id: "many-layers",
    group: "manifests",
    title: "110 layers (tiny ones with a whiteout and an opaque dir, then busybox)",
    expect: AMD64_RUN,
    build: async (c) => {
      const img = await pushImage(c, c.repo, {
        flavour: "oci",
        platform: AMD64,
        tag: "v1",
        layers: manyLayers(c).map((entries) => ({ entries, encoding: "gzip" as const })),
      });
      return tagged(c, img.digest);
    },
  },
  {
    id: "big-config",
    group: "manifests",
    title: "config of 3 MiB (a large label)",
    expect: AMD64_RUN,
    build: async (c) => {
      const img = await pushImage(c, c.repo, {
        flavour: "oci",
        platform: AMD64,
        tag: "v1",
        labels: { "imgpull.corpus.padding": "x".repeat(3 * 1024 * 1024) },
        layers: [
          { entries: busyboxEntries(c.busybox), encoding: "gzip" },
          { entries: markerEntries(c.marker), encoding: "gzip" },
        ],
      });
      return tagged(c, img.digest);
    },
  },

  // --- platforms ---------------------------------------------------------------------------
  {
    id: "single-arm64-no-platform",
    group: "platforms",
    title: "single-platform arm64 image, no --platform (pulled with a warning)",
    expect: {
      exit: 0,
      stderr: [/\[!\] .*linux\/arm64/],
      platform: "linux/arm64/v8",
      runnable: false,
    },
    build: async (c) => {
      const img = await simpleImage(c, c.repo, {
        marker: c.marker,
        flavour: "docker",
        platform: ARM64,
        tag: "v1",
      });
      return tagged(c, img.digest);
    },
  },
  {
    id: "platform-manifest-digest",
    group: "platforms",
    title: "pull by the digest of an index's arm64 manifest, no --platform",
    expect: { exit: 0, platform: "linux/arm64/v8", runnable: false },
    build: async (c) => {
      const { amd64, arm64 } = await twoPlatforms(c);
      await pushIndex(c, c.repo, "v1", "oci", [
        { target: amd64, platform: AMD64 },
        { target: arm64, platform: ARM64 },
      ]);
      return {
        ref: `${c.host}/${c.repo}@${arm64.digest}`,
        skopeo: `${c.host}/${c.repo}@${arm64.digest}`,
        repoTag: `${c.host}/${c.repo}:sha256-${arm64.digest.slice(7)}`,
      };
    },
  },
  {
    id: "docker-default-platform",
    group: "platforms",
    title: "DOCKER_DEFAULT_PLATFORM=linux/arm64 on an index",
    env: { DOCKER_DEFAULT_PLATFORM: "linux/arm64" },
    expect: {
      exit: 0,
      stderr: [/linux\/arm64/],
      platform: "linux/arm64/v8",
      runnable: false,
    },
    build: async (c) => {
      const { amd64, arm64 } = await twoPlatforms(c, "docker");
      await pushIndex(c, c.repo, "v1", "docker", [
        { target: amd64, platform: AMD64 },
        { target: arm64, platform: ARM64 },
      ]);
      return tagged(c, arm64.digest);
    },
  },

  // --- registries --------------------------------------------------------------------------
  {
    id: "ipv6-literal",
    group: "registries",
    title: "registry at [::1]:PORT (RepoTags must load everywhere)",
    expect: AMD64_RUN,
    build: async (c) => {
      const img = await simpleImage(c, c.repo, { marker: c.marker, tag: "v1" });
      return { ref: `${c.host6}/${c.repo}:v1`, skopeo: `${c.host}/${c.repo}@${img.digest}` };
    },
  },
  {
    id: "localhost",
    group: "registries",
    title: "registry at localhost:PORT",
    expect: AMD64_RUN,
    build: async (c) => {
      const img = await simpleImage(c, c.repo, { marker: c.marker, tag: "v1" });
      return {
        ref: `${c.localhost}/${c.repo}:v1`,
        skopeo: `${c.host}/${c.repo}@${img.digest}`,
        repoTag: `${c.localhost}/${c.repo}:v1`,
      };
    },
  },

  {
    id: "http-proxy",
    group: "registries",
    title: "plain-HTTP registry through tinyproxy (HTTP_PROXY, absolute-URI requests)",
    needs: "proxies",
    expect: AMD64_RUN,
    build: async (c) => {
      const p = proxiesOf(c);
      const img = await simpleImage(c, c.repo, { marker: c.marker, tag: "v1" });
      const v2 = `http://${escapeRegExp(c.host)}/v2/${c.repo}`;
      const manifest = new RegExp(`^(GET|HEAD) ${v2}/manifests/`);
      const blob = new RegExp(`^GET ${v2}/blobs/sha256:`);
      return {
        ...tagged(c, img.digest),
        env: proxyEnv(p.open.url),
        // Warm, the layers come from the cache: only the manifest is asked for.
        probe: throughProxy({
          proxy: p.open,
          expected: (phase) => phase === "cold" ? [manifest, blob] : [manifest],
          secrets: p.secrets,
        }),
      };
    },
  },
  {
    id: "connect-proxy-auth",
    group: "registries",
    title: "TLS registry (Basic auth) through a CONNECT proxy with Basic auth (HTTPS_PROXY)",
    needs: "proxies",
    expect: AMD64_RUN,
    build: async (c) => {
      const p = proxiesOf(c);
      const img = await simpleImage(c, c.repo, { marker: c.marker, tag: "v1" });
      return {
        ref: `${p.tls.host}/${c.repo}:v1`,
        skopeo: `${c.host}/${c.repo}@${img.digest}`,
        repoTag: `${p.tls.host}/${c.repo}:v1`,
        args: ["--ca-cert", p.caCertPath],
        // Registry credentials from a docker config, the proxy's in its URL: neither may be
        // sent to the other, and neither may be printed.
        env: { ...proxyEnv(p.guarded.urlWithCredentials), DOCKER_CONFIG: p.dockerConfig },
        probe: throughProxy({
          proxy: p.guarded,
          expected: () => [new RegExp(`^CONNECT ${escapeRegExp(p.tls.host)} `)],
          registryLog: p.tls.log,
          registryExpected: [new RegExp(`"(GET|HEAD) /v2/${c.repo}/manifests/[^ ]+ HTTP`)],
          secrets: [...p.secrets, p.guarded.urlWithCredentials],
        }),
      };
    },
  },

  // --- artifacts ---------------------------------------------------------------------------
  {
    id: "helm-chart",
    group: "artifacts",
    title: "Helm chart (config application/vnd.cncf.helm.config.v1+json)",
    expect: NOT_AN_IMAGE,
    build: async (c) => {
      const enc = new TextEncoder();
      const chartYaml = enc.encode("apiVersion: v2\nname: corpus\nversion: 0.1.0\n");
      const chart = new Uint8Array(gzipSync(writeTar([
        { path: "corpus", type: "dir", mode: 0o755 },
        { path: "corpus/Chart.yaml", type: "file", mode: 0o644, content: chartYaml },
      ])));
      await pushArtifact(c, c.repo, {
        tag: "0.1.0",
        config: {
          mediaType: "application/vnd.cncf.helm.config.v1+json",
          bytes: enc.encode(JSON.stringify({ apiVersion: "v2", name: "corpus", version: "0.1.0" })),
        },
        layers: [{
          mediaType: "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
          bytes: chart,
        }],
      });
      return { ref: `${c.host}/${c.repo}:0.1.0` };
    },
  },
  {
    id: "oci-artifact",
    group: "artifacts",
    title: "OCI 1.1 artifact (artifactType, empty config)",
    expect: NOT_AN_IMAGE,
    build: async (c) => {
      const enc = new TextEncoder();
      await pushArtifact(c, c.repo, {
        tag: "v1",
        artifactType: "application/vnd.example.sbom.v1",
        config: { mediaType: CT.ociEmpty, bytes: enc.encode("{}") },
        layers: [{
          mediaType: "application/spdx+json",
          bytes: enc.encode(JSON.stringify({ spdxVersion: "SPDX-2.3", name: "corpus" })),
          annotations: { "org.opencontainers.image.title": "sbom.spdx.json" },
        }],
      });
      return { ref: `${c.host}/${c.repo}:v1` };
    },
  },
  {
    id: "cosign-signature",
    group: "artifacts",
    title: "cosign signature (simplesigning layer) at sha256-<digest>.sig",
    expect: NOT_AN_IMAGE,
    build: async (c) => {
      const enc = new TextEncoder();
      const signed = await simpleImage(c, c.repo, { marker: c.marker, tag: "v1" });
      const payload = enc.encode(JSON.stringify({
        critical: {
          identity: { "docker-reference": `${c.host}/${c.repo}` },
          image: { "docker-manifest-digest": signed.digest },
          type: "cosign container image signature",
        },
        optional: null,
      }));
      const payloadDigest = `sha256:${await sha256Hex(payload)}`;
      const config = enc.encode(JSON.stringify({
        architecture: "",
        config: {},
        created: "0001-01-01T00:00:00Z",
        history: [{ created: "0001-01-01T00:00:00Z" }],
        os: "",
        rootfs: { type: "layers", diff_ids: [payloadDigest] },
      }));
      const tag = `sha256-${signed.digest.slice(7)}.sig`;
      await pushArtifact(c, c.repo, {
        tag,
        config: { mediaType: CT.ociConfig, bytes: config },
        layers: [{
          mediaType: "application/vnd.dev.cosign.simplesigning.v1+json",
          bytes: payload,
          annotations: { "dev.cosignproject.cosign/signature": "MEUCIQDcorpusnotarealsignature==" },
        }],
      });
      return { ref: `${c.host}/${c.repo}:${tag}` };
    },
  },
];

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
