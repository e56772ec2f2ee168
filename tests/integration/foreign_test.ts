/**
 * Foreign layers the registry does not serve are fetched from the URLs in
 * their descriptor (verified like any blob) and recorded in LayerSources.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { digestOf } from "../../lib/digest.ts";
import { InvalidContentError, NotFoundError } from "../../lib/errors.ts";
import type { PullEvent } from "../../lib/events.ts";
import {
  downloadForeignLayer,
  fetchPolicy,
  foreignUrlAllowed,
  UrlBlobSource,
} from "../../lib/fetch.ts";
import { MediaType } from "../../lib/media_types.ts";
import { BlobStore } from "../../lib/store.ts";
import { imgpull } from "../helpers/cli.ts";
import { startFaultRegistry } from "../helpers/fault_registry.ts";

const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));

Deno.test("foreign layer: registry 404 → fetched from its URL, recorded in LayerSources", async () => {
  const base = new Uint8Array(300_000).map((_, i) => (i * 31) % 253);
  const own = new Uint8Array(1000).fill(3);
  const seen: { path: string; authorization: boolean }[] = [];
  const cdn = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    seen.push({ path: new URL(req.url).pathname, authorization: req.headers.has("authorization") });
    return new Response(base.slice());
  });
  const url = `http://127.0.0.1:${cdn.addr.port}/windows-base-layer`;
  const layers = [
    {
      mediaType: MediaType.dockerLayerForeignGzip,
      digest: digestOf(base),
      size: base.byteLength,
      urls: [url],
    },
    { mediaType: MediaType.dockerLayerGzip, digest: digestOf(own), size: own.byteLength },
  ];
  const config = enc({
    architecture: "amd64",
    os: "linux",
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.digest) },
  });
  const manifest = enc({
    schemaVersion: 2,
    mediaType: MediaType.dockerManifest,
    config: {
      mediaType: MediaType.dockerConfig,
      digest: digestOf(config),
      size: config.byteLength,
    },
    layers,
  });
  const registry = startFaultRegistry({
    // The foreign blob is deliberately absent from the registry.
    blobs: new Map([[digestOf(own), own], [digestOf(config), config]]),
    manifests: new Map([["win/app:v1", { bytes: manifest, mediaType: MediaType.dockerManifest }]]),
  });
  const dir = await Deno.makeTempDir();
  try {
    const result = await imgpull([`${registry.host}/win/app:v1`, "--no-cache", "-o", "a.tar"], {
      cwd: dir,
      env: { HOME: dir },
    });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /is not in the registry; fetching http:\/\/127\.0\.0\.1/);
    assert.deepEqual(seen, [{ path: "/windows-base-layer", authorization: false }]);
    const list = await new Deno.Command("tar", {
      args: ["-xOf", join(dir, "a.tar"), "manifest.json"],
    })
      .output();
    const docs = JSON.parse(new TextDecoder().decode(list.stdout));
    assert.deepEqual(docs[0].LayerSources[digestOf(base)].urls, [url]);
  } finally {
    await registry.close();
    await cdn.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("foreign layer URLs: only HTTPS, no credentials, loopback only from a loopback registry", () => {
  const remote = "https://registry.example.com";
  const localTls = "https://127.0.0.1:5000";
  const localHttp = "http://127.0.0.1:5000";
  const cases: [string, string, boolean][] = [
    ["https://cdn.example.com/layer", remote, true],
    ["https://cdn.example.com/layer", localTls, true],
    ["http://cdn.example.com/layer", remote, false],
    ["http://example.invalid/layer", localTls, false],
    ["file:///etc/passwd", remote, false],
    ["file:///etc/passwd", localHttp, false],
    ["ftp://cdn.example.com/layer", remote, false],
    ["data:,hello", remote, false],
    ["https://user:secret@cdn.example.com/layer", remote, false],
    ["https://token@cdn.example.com/layer", remote, false],
    ["http://127.0.0.1:8080/layer", localTls, false],
    ["http://127.0.0.1:8080/layer", localHttp, true],
    ["http://[::1]:8080/layer", localHttp, true],
    ["http://localhost:8080/layer", remote, false],
    ["https://127.0.0.1:8443/layer", remote, false],
    ["https://localhost/layer", remote, false],
    ["https://127.0.0.1:8443/layer", localTls, true],
    ["not a url", remote, false],
  ];
  for (const [url, registry, allowed] of cases) {
    assert.equal(foreignUrlAllowed(url, registry).allowed, allowed, `${url} from ${registry}`);
  }
});

Deno.test("foreign layer URLs: refused URLs are never requested; the error says why", async () => {
  const blob = new Uint8Array(5000).fill(9);
  let hits = 0;
  const local = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, () => {
    hits++;
    return new Response(blob.slice());
  });
  const dir = await Deno.makeTempDir();
  const store = await BlobStore.createIn(dir);
  const descriptor = {
    mediaType: MediaType.dockerLayerForeignGzip,
    digest: digestOf(blob),
    size: blob.byteLength,
    urls: [
      "http://example.invalid/layer",
      "file:///etc/passwd",
      `http://127.0.0.1:${local.addr.port}/layer`,
    ],
  };
  const events: PullEvent[] = [];
  const options = { policy: fetchPolicy(), onEvent: (e: PullEvent) => events.push(e) };
  const registryError = new NotFoundError("blob unknown");
  try {
    await assert.rejects(
      downloadForeignLayer(descriptor, store, options, {
        registryUrl: "https://127.0.0.1:5000",
        registryError,
      }),
      (e) =>
        e instanceof InvalidContentError && e.exitCode === 8 &&
        /foreign URLs are refused: http:\/\/example\.invalid\/layer \(plain HTTP/.test(e.message),
    );
    assert.equal(hits, 0);
    assert.equal(
      events.filter((e) => e.type === "notice" && /not fetching/.test(e.message)).length,
      3,
    );
    // From a plain-HTTP loopback registry the loopback URL is fine, and the event names it.
    events.length = 0;
    const result = await downloadForeignLayer(descriptor, store, options, {
      registryUrl: "http://127.0.0.1:5000",
      registryError,
    });
    assert.ok(result.path);
    assert.equal(hits, 1);
    assert.ok(
      events.some((e) =>
        e.type === "notice" &&
        e.message.endsWith(`fetching http://127.0.0.1:${local.addr.port}/layer`)
      ),
    );
  } finally {
    await store.remove();
    await local.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("foreign layer URLs: every redirect hop is held to the same policy", async () => {
  const requests: string[] = [];
  const server: Deno.HttpServer<Deno.NetAddr> = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req): Response => {
      requests.push(new URL(req.url).pathname);
      // An allowed URL redirecting to one the policy refuses (credentials in it).
      return new Response(null, {
        status: 302,
        headers: { location: `http://someone:secret@127.0.0.1:${server.addr.port}/second` },
      });
    },
  );
  const source = new UrlBlobSource(`http://127.0.0.1:${server.addr.port}/first`, {
    registryUrl: `http://127.0.0.1:${server.addr.port}`,
  });
  try {
    await assert.rejects(
      () => source.openBlob(`sha256:${"a".repeat(64)}`),
      (e: unknown) => e instanceof InvalidContentError && /carries credentials/.test(e.message),
    );
    assert.deepEqual(requests, ["/first"], "the refused hop is never requested");
  } finally {
    source.close();
    await server.shutdown();
  }
});
