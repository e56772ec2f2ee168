/**
 * auth.json credentials: the file locations, host/namespace keys (against containers/image's
 * `pkg/docker/config/testdata` fixtures read in place, with `config_test.go`'s expectations), and
 * a credential helper executed for real from PATH.
 */
import { assert, assertEquals } from "../helpers/expect_error.ts";
import { authJsonPaths, authKeysFor, lookupCredentialFor } from "../../lib/auth/credentials.ts";

const DATA = "/usr/share/gocode/src/github.com/containers/image/pkg/docker/config/testdata";
const envOf = (vars: Record<string, string>) => ({ get: (n: string) => vars[n] });

function fixture(name: string): string {
  try {
    return Deno.readTextFileSync(`${DATA}/${name}`);
  } catch {
    throw new Error(
      `${DATA}/${name} missing: apt-get install golang-github-containers-image-dev ` +
        "(scripts/test.sh does)",
    );
  }
}

/** Looks up `key` ("host[/repo…]") with `text` as the only auth.json (REGISTRY_AUTH_FILE). */
async function lookup(text: string, key: string) {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/auth.json`, text);
    const slash = key.indexOf("/");
    const [registry, repository] = slash < 0
      ? [key, ""]
      : [key.slice(0, slash), key.slice(slash + 1)];
    const found = await lookupCredentialFor(registry, repository, {
      env: envOf({ REGISTRY_AUTH_FILE: `${dir}/auth.json`, HOME: `${dir}/home` }),
    });
    return found && { username: found.username, password: found.password };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("peer fixtures: TestGetAuth cases (host keys, URL keys, namespace keys)", async () => {
  const cases: [string, string, string | undefined][] = [
    ["example.json", "example.org", "example:org"],
    ["example.json", "registry.example.org", undefined],
    ["full.json", "docker.io", "docker:io"],
    ["abnormal.json", "docker.io", "index:docker.io"],
    ["full.json", "normalize.example.org", "normalize:example"],
    ["full.json", "localhost", "local:host"],
    ["full.json", "10.10.30.45:5000", "10.10:30.45-5000"],
    ["abnormal.json", "localhost:5000", "local:host-5000"],
    ["empty.json", "localhost:5000", undefined],
    ["refpath.json", "example.org/repo/image", "example:org"],
    ["refpath.json", "example.org/repo", "example:org"],
    ["refpath.json", "example.org/image", "local:host"],
    ["refpath.json", "docker.io/library/busybox", "library:busybox"],
    ["refpath.json", "docker.io/library/notbusybox", "library:other"],
    ["refpath.json", "docker.io/vendor/product", "first:level"],
    ["refpath.json", "docker.io/vendor", "first:level"],
    ["refpath.json", "docker.io/other-vendor/other-product", "top:level"],
  ];
  for (const [file, key, expected] of cases) {
    const found = await lookup(fixture(file), key);
    assertEquals(found && `${found.username}:${found.password}`, expected, `${file} ${key}`);
  }
  const token = await lookupCredentialFor("example.org", "", {
    env: envOf({ REGISTRY_AUTH_FILE: `${DATA}/example_identitytoken.json` }),
  });
  assertEquals(token?.identityToken, "some very long identity token");
  assertEquals(token?.username, "00000000-0000-0000-0000-000000000000");
});

Deno.test("peer fixtures: TestAuthKeysForKey", () => {
  assertEquals(authKeysFor("quay.io", "a/b/c/d/image"), [
    "quay.io/a/b/c/d/image",
    "quay.io/a/b/c/d",
    "quay.io/a/b/c",
    "quay.io/a/b",
    "quay.io/a",
    "quay.io",
  ]);
  assertEquals(authKeysFor("docker.io", "library/busybox"), [
    "docker.io/library/busybox",
    "docker.io/library",
    "docker.io",
  ]);
});

Deno.test("auth.json locations: REGISTRY_AUTH_FILE, else XDG_RUNTIME_DIR; then config home; then docker", async () => {
  assertEquals(
    authJsonPaths(envOf({ REGISTRY_AUTH_FILE: "/a.json", XDG_RUNTIME_DIR: "/run/u", HOME: "/h" })),
    [
      "/a.json",
      "/h/.config/containers/auth.json",
    ],
  );
  assertEquals(authJsonPaths(envOf({ XDG_RUNTIME_DIR: "/run/u", XDG_CONFIG_HOME: "/x" })), [
    "/run/u/containers/auth.json",
    "/x/containers/auth.json",
  ]);
  const root = await Deno.makeTempDir();
  const auth = (user: string) =>
    JSON.stringify({ auths: { "reg.example": { auth: btoa(`${user}:pw`) } } });
  try {
    await Deno.mkdir(`${root}/run/containers`, { recursive: true });
    await Deno.mkdir(`${root}/home/.config/containers`, { recursive: true });
    await Deno.mkdir(`${root}/home/.docker`, { recursive: true });
    const env = envOf({ XDG_RUNTIME_DIR: `${root}/run`, HOME: `${root}/home` });
    const user = async () => (await lookupCredentialFor("reg.example", "a/b", { env }))?.username;
    await Deno.writeTextFile(`${root}/home/.docker/config.json`, auth("docker"));
    assertEquals(await user(), "docker");
    await Deno.writeTextFile(`${root}/home/.config/containers/auth.json`, auth("config-home"));
    assertEquals(await user(), "config-home");
    await Deno.writeTextFile(`${root}/run/containers/auth.json`, auth("runtime"));
    assertEquals(await user(), "runtime");
    // Another host's entry is never used.
    assertEquals(await lookupCredentialFor("other.example", "a/b", { env }), undefined);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("auth.json credHelpers: a real helper on PATH is asked about the mirror's host only", async () => {
  const root = await Deno.makeTempDir();
  try {
    const log = `${root}/asked.log`;
    await Deno.writeTextFile(
      `${root}/docker-credential-mirrorhelper`,
      `#!/bin/sh\nread host\necho "$host" >> ${log}\n` +
        `if [ "$host" = "mirror.example:5000" ]; then echo '{"Username":"m","Secret":"mirror-secret"}'; exit 0; fi\n` +
        `echo "credentials not found in native keychain"; exit 1\n`,
    );
    await Deno.chmod(`${root}/docker-credential-mirrorhelper`, 0o755);
    await Deno.writeTextFile(
      `${root}/auth.json`,
      JSON.stringify({
        credHelpers: { "mirror.example:5000": "mirrorhelper" },
        auths: { "upstream.example": { auth: btoa("up:upstream-secret") } },
      }),
    );
    const env = envOf({
      REGISTRY_AUTH_FILE: `${root}/auth.json`,
      PATH: `${root}:/usr/bin:/bin`,
      HOME: root,
    });
    const mirror = await lookupCredentialFor("mirror.example:5000", "library/x", { env });
    assertEquals([mirror?.username, mirror?.password], ["m", "mirror-secret"]);
    assert(mirror!.source.includes("mirrorhelper"));
    const upstream = await lookupCredentialFor("upstream.example", "library/x", { env });
    assertEquals(upstream?.password, "upstream-secret");
    assertEquals(await Deno.readTextFile(log), "mirror.example:5000\n");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
