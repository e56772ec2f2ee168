/**
 * Warm pulls in few round trips, against a real Distribution registry with token auth: with a
 * cache directory, the second resolution of a tag takes two round trips: the token (while an
 * anonymous `/v2/` opens the registry connection, concurrently) and a `HEAD` of the tag; by
 * digest it asks nobody anything. The manifests come from the cache, hashed again; a damaged
 * cache entry is fetched again; a moved tag is followed; a remembered challenge that no longer
 * works falls back to the ping.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { RegistryClient } from "../../lib/registry.ts";
import { resolveImage } from "../../lib/resolve.ts";
import { parseReference } from "../../lib/reference.ts";
import { BlobStore } from "../../lib/store.ts";
import { MT } from "../helpers/fixtures.ts";
import { pushBlob, pushManifest, sha256Digest } from "../helpers/push.ts";
import { startRegistry } from "../helpers/registry.ts";
import { generateTestPki } from "../helpers/tls.ts";
import { imgpull } from "../helpers/cli.ts";
import { startTokenServer } from "../helpers/token_server.ts";

const SERVICE = "imgpull-warm-registry";
const ISSUER = "imgpull-warm-issuer";
const users = { alice: "wonderland" };

const json = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));

/** Requests in the registry's access log ("GET /v2/... HTTP/1.1"), oldest first. */
function accessLog(log: string): string[] {
  return [...log.matchAll(/"(GET|HEAD|PUT|POST|PATCH) (\/v2\/[^ "]*) HTTP\/[\d.]+"/g)].map((m) =>
    `${m[1]} ${m[2]}`
  );
}

/** Pushes a one-layer image under an index (linux/amd64) tagged `tag`; returns the digests. */
async function pushIndexed(url: string, repo: string, tag: string, seed: number) {
  const layer = crypto.getRandomValues(new Uint8Array(4096 + seed));
  const config = json({
    architecture: "amd64",
    os: "linux",
    rootfs: { type: "layers", diff_ids: [sha256Digest(layer)] },
  });
  await pushBlob(url, repo, layer);
  await pushBlob(url, repo, config);
  const manifest = json({
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: sha256Digest(config), size: config.byteLength },
    layers: [{ mediaType: MT.ociLayerGzip, digest: sha256Digest(layer), size: layer.byteLength }],
  });
  const manifestDigest = await pushManifest(
    url,
    repo,
    sha256Digest(manifest),
    manifest,
    MT.ociManifest,
  );
  const index = json({
    schemaVersion: 2,
    mediaType: MT.ociIndex,
    manifests: [{
      mediaType: MT.ociManifest,
      digest: manifestDigest,
      size: manifest.byteLength,
      platform: { os: "linux", architecture: "amd64" },
    }],
  });
  const indexDigest = await pushManifest(url, repo, tag, index, MT.ociIndex);
  return { indexDigest, manifestDigest };
}

Deno.test("warm: a cached tag resolves in two round trips, a digest in none", async (t) => {
  const work = await Deno.makeTempDir({ prefix: "imgpull-warm-" });
  const closers: (() => Promise<void>)[] = [];
  try {
    const storage = join(work, "storage");
    const pki = await generateTestPki(join(work, "pki"));
    const tokenServer = await startTokenServer({ pki, service: SERVICE, issuer: ISSUER, users });
    closers.push(tokenServer.close);
    const [http, registry] = await Promise.all([
      startRegistry({ mode: "http", storageDir: storage }),
      startRegistry({
        mode: "token",
        storageDir: storage,
        pki,
        token: { realm: tokenServer.url, service: SERVICE, issuer: ISSUER },
      }),
    ]);
    closers.push(http.close, registry.close);
    const repo = "warm/app";
    const first = await pushIndexed(http.url, repo, "v1", 1);

    const cacheDir = join(work, "cache");
    const store = await BlobStore.open(cacheDir);
    const platform = { platform: { os: "linux", architecture: "amd64" }, enforced: true };
    /** One process's worth of work: ping, then resolve the reference (manifests and config). */
    const resolve = async (reference: string, options: { cacheDir?: string } = { cacheDir }) => {
      const client = new RegistryClient({
        registry: registry.host,
        repository: repo,
        tls: { caCerts: [pki.caCertPem] },
        credential: () =>
          Promise.resolve({ username: "alice", password: "wonderland", source: "test" }),
        ...options,
      });
      try {
        await client.ping();
        return await resolveImage(client, parseReference(reference), platform, () => {}, store);
      } finally {
        client.close();
      }
    };
    /** Registry requests and token requests made by `body`. */
    const counted = async <T>(body: () => Promise<T>) => {
      const before = accessLog(registry.log()).length;
      const tokensBefore = tokenServer.requests.length;
      const result = await body();
      // The access log line is written after the response: give it a moment.
      await new Promise((r) => setTimeout(r, 300));
      return {
        result,
        registry: accessLog(registry.log()).slice(before),
        tokens: tokenServer.requests.length - tokensBefore,
      };
    };

    await t.step("without a cache: ping, token, index, manifest", async () => {
      const cold = await counted(() => resolve(`${registry.host}/${repo}:v1`, {}));
      assert.equal(cold.result.manifestDigest, first.manifestDigest);
      assert.deepEqual(cold.registry, [
        "GET /v2/",
        `GET /v2/${repo}/manifests/v1`,
        `GET /v2/${repo}/manifests/${first.manifestDigest}`,
        `GET /v2/${repo}/blobs/${
          cold.result.kind === "image" ? cold.result.manifest.config.digest : ""
        }`,
      ]);
      assert.equal(cold.tokens, 1);
    });

    await t.step("cold with a cache: the same requests, and the cache is filled", async () => {
      const cold = await counted(() => resolve(`${registry.host}/${repo}:v1`));
      assert.equal(cold.result.manifestDigest, first.manifestDigest);
      // The config is in the blob store since the first step.
      assert.deepEqual(cold.registry, [
        "GET /v2/",
        `GET /v2/${repo}/manifests/v1`,
        `GET /v2/${repo}/manifests/${first.manifestDigest}`,
      ]);
      assert.equal(cold.tokens, 1);
    });

    await t.step("warm by tag: the token (with /v2/ alongside), then one HEAD", async () => {
      const warm = await counted(() => resolve(`${registry.host}/${repo}:v1`));
      assert.equal(warm.result.manifestDigest, first.manifestDigest);
      assert.deepEqual(warm.registry.sort(), ["GET /v2/", `HEAD /v2/${repo}/manifests/v1`]);
      assert.equal(warm.tokens, 1);
    });

    await t.step("warm by digest: no request at all", async () => {
      const warm = await counted(() => resolve(`${registry.host}/${repo}@${first.indexDigest}`));
      assert.equal(warm.result.manifestDigest, first.manifestDigest);
      assert.deepEqual(warm.registry, []);
      assert.equal(warm.tokens, 0);
    });

    await t.step("a damaged cached manifest is hashed, dropped and fetched again", async () => {
      const hex = first.manifestDigest.slice(7);
      const path = join(cacheDir, "manifests", "sha256", hex);
      const bytes = await Deno.readFile(path);
      bytes[bytes.length - 2] ^= 1;
      await Deno.writeFile(path, bytes);
      const warm = await counted(() => resolve(`${registry.host}/${repo}:v1`));
      assert.equal(warm.result.manifestDigest, first.manifestDigest);
      assert.deepEqual(warm.registry.sort(), [
        "GET /v2/",
        `GET /v2/${repo}/manifests/${first.manifestDigest}`,
        `HEAD /v2/${repo}/manifests/v1`,
      ]);
    });

    await t.step("a moved tag is followed", async () => {
      const second = await pushIndexed(http.url, repo, "v1", 2);
      const warm = await counted(() => resolve(`${registry.host}/${repo}:v1`));
      assert.equal(warm.result.manifestDigest, second.manifestDigest);
      assert.deepEqual(warm.registry.sort(), [
        "GET /v2/",
        `GET /v2/${repo}/blobs/${
          warm.result.kind === "image" ? warm.result.manifest.config.digest : ""
        }`,
        `GET /v2/${repo}/manifests/${second.manifestDigest}`,
        `GET /v2/${repo}/manifests/v1`,
        `HEAD /v2/${repo}/manifests/v1`,
      ]);
      const again = await counted(() => resolve(`${registry.host}/${repo}:v1`));
      assert.deepEqual(again.registry.sort(), ["GET /v2/", `HEAD /v2/${repo}/manifests/v1`]);
    });

    await t.step({
      name: "the CLI: a warm re-pull is the token (with /v2/ alongside) and one HEAD",
      fn: async () => {
        const home = join(work, "home");
        await Deno.mkdir(home);
        const cliCache = join(work, "cli-cache");
        const args = (out: string) => [
          `${registry.host}/${repo}:v1`,
          "--cache-dir",
          cliCache,
          "--ca-cert",
          pki.caCertPath,
          "--username",
          "alice",
          "--password-stdin",
          "--platform",
          "linux/amd64",
          "-o",
          join(work, out),
        ];
        const cold = await counted(() =>
          imgpull(args("cold.tar"), { env: { HOME: home }, stdin: "wonderland" })
        );
        assert.equal(cold.result.code, 0, cold.result.stderr);
        const warm = await counted(() =>
          imgpull(args("warm.tar"), { env: { HOME: home }, stdin: "wonderland" })
        );
        assert.equal(warm.result.code, 0, warm.result.stderr);
        assert.deepEqual(warm.registry.sort(), ["GET /v2/", `HEAD /v2/${repo}/manifests/v1`]);
        assert.equal(warm.tokens, 1);
        assert.deepEqual(
          await Deno.readFile(join(work, "cold.tar")),
          await Deno.readFile(join(work, "warm.tar")),
        );
      },
    });

    await t.step("a remembered realm that fails falls back to the ping", async () => {
      const dir = join(cacheDir, "registries", "sha256");
      for await (const entry of Deno.readDir(dir)) {
        const path = join(dir, entry.name);
        const memory = JSON.parse(await Deno.readTextFile(path));
        memory.challenge.realm = "https://127.0.0.1:1/token";
        await Deno.writeTextFile(path, JSON.stringify(memory));
      }
      const warm = await counted(() => resolve(`${registry.host}/${repo}:v1`));
      // The anonymous /v2/ beside the failed token request, then the real ping.
      assert.deepEqual(warm.registry.sort(), [
        "GET /v2/",
        "GET /v2/",
        `HEAD /v2/${repo}/manifests/v1`,
      ]);
      assert.equal(warm.tokens, 1);
      const again = await counted(() => resolve(`${registry.host}/${repo}:v1`));
      assert.deepEqual(again.registry.sort(), ["GET /v2/", `HEAD /v2/${repo}/manifests/v1`]);
    });
  } finally {
    for (const close of closers.reverse()) await close().catch(() => {});
    await Deno.remove(work, { recursive: true });
  }
});
