/** daemon.json, containerd hosts.toml and the endpoint list built from every source. */
import { assert, assertEquals, assertRejects, assertThrows } from "../helpers/expect_error.ts";
import { UsageError } from "../../lib/errors.ts";
import { parseReference } from "../../lib/reference.ts";
import {
  isInsecureRegistry,
  loadDaemonConfig,
  parseDaemonJson,
} from "../../lib/registries/daemon_json.ts";
import { hostDirCandidates, parseHostsToml } from "../../lib/registries/containerd_hosts.ts";
import { describeEndpoint, endpointsFor } from "../../lib/registries/endpoints.ts";

const envOf = (vars: Record<string, string>) => ({ get: (n: string) => vars[n] });

Deno.test("daemon.json: mirrors, insecure registries, malformed files name file and line", () => {
  const conf = parseDaemonJson(
    '{"registry-mirrors": ["https://m.example/", "http://10.0.0.1:5000/cache"],\n' +
      '"insecure-registries": ["10.0.0.0/8", "reg.example:5000"]}',
    "/etc/docker/daemon.json",
  );
  assertEquals(conf.registryMirrors, ["https://m.example/", "http://10.0.0.1:5000/cache/"]);
  assert(isInsecureRegistry("10.1.2.3:5000", conf.insecureRegistries!));
  assert(isInsecureRegistry("reg.example:5000", conf.insecureRegistries!));
  assert(!isInsecureRegistry("reg.example:5001", conf.insecureRegistries!));
  assert(!isInsecureRegistry("11.0.0.1", conf.insecureRegistries!));
  const bad = assertThrows(
    () => parseDaemonJson('{\n  "registry-mirrors": [\n    "https://a",\n  ]\n}', "/d.json"),
    UsageError,
  );
  assert(/^\/d\.json:4: invalid JSON/.test(bad.message), bad.message);
  assertEquals(bad.exitCode, 2);
  assertThrows(() => parseDaemonJson('{"registry-mirrors": "x"}', "/d.json"), UsageError, "array");
  assertThrows(
    () => parseDaemonJson('{"registry-mirrors": ["ftp://x"]}', "/d.json"),
    UsageError,
    "http:// or https://",
  );
  assertThrows(
    () => parseDaemonJson('{"registry-mirrors": ["https://u:p@x"]}', "/d.json"),
    UsageError,
    "credentials",
  );
});

Deno.test("daemon.json: rootless file ($XDG_CONFIG_HOME) before /etc/docker, per key", async () => {
  const root = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${root}/etc/docker`, { recursive: true });
    await Deno.mkdir(`${root}/xdg/docker`, { recursive: true });
    await Deno.mkdir(`${root}/home/.config/docker`, { recursive: true });
    await Deno.writeTextFile(
      `${root}/etc/docker/daemon.json`,
      '{"registry-mirrors": ["https://system.example"], "insecure-registries": ["a.example"]}',
    );
    const sys = { systemRoot: root };
    assertEquals(
      (await loadDaemonConfig(envOf({ HOME: `${root}/home` }), sys)).registryMirrors,
      ["https://system.example/"],
    );
    await Deno.writeTextFile(
      `${root}/xdg/docker/daemon.json`,
      '{"registry-mirrors": ["https://rootless.example"]}',
    );
    await Deno.writeTextFile(
      `${root}/home/.config/docker/daemon.json`,
      '{"registry-mirrors": ["https://home.example"]}',
    );
    const xdg = await loadDaemonConfig(
      envOf({ HOME: `${root}/home`, XDG_CONFIG_HOME: `${root}/xdg` }),
      sys,
    );
    assertEquals(xdg.registryMirrors, ["https://rootless.example/"]);
    assertEquals(xdg.mirrorsFile, `${root}/xdg/docker/daemon.json`);
    // insecure-registries is not set in the rootless file: the system file's applies.
    assertEquals(xdg.insecureRegistries, ["a.example"]);
    assertEquals(
      (await loadDaemonConfig(envOf({ HOME: `${root}/home` }), sys)).registryMirrors,
      ["https://home.example/"],
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("hosts.toml: hosts in file order, capabilities, ca/client paths, override_path", () => {
  const text = `
server = "https://registry-1.docker.io"

[host."https://mirror-b.example"]
  capabilities = ["pull", "resolve"]
  ca = "mirror-ca.pem"

[host."http://mirror-a.example:5000/cache"]
  capabilities = ["pull"]
  client = [["/abs/c.pem", "k.pem"]]
  skip_verify = true

[host."https://odd.example/api/v9"]
  override_path = true
`;
  const parsed = parseHostsToml(text, "/h/docker.io/hosts.toml", "/h/docker.io");
  assertEquals(parsed.hosts.map((h) => `${h.scheme}://${h.host}${h.apiRoot}`), [
    "https://mirror-b.example/v2",
    "http://mirror-a.example:5000/cache/v2",
    "https://odd.example/api/v9",
  ]);
  assertEquals(parsed.hosts[0].caFiles, ["/h/docker.io/mirror-ca.pem"]);
  assertEquals(parsed.hosts[1].clientPairs, [["/abs/c.pem", "/h/docker.io/k.pem"]]);
  assert(parsed.hosts[1].pull && !parsed.hosts[1].resolve && parsed.hosts[1].skipVerify);
  assertEquals(parsed.server?.host, "registry-1.docker.io");
  assertEquals(
    hostDirCandidates("localhost:5000", "/d"),
    ["/d/localhost_5000_", "/d/localhost:5000", "/d/_default"],
  );
  const bad = assertThrows(
    () => parseHostsToml('[host."https://m"]\ncapabilities = ["pull"\n', "/h/x/hosts.toml", "/h/x"),
    UsageError,
  );
  assert(bad.message.startsWith("/h/x/hosts.toml:"), bad.message);
  assertThrows(
    () => parseHostsToml('[host."https://m"]\ncapabilities = ["fly"]\n', "/f", "/"),
    UsageError,
    "unknown capability fly",
  );
});

/** A scratch system root with files; returns the env for it. */
async function scene(
  files: Record<string, string>,
): Promise<{ root: string; env: ReturnType<typeof envOf> }> {
  const root = await Deno.makeTempDir();
  for (const [path, text] of Object.entries(files)) {
    const full = `${root}${path}`;
    await Deno.mkdir(full.slice(0, full.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(full, text);
  }
  return { root, env: envOf({ HOME: `${root}/home` }) };
}

Deno.test("endpoints: Hub mirrors from flags (daemon.json ignored), then registries.conf, hosts.toml, upstream", async () => {
  const { root, env } = await scene({
    "/etc/docker/daemon.json": '{"registry-mirrors": ["https://daemon.example"]}',
    "/etc/containers/registries.conf": `
[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "conf-mirror.example/hub"
`,
    "/hosts/docker.io/hosts.toml": `
[host."https://k8s-mirror.example"]
capabilities = ["pull", "resolve"]
`,
  });
  try {
    const options = { env, systemRoot: root, hostsDir: `${root}/hosts` };
    const ref = parseReference("nginx:1");
    const withFlags = await endpointsFor(ref, {
      ...options,
      registryMirrors: ["http://127.0.0.1:5000/prefix"],
    });
    assertEquals(withFlags.map(describeEndpoint), [
      "http://127.0.0.1:5000/prefix/library/nginx (mirror, --registry-mirror)",
      `https://conf-mirror.example/hub/library/nginx (mirror, ${root}/etc/containers/registries.conf)`,
      `https://k8s-mirror.example/library/nginx (mirror, ${root}/hosts/docker.io/hosts.toml)`,
      `https://registry-1.docker.io/library/nginx (upstream, ${root}/etc/containers/registries.conf)`,
    ]);
    assertEquals(withFlags[0].apiRoot, "/prefix/v2");
    assertEquals(withFlags[1].ref.repository, "hub/library/nginx");
    assertEquals(withFlags[1].ref.tag, "1");
    const fromDaemon = await endpointsFor(ref, options);
    assertEquals(fromDaemon[0].ref.registry, "daemon.example");
    assertEquals(fromDaemon[0].source, `${root}/etc/docker/daemon.json`);
    // Hub mirrors are for Hub names only.
    const other = await endpointsFor(parseReference("quay.io/a/b:1"), {
      ...options,
      registryMirrors: ["http://127.0.0.1:5000"],
    });
    assertEquals(other.map((e) => e.ref.registry), ["quay.io"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("endpoints: location rewrite, wildcard, blocked, digest-only mirrors, insecure", async () => {
  const { root, env } = await scene({
    "/etc/containers/registries.conf": `
[[registry]]
prefix = "corp.example/team"
location = "real.example:5000/mirror/team"
insecure = true
[[registry.mirror]]
location = "cache.example/team"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "*.blocked.example"
blocked = true

[[registry]]
prefix = "*.wild.example"
location = "central.example"
`,
    "/etc/containers/registries.conf.d/50-extra.conf": `
[[registry]]
location = "dropin.example"
[[registry.mirror]]
location = "dropin-mirror.example"
insecure = true
`,
  });
  try {
    const options = { env, systemRoot: root, hostsDir: `${root}/none` };
    const tagged = await endpointsFor(parseReference("corp.example/team/app:1"), options);
    assertEquals(tagged.map((e) => [e.ref.registry, e.ref.repository, e.mirror, e.insecure]), [
      ["real.example:5000", "mirror/team/app", false, true],
    ]);
    const digest = "sha256:" + "b".repeat(64);
    const digested = await endpointsFor(parseReference(`corp.example/team/app@${digest}`), options);
    assertEquals(digested.map((e) => [e.ref.registry, e.ref.repository, e.ref.digest]), [
      ["cache.example", "team/app", digest],
      ["real.example:5000", "mirror/team/app", digest],
    ]);
    const blocked = await assertRejects(
      () => endpointsFor(parseReference("x.blocked.example/a:1"), options),
      UsageError,
      "is blocked in",
    );
    assertEquals(blocked.exitCode, 2);
    const wild = await endpointsFor(parseReference("a.wild.example:444/ns/img"), options);
    assertEquals(wild.map((e) => e.ref.registry), ["central.example:444"]);
    const dropin = await endpointsFor(parseReference("dropin.example/img"), options);
    assertEquals(dropin.map((e) => [e.ref.registry, e.insecure]), [
      ["dropin-mirror.example", true],
      ["dropin.example", false],
    ]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
