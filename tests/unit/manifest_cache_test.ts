/**
 * The manifest cache and the registry memory (lib/manifest_cache.ts): manifests are hashed again
 * on every read, damaged or planted entries are never used, files are private, names come only
 * from hashes, and a remembered endpoint is used only for its own registry (a loopback fake).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { digestOf } from "../../lib/digest.ts";
import { ManifestCache } from "../../lib/manifest_cache.ts";
import { RegistryClient } from "../../lib/registry.ts";

const manifest = new TextEncoder().encode('{"schemaVersion":2,"manifests":[]}');
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";

async function withCache(body: (cache: ManifestCache, root: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  try {
    const root = join(dir, "cache");
    await body(await ManifestCache.open(root), root);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("manifest cache: stored by its own digest, read back with its content type", async () => {
  await withCache(async (cache, root) => {
    const digest = await cache.putManifest(manifest, OCI_INDEX);
    assert.equal(digest, digestOf(manifest));
    const hit = await cache.getManifest(digest);
    assert.deepEqual(hit?.bytes, manifest);
    assert.equal(hit?.contentType, OCI_INDEX);
    const path = join(root, "manifests", "sha256", digest.slice(7));
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(join(root, "manifests"))).mode! & 0o777, 0o700);
    assert.equal(await cache.getManifest(digestOf(new Uint8Array([1]))), undefined);
    assert.equal(await cache.getManifest("sha256:../../etc/passwd"), undefined);
  });
});

Deno.test("manifest cache: a damaged entry is removed and reported missing", async () => {
  await withCache(async (cache, root) => {
    const digest = await cache.putManifest(manifest, OCI_INDEX);
    const path = join(root, "manifests", "sha256", digest.slice(7));
    const bytes = await Deno.readFile(path);
    bytes[bytes.length - 1] ^= 1;
    await Deno.writeFile(path, bytes);
    assert.equal(await cache.getManifest(digest), undefined);
    await assert.rejects(Deno.lstat(path), Deno.errors.NotFound);
    // Stored again, it is good again.
    await cache.putManifest(manifest, null);
    assert.equal((await cache.getManifest(digest))?.contentType, null);
  });
});

Deno.test("manifest cache: a symlink planted as an entry is neither read nor written through", async () => {
  await withCache(async (cache, root) => {
    const victim = join(root, "..", "victim.json");
    await Deno.writeFile(victim, new TextEncoder().encode(`${OCI_INDEX}\n`));
    const digest = digestOf(manifest);
    const path = join(root, "manifests", "sha256", digest.slice(7));
    await Deno.symlink(victim, path);
    assert.equal(await cache.getManifest(digest), undefined);
    await cache.putManifest(manifest, OCI_INDEX);
    // The link was replaced by a file (rename), the victim is untouched.
    assert.equal(await Deno.readTextFile(victim), `${OCI_INDEX}\n`);
    assert.ok((await Deno.lstat(path)).isFile);
    assert.deepEqual((await cache.getManifest(digest))?.bytes, manifest);
  });
});

Deno.test("manifest cache: registry memory is validated, named by a hash, and forgettable", async () => {
  await withCache(async (cache, root) => {
    const key = "endpoint registry.example/v2";
    await cache.putEndpoint(key, {
      base: "https://registry.example",
      challenge: { scheme: "bearer", realm: "https://auth.example/token", service: "reg" },
    });
    assert.deepEqual(await cache.getEndpoint(key), {
      base: "https://registry.example",
      challenge: { scheme: "bearer", realm: "https://auth.example/token", service: "reg" },
    });
    const names = await Array.fromAsync(Deno.readDir(join(root, "registries", "sha256")));
    assert.equal(names.length, 1);
    assert.match(names[0].name, /^[0-9a-f]{64}$/);
    const path = join(root, "registries", "sha256", names[0].name);
    for (
      const bad of [
        "not json",
        JSON.stringify({ base: "https://registry.example/path" }),
        JSON.stringify({ base: "ftp://registry.example" }),
        JSON.stringify({ base: "https://r.example", challenge: { scheme: "bearer" } }),
        JSON.stringify({ base: "https://r.example", challenge: { scheme: "negotiate" } }),
        JSON.stringify({ base: "https://r.example", challenge: { scheme: "basic", realm: 1 } }),
      ]
    ) {
      await Deno.writeTextFile(path, bad);
      assert.equal(await cache.getEndpoint(key), undefined, bad);
    }
    await cache.putEndpoint(key, { base: "http://registry.example" });
    assert.deepEqual(await cache.getEndpoint(key), { base: "http://registry.example" });
    await cache.forgetEndpoint(key);
    assert.equal(await cache.getEndpoint(key), undefined);
    await cache.putTag("tag key", "sha256:nothex");
    assert.equal(await cache.getTag("tag key"), undefined);
    await cache.putTag("tag key", digestOf(manifest));
    assert.equal(await cache.getTag("tag key"), digestOf(manifest));
  });
});

Deno.test("manifest cache: a cache others can write is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const root = join(dir, "cache");
    await Deno.mkdir(root, { mode: 0o700 });
    await Deno.chmod(root, 0o777);
    await assert.rejects(ManifestCache.open(root), /writable by other users/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("registry memory: used only for the registry's own host", async () => {
  const hits = { a: [] as string[], b: [] as string[] };
  const serve = (log: string[]) =>
    Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
      log.push(`${req.method} ${new URL(req.url).pathname}`);
      return new Response("{}", { headers: { "docker-distribution-api-version": "registry/2.0" } });
    });
  const a = serve(hits.a), b = serve(hits.b);
  const dir = await Deno.makeTempDir();
  try {
    const hostA = `127.0.0.1:${a.addr.port}`, hostB = `127.0.0.1:${b.addr.port}`;
    const cacheDir = join(dir, "cache");
    const cache = await ManifestCache.open(cacheDir);
    // A forged memory for A that points at B: never followed.
    await cache.putEndpoint(`endpoint ${hostA}/v2`, { base: `http://${hostB}` });
    const client = new RegistryClient({ registry: hostA, repository: "x/y", cacheDir });
    try {
      await client.ping();
      assert.equal(client.baseUrl, `http://${hostA}`);
    } finally {
      client.close();
    }
    assert.deepEqual(hits.a, ["GET /v2/"]);
    assert.deepEqual(hits.b, []);
    // The ping's answer is what is remembered now: the next run skips it.
    assert.deepEqual(await cache.getEndpoint(`endpoint ${hostA}/v2`), {
      base: `http://${hostA}`,
    });
    const again = new RegistryClient({ registry: hostA, repository: "x/y", cacheDir });
    try {
      await again.ping();
    } finally {
      again.close();
    }
    assert.deepEqual(hits.a, ["GET /v2/"]);
  } finally {
    await a.shutdown();
    await b.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
