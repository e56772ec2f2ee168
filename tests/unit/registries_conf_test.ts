/**
 * registries.conf parsing against containers/image's own fixtures (Debian's
 * golang-github-containers-image-dev, read in place at test time) with the outcomes its
 * `system_registries_v2_test.go` and `shortnames_test.go` expect; plus imgpull's own cases.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "../helpers/expect_error.ts";
import { UsageError } from "../../lib/errors.ts";
import {
  findRegistry,
  loadRegistriesConf,
  loadRegistriesConfFiles,
  parseRegistriesConf,
  pullSources,
  refMatchingPrefix,
  type RegistriesConf,
} from "../../lib/registries/registries_conf.ts";

const PEER = "/usr/share/gocode/src/github.com/containers/image/pkg/sysregistriesv2";
const DATA = `${PEER}/testdata`;
const NO_DIR = `${DATA}/this-does-not-exist`;
const DIGEST = "@sha256:" + "a".repeat(64);

function requirePeerData(): void {
  try {
    Deno.statSync(`${DATA}/mirrors.conf`);
  } catch {
    throw new Error(
      `containers/image fixtures missing at ${DATA}: ` +
        "apt-get install golang-github-containers-image-dev (scripts/test.sh does)",
    );
  }
}

function load(file: string, dir = NO_DIR): Promise<RegistriesConf> {
  requirePeerData();
  return loadRegistriesConfFiles(`${DATA}/${file}`, true, [dir]);
}

Deno.test("peer fixtures: every valid file loads, every invalid one is refused (exit 2)", async () => {
  requirePeerData();
  // TestInvalidV2Configs, TestInvalidMirrorConfig, TestMixingV1andV2, TestV1BackwardsCompatibility,
  // TestFindUnqualifiedSearchRegistries, TestGetShortNameMode, TestInvalidAliases,
  // TestTryUpdatingCache: the files the Go tests expect to fail, with their messages.
  const refused: Record<string, string> = {
    "insecure-conflicts.conf": "conflicting 'insecure' setting",
    "blocked-conflicts.conf": "conflicting 'blocked' setting",
    "missing-mirror-location.conf": "invalid condition: mirror location is unset",
    "invalid-prefix.conf": "invalid location",
    "invalid-config-level-mirror.conf":
      'pull-from-mirror must not be set for a non-mirror registry "registry-a.com/foo"',
    "invalid-conflict-mirror.conf":
      'cannot set mirror usage mirror-by-digest-only for the registry ("registry-a.com/foo") ' +
      'and pull-from-mirror for per-mirror ("mirror-1.registry-a.com") at the same time',
    "invalid-value-mirror.conf":
      'unsupported pull-from-mirror value "notvalid" for mirror "mirror-1.registry-a.com"',
    "mixing-v1-v2.conf": "mixing sysregistry v1/v2 is not supported",
    "v1-invalid-block.conf": "URI schemes are not supported",
    "v1-invalid-insecure.conf": "URI schemes are not supported",
    "v1-invalid-search.conf": "URI schemes are not supported",
    "invalid-search.conf": "unqualified-search-registries",
    "invalid-short-name-mode.conf": "invalid short-name mode",
    "invalid-aliases.conf": "must not contain tag",
    "try-update-cache-invalid.conf": "invalid TOML",
  };
  const names = [...Deno.readDirSync(DATA)].filter((e) => e.isFile && e.name.endsWith(".conf"))
    .map((e) => e.name).sort();
  assert(names.length >= 25, `expected the peer's fixtures, found ${names.length}`);
  let valid = 0;
  for (const name of names) {
    if (name in refused) {
      const error = await assertRejects(() => load(name), UsageError);
      assert(error.message.startsWith(`${DATA}/${name}`), error.message);
      assert(error.message.includes(refused[name]), `${name}: ${error.message}`);
      assertEquals(error.exitCode, 2);
    } else {
      await load(name);
      valid++;
    }
  }
  for (const name of Object.keys(refused)) assert(names.includes(name), `fixture ${name} missing`);
  assertEquals(valid, names.length - Object.keys(refused).length);
  assert(valid >= 13, `${valid} valid fixtures`);
});

Deno.test("peer fixtures: registry counts and the registry found for a reference", async () => {
  // TestEmptyConfig, TestMirrors, TestUnmarshalConfig, TestInvalidateCache.
  assertEquals((await load("empty.conf")).registries.length, 0);
  const mirrors = await load("mirrors.conf");
  assertEquals(mirrors.registries.length, 2);
  const reg = findRegistry(mirrors, "registry.com/image:tag")!;
  assertEquals(reg.mirrors.map((m) => [m.location, m.insecure]), [
    ["mirror-1.registry.com", false],
    ["mirror-2.registry.com", true],
  ]);
  assertEquals((await load("unmarshal.conf")).registries.length, 4);
  assertEquals(
    (await load("invalidate-cache.conf")).registries.map((r) => r.location),
    ["blocked.registry.com", "insecure.registry.com", "registry.com", "untrusted.registry.com"],
  );

  // TestFindRegistry (with the registries.conf.d drop-ins).
  const find = await load("find-registry.conf", `${DATA}/registries.conf.d`);
  assertEquals(find.registries.length, 19);
  const at = (name: string) => findRegistry(find, name);
  assertEquals(at("simple-prefix.com/foo/bar:latest")?.prefix, "simple-prefix.com");
  assertEquals(at("simple-prefix.com/foo/bar:latest")?.location, "registry.com:5000");
  assert(at("simple-prefix.com/"));
  assert(at("simple-prefix.com"));
  assertEquals(at("not.so.simple-prefix.com/")?.location, "subdomain-prefix.com");
  assertEquals(at("not.quite.simple-prefix.com/")?.location, "subdomain-prefix-2.com");
  assertEquals(
    at("not.quite.simple-prefix.com:5000/with/path/and/beyond:tag")?.location,
    "subdomain-prefix-2.com",
  );
  assertEquals(
    at("really.not.quite.simple-prefix.com:5000/with/path/and/beyond:tag")?.location,
    "subdomain-prefix-1-overridden-by-dropin-location.com",
  );
  assertEquals(at("foo.docker.io:5000/omg/wtf/bbq:foo")?.location, "subdomain-prefix-2.com");
  assertEquals(
    at(`foo.bar.example.com:6000/omg/wtf/bbq${DIGEST}`)?.location,
    "subdomain-prefix-3-overridden-by-dropin-location.com",
  );
  assertEquals(at("foo.bar.docker.io:5000/omg/wtf/bbq:foo")?.location, "subdomain-prefix-4.com");
  assertEquals(at("foo.bar.example.com:5000/omg/wtf/bbq:foo")?.location, "subdomain-prefix-5.com");
  assertEquals(at("simple-prefix.comx"), undefined);
  assertEquals(
    at("complex-prefix.com:4000/with/path/and/beyond:tag")?.prefix,
    "complex-prefix.com:4000/with/path",
  );
  assertEquals(
    at("complex-prefix.com:4000/with/path/and/beyond:tag")?.location,
    "another-registry.com:5000",
  );
  assertEquals(at("no-prefix.com/foo:tag")?.prefix, "no-prefix.com");
  assertEquals(at("empty-prefix.com/foo:tag")?.location, "empty-prefix.com");

  // A file named explicitly must exist.
  await assertRejects(() => load("this-does-not-exist.conf"), UsageError, "no such file");
});

Deno.test("peer fixtures: v1 tables, unqualified search, drop-in merging, aliases", async () => {
  // TestV1BackwardsCompatibility
  const v1 = await load("v1-compatibility.conf");
  assertEquals(v1.registries.length, 4);
  assertEquals(v1.unqualifiedSearchRegistries, [
    "registry-a.com",
    "registry-c.com",
    "registry-d.com",
  ]);
  const b = findRegistry(v1, "registry-b.com/bar/foo/barfoo:latest")!;
  assert(b.insecure && b.blocked);
  // TestFindUnqualifiedSearchRegistries
  const search = await load("unqualified-search.conf");
  assertEquals(search.registries.length, 4);
  assertEquals(search.unqualifiedSearchRegistries, [
    "registry-a.com",
    "registry-c.com",
    "registry-d.com",
  ]);
  // TestRegistriesConfDirectory
  const merged = await load("base-for-registries.d.conf", `${DATA}/registries.conf.d`);
  assertEquals(merged.unqualifiedSearchRegistries, ["example-overwrite.com"]);
  assertEquals(merged.registries.map((r) => r.location), [
    "subdomain-prefix-3-overridden-by-dropin-location.com",
    "subdomain-prefix-2-overridden-by-dropin-location.com",
    "subdomain-prefix-1-overridden-by-dropin-location.com",
    "1.com",
    "2.com",
    "base.com",
  ]);
  assert(findRegistry(merged, "base.com/test:latest")!.blocked);
  assertEquals(
    (await load("unqualified-search.conf", `${DATA}/registries.conf.d-usr1`))
      .unqualifiedSearchRegistries,
    ["registry-a.com", "registry-c.com", "registry-d.com"],
  );
  assertEquals(
    (await load("unqualified-search.conf", `${DATA}/registries.conf.d-usr2`))
      .unqualifiedSearchRegistries,
    [],
  );
  // TestCredentialHelpers (containers/image defaults an empty list to containers-auth.json).
  assertEquals((await load("cred-helper.conf")).credentialHelpers, ["helper-1", "helper-2"]);
  assertEquals(
    (await load("cred-helper.conf", `${DATA}/registries.conf.d-empty-helpers`)).credentialHelpers,
    [],
  );
  assertEquals(
    (await load("cred-helper.conf", `${DATA}/registries.conf.d`)).credentialHelpers,
    ["dropin-1", "dropin-2"],
  );
  // TestGetShortNameMode, TestAliasesWithDropInConfigs
  assertEquals((await load("aliases.conf")).shortNameMode, "enforcing");
  const aliases = await load("aliases.conf", `${DATA}/registries.conf.d`);
  assertEquals(aliases.shortNameMode, "permissive");
  assertEquals(aliases.aliases.docker.value, "docker.io/library/config1");
  assertEquals(aliases.aliases.docker.file, `${DATA}/registries.conf.d/config-1.conf`);
  assertEquals(aliases.aliases.barz.value, "barz.com/config2");
  assertEquals(aliases.aliases.example.value, undefined);
  assertEquals(aliases.aliases["quay/foo"].value, "quay.io/library/foo");
  assertEquals(aliases.aliases.ignore, undefined);
});

Deno.test("peer fixtures: pull sources (mirrors per reference kind, rewritten references)", async () => {
  // TestPullSourcesFromReference
  const conf = await load("pull-sources-from-reference.conf");
  const a = findRegistry(conf, "registry-a.com/foo/image")!;
  let sources = pullSources(a, `registry-a.com/foo/image${DIGEST}`, true);
  assertEquals(sources.length, 3);
  assertEquals(sources[0].reference, `mirror-1.registry-a.com/image${DIGEST}`);
  assert(sources[1].endpoint.insecure);
  sources = pullSources(a, "registry-a.com/foo/image:aaa", false);
  assertEquals(sources[2].reference, "registry-a.com/bar/image:aaa");
  const b = findRegistry(conf, "registry-b.com/foo/image")!;
  sources = pullSources(b, `registry-b.com/foo/image${DIGEST}`, true);
  assertEquals(sources[2].endpoint.location, "registry-b.com/bar");
  assertEquals(sources[2].reference, `registry-b.com/bar/image${DIGEST}`);
  assertEquals(pullSources(b, "registry-b.com/foo/image:aaa", false).length, 1);

  // TestPullSourcesMirrorFromReference
  const mirrors = await load("pull-sources-mirror-reference.conf");
  assertEquals(mirrors.registries.length, 7);
  const cases: [string, string[], string[]][] = [
    ["a", ["mirror-1.registry-a.com", "mirror-2.registry-a.com"], [
      "mirror-1.registry-a.com",
      "mirror-2.registry-a.com",
    ]],
    ["b", ["mirror-1.registry-b.com", "mirror-2.registry-b.com"], []],
    ["c", ["mirror-1.registry-c.com", "mirror-2.registry-c.com"], ["mirror-1.registry-c.com"]],
    ["d", ["mirror-1.registry-d.com", "mirror-2.registry-d.com"], []],
    ["e", [], ["mirror-1.registry-e.com", "mirror-2.registry-e.com"]],
    ["f", ["mirror-1.registry-f.com"], ["mirror-1.registry-f.com", "mirror-2.registry-f.com"]],
    ["g", ["mirror-1.registry-g.com", "mirror-3.registry-g.com", "mirror-4.registry-g.com"], [
      "mirror-2.registry-g.com",
      "mirror-3.registry-g.com",
      "mirror-4.registry-g.com",
    ]],
  ];
  for (const [x, digestMirrors, tagMirrors] of cases) {
    const name = `registry-${x}.com/foo/image`;
    const reg = findRegistry(mirrors, name)!;
    const upstream = `registry-${x}.com/bar`;
    assertEquals(
      pullSources(reg, name + DIGEST, true).map((s) => s.endpoint.location),
      [...digestMirrors, upstream],
      `${x} digest`,
    );
    assertEquals(
      pullSources(reg, name + ":aaa", false).map((s) => s.endpoint.location),
      [...tagMirrors, upstream],
      `${x} tag`,
    );
  }
});

Deno.test("prefix matching: TestRefMatchingPrefix and TestRefMatchingSubdomainPrefix tables", () => {
  const d = DIGEST.slice(1);
  const cases: [string, string, number][] = [
    ["docker.io", "docker.io", 9],
    ["docker.io", "example.com", -1],
    ["example.com:5000", "example.com:5000", 16],
    ["example.com:50000", "example.com:5000", -1],
    ["example.com/foo/bar:baz", "example.com", 11],
    [`example.com/foo/bar@${d}`, "example.com", 11],
    ["docker.io", "docker.io/library", -1],
    ["docker.io/libraryy", "docker.io/library", -1],
    ["docker.io/library/busybox", "docker.io/library", 17],
    ["example.com/foo", "example.com/foo:bar", -1],
    ["example.com/foo:bar", "example.com/foo:bar", 19],
    ["example.com/foo", "*", -1],
    ["docker.io", "*.io", 9],
    ["docker.io/foo", "*.com", -1],
    ["example.com/foo", "*.example.com", -1],
    ["example.com/foo:bar", "*.com", 11],
    ["yet.another.example.com/foo", "**.example.com", -1],
    ["yet.another.example.com/foo/bar", "*.another.example.com", 23],
    ["another.example.com/namespace.com/foo/bar/bbq:baz", "*.example.com", 19],
    ["example.net/namespace-ends-in.com/foo/bar/bbq:baz", "*.com", -1],
    ["another.example.com/namespace.com/foo/bar/bbq:baz", "*.namespace.com", -1],
  ];
  for (const [ref, prefix, expected] of cases) {
    assertEquals(refMatchingPrefix(ref, prefix), expected, `${ref} vs ${prefix}`);
  }
});

Deno.test("this machine's /etc/containers/registries.conf.d/shortnames.conf parses", async () => {
  const path = "/etc/containers/registries.conf.d/shortnames.conf";
  const text = await Deno.readTextFile(path).catch(() => {
    throw new Error(`${path} missing: apt-get install podman (scripts/test.sh does)`);
  });
  const conf = parseRegistriesConf(text, path, { forceV2: true });
  assert(Object.keys(conf.aliases).length > 50);
  assertEquals(conf.aliases.almalinux?.value, "docker.io/library/almalinux");
  // The machine's own full configuration (main file and drop-ins) loads as well.
  await loadRegistriesConf({ get: (name) => (name === "HOME" ? "/nonexistent" : undefined) });
});

Deno.test("malformed files: UsageError naming the file and line", () => {
  const cases: [string, string, number][] = [
    ['[[registry]]\nlocation = "a.example"\ninsecure = yes\n', "invalid TOML", 3],
    [
      '[[registry]]\nlocation = "a.example"\n\n[[registry]]\nlocation = 5\n',
      '"registry.location"',
      4,
    ],
    [
      '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\nlocation = "https://m"\n',
      "URI schemes",
      3,
    ],
    ['[[registry]]\nprefix = "*.a.example/x"\n', "wildcarded prefix", 1],
    [
      'x = 1\n[[registry]]\nlocation = "a.example"\n[[registry]]\nlocation = "a.example"\nblocked = true\n',
      "conflicting 'blocked'",
      4,
    ],
    ['unqualified-search-registries = "docker.io"\n', "array of strings", 0],
  ];
  for (const [text, reason, line] of cases) {
    const error = assertThrows(() => parseRegistriesConf(text, "/x/registries.conf"), UsageError);
    const where = line ? `/x/registries.conf:${line}: ` : "/x/registries.conf: ";
    assert(error.message.startsWith(where), `${error.message} (expected ${where})`);
    assert(error.message.includes(reason), error.message);
  }
});

Deno.test("file search order: CONTAINERS_REGISTRIES_CONF, then ~/.config, then /etc", async () => {
  const root = await Deno.makeTempDir();
  try {
    const home = `${root}/home`;
    const system = `${root}/sys`;
    await Deno.mkdir(`${system}/etc/containers/registries.conf.d`, { recursive: true });
    await Deno.mkdir(`${home}/.config/containers/registries.conf.d`, { recursive: true });
    await Deno.writeTextFile(
      `${system}/etc/containers/registries.conf`,
      '[[registry]]\nlocation = "system.example"\n',
    );
    await Deno.writeTextFile(
      `${system}/etc/containers/registries.conf.d/10-a.conf`,
      '[[registry]]\nlocation = "dropin-system.example"\n',
    );
    await Deno.writeTextFile(
      `${home}/.config/containers/registries.conf.d/20-b.conf`,
      '[[registry]]\nlocation = "dropin-user.example"\n',
    );
    const env = (vars: Record<string, string>) => ({ get: (n: string) => vars[n] });
    const locations = async (vars: Record<string, string>) =>
      (await loadRegistriesConf(env(vars), { systemRoot: system })).registries.map((r) =>
        r.location
      ).sort();
    assertEquals(await locations({ HOME: home }), [
      "dropin-system.example",
      "dropin-user.example",
      "system.example",
    ]);
    await Deno.writeTextFile(`${root}/named.conf`, '[[registry]]\nlocation = "named.example"\n');
    assertEquals(
      await locations({ HOME: home, CONTAINERS_REGISTRIES_CONF: `${root}/named.conf` }),
      [
        "dropin-system.example",
        "dropin-user.example",
        "named.example",
      ],
    );
    await Deno.writeTextFile(
      `${home}/.config/containers/registries.conf`,
      '[[registry]]\nlocation = "user.example"\n',
    );
    // The user's own file replaces the system file and its drop-in directory.
    assertEquals(await locations({ HOME: home }), ["dropin-user.example", "user.example"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
