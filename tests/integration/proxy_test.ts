/**
 * Pulls through a real HTTP proxy (tinyproxy) from real Distribution registries, through the
 * CLI: with and without the proxy's Basic authentication. Success must go through the proxy
 * (its log shows the requests); a 407, a refused tunnel or a dead proxy must end in one clean
 * `[-]` line naming the proxy, without its credentials.
 *
 * Deno itself routes requests by HTTP_PROXY/HTTPS_PROXY/ALL_PROXY/NO_PROXY (loopback included);
 * imgpull reads the same variables only to name the proxy in errors, which needs them in
 * `--allow-env` ({@link PROXY_PERMISSIONS}).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { PROXY_ENV_NAMES } from "../../lib/transport.ts";
import { PERMISSIONS } from "../helpers/cli.ts";
import { buildImage, type TestImage } from "../helpers/hostile_image.ts";
import { freePort } from "../helpers/ports.ts";
import { pushBlob, pushManifest } from "../helpers/push.ts";
import { type RunningRegistry, startRegistry } from "../helpers/registry.ts";
import { startTinyproxy, type Tinyproxy } from "../helpers/tinyproxy.ts";
import { generateTestPki, type TestPki } from "../helpers/tls.ts";
import { spawnImgpull } from "../helpers/hostile_runner.ts";

/** The documented permissions (they include the proxy variables, so errors can name them). */
const PROXY_PERMISSIONS: string[] = [...PERMISSIONS];

/** The documented permissions minus the proxy variables: errors cannot name the proxy then. */
const WITHOUT_PROXY_ENV: string[] = PERMISSIONS.map((p) => {
  if (!p.startsWith("--allow-env=")) return p;
  const proxyNames: readonly string[] = PROXY_ENV_NAMES;
  const names = p.slice("--allow-env=".length).split(",").filter((n) => !proxyNames.includes(n));
  return `--allow-env=${names.join(",")}`;
});

const USERS = { dana: `registry-pw-${crypto.randomUUID()}` };
const PROXY_USER = "proxyuser";
const PROXY_PASSWORD = `proxy-pw-${crypto.randomUUID().slice(0, 8)}`;

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
  /** The `[-]` lines other than hints. */
  errors: string[];
}

/** Runs `imgpull ARGS` with exactly `env` (no inherited proxy settings). */
async function imgpull(
  args: string[],
  env: Record<string, string>,
  options: { permissions?: string[]; stdin?: string; home: string },
): Promise<Outcome> {
  const { code, stdout, stderr } = await spawnImgpull(args, {
    cwd: options.home,
    env: { HOME: options.home, ...env },
    stdin: options.stdin,
    permissions: options.permissions ?? PROXY_PERMISSIONS,
  });
  return {
    code,
    stdout,
    stderr,
    errors: stderr.split("\n").filter((l) => l.startsWith("[-] ") && !l.startsWith("[-] Hint:")),
  };
}

/** One attempt, no cache: every pull goes through the proxy and fails at once. */
const ONCE = ["--platform", "linux/amd64", "--no-cache", "--retries", "0"];

async function pushImage(registry: RunningRegistry, image: TestImage): Promise<void> {
  for (const bytes of image.blobs.values()) {
    await pushBlob(registry.url, image.repository, bytes);
  }
  const manifest = image.manifests.get(`${image.repository}:${image.tag}`)!;
  await pushManifest(registry.url, image.repository, image.tag, manifest.bytes, manifest.mediaType);
}

/** Asserts one clean `[-]` line matching `pattern`, no stack trace, no proxy password. */
function assertCleanError(outcome: Outcome, code: number, pattern: RegExp): void {
  const context = `stderr:\n${outcome.stderr}`;
  assert.equal(outcome.code, code, context);
  assert.equal(outcome.errors.length, 1, context);
  assert.match(outcome.errors[0], pattern, context);
  assert.doesNotMatch(outcome.stderr, /^\s+at\s|Unexpected error/m, context);
  assert.ok(!outcome.stderr.includes(PROXY_PASSWORD), `proxy password printed: ${context}`);
  assert.ok(!outcome.stderr.includes(btoa(`${PROXY_USER}:${PROXY_PASSWORD}`)), context);
}

Deno.test("proxy: pulls through tinyproxy; 407, refused tunnels and dead proxies name the proxy", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "imgpull-proxy-" });
  const closers: (() => Promise<void>)[] = [];
  try {
    const pki: TestPki = await generateTestPki(join(root, "pki"));
    const storageDir = join(root, "storage");
    const home = join(root, "home");
    await Deno.mkdir(home);
    const [http, basic, open, guarded] = await Promise.all([
      startRegistry({ mode: "http", storageDir }),
      startRegistry({ mode: "basic", storageDir, pki, users: USERS }),
      startTinyproxy(),
      startTinyproxy({ basicAuth: { user: PROXY_USER, password: PROXY_PASSWORD } }),
    ]);
    closers.push(http.close, basic.close, open.close, guarded.close);
    const image = buildImage({ repository: "proxied/app", tag: "v1" });
    await pushImage(http, image);
    const deadPort = await freePort();
    const dead = `http://127.0.0.1:${deadPort}`;

    let n = 0;
    const pullHttp = (env: Record<string, string>, permissions?: string[]) =>
      imgpull(
        [
          `${http.host}/proxied/app:v1`,
          ...ONCE,
          "-o",
          join(root, `http-${n++}.tar`),
        ],
        env,
        { home, permissions },
      );
    const pullTls = (env: Record<string, string>) =>
      imgpull(
        [
          `${basic.host}/proxied/app:v1`,
          ...ONCE,
          "--ca-cert",
          pki.caCertPath,
          "--username",
          "dana",
          "--password-stdin",
          "-o",
          join(root, `tls-${n++}.tar`),
        ],
        env,
        { home, stdin: USERS.dana },
      );
    const through = (proxy: string) => ({ HTTP_PROXY: proxy, HTTPS_PROXY: proxy });
    const newRequests = (proxy: Tinyproxy, since: number) => proxy.requests().slice(since);

    await t.step("an open proxy carries plain-HTTP and HTTPS (CONNECT) pulls", async () => {
      const before = open.requests().length;
      const plain = await pullHttp(through(open.url));
      assert.equal(plain.code, 0, plain.stderr);
      const seen = newRequests(open, before);
      assert.ok(
        seen.some((r) => r.startsWith(`GET http://${http.host}/v2/proxied/app/blobs/`)),
        `tinyproxy saw no blob GET: ${JSON.stringify(seen)}`,
      );
      const mid = open.requests().length;
      const tls = await pullTls(through(open.url));
      assert.equal(tls.code, 0, tls.stderr);
      assert.ok(
        newRequests(open, mid).some((r) => r.startsWith(`CONNECT ${basic.host} `)),
        `tinyproxy saw no CONNECT: ${JSON.stringify(newRequests(open, mid))}`,
      );
    });

    await t.step("lower-case http_proxy is honoured too", async () => {
      const before = open.requests().length;
      const plain = await pullHttp({ http_proxy: open.url, https_proxy: open.url });
      assert.equal(plain.code, 0, plain.stderr);
      assert.ok(newRequests(open, before).length > 0, "tinyproxy saw nothing");
    });

    await t.step("a proxy with Basic auth works with the credentials in its URL", async () => {
      const before = guarded.requests().length;
      const plain = await pullHttp(through(guarded.urlWithCredentials));
      assert.equal(plain.code, 0, plain.stderr);
      const tls = await pullTls(through(guarded.urlWithCredentials));
      assert.equal(tls.code, 0, tls.stderr);
      assert.ok(newRequests(guarded, before).some((r) => r.startsWith("CONNECT ")));
      assert.ok(!`${plain.stderr}${tls.stderr}`.includes(PROXY_PASSWORD));
    });

    const guardedName = new RegExp(`proxy http://127\\.0\\.0\\.1:${guarded.port}\\b`);
    await t.step(
      "without credentials: 407 → exit 3 naming the proxy (HTTP and CONNECT)",
      async () => {
        const plain = await pullHttp(through(guarded.url));
        assertCleanError(plain, 3, guardedName);
        assert.match(plain.errors[0], /407/);
        const tls = await pullTls(through(guarded.url));
        assertCleanError(tls, 3, guardedName);
        assert.match(tls.errors[0], /407/);
        assert.match(tls.stderr, /Hint: .*USER:PASSWORD@/);
      },
    );

    await t.step("wrong proxy credentials: exit 3, the password is not printed", async () => {
      const wrong = `http://${PROXY_USER}:${PROXY_PASSWORD}x@127.0.0.1:${guarded.port}`;
      const tls = await pullTls(through(wrong));
      assertCleanError(tls, 3, guardedName);
      assert.match(tls.errors[0], /refused the credentials/);
    });

    await t.step("a dead proxy: exit 6 naming it (without its credentials)", async () => {
      const plain = await pullHttp(
        through(`http://someone:${PROXY_PASSWORD}@127.0.0.1:${deadPort}`),
      );
      assertCleanError(plain, 6, new RegExp(`cannot reach proxy ${dead}`));
      const tls = await pullTls(through(dead));
      assertCleanError(tls, 6, new RegExp(`cannot reach proxy ${dead}`));
      const all = await pullHttp({ ALL_PROXY: dead });
      assertCleanError(all, 6, new RegExp(`cannot reach proxy ${dead}`));
    });

    await t.step("NO_PROXY bypasses a dead proxy for the registry", async () => {
      const plain = await pullHttp({ ...through(dead), NO_PROXY: "localhost,127.0.0.0/8" });
      assert.equal(plain.code, 0, plain.stderr);
    });

    await t.step("a refused tunnel (proxy cannot reach the registry) names the proxy", async () => {
      const closedPort = await freePort();
      const outcome = await imgpull(
        [
          `127.0.0.1:${closedPort}/proxied/app:v1`,
          ...ONCE,
          "-o",
          join(root, "refused.tar"),
        ],
        through(open.url),
        { home },
      );
      assertCleanError(outcome, 6, new RegExp(`proxy ${open.url}`));
      assert.doesNotMatch(outcome.stderr, /Unexpected/);
    });

    await t.step(
      "without --allow-env for the proxy variables a dead proxy is still a clean exit 6",
      async () => {
        const plain = await pullHttp(through(dead), WITHOUT_PROXY_ENV);
        assertCleanError(plain, 6, /cannot reach/);
      },
    );
  } finally {
    for (const close of closers.reverse()) await close().catch(() => {});
    await Deno.remove(root, { recursive: true });
  }
});
