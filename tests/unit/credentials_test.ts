import assert from "node:assert/strict";
import { join } from "node:path";
import {
  type Credential,
  type CredentialLookupOptions,
  dockerConfigDir,
  lookupCredential,
} from "../../lib/auth/credentials.ts";
import { AuthError, LocalIoError, UsageError } from "../../lib/errors.ts";

type HelperCall = { helper: string; serverUrl: string };
type HelperAnswer = { code: number; stdout: string; stderr: string };

const b64 = (text: string) => btoa(text);

function envOf(vars: Record<string, string>): CredentialLookupOptions["env"] {
  return { get: (name) => vars[name] };
}

/** A temp dir holding `config.json` with `config` (a string is written verbatim). */
async function withConfig(
  config: unknown,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "imgpull-cred-" });
  try {
    if (config !== undefined) {
      const text = typeof config === "string" ? config : JSON.stringify(config);
      await Deno.writeTextFile(join(dir, "config.json"), text);
    }
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Looks up `registry` with DOCKER_CONFIG=dir and a fake helper runner. */
async function lookup(
  dir: string,
  registry: string,
  answers: Record<string, HelperAnswer | Error> = {},
  calls: HelperCall[] = [],
): Promise<Credential | undefined> {
  return await lookupCredential(registry, {
    env: envOf({ DOCKER_CONFIG: dir }),
    runHelper: (helper, serverUrl) => {
      calls.push({ helper, serverUrl });
      const answer = answers[helper];
      if (answer === undefined) return Promise.reject(new Deno.errors.NotFound("no such helper"));
      if (answer instanceof Error) return Promise.reject(answer);
      return Promise.resolve(answer);
    },
  });
}

const ok = (username: string, secret: string): HelperAnswer => ({
  code: 0,
  stdout: JSON.stringify({ ServerURL: "x", Username: username, Secret: secret }),
  stderr: "",
});

Deno.test("dockerConfigDir: DOCKER_CONFIG wins over HOME", () => {
  assert.equal(dockerConfigDir(envOf({ DOCKER_CONFIG: "/cfg", HOME: "/home/u" })), "/cfg");
  assert.equal(dockerConfigDir(envOf({ HOME: "/home/u" })), join("/home/u", ".docker"));
  assert.equal(dockerConfigDir(envOf({})), undefined);
});

Deno.test("lookupCredential: DOCKER_CONFIG overrides HOME/.docker", async () => {
  await withConfig({ auths: { "docker.io": { auth: b64("fromenv:pw") } } }, async (cfg) => {
    await withConfig(undefined, async (home) => {
      await Deno.mkdir(join(home, ".docker"));
      const homeConfig = { auths: { "docker.io": { auth: b64("fromhome:pw") } } };
      await Deno.writeTextFile(join(home, ".docker", "config.json"), JSON.stringify(homeConfig));
      const viaHome = await lookupCredential("docker.io", { env: envOf({ HOME: home }) });
      assert.equal(viaHome?.username, "fromhome");
      const viaEnv = await lookupCredential("docker.io", {
        env: envOf({ HOME: home, DOCKER_CONFIG: cfg }),
      });
      assert.equal(viaEnv?.username, "fromenv");
    });
  });
});

Deno.test("lookupCredential: missing config, missing dir, empty file → undefined", async () => {
  await withConfig(undefined, async (dir) => {
    assert.equal(await lookup(dir, "docker.io"), undefined);
  });
  assert.equal(await lookupCredential("docker.io", { env: envOf({}) }), undefined);
  await withConfig("  \n", async (dir) => {
    assert.equal(await lookup(dir, "docker.io"), undefined);
  });
  await withConfig({ auths: {} }, async (dir) => {
    assert.equal(await lookup(dir, "docker.io"), undefined);
  });
});

Deno.test("lookupCredential: injected readFile is used", async () => {
  const read: string[] = [];
  const found = await lookupCredential("ghcr.io", {
    env: envOf({ HOME: "/nowhere" }),
    readFile: (path) => {
      read.push(path);
      return Promise.resolve(JSON.stringify({ auths: { "ghcr.io": { auth: b64("a:b") } } }));
    },
  });
  assert.deepEqual(read, [join("/nowhere", ".docker", "config.json")]);
  assert.deepEqual(found, { username: "a", password: "b", source: "config.json auths" });
});

Deno.test("lookupCredential: every Docker Hub key variant matches docker.io", async () => {
  const keys = [
    "https://index.docker.io/v1/",
    "https://index.docker.io/v1",
    "http://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "https://docker.io",
    "registry-1.docker.io",
    "https://registry-1.docker.io/v2/",
  ];
  for (const key of keys) {
    await withConfig({ auths: { [key]: { auth: b64("hubuser:hubpw") } } }, async (dir) => {
      for (const registry of ["docker.io", "index.docker.io"]) {
        assert.deepEqual(
          await lookup(dir, registry),
          { username: "hubuser", password: "hubpw", source: "config.json auths" },
          `${key} for ${registry}`,
        );
      }
      assert.equal(await lookup(dir, "ghcr.io"), undefined, key);
    });
  }
});

Deno.test("lookupCredential: the canonical Hub key wins over aliases", async () => {
  const config = {
    auths: {
      "docker.io": { auth: b64("alias:pw") },
      "https://index.docker.io/v1/": { auth: b64("canonical:pw") },
    },
  };
  await withConfig(config, async (dir) => {
    assert.equal((await lookup(dir, "docker.io"))?.username, "canonical");
  });
});

Deno.test("lookupCredential: host:port keys with scheme and path prefixes", async () => {
  const keys = [
    "reg.example.com:5000",
    "https://reg.example.com:5000",
    "http://reg.example.com:5000",
    "https://reg.example.com:5000/v1/",
    "https://reg.example.com:5000/v2/",
    "HTTPS://Reg.Example.com:5000/v2/",
  ];
  for (const key of keys) {
    await withConfig({ auths: { [key]: { auth: b64("u:p") } } }, async (dir) => {
      assert.equal((await lookup(dir, "reg.example.com:5000"))?.username, "u", key);
      // The port is part of the identity; Hub entries do not leak to other hosts.
      assert.equal(await lookup(dir, "reg.example.com"), undefined, key);
      assert.equal(await lookup(dir, "reg.example.com:5001"), undefined, key);
      assert.equal(await lookup(dir, "docker.io"), undefined, key);
    });
  }
});

Deno.test("lookupCredential: auth may hold colons in the password", async () => {
  await withConfig({ auths: { "ghcr.io": { auth: b64("me:pa:ss:wo:rd") } } }, async (dir) => {
    assert.deepEqual(await lookup(dir, "ghcr.io"), {
      username: "me",
      password: "pa:ss:wo:rd",
      source: "config.json auths",
    });
  });
});

Deno.test("lookupCredential: username/password fields and identitytoken", async () => {
  const config = {
    auths: {
      "plain.example": { username: "pu", password: "pp" },
      "token.example": { auth: b64("tu:"), identitytoken: "refresh-123" },
      "tokenonly.example": { identitytoken: "refresh-456" },
      "empty.example": {},
      "email.example": { email: "x@example.com" },
    },
  };
  await withConfig(config, async (dir) => {
    assert.deepEqual(await lookup(dir, "plain.example"), {
      username: "pu",
      password: "pp",
      source: "config.json auths",
    });
    assert.deepEqual(await lookup(dir, "token.example"), {
      username: "tu",
      password: "",
      identityToken: "refresh-123",
      source: "config.json auths",
    });
    assert.deepEqual(await lookup(dir, "tokenonly.example"), {
      identityToken: "refresh-456",
      source: "config.json auths",
    });
    assert.equal(await lookup(dir, "empty.example"), undefined);
    assert.equal(await lookup(dir, "email.example"), undefined);
  });
});

Deno.test("lookupCredential: bad auth values are clear errors without the secret", async () => {
  const secret = "hunter2hunter2";
  const cases = [
    { auth: "%%%not-base64%%%", reason: /not valid base64/ },
    { auth: b64(`nocolon${secret}`), reason: /username:password/ },
    { auth: b64(`:${secret}`), reason: /username:password/ },
  ];
  for (const { auth, reason } of cases) {
    await withConfig({ auths: { "ghcr.io": { auth } } }, async (dir) => {
      const error = await lookup(dir, "ghcr.io").catch((e) => e);
      assert.ok(error instanceof UsageError, String(error));
      assert.match(error.message, reason);
      assert.match(error.message, /config\.json/);
      assert.ok(!error.message.includes(secret));
      assert.ok(!error.message.includes(auth));
      // Entries for other registries are not decoded.
      assert.equal(await lookup(dir, "quay.io"), undefined);
    });
  }
});

Deno.test("lookupCredential: malformed JSON throws UsageError naming the file, not its text", async () => {
  const secretAuth = b64("user:s3cr3t-value");
  const texts = [
    `{"auths": {"ghcr.io": {"auth": "${secretAuth}",}}}`,
    `{"auths": {"ghcr.io": {"auth": "${secretAuth}"`,
    `${secretAuth}`,
    `{"auths": []}`,
    `{"credsStore": 7}`,
    `["auths"]`,
  ];
  for (const text of texts) {
    await withConfig(text, async (dir) => {
      const error = await lookup(dir, "ghcr.io").catch((e) => e);
      assert.ok(error instanceof UsageError, `${text}: ${error}`);
      assert.ok(error.message.startsWith(`cannot parse ${join(dir, "config.json")}: `));
      assert.ok(!error.message.includes(secretAuth), error.message);
      assert.ok(!error.message.includes("s3cr3t"), error.message);
      assert.ok(error.hint);
    });
  }
});

Deno.test("lookupCredential: credHelpers beat credsStore, which beats auths", async () => {
  const config = {
    credsStore: "desktop",
    credHelpers: {
      "123.dkr.ecr.us-east-1.amazonaws.com": "ecr-login",
      "https://index.docker.io/v1/": "hubhelper",
    },
    auths: {
      "123.dkr.ecr.us-east-1.amazonaws.com": { auth: b64("file:pw") },
      "ghcr.io": { auth: b64("file:pw") },
      "quay.io": { auth: b64("file:pw") },
    },
  };
  await withConfig(config, async (dir) => {
    const answers = {
      "ecr-login": ok("AWS", "ecr-secret"),
      "hubhelper": ok("hub", "hub-secret"),
      "desktop": ok("desk", "desk-secret"),
    };
    const calls: HelperCall[] = [];
    assert.deepEqual(
      await lookup(dir, "123.dkr.ecr.us-east-1.amazonaws.com", answers, calls),
      { username: "AWS", password: "ecr-secret", source: "credHelpers ecr-login" },
    );
    assert.deepEqual(await lookup(dir, "docker.io", answers, calls), {
      username: "hub",
      password: "hub-secret",
      source: "credHelpers hubhelper",
    });
    assert.deepEqual(await lookup(dir, "ghcr.io", answers, calls), {
      username: "desk",
      password: "desk-secret",
      source: "credsStore desktop",
    });
    assert.deepEqual(calls, [
      { helper: "ecr-login", serverUrl: "123.dkr.ecr.us-east-1.amazonaws.com" },
      { helper: "hubhelper", serverUrl: "https://index.docker.io/v1/" },
      { helper: "desktop", serverUrl: "ghcr.io" },
    ]);

    // The helper has nothing: the auths entry is used.
    const notFound = {
      code: 1,
      stdout: "credentials not found in native keychain\n",
      stderr: "",
    };
    assert.deepEqual(await lookup(dir, "quay.io", { desktop: notFound }), {
      username: "file",
      password: "pw",
      source: "config.json auths",
    });
  });
});

Deno.test("lookupCredential: credsStore gets the Hub server URL for docker.io", async () => {
  await withConfig({ credsStore: "desktop" }, async (dir) => {
    const calls: HelperCall[] = [];
    await lookup(dir, "docker.io", { desktop: ok("u", "p") }, calls);
    await lookup(dir, "localhost:5000", { desktop: ok("u", "p") }, calls);
    assert.deepEqual(calls, [
      { helper: "desktop", serverUrl: "https://index.docker.io/v1/" },
      { helper: "desktop", serverUrl: "localhost:5000" },
    ]);
  });
});

Deno.test("lookupCredential: helper answers: not found, <token>, empty", async () => {
  await withConfig({ credsStore: "store" }, async (dir) => {
    for (const where of ["stdout", "stderr"] as const) {
      const answer = { code: 1, stdout: "", stderr: "" };
      answer[where] = "credentials not found in native keychain";
      assert.equal(await lookup(dir, "ghcr.io", { store: answer }), undefined, where);
    }
    assert.deepEqual(await lookup(dir, "ghcr.io", { store: ok("<token>", "idtok") }), {
      identityToken: "idtok",
      source: "credsStore store",
    });
    assert.equal(await lookup(dir, "ghcr.io", { store: ok("", "") }), undefined);
  });
});

Deno.test("lookupCredential: helper not installed → no credential from it", async () => {
  const config = { credsStore: "missing", auths: { "ghcr.io": { auth: b64("f:p") } } };
  await withConfig(config, async (dir) => {
    assert.equal(await lookup(dir, "quay.io"), undefined);
    assert.equal((await lookup(dir, "ghcr.io"))?.source, "config.json auths");
  });
});

Deno.test("lookupCredential: no --allow-run → UsageError with a hint", async () => {
  await withConfig({ credHelpers: { "ghcr.io": "gh" } }, async (dir) => {
    const denied = new Deno.errors.NotCapable("Requires run access");
    const error = await lookup(dir, "ghcr.io", { gh: denied }).catch((e) => e);
    assert.ok(error instanceof UsageError, String(error));
    assert.match(error.hint ?? "", /--allow-run=docker-credential-gh/);
  });
});

Deno.test("lookupCredential: invalid helper names are refused", async () => {
  for (const name of ["../../bin/sh", "a/b", ""]) {
    await withConfig({ credsStore: name === "" ? 5 : name }, async (dir) => {
      const error = await lookup(dir, "ghcr.io").catch((e) => e);
      assert.ok(error instanceof UsageError, `${name}: ${error}`);
    });
  }
});

Deno.test("lookupCredential: helper failure message has no secret", async () => {
  await withConfig({ credsStore: "store" }, async (dir) => {
    const json = JSON.stringify({ Username: "u", Secret: "TOPSECRET" });
    const cases: [HelperAnswer, RegExp][] = [
      [{ code: 2, stdout: json, stderr: "keychain locked\nmore detail" }, /keychain locked$/],
      [{ code: 2, stdout: json, stderr: "" }, /\(exit code 2\)$/],
      [{ code: 1, stdout: "error getting creds: boom\n", stderr: "" }, /boom$/],
      [{ code: 0, stdout: `{"Secret": "TOPSECRET"`, stderr: "" }, /malformed output/],
      [{ code: 0, stdout: `{"Secret": 5, "Username": "TOPSECRET"}`, stderr: "" }, /malformed/],
    ];
    for (const [answer, pattern] of cases) {
      const error = await lookup(dir, "ghcr.io", { store: answer }).catch((e) => e);
      assert.ok(error instanceof AuthError, String(error));
      assert.match(error.message, pattern);
      assert.match(error.message, /docker-credential-store/);
      assert.ok(!error.message.includes("TOPSECRET"), error.message);
      assert.ok(!(error.hint ?? "").includes("TOPSECRET"));
    }
  });
});

// --- A real helper, run by the default runner with PATH from the injected env. ---

const HELPER_SCRIPT = `#!/bin/sh
[ "$1" = get ] || { echo "unexpected args: $*" >&2; exit 64; }
url=$(cat)
case "$url" in
  notfound.example) echo "credentials not found in native keychain"; exit 1 ;;
  fail.example) echo '{"Username":"u","Secret":"REAL-SECRET"}'; echo "vault sealed" >&2; exit 3 ;;
  big.example) head -c 200000 /dev/zero; exit 0 ;;
  slow.example) sleep 3; exit 0 ;;
  token.example) printf '{"Username":"<token>","Secret":"real-refresh"}' ; exit 0 ;;
esac
printf '{"ServerURL":"%s","Username":"u-%s-%s","Secret":"%s"}' \\
  "$url" "\${LD_PRELOAD:-noLD}" "\${IMGPULL_OTHER:-noOther}" "$HOME"
`;

async function withRealHelper(fn: (env: Record<string, string>) => Promise<void>) {
  await withConfig({ credsStore: "imgpulltest" }, async (dir) => {
    const bin = join(dir, "bin");
    await Deno.mkdir(bin);
    const script = join(bin, "docker-credential-imgpulltest");
    await Deno.writeTextFile(script, HELPER_SCRIPT);
    await Deno.chmod(script, 0o755);
    // sh, cat and head come from the system PATH, after our bin.
    const path = `${bin}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}`;
    await fn({ DOCKER_CONFIG: dir, PATH: path, HOME: dir });
  });
}

const posixOnly = { ignore: Deno.build.os === "windows" };

Deno.test(
  "lookupCredential: real helper via PATH, cleared environment",
  posixOnly,
  async () => {
    await withRealHelper(async (vars) => {
      const env = envOf({ ...vars, LD_PRELOAD: "/nonexistent.so", IMGPULL_OTHER: "leak" });
      assert.deepEqual(await lookupCredential("localhost:5000", { env }), {
        username: "u-noLD-noOther",
        password: vars.HOME,
        source: "credsStore imgpulltest",
      });
      const hub = await lookupCredential("docker.io", { env });
      assert.equal(hub?.username, "u-noLD-noOther");
      assert.deepEqual(await lookupCredential("token.example", { env }), {
        identityToken: "real-refresh",
        source: "credsStore imgpulltest",
      });
    });
  },
);

Deno.test(
  "lookupCredential: real helper not found, failure, oversize",
  posixOnly,
  async () => {
    await withRealHelper(async (vars) => {
      const env = envOf(vars);
      assert.equal(await lookupCredential("notfound.example", { env }), undefined);

      const failed = await lookupCredential("fail.example", { env }).catch((e) => e);
      assert.ok(failed instanceof AuthError, String(failed));
      assert.match(failed.message, /vault sealed/);
      assert.ok(!failed.message.includes("REAL-SECRET"));

      const big = await lookupCredential("big.example", { env }).catch((e) => e);
      assert.ok(big instanceof AuthError, String(big));
      assert.match(big.message, /64 KiB/);
    });
  },
);

Deno.test("lookupCredential: real helper that hangs is killed", posixOnly, async () => {
  await withRealHelper(async (vars) => {
    const started = Date.now();
    const error = await lookupCredential("slow.example", { env: envOf(vars), helperTimeoutMs: 300 })
      .catch((e) => e);
    assert.ok(error instanceof AuthError, String(error));
    assert.match(error.message, /docker-credential-imgpulltest did not answer within 300 ms/);
    // The sleeping grandchild still holds the pipes: we must not wait for it.
    assert.ok(Date.now() - started < 2500, `took ${Date.now() - started} ms`);
  });
});

Deno.test("lookupCredential: real runner, helper missing from PATH", posixOnly, async () => {
  await withRealHelper(async (vars) => {
    const logs: string[] = [];
    const found = await lookupCredential("ghcr.io", {
      env: envOf({ ...vars, PATH: join(vars.DOCKER_CONFIG, "empty") }),
      log: (message) => logs.push(message),
    });
    assert.equal(found, undefined);
    assert.match(logs.join("\n"), /docker-credential-imgpulltest .* not installed/);
  });
});

Deno.test("lookupCredential: unreadable config is a LocalIoError", posixOnly, async () => {
  await withConfig(undefined, async (dir) => {
    // A directory where the file should be.
    await Deno.mkdir(join(dir, "config.json"));
    const error = await lookupCredential("ghcr.io", { env: envOf({ DOCKER_CONFIG: dir }) })
      .catch((e) => e);
    assert.ok(error instanceof LocalIoError, String(error));
  });
});
