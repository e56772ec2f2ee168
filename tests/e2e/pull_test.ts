/**
 * End to end: the imgpull CLI (run with the documented permissions) pulls
 * from real Distribution registries in all three modes, and real loaders
 * prove the archives: `podman load` always, `docker load` + `docker run`
 * through a dockerd started for the run. Nothing here is mocked.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { imgpull } from "../helpers/cli.ts";
import { type Dockerd, startDockerd } from "../helpers/dockerd.ts";
import { type Fixtures, pushFixtures } from "../helpers/fixtures.ts";
import { podmanLoad } from "../helpers/podman.ts";
import { type RunningRegistry, startBlobCdn, startRegistry } from "../helpers/registry.ts";
import { generateTestPki, type TestPki } from "../helpers/tls.ts";
import { startTokenServer, type TokenServer } from "../helpers/token_server.ts";
import { pull } from "../../lib/pull.ts";
import { MediaType } from "../../lib/media_types.ts";

const USER = "alice";
const PASSWORD = "s3cret:with:colons";
const SERVICE = "imgpull-test-registry";
const ISSUER = "imgpull-test-issuer";
const REFRESH_TOKEN = "refresh-token-from-docker-login";

interface Environment {
  root: string;
  pki: TestPki;
  fixtures: Fixtures;
  http: RunningRegistry;
  basic: RunningRegistry;
  token: RunningRegistry;
  tokenServer: TokenServer;
  dockerd: Dockerd;
  /** HOME with no docker config, so no host credentials leak in. */
  home: string;
  close(): Promise<void>;
}

async function startEnvironment(): Promise<Environment> {
  const root = await Deno.makeTempDir({ prefix: "imgpull-e2e-" });
  const closers: (() => Promise<void>)[] = [];
  const close = async () => {
    for (const c of closers.reverse()) await c().catch((e) => console.error("cleanup:", e));
    await Deno.remove(root, { recursive: true }).catch(() => {});
  };
  try {
    const storageDir = join(root, "storage");
    // dockerd takes seconds to start: overlap it with the registries.
    const dockerdPromise = startDockerd();
    dockerdPromise.then((d) => closers.push(() => d.close()), () => {});
    const pki = await generateTestPki(join(root, "pki"));
    const http = await startRegistry({ mode: "http", storageDir });
    closers.push(() => http.close());
    const fixtures = await pushFixtures(http.url, join(root, "fixtures"));
    const tokenServer = await startTokenServer({
      pki,
      service: SERVICE,
      issuer: ISSUER,
      users: { [USER]: PASSWORD },
      refreshToken: REFRESH_TOKEN,
    });
    closers.push(() => tokenServer.close());
    const basic = await startRegistry({
      mode: "basic",
      storageDir,
      pki,
      users: { [USER]: PASSWORD },
    });
    closers.push(() => basic.close());
    const token = await startRegistry({
      mode: "token",
      storageDir,
      pki,
      token: { realm: tokenServer.url, service: SERVICE, issuer: ISSUER },
    });
    closers.push(() => token.close());
    const dockerd = await dockerdPromise;
    const home = join(root, "home");
    await Deno.mkdir(home);
    return { root, pki, fixtures, http, basic, token, tokenServer, dockerd, home, close };
  } catch (e) {
    await close();
    throw e;
  }
}

async function workDir(env: Environment, name: string): Promise<string> {
  const dir = join(env.root, "work", name);
  await Deno.mkdir(dir, { recursive: true });
  return dir;
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

/** Runs imgpull expecting success; returns the archive path it printed. */
async function pullOk(
  env: Environment,
  args: string[],
  options: { cwd: string; stdin?: string; env?: Record<string, string> },
): Promise<{ path: string; stderr: string }> {
  const result = await imgpull(args, {
    cwd: options.cwd,
    stdin: options.stdin,
    env: { HOME: env.home, ...options.env },
  });
  assert.equal(result.code, 0, `imgpull ${args.join(" ")} failed:\n${result.stderr}`);
  const path = result.stdout.trim().split("\n").pop()!;
  const absolute = path.startsWith("/") ? path : join(options.cwd, path);
  assert.ok((await Deno.stat(absolute)).isFile, `${absolute} is not a file`);
  return { path: absolute, stderr: result.stderr };
}

/** Runs imgpull expecting `code`; asserts the message and that no file was left behind. */
async function pullFails(
  env: Environment,
  name: string,
  args: string[],
  code: number,
  message: RegExp,
  extraEnv: Record<string, string> = {},
): Promise<string> {
  const cwd = await workDir(env, name);
  const result = await imgpull(args, { cwd, env: { HOME: env.home, ...extraEnv } });
  assert.equal(result.code, code, `expected exit ${code}, got ${result.code}:\n${result.stderr}`);
  assert.match(result.stderr, message);
  assert.equal(result.stdout, "");
  assert.doesNotMatch(result.stderr, /\n\s+at /, "no stack trace without --verbose");
  assert.deepEqual(await listDir(cwd), [], "a failed pull leaves nothing behind");
  return result.stderr;
}

async function docker(env: Environment, ...args: string[]): Promise<string> {
  const r = await env.dockerd.docker(args);
  assert.equal(r.code, 0, `docker ${args.join(" ")} failed: ${r.stderr}`);
  return r.stdout.trim();
}

async function assertPodmanLoads(archive: string, expectedName: string): Promise<void> {
  const loaded = await podmanLoad(archive);
  assert.equal(loaded.code, 0, `podman load failed: ${loaded.stderr}`);
  assert.ok(
    loaded.images.some((n) => n === expectedName || n === `localhost/${expectedName}`),
    `podman loaded ${loaded.images.join(", ")}, expected ${expectedName}`,
  );
}

Deno.test("e2e: imgpull against real registries, proven by docker and podman", async (t) => {
  const env = await startEnvironment();
  try {
    const H = env.http.host;
    const fx = env.fixtures;

    await t.step(
      "anonymous HTTP: linux/amd64 loads in docker, runs, and loads in podman",
      async () => {
        const cwd = await workDir(env, "app");
        const { path, stderr } = await pullOk(env, [
          `${H}/fixtures/app:v1`,
          "--platform",
          "linux/amd64",
        ], { cwd });
        assert.equal(path, join(cwd, "fixtures_app_v1.tar"));
        assert.match(stderr, /\[\+\] Found manifest for platform: linux\/amd64/);
        assert.deepEqual(await listDir(cwd), ["fixtures_app_v1.tar"], "no temporary files remain");
        await docker(env, "load", "-i", path);
        const out = await docker(env, "run", "--rm", "--network", "none", `${H}/fixtures/app:v1`);
        assert.equal(out, fx.images.app.manifests[0].marker);
        const id = await docker(
          env,
          "image",
          "inspect",
          "--format",
          "{{.Id}}",
          `${H}/fixtures/app:v1`,
        );
        assert.equal(id, fx.images.app.manifests[0].config.digest, "image ID is the config digest");
        await assertPodmanLoads(path, `${H}/fixtures/app:v1`);
      },
    );

    await t.step("--import-tar: layers from docker save are reused by their diff_id", async () => {
      const cwd = await workDir(env, "import");
      const saved = join(cwd, "saved.tar");
      await docker(env, "save", "-o", saved, `${H}/fixtures/app:v1`);
      const cache = join(cwd, "cache");
      const imported = await imgpull(["--import-tar", saved, "--cache-dir", cache], {
        cwd,
        env: { HOME: env.home },
      });
      assert.equal(imported.code, 0, imported.stderr);
      assert.match(imported.stderr, /Imported 3 layers/);
      const { path, stderr } = await pullOk(env, [
        `${H}/fixtures/app:v1`,
        "--cache-dir",
        cache,
        "-o",
        "again.tar",
      ], { cwd });
      assert.equal((stderr.match(/found in the cache by its diff_id/g) ?? []).length, 3, stderr);
      assert.doesNotMatch(stderr, /: downloaded \(/, "no layer was downloaded");
      await docker(env, "rmi", `${H}/fixtures/app:v1`);
      await docker(env, "load", "-i", path);
      const out = await docker(env, "run", "--rm", "--network", "none", `${H}/fixtures/app:v1`);
      assert.equal(out, fx.images.app.manifests[0].marker);
    });

    await t.step(
      "OCI index: linux/arm64 picks arm64/v8 and the loaded image reports arm64",
      async () => {
        const cwd = await workDir(env, "multi-arm64");
        const { path, stderr } = await pullOk(env, [
          `${H}/fixtures/multi`,
          "--platform",
          "linux/arm64",
          "-o",
          "multi.tar",
        ], { cwd });
        assert.match(stderr, /Found manifest for platform: linux\/arm64\/v8/);
        await docker(env, "load", "-i", path);
        const arch = await docker(
          env,
          "image",
          "inspect",
          "--format",
          "{{.Architecture}}",
          `${H}/fixtures/multi:latest`,
        );
        assert.equal(arch, "arm64");
        await assertPodmanLoads(path, `${H}/fixtures/multi:latest`);
      },
    );

    await t.step(
      "Docker manifest list: every platform, with one connection at a time",
      async () => {
        const cwd = await workDir(env, "multi-docker");
        for (const m of fx.images.multiDocker.manifests) {
          const output = `${m.platformString.replaceAll("/", "-")}.tar`;
          const { path } = await pullOk(env, [
            `${H}/fixtures/multi-docker:latest`,
            "--platform",
            m.platformString,
            "--max-concurrent-downloads",
            "1",
            "-o",
            output,
          ], { cwd });
          const manifest = JSON.parse(
            (await tarFile(path, "manifest.json")) ?? "null",
          );
          assert.equal(manifest[0].Config, `blobs/sha256/${m.config.digest.slice(7)}`);
        }
        await assertPodmanLoads(join(cwd, "linux-s390x.tar"), `${H}/fixtures/multi-docker:latest`);
      },
    );

    await t.step("arm/v7 falls back to arm/v6 only when no v7 exists, and says so", async () => {
      const cwd = await workDir(env, "armv6");
      const { path, stderr } = await pullOk(env, [
        `${H}/fixtures/armv6only`,
        "--platform",
        "linux/arm/v7",
      ], { cwd });
      assert.match(stderr, /compatible platform: linux\/arm\/v6/);
      await docker(env, "load", "-i", path);
      const variant = await docker(
        env,
        "image",
        "inspect",
        "--format",
        "{{.Architecture}}/{{.Variant}}",
        `${H}/fixtures/armv6only:latest`,
      );
      assert.equal(variant, "arm/v6");
    });

    await t.step("zstd layer is converted so Docker 20.10 loads and runs it", async () => {
      const cwd = await workDir(env, "zstd");
      const { path, stderr } = await pullOk(env, [`${H}/fixtures/zstd:v1`], { cwd });
      assert.match(stderr, /zstd-compressed; stored uncompressed/);
      await docker(env, "load", "-i", path);
      const out = await docker(env, "run", "--rm", "--network", "none", `${H}/fixtures/zstd:v1`);
      assert.equal(out, fx.images.zstd.manifests[0].marker);
      await assertPodmanLoads(path, `${H}/fixtures/zstd:v1`);
    });

    await t.step(
      "foreign layer is fetched from the registry and recorded in LayerSources",
      async () => {
        const cwd = await workDir(env, "foreign");
        const { path, stderr } = await pullOk(env, [`${H}/fixtures/foreign:v1`], { cwd });
        assert.match(stderr, /foreign layer/);
        const manifest = JSON.parse((await tarFile(path, "manifest.json"))!);
        assert.ok(manifest[0].LayerSources[fx.foreignLayer.diffId], "LayerSources names the layer");
        await docker(env, "load", "-i", path);
        await docker(env, "run", "--rm", "--network", "none", `${H}/fixtures/foreign:v1`);
      },
    );

    await t.step("pull by digest gets a valid tag and loads", async () => {
      const cwd = await workDir(env, "digest");
      const digest = fx.images.multi.manifests[0].digest;
      const { path } = await pullOk(env, [`${H}/fixtures/multi@${digest}`], { cwd });
      assert.equal(path, join(cwd, `fixtures_multi_sha256-${digest.slice(7, 19)}.tar`));
      const tag = `${H}/fixtures/multi:sha256-${digest.slice(7)}`;
      await docker(env, "load", "-i", path);
      await docker(env, "image", "inspect", tag);
      await assertPodmanLoads(path, tag);
    });

    await t.step("schema1 manifests (converted by Distribution) load and run", async () => {
      const cwd = await workDir(env, "schema1");
      const output = join(cwd, "schema1.tar");
      const result = await pull({
        reference: `${H}/fixtures/app:v1`,
        platform: "linux/amd64",
        output,
        manifestAccept: [MediaType.dockerSchema1Signed, MediaType.dockerSchema1],
        certsDirs: [],
      });
      assert.equal(result.platform, "linux/amd64");
      await docker(env, "load", "-i", output);
      const out = await docker(env, "run", "--rm", "--network", "none", `${H}/fixtures/app:v1`);
      assert.equal(out, fx.images.app.manifests[0].marker);
      await assertPodmanLoads(output, `${H}/fixtures/app:v1`);
    });

    await t.step("the old script's command forms work against the local registry", async () => {
      const cwd = await workDir(env, "seed");
      const local = `localhost:${env.http.host.split(":")[1]}`;
      const forms: [string[], string][] = [
        // Outside Docker Hub no "library/" is added (Docker's rule): nginx.tar.
        [[`${local}/nginx`], "nginx.tar"],
        [[`${local}/nginx:latest`, "-o", "b/library_nginx.tar"], "b/library_nginx.tar"],
        [["--platform", "linux/arm64", `${local}/library/nginx:1.27`], "library_nginx_1.27.tar"],
        [["--max-concurrent-downloads", "5", `${local}/nginx:1.27`, "-o", "c.tar"], "c.tar"],
        [[
          `${local}/library/nginx`,
          "--platform",
          "linux/arm64",
          "--max-concurrent-downloads",
          "5",
          "-q",
        ], "library_nginx.tar"],
      ];
      await Deno.mkdir(join(cwd, "b"));
      for (const [args, expected] of forms) {
        const { path } = await pullOk(env, args, { cwd });
        assert.equal(path, join(cwd, expected), args.join(" "));
      }
      const platforms = await imgpull([`${local}/nginx`, "--list-platforms"], {
        env: { HOME: env.home },
      });
      assert.equal(platforms.code, 0, platforms.stderr);
      assert.deepEqual(
        platforms.stdout.trim().split("\n"),
        fx.images.nginx.manifests.map((m) => `Platform: ${m.platformString}, digest: ${m.digest}`),
      );
      await assertPodmanLoads(join(cwd, "nginx.tar"), `${local}/nginx:latest`);
      await assertPodmanLoads(join(cwd, "library_nginx.tar"), `${local}/library/nginx:latest`);
    });

    await t.step(
      "TLS + Basic auth: --password-stdin with --ca-cert, and docker config.json",
      async () => {
        const B = env.basic.host;
        const cwd = await workDir(env, "basic");
        const { path } = await pullOk(env, [
          `${B}/fixtures/app:v1`,
          "--ca-cert",
          env.pki.caCertPath,
          "--username",
          USER,
          "--password-stdin",
        ], { cwd, stdin: `${PASSWORD}\n` });
        await docker(env, "load", "-i", path);
        await docker(env, "run", "--rm", "--network", "none", `${B}/fixtures/app:v1`);

        const home = join(env.root, "home-with-config");
        await Deno.mkdir(join(home, ".docker"), { recursive: true });
        const auth = btoa(`${USER}:${PASSWORD}`);
        await Deno.writeTextFile(
          join(home, ".docker", "config.json"),
          JSON.stringify({ auths: { [`https://${B}`]: { auth } } }),
        );
        const cwd2 = await workDir(env, "basic-config");
        const { path: path2 } = await pullOk(env, [
          `${B}/fixtures/multi`,
          "--platform",
          "linux/386",
          "--ca-cert",
          env.pki.caCertPath,
        ], { cwd: cwd2, env: { HOME: home } });
        await assertPodmanLoads(path2, `${B}/fixtures/multi:latest`);
      },
    );

    await t.step("TLS + token auth: one token serves every concurrent download", async () => {
      const T = env.token.host;
      const cwd = await workDir(env, "token");
      const before = env.tokenServer.requests.length;
      const { path } = await pullOk(env, [
        `${T}/fixtures/multi`,
        "--platform",
        "linux/amd64",
        "--ca-cert",
        env.pki.caCertPath,
        "--username",
        USER,
        "--password-stdin",
        "--max-concurrent-downloads",
        "3",
      ], { cwd, stdin: PASSWORD });
      const requests = env.tokenServer.requests.slice(before);
      assert.equal(requests.length, 1, "one token for the whole pull");
      assert.equal(requests[0].username, USER);
      assert.deepEqual(requests[0].scopes, ["repository:fixtures/multi:pull"]);
      assert.equal(requests[0].service, SERVICE);
      await docker(env, "load", "-i", path);
      await docker(env, "run", "--rm", "--network", "none", `${T}/fixtures/multi:latest`);

      // docker login with an identity provider stores a refresh token instead of a password.
      const home = join(env.root, "home-identitytoken");
      await Deno.mkdir(join(home, ".docker"), { recursive: true });
      await Deno.writeTextFile(
        join(home, ".docker", "config.json"),
        JSON.stringify({ auths: { [T]: { identitytoken: REFRESH_TOKEN } } }),
      );
      const seen = env.tokenServer.requests.length;
      const cwd2 = await workDir(env, "token-refresh");
      await pullOk(env, [`${T}/fixtures/app:v1`, "--ca-cert", env.pki.caCertPath, "--no-cache"], {
        cwd: cwd2,
        env: { HOME: home },
      });
      const refresh = env.tokenServer.requests.slice(seen);
      assert.deepEqual(refresh.map((r) => [r.method, r.grantType]), [["POST", "refresh_token"]]);
    });

    await t.step("blob redirect to a CDN never carries Authorization", async () => {
      const cdn = await startBlobCdn(env.http.storageDir, { pki: env.pki });
      const redirecting = await startRegistry({
        mode: "token",
        storageDir: env.http.storageDir,
        pki: env.pki,
        token: { realm: env.tokenServer.url, service: SERVICE, issuer: ISSUER },
        redirectBlobsTo: cdn.url,
      });
      try {
        const cwd = await workDir(env, "redirect");
        const { path } = await pullOk(env, [
          "--no-cache",
          `${redirecting.host}/fixtures/app:v1`,
          "--ca-cert",
          env.pki.caCertPath,
          "--username",
          USER,
          "--password-stdin",
        ], { cwd, stdin: PASSWORD });
        const blobRequests = cdn.requests.filter((r) => r.method === "GET");
        assert.ok(blobRequests.length >= 3, `CDN served ${blobRequests.length} blobs`);
        assert.ok(blobRequests.every((r) => !r.hadAuthorization), "no Authorization to the CDN");
        assert.ok(blobRequests.every((r) => r.status === 200));
        await assertPodmanLoads(path, `${redirecting.host}/fixtures/app:v1`);
      } finally {
        await redirecting.close();
        await cdn.close();
      }
    });

    await t.step("error paths: exit code, one clear line, nothing left behind", async () => {
      const B = env.basic.host;
      const T = env.token.host;
      const ca = ["--ca-cert", env.pki.caCertPath];
      await pullFails(env, "e-tag", [`${H}/fixtures/app:nope`], 4, /\[-\] .*not found/);
      await pullFails(env, "e-repo", [`${H}/fixtures/nothing-here`], 4, /\[-\] .*not found/);
      await pullFails(env, "e-ref", [`${H}/Fixtures/App`], 2, /invalid reference.*lowercase/);
      await pullFails(env, "e-ref2", ["a//b"], 2, /invalid reference/);
      await pullFails(
        env,
        "e-plat",
        [`${H}/fixtures/app:v1`, "--platform", "linux/arm64/v8/extra"],
        2,
        /invalid platform/,
      );
      const notFound = await pullFails(
        env,
        "e-plat-missing",
        [`${H}/fixtures/multi`, "--platform", "linux/mips64le"],
        1,
        /\[-\] No manifest found for platform: linux\/mips64le/,
      );
      assert.match(
        notFound,
        /\[\+\] Available platforms:\n {2}- linux\/amd64\n {2}- linux\/arm64\/v8\n/,
      );
      assert.doesNotMatch(notFound, /unknown\/unknown/, "attestations are not platforms");
      await pullFails(
        env,
        "e-mismatch",
        [`${H}/fixtures/arm64-single:v1`, "--platform", "linux/amd64"],
        1,
        /\[-\] Platform mismatch: requested linux\/amd64, but image only supports linux\/arm64/,
      );
      await pullFails(
        env,
        "e-basic-none",
        [`${B}/fixtures/app:v1`, ...ca],
        3,
        /requires authentication/,
      );
      await pullFails(
        env,
        "e-basic-bad",
        [`${B}/fixtures/app:v1`, ...ca, "--username", USER, "--password", "wrong"],
        3,
        /\[-\] unauthorized/,
      );
      await pullFails(
        env,
        "e-token-bad",
        [`${T}/fixtures/app:v1`, ...ca, "--username", USER, "--password", "wrong"],
        3,
        /authentication to .* failed: credentials were rejected/,
      );
      await pullFails(env, "e-untrusted", [`${B}/fixtures/app:v1`], 6, /\[-\] cannot reach/);
      await pullFails(
        env,
        "e-usage",
        [`${H}/fixtures/app:v1`, "--max-concurrent-downloads", "0"],
        2,
        /at least 1/,
      );
      await pullFails(env, "e-nofile", ["--bogus"], 2, /Unknown option/i);
    });

    await t.step("existing destination survives a failed pull", async () => {
      const cwd = await workDir(env, "keep");
      await Deno.writeTextFile(join(cwd, "keep.tar"), "precious");
      const r = await imgpull([`${H}/fixtures/app:nope`, "-o", "keep.tar"], {
        cwd,
        env: { HOME: env.home },
      });
      assert.equal(r.code, 4);
      assert.equal(await Deno.readTextFile(join(cwd, "keep.tar")), "precious");
      assert.deepEqual(await listDir(cwd), ["keep.tar"]);
      await Deno.mkdir(join(cwd, "dir.tar"));
      const d = await imgpull([`${H}/fixtures/app:v1`, "-o", "dir.tar"], {
        cwd,
        env: { HOME: env.home },
      });
      assert.equal(d.code, 7, d.stderr);
      assert.match(d.stderr, /is a directory/);
    });
  } finally {
    await env.close();
  }
});

/** Reads one member of a tar with GNU tar. */
async function tarFile(archive: string, member: string): Promise<string | undefined> {
  const out = await new Deno.Command("tar", { args: ["-xOf", archive, member] }).output();
  return out.code === 0 ? new TextDecoder().decode(out.stdout) : undefined;
}
