/**
 * Reliability scenarios against real CNCF Distribution: a token that expires mid-pull, and no
 * secret (password, Basic header, refresh token) printed with --verbose, with good, wrong or
 * hostile token servers.
 * @module
 */
import { join } from "node:path";
import { type FaultRegistry, serveBytes, startFaultRegistry } from "../fault_registry.ts";
import { buildImage, expectedArchive, KiB, type TestImage } from "../hostile_image.ts";
import type { PullOutcome, Scenario, Services } from "../hostile_runner.ts";
import { expect, fault, pathOf } from "./kit.ts";
import { freePort } from "../ports.ts";
import { pushBlob, pushManifest } from "../push.ts";
import { type RunningRegistry, startRegistry } from "../registry.ts";
import { startTokenServer, type TokenServer } from "../token_server.ts";
import type { TestPki } from "../tls.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [
  { id: "token-expiry", title: "token expires mid-pull" },
  { id: "secrets-token", title: "secrets: token auth (Distribution), --verbose" },
  { id: "secrets-basic", title: "secrets: Basic auth (Distribution), --verbose" },
  { id: "secrets-failing-token-server", title: "secrets: failing or hostile token server" },
];

/**
 * Tokens that the registry accepts for 700 ms although they claim 300 s (so imgpull does not
 * renew them early), and blobs that take 300 ms each: the token expires during the pull, the
 * registry answers 401 with a fresh challenge, and a new token must be fetched.
 */
const reactiveExpiry: Scenario = fault({
  id: "token-expires-at-registry",
  cls: "token-expiry",
  title: "the registry rejects a token 700 ms after issuing it: a new one is fetched",
  code: 0,
}, () => {
  const issuedAt = new Map<string, number>();
  return {
    imageOptions: { layers: [100 * KiB, 80 * KiB, 60 * KiB] },
    handler: () => (req, ctx) => {
      const path = pathOf(req);
      if (path === "/token") {
        const token = `short-lived-${issuedAt.size + 1}-${crypto.randomUUID()}`;
        issuedAt.set(token, performance.now());
        return Response.json({ token, expires_in: 300 });
      }
      const token = req.headers.get("authorization")?.replace(/^Bearer /, "") ?? "";
      const issued = issuedAt.get(token);
      if (issued === undefined || performance.now() - issued > 700) {
        const origin = new URL(req.url).origin;
        return new Response(
          JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "token expired" }] }),
          {
            status: 401,
            headers: { "www-authenticate": `Bearer realm="${origin}/token",service="fault"` },
          },
        );
      }
      if (!path.includes("/blobs/") || !ctx.bytes) return undefined;
      const bytes = ctx.bytes;
      return new Promise((resolve) => setTimeout(() => resolve(serveBytes(bytes, ctx.range)), 300));
    },
    args: ["--max-concurrent-downloads", "1"],
    check: () => expect(issuedAt.size >= 2, `only ${issuedAt.size} token(s) issued`),
  };
});

/** Real Distribution registries sharing one storage, and their token servers. */
export interface Distribution {
  pki: TestPki;
  user: string;
  password: string;
  refreshToken: string;
  image: TestImage;
  basic: RunningRegistry;
  token: RunningRegistry;
  tokenServer: TokenServer;
  expiring: RunningRegistry;
  expiringTokens: TokenServer;
  failing: RunningRegistry;
  failingTokens: FaultRegistry;
  tokenDown: RunningRegistry;
  close(): Promise<void>;
}

/** The hostile token server behind `failing`: behaviour chosen by the user name. */
function failingTokenHandler(req: Request): Response {
  const auth = req.headers.get("authorization") ?? "";
  let user = "", password = "";
  if (auth.startsWith("Basic ")) {
    const decoded = atob(auth.slice(6));
    user = decoded.slice(0, decoded.indexOf(":"));
    password = decoded.slice(decoded.indexOf(":") + 1);
  }
  const echo = `rejected ${auth} for ${user} with password ${password}`;
  switch (user) {
    case "echo401":
      return Response.json({ errors: [{ code: "UNAUTHORIZED", message: echo }] }, { status: 401 });
    case "echo500":
      return Response.json({ errors: [{ code: "UNKNOWN", message: echo }] }, { status: 500 });
    case "garbage":
      return new Response(`<html>${echo}</html>`);
    default:
      return Response.json({ errors: [{ code: "UNAVAILABLE", message: "backend down" }] }, {
        status: 500,
      });
  }
}

/** Starts Basic and token-mode Distribution registries and pushes a small image to them. */
export async function startDistribution(services: Services): Promise<Distribution> {
  const pki = await services.pki();
  const root = join(await services.root(), `dist-${crypto.randomUUID().slice(0, 8)}`);
  const storageDir = join(root, "storage");
  const user = "imgpull-tester";
  const password = `Sekr1t-${crypto.randomUUID()}`;
  const refreshToken = `refresh-${crypto.randomUUID()}`;
  const users = { [user]: password };
  const closers: (() => Promise<void>)[] = [];
  const close = async () => {
    for (const c of closers.reverse()) await c().catch(() => {});
  };
  try {
    const tokenServer = await startTokenServer({
      pki,
      service: "imgpull-test-registry",
      issuer: "imgpull-test-issuer",
      users,
      refreshToken,
    });
    closers.push(tokenServer.close);
    const expiringTokens = await startTokenServer({
      pki,
      service: "imgpull-expiring",
      issuer: "imgpull-expiring-issuer",
      expiresIn: 1,
    });
    closers.push(expiringTokens.close);
    const failingTokens = startFaultRegistry({
      tls: { cert: pki.serverCertPem, key: pki.serverKeyPem },
      quiet: true,
      fault: failingTokenHandler,
    });
    closers.push(failingTokens.close);
    const closedPort = await freePort();
    const starts = [
      startRegistry({ mode: "basic", storageDir, pki, users }),
      startRegistry({
        mode: "token",
        storageDir,
        pki,
        token: {
          realm: tokenServer.url,
          service: "imgpull-test-registry",
          issuer: "imgpull-test-issuer",
        },
      }),
      startRegistry({
        mode: "token",
        storageDir,
        pki,
        token: {
          realm: expiringTokens.url,
          service: "imgpull-expiring",
          issuer: "imgpull-expiring-issuer",
        },
      }),
      startRegistry({
        mode: "token",
        storageDir,
        pki,
        token: { realm: `${failingTokens.url}/token`, service: "failing", issuer: "failing" },
      }),
      startRegistry({
        mode: "token",
        storageDir,
        pki,
        token: { realm: `https://127.0.0.1:${closedPort}/token`, service: "down", issuer: "down" },
      }),
    ];
    const settled = await Promise.allSettled(starts);
    for (const s of settled) if (s.status === "fulfilled") closers.push(s.value.close);
    const failed = settled.find((s) => s.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    const [basic, token, expiring, failing, tokenDown] = settled.map((s) =>
      (s as PromiseFulfilledResult<RunningRegistry>).value
    );
    const image = buildImage({ repository: "test/img", layers: [300 * KiB, 40 * KiB] });
    const client = Deno.createHttpClient({ caCerts: [pki.caCertPem] });
    try {
      const opts = { client, headers: { Authorization: `Basic ${btoa(`${user}:${password}`)}` } };
      for (const b of [image.config, ...image.layers]) {
        await pushBlob(basic.url, image.repository, b.bytes, opts);
      }
      await pushManifest(
        basic.url,
        image.repository,
        image.tag,
        image.manifest.bytes,
        image.manifest.mediaType,
        opts,
      );
    } finally {
      client.close();
    }
    return {
      pki,
      user,
      password,
      refreshToken,
      image,
      basic,
      token,
      tokenServer,
      expiring,
      expiringTokens,
      failing,
      failingTokens,
      tokenDown,
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

interface DistributionSetup {
  registry: (d: Distribution) => RunningRegistry;
  user?: string;
  password?: string;
  passwordFlag?: boolean;
  args?: string[];
  dockerConfig?: (d: Distribution, registry: RunningRegistry) => unknown;
  check?: (d: Distribution, outcome: PullOutcome, mark: number) => string[];
  /** Where the check's `mark` is taken before the pull. */
  mark?: (d: Distribution) => number;
}

/** A pull from one of the Distribution registries, with --verbose unless said otherwise. */
function distribution(base: Omit<Scenario, "prepare">, s: DistributionSetup): Scenario {
  return {
    verbose: true,
    ...base,
    async prepare(dirs, services) {
      const d = await services.shared("distribution", () => startDistribution(services));
      const registry = s.registry(d);
      const password = s.password ?? d.password;
      const user = s.user ?? d.user;
      const args = ["--ca-cert", d.pki.caCertPath, ...(s.args ?? [])];
      if (s.user !== undefined || s.password !== undefined || s.passwordFlag !== undefined) {
        args.push("--username", user);
        if (s.passwordFlag) args.push("--password", password);
        else args.push("--password-stdin");
      }
      if (s.dockerConfig) {
        await Deno.mkdir(join(dirs.home, ".docker"));
        await Deno.writeTextFile(
          join(dirs.home, ".docker", "config.json"),
          JSON.stringify(s.dockerConfig(d, registry)),
        );
      }
      const mark = s.mark?.(d) ?? 0;
      return {
        ref: `${registry.host}/${d.image.repository}:${d.image.tag}`,
        args,
        stdin: args.includes("--password-stdin") ? password : undefined,
        expected: expectedArchive(d.image),
        secrets: [
          password,
          d.password,
          btoa(`${user}:${password}`),
          btoa(`${d.user}:${d.password}`),
          d.refreshToken,
        ],
        check: s.check ? (outcome) => s.check!(d, outcome, mark) : undefined,
      };
    },
  };
}

const WRONG = `Wr0ng-${crypto.randomUUID()}`;

const secretsToken: Scenario[] = [
  distribution({
    id: "token-good-credentials",
    cls: "secrets-token",
    title: "token auth with --password-stdin, --verbose: completes, no secret printed",
    code: 0,
  }, { registry: (d) => d.token, password: undefined, user: "imgpull-tester" }),
  distribution({
    id: "token-password-flag",
    cls: "secrets-token",
    title: "--password on the command line: warns to use --password-stdin, no secret printed",
    code: 0,
  }, {
    registry: (d) => d.token,
    user: "imgpull-tester",
    passwordFlag: true,
    check: (_d, outcome) =>
      expect(/Warning.*--password-stdin/.test(outcome.stderr), "no --password-stdin warning"),
  }),
  distribution({
    id: "token-bad-password",
    cls: "secrets-token",
    title: "token auth with a wrong password: exit 3, neither password printed",
    code: 3,
    message: /authentication|rejected|unauthorized/,
  }, { registry: (d) => d.token, user: "imgpull-tester", password: WRONG }),
  distribution({
    id: "token-identitytoken",
    cls: "secrets-token",
    title: "identitytoken from docker config (refresh grant): completes, token not printed",
    code: 0,
  }, {
    registry: (d) => d.token,
    dockerConfig: (d, r) => ({ auths: { [r.host]: { identitytoken: d.refreshToken } } }),
    mark: (d) => d.tokenServer.requests.length,
    check: (d, _outcome, mark) =>
      expect(
        d.tokenServer.requests.slice(mark).some((r) => r.grantType === "refresh_token"),
        "the refresh token was not used",
      ),
  }),
];

const secretsBasic: Scenario[] = [
  distribution({
    id: "basic-good-credentials",
    cls: "secrets-basic",
    title: "Basic auth over TLS, --verbose: completes, no secret printed",
    code: 0,
  }, { registry: (d) => d.basic, user: "imgpull-tester" }),
  distribution({
    id: "basic-bad-password",
    cls: "secrets-basic",
    title: "Basic auth with a wrong password: exit 3, no secret printed",
    code: 3,
    message: /unauthorized|authentication/,
  }, { registry: (d) => d.basic, user: "imgpull-tester", password: WRONG }),
  distribution({
    id: "basic-no-credentials",
    cls: "secrets-basic",
    title: "Basic auth without credentials: exit 3 with a login hint",
    code: 3,
    message: /authentication[\s\S]*Hint/,
  }, { registry: (d) => d.basic }),
];

const secretsFailing: Scenario[] = [
  distribution({
    id: "token-server-500",
    cls: "secrets-failing-token-server",
    title: "the token server fails with 500: exit 6, no secret printed",
    code: 6,
    message: /500|token/,
  }, { registry: (d) => d.failing, user: "someone", password: WRONG, args: ["--retries", "1"] }),
  distribution({
    id: "token-server-down",
    cls: "secrets-failing-token-server",
    title: "the token server is down (connection refused): exit 6",
    code: 6,
    message: /cannot reach|token/,
  }, { registry: (d) => d.tokenDown, user: "someone", password: WRONG, args: ["--retries", "1"] }),
  distribution({
    id: "token-server-echo-401",
    cls: "secrets-failing-token-server",
    title: "the token server rejects and echoes the credentials: exit 3, nothing echoed printed",
    code: 3,
    message: /authentication|rejected/,
  }, { registry: (d) => d.failing, user: "echo401", password: WRONG }),
  distribution({
    id: "token-server-echo-500",
    cls: "secrets-failing-token-server",
    title: "the token server fails with 500 and echoes the credentials: nothing echoed printed",
    code: 6,
    message: /500|token/,
  }, { registry: (d) => d.failing, user: "echo500", password: WRONG, args: ["--retries", "0"] }),
  distribution({
    id: "token-server-echo-500-quiet",
    cls: "secrets-failing-token-server",
    title: "the same without --verbose: nothing echoed printed",
    code: 6,
    message: /500|token/,
    verbose: false,
  }, { registry: (d) => d.failing, user: "echo500", password: WRONG, args: ["--retries", "0"] }),
  distribution({
    id: "token-server-garbage",
    cls: "secrets-failing-token-server",
    title: "the token server answers HTML that echoes the credentials: exit 8, nothing printed",
    code: 8,
    message: /token/,
  }, { registry: (d) => d.failing, user: "garbage", password: WRONG }),
];

const distributionExpiry: Scenario = distribution({
  id: "token-lifetime-1s",
  cls: "token-expiry",
  title: "Distribution with 1 s tokens: renewed during the pull, completes",
  code: 0,
}, {
  registry: (d) => d.expiring,
  mark: (d) => d.expiringTokens.requests.length,
  check: (d, _outcome, mark) => {
    const n = d.expiringTokens.requests.length - mark;
    return expect(n >= 2, `${n} token requests: never renewed`);
  },
});

/** Every scenario of this family, in class order. */
export const SCENARIOS: Scenario[] = [
  reactiveExpiry,
  distributionExpiry,
  ...secretsToken,
  ...secretsBasic,
  ...secretsFailing,
];
