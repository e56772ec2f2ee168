/**
 * Proves the test-service helpers work, independently of imgpull: real registries in every auth
 * mode, the token server, the redirect CDN, the fixtures, and third-party loaders (skopeo →
 * docker load/run, podman load).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { generateTestPki } from "../helpers/tls.ts";
import { startBlobCdn, startRegistry } from "../helpers/registry.ts";
import { MT, pushFixtures } from "../helpers/fixtures.ts";
import { startTokenServer } from "../helpers/token_server.ts";
import { startDockerd } from "../helpers/dockerd.ts";
import { podmanLoad } from "../helpers/podman.ts";
import { runOk } from "../helpers/process.ts";
import { sha256Digest } from "../helpers/push.ts";

interface Fetched {
  status: number;
  headers: Headers;
  body: Uint8Array;
  text(): string;
}

/** fetch that always consumes the body (the resource sanitizer wants it closed). */
async function get(url: string, init: RequestInit & { client?: Deno.HttpClient } = {}) {
  const res = await fetch(url, init);
  const body = new Uint8Array(await res.arrayBuffer());
  return {
    status: res.status,
    headers: res.headers,
    body,
    text: () => new TextDecoder().decode(body),
  } satisfies Fetched;
}

function assertIncludes(actual: string, expected: string): void {
  assert.ok(
    actual.includes(expected),
    `expected ${JSON.stringify(actual)} to include ${JSON.stringify(expected)}`,
  );
}

function basicAuth(user: string, password: string): string {
  return `Basic ${btoa(`${user}:${password}`)}`;
}

const SCHEMA2_ACCEPT = [MT.dockerManifest, MT.dockerList, MT.ociManifest, MT.ociIndex].join(", ");
const SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/** Digest of the gzip-compressed empty tar that schema1 uses for throwaway layers. */
const EMPTY_TAR_GZ = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

Deno.test("test helpers: registries, token server, blob CDN, fixtures, loaders", async (t) => {
  const work = await Deno.makeTempDir({ prefix: "imgpull-helpers-" });
  const closers: (() => Promise<void>)[] = [];
  // dockerd takes a few seconds to come up: start it first, in parallel with the rest.
  const dockerdPromise = startDockerd();
  dockerdPromise.catch(() => {}); // Observed below; avoid an unhandled-rejection report.
  try {
    const storage = join(work, "storage");
    const users = { alice: "wonderland" };
    const pki = await generateTestPki(join(work, "pki"));

    const http = await startRegistry({ mode: "http", storageDir: storage });
    closers.push(http.close);
    const fixtures = await pushFixtures(http.url, join(work, "fixtures"));
    const app = fixtures.images.app;

    const tokenServer = await startTokenServer({
      pki,
      service: "imgpull-test-registry",
      issuer: "imgpull-test-issuer",
      users,
      refreshToken: "refresh-me",
    });
    closers.push(tokenServer.close);
    const cdn = await startBlobCdn(storage);
    closers.push(cdn.close);
    const [basic, token, redirecting] = await Promise.all([
      startRegistry({ mode: "basic", storageDir: storage, pki, users }),
      startRegistry({
        mode: "token",
        storageDir: storage,
        pki,
        token: {
          realm: tokenServer.url,
          service: "imgpull-test-registry",
          issuer: "imgpull-test-issuer",
        },
      }),
      startRegistry({ mode: "http", storageDir: storage, redirectBlobsTo: cdn.url }),
    ]);
    closers.push(basic.close, token.close, redirecting.close);
    const client = Deno.createHttpClient({ caCerts: [pki.caCertPem] });
    closers.push(() => Promise.resolve(client.close()));

    const appManifestPath = `/v2/${app.name}/manifests/${app.tags[0]}`;

    await t.step("http: anonymous manifest GET", async () => {
      const res = await get(http.url + appManifestPath, { headers: { Accept: SCHEMA2_ACCEPT } });
      assert.deepEqual(res.status, 200);
      assert.deepEqual(res.headers.get("Content-Type"), MT.dockerManifest);
      assert.deepEqual(res.headers.get("Docker-Content-Digest"), app.digest);
      assert.deepEqual(sha256Digest(res.body), app.digest);
    });

    await t.step("http: schema1 conversion without schema2 in Accept", async () => {
      const res = await get(http.url + appManifestPath, { headers: { Accept: SCHEMA1_SIGNED } });
      assert.deepEqual(res.status, 200);
      assert.deepEqual(res.headers.get("Content-Type"), SCHEMA1_SIGNED);
      const m = JSON.parse(res.text());
      assert.deepEqual(m.schemaVersion, 1);
      assert.deepEqual(m.architecture, "amd64");
      // Top layer first; the CMD history entry became a throwaway empty layer on top.
      const layers = app.manifests[0].layers.map((l) => l.digest).reverse();
      assert.deepEqual(m.fsLayers.map((l: { blobSum: string }) => l.blobSum), [
        EMPTY_TAR_GZ,
        ...layers,
      ]);
      assert.deepEqual(JSON.parse(m.history[0].v1Compatibility).throwaway, true);
      assert.ok(Array.isArray(m.signatures));
      // An OCI index is never converted: 404 MANIFEST_UNKNOWN.
      const oci = await get(`${http.url}/v2/${fixtures.images.multi.name}/manifests/latest`, {
        headers: { Accept: SCHEMA1_SIGNED },
      });
      assert.deepEqual(oci.status, 404);
      assertIncludes(oci.text(), "MANIFEST_UNKNOWN");
    });

    await t.step("http: fixtures are all there", async () => {
      for (const image of Object.values(fixtures.images)) {
        for (const repo of [image.name, ...image.aliases]) {
          for (const tag of image.tags) {
            const res = await get(`${http.url}/v2/${repo}/manifests/${tag}`, {
              headers: { Accept: SCHEMA2_ACCEPT },
            });
            assert.deepEqual(res.status, 200, `${repo}:${tag}`);
            assert.deepEqual(res.headers.get("Content-Type"), image.mediaType, `${repo}:${tag}`);
            assert.deepEqual(sha256Digest(res.body), image.digest, `${repo}:${tag}`);
          }
        }
      }
      const index = JSON.parse(
        new TextDecoder().decode(fixtures.blobs.get(fixtures.images.multi.digest)),
      );
      assert.deepEqual(index.manifests.length, 8);
      assert.deepEqual(index.manifests[7].platform, { architecture: "unknown", os: "unknown" });
      assert.deepEqual(
        index.manifests[7].annotations["vnd.docker.reference.digest"],
        fixtures.images.multi.manifests[0].digest,
      );
      // The foreign layer's blob is in the registry too.
      const foreign = await get(
        `${http.url}/v2/${fixtures.images.foreign.name}/blobs/${fixtures.foreignLayer.digest}`,
      );
      assert.deepEqual(foreign.status, 200);
    });

    await t.step("basic: 401 without credentials, 200 with", async () => {
      const anon = await get(basic.url + appManifestPath, { client });
      assert.deepEqual(anon.status, 401);
      assert.match(anon.headers.get("WWW-Authenticate") ?? "", /^Basic realm=/);
      const wrong = await get(basic.url + appManifestPath, {
        client,
        headers: { Authorization: basicAuth("alice", "nope") },
      });
      assert.deepEqual(wrong.status, 401);
      const ok = await get(basic.url + appManifestPath, {
        client,
        headers: { Authorization: basicAuth("alice", "wonderland"), Accept: SCHEMA2_ACCEPT },
      });
      assert.deepEqual(ok.status, 200);
      assert.deepEqual(sha256Digest(ok.body), app.digest);
    });

    await t.step("token: Bearer challenge, token from the token server works", async () => {
      const anon = await get(token.url + appManifestPath, { client });
      assert.deepEqual(anon.status, 401);
      const challenge = anon.headers.get("WWW-Authenticate") ?? "";
      assertIncludes(challenge, `Bearer realm="${tokenServer.url}"`);
      assertIncludes(challenge, 'service="imgpull-test-registry"');
      assertIncludes(challenge, `scope="repository:${app.name}:pull"`);

      const tokenUrl = `${tokenServer.url}?service=imgpull-test-registry&scope=${
        encodeURIComponent(`repository:${app.name}:pull`)
      }`;
      const refused = await get(tokenUrl, { client });
      assert.deepEqual(refused.status, 401);
      const issued = await get(tokenUrl, {
        client,
        headers: { Authorization: basicAuth("alice", "wonderland") },
      });
      assert.deepEqual(issued.status, 200);
      const body = JSON.parse(issued.text());
      assert.deepEqual(body.token, body.access_token);
      assert.deepEqual(body.expires_in, 300);
      const last = tokenServer.requests.at(-1)!;
      assert.deepEqual(last.username, "alice");
      assert.deepEqual(last.scopes, [`repository:${app.name}:pull`]);

      const ok = await get(token.url + appManifestPath, {
        client,
        headers: { Authorization: `Bearer ${body.token}`, Accept: SCHEMA2_ACCEPT },
      });
      assert.deepEqual(ok.status, 200, ok.text());
      assert.deepEqual(sha256Digest(ok.body), app.digest);

      // A token for another repository does not open this one.
      const other = tokenServer.issue([{ type: "repository", name: "x/y", actions: ["pull"] }]);
      const denied = await get(token.url + appManifestPath, {
        client,
        headers: { Authorization: `Bearer ${other}` },
      });
      assert.deepEqual(denied.status, 401);

      // OAuth2 refresh-token grant.
      const form = (refresh: string) =>
        new URLSearchParams({
          grant_type: "refresh_token",
          refresh_token: refresh,
          service: "imgpull-test-registry",
          scope: `repository:${app.name}:pull`,
          client_id: "imgpull",
        });
      const bad = await get(tokenServer.url, { client, method: "POST", body: form("nope") });
      assert.deepEqual(bad.status, 401);
      const good = await get(tokenServer.url, { client, method: "POST", body: form("refresh-me") });
      assert.deepEqual(good.status, 200);
      const refreshed = JSON.parse(good.text()).access_token;
      const viaRefresh = await get(token.url + appManifestPath, {
        client,
        headers: { Authorization: `Bearer ${refreshed}`, Accept: SCHEMA2_ACCEPT },
      });
      assert.deepEqual(viaRefresh.status, 200);
    });

    await t.step("redirect middleware + blob CDN", async () => {
      const layer = fixtures.busyboxLayer;
      const hex = layer.digest.slice("sha256:".length);
      const res = await get(`${redirecting.url}/v2/${app.name}/blobs/${layer.digest}`, {
        redirect: "manual",
      });
      assert.deepEqual(res.status, 307);
      const location = res.headers.get("Location")!;
      assert.deepEqual(
        location,
        `${cdn.url}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`,
      );

      const followed = await get(`${redirecting.url}/v2/${app.name}/blobs/${layer.digest}`);
      assert.deepEqual(followed.status, 200);
      assert.deepEqual(sha256Digest(followed.body), layer.digest);

      const withAuth = await get(location, { headers: { Authorization: "Bearer x" } });
      assert.deepEqual(withAuth.status, 400);

      const ranged = await get(location, { headers: { Range: "bytes=10-19" } });
      assert.deepEqual(ranged.status, 206);
      assert.deepEqual(ranged.headers.get("Content-Range"), `bytes 10-19/${layer.size}`);
      assert.deepEqual(ranged.body, fixtures.blobs.get(layer.digest)!.subarray(10, 20));

      assert.deepEqual(cdn.requests.map((r) => [r.hadAuthorization, r.status]), [
        [false, 200],
        [true, 400],
        [false, 206],
      ]);
    });

    await t.step("skopeo archive: docker load + run prints the marker, podman load", async () => {
      const archive = join(work, "app.tar");
      await runOk("skopeo", [
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--src-no-creds",
        `docker://${http.host}/${app.reference}`,
        `docker-archive:${archive}:imgpull-fixtures/app:v1`,
      ]);

      const dockerd = await dockerdPromise;
      const load = await dockerd.docker(["load", "--input", archive]);
      assert.deepEqual(load.code, 0, load.stderr);
      assertIncludes(load.stdout, "imgpull-fixtures/app:v1");
      const runResult = await dockerd.docker([
        "run",
        "--rm",
        "--network",
        "none",
        "imgpull-fixtures/app:v1",
      ]);
      assert.deepEqual(runResult.code, 0, runResult.stderr);
      assert.deepEqual(runResult.stdout, `${app.manifests[0].marker}\n`);

      const podman = await podmanLoad(archive);
      assert.deepEqual(podman.code, 0, podman.stderr);
      assert.deepEqual(podman.images, ["docker.io/imgpull-fixtures/app:v1"]);
      assert.deepEqual(podman.architectures, ["amd64"]);
    });
  } finally {
    for (const close of closers.reverse()) await close();
    // A start failure was reported by the step that awaited it (or is moot after another one).
    await dockerdPromise.then((d) => d.close(), () => {});
    await Deno.remove(work, { recursive: true });
  }
});
