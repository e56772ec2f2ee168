/**
 * Foreign layers the registry does not serve are fetched from the URLs in
 * their descriptor (verified like any blob) and recorded in LayerSources.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { digestOf } from "../../lib/digest.ts";
import { MediaType } from "../../lib/media_types.ts";
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
