import assert from "node:assert/strict";
import {
  DOCKER_HUB,
  familiarName,
  formatReference,
  fullName,
  isLoopbackRegistry,
  parseReference,
  type Reference,
  registryApiHost,
} from "../../lib/reference.ts";
import { InvalidReferenceError, UsageError } from "../../lib/errors.ts";
import { prng } from "../helpers/random.ts";

const SHA = "sha256:" + "f".repeat(64);
const SHA_B = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";
const SHA512 = "sha512:" + "a".repeat(128);

/** input → expected reference, then the familiar and full names. */
const VALID: [string, Reference, string, string][] = [
  // Docker's normalisation examples.
  [
    "ubuntu",
    { registry: "docker.io", repository: "library/ubuntu", tag: "latest" },
    "ubuntu",
    "docker.io/library/ubuntu",
  ],
  [
    "ubuntu:22.04",
    { registry: "docker.io", repository: "library/ubuntu", tag: "22.04" },
    "ubuntu",
    "docker.io/library/ubuntu",
  ],
  [
    "library/ubuntu",
    { registry: "docker.io", repository: "library/ubuntu", tag: "latest" },
    "ubuntu",
    "docker.io/library/ubuntu",
  ],
  [
    "docker.io/ubuntu",
    { registry: "docker.io", repository: "library/ubuntu", tag: "latest" },
    "ubuntu",
    "docker.io/library/ubuntu",
  ],
  [
    "docker.io/library/ubuntu",
    { registry: "docker.io", repository: "library/ubuntu", tag: "latest" },
    "ubuntu",
    "docker.io/library/ubuntu",
  ],
  [
    "index.docker.io/nginx",
    { registry: "docker.io", repository: "library/nginx", tag: "latest" },
    "nginx",
    "docker.io/library/nginx",
  ],
  [
    "index.docker.io/user/app",
    { registry: "docker.io", repository: "user/app", tag: "latest" },
    "user/app",
    "docker.io/user/app",
  ],
  [
    "user/app",
    { registry: "docker.io", repository: "user/app", tag: "latest" },
    "user/app",
    "docker.io/user/app",
  ],
  [
    "docker.io/user/app@" + SHA,
    { registry: "docker.io", repository: "user/app", digest: SHA },
    "user/app",
    "docker.io/user/app",
  ],
  [
    "busybox:latest@" + SHA_B,
    { registry: "docker.io", repository: "library/busybox", tag: "latest", digest: SHA_B },
    "busybox",
    "docker.io/library/busybox",
  ],
  [
    "library/foo/bar",
    { registry: "docker.io", repository: "library/foo/bar", tag: "latest" },
    "library/foo/bar",
    "docker.io/library/foo/bar",
  ],
  [
    "other/library",
    { registry: "docker.io", repository: "other/library", tag: "latest" },
    "other/library",
    "docker.io/other/library",
  ],
  [
    "ubuntu-12.04-base",
    { registry: "docker.io", repository: "library/ubuntu-12.04-base", tag: "latest" },
    "ubuntu-12.04-base",
    "docker.io/library/ubuntu-12.04-base",
  ],
  [
    "localhost/foo",
    { registry: "localhost", repository: "foo", tag: "latest" },
    "localhost/foo",
    "localhost/foo",
  ],
  [
    "localhost/fooo/bar",
    { registry: "localhost", repository: "fooo/bar", tag: "latest" },
    "localhost/fooo/bar",
    "localhost/fooo/bar",
  ],
  [
    "localhost:5000/foo:bar",
    { registry: "localhost:5000", repository: "foo", tag: "bar" },
    "localhost:5000/foo",
    "localhost:5000/foo",
  ],
  [
    "localhost:5000/app",
    { registry: "localhost:5000", repository: "app", tag: "latest" },
    "localhost:5000/app",
    "localhost:5000/app",
  ],
  [
    "foo.com/bar",
    { registry: "foo.com", repository: "bar", tag: "latest" },
    "foo.com/bar",
    "foo.com/bar",
  ],
  [
    "quay.io/org/app:v1@" + SHA512,
    { registry: "quay.io", repository: "org/app", tag: "v1", digest: SHA512 },
    "quay.io/org/app",
    "quay.io/org/app",
  ],
  [
    "example.com:8000/private/moonbase",
    { registry: "example.com:8000", repository: "private/moonbase", tag: "latest" },
    "example.com:8000/private/moonbase",
    "example.com:8000/private/moonbase",
  ],
  [
    "127.0.0.1:8000/privatebase",
    { registry: "127.0.0.1:8000", repository: "privatebase", tag: "latest" },
    "127.0.0.1:8000/privatebase",
    "127.0.0.1:8000/privatebase",
  ],
  [
    "[::1]:5000/x",
    { registry: "[::1]:5000", repository: "x", tag: "latest" },
    "[::1]:5000/x",
    "[::1]:5000/x",
  ],
  [
    "[2001:db8::1]/repo:tag",
    { registry: "[2001:db8::1]", repository: "repo", tag: "tag" },
    "[2001:db8::1]/repo",
    "[2001:db8::1]/repo",
  ],
  [
    "[2001:db8::1]:5000/repo:tag@" + SHA,
    { registry: "[2001:db8::1]:5000", repository: "repo", tag: "tag", digest: SHA },
    "[2001:db8::1]:5000/repo",
    "[2001:db8::1]:5000/repo",
  ],
  [
    "test:5000/repo",
    { registry: "test:5000", repository: "repo", tag: "latest" },
    "test:5000/repo",
    "test:5000/repo",
  ],
  [
    "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
    { registry: "sub-dom1.foo.com", repository: "bar/baz/quux", tag: "some-long-tag" },
    "sub-dom1.foo.com/bar/baz/quux",
    "sub-dom1.foo.com/bar/baz/quux",
  ],
  [
    "b.gcr.io/test.example.com/my-app:test.example.com",
    { registry: "b.gcr.io", repository: "test.example.com/my-app", tag: "test.example.com" },
    "b.gcr.io/test.example.com/my-app",
    "b.gcr.io/test.example.com/my-app",
  ],
  [
    "xn--n3h.com/myimage:xn--n3h.com",
    { registry: "xn--n3h.com", repository: "myimage", tag: "xn--n3h.com" },
    "xn--n3h.com/myimage",
    "xn--n3h.com/myimage",
  ],
  // Without a "/", "host:port" is a name and a tag (Docker's FIXME, kept for compatibility).
  [
    "test.com:5000",
    { registry: "docker.io", repository: "library/test.com", tag: "5000" },
    "test.com",
    "docker.io/library/test.com",
  ],
  [
    "192.168.1.1",
    { registry: "docker.io", repository: "library/192.168.1.1", tag: "latest" },
    "192.168.1.1",
    "docker.io/library/192.168.1.1",
  ],
  [
    "localhost:5000",
    { registry: "docker.io", repository: "library/localhost", tag: "5000" },
    "localhost",
    "docker.io/library/localhost",
  ],
  [
    "foo_bar.com:8080",
    { registry: "docker.io", repository: "library/foo_bar.com", tag: "8080" },
    "foo_bar.com",
    "docker.io/library/foo_bar.com",
  ],
  [
    "foo/foo_bar.com:8080",
    { registry: "docker.io", repository: "foo/foo_bar.com", tag: "8080" },
    "foo/foo_bar.com",
    "docker.io/foo/foo_bar.com",
  ],
  // Tags may be upper case; only the repository must be lower case.
  [
    "lowercase:Uppercase",
    { registry: "docker.io", repository: "library/lowercase", tag: "Uppercase" },
    "lowercase",
    "docker.io/library/lowercase",
  ],
  // Separators Docker allows.
  [
    "docker---rules/dock__er.x_y-z",
    { registry: "docker.io", repository: "docker---rules/dock__er.x_y-z", tag: "latest" },
    "docker---rules/dock__er.x_y-z",
    "docker.io/docker---rules/dock__er.x_y-z",
  ],
  [
    "d/docker",
    { registry: "docker.io", repository: "d/docker", tag: "latest" },
    "d/docker",
    "docker.io/d/docker",
  ],
  // A 64-hex string is fine once it has a namespace.
  [
    "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
    {
      registry: "docker.io",
      repository: "library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
      tag: "latest",
    },
    "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
    "docker.io/library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
  ],
  // Hosts are case-insensitive: lower-cased, and "DOCKER.IO" is Hub.
  [
    "Foo.COM:5000/bar",
    { registry: "foo.com:5000", repository: "bar", tag: "latest" },
    "foo.com:5000/bar",
    "foo.com:5000/bar",
  ],
  [
    "DOCKER.IO/nginx",
    { registry: "docker.io", repository: "library/nginx", tag: "latest" },
    "nginx",
    "docker.io/library/nginx",
  ],
  // Boundaries: tag of 128 characters, path of 255.
  [
    "a:" + "t".repeat(128),
    { registry: "docker.io", repository: "library/a", tag: "t".repeat(128) },
    "a",
    "docker.io/library/a",
  ],
  [
    "example.com/" + "a".repeat(255) + ":tag",
    { registry: "example.com", repository: "a".repeat(255), tag: "tag" },
    "example.com/" + "a".repeat(255),
    "example.com/" + "a".repeat(255),
  ],
];

Deno.test("parseReference: valid references, Docker's examples", async (t) => {
  for (const [input, expected, familiar, full] of VALID) {
    await t.step(input.length > 60 ? input.slice(0, 60) + "…" : input, () => {
      const ref = parseReference(input);
      assert.deepEqual(ref, expected);
      assert.equal(familiarName(ref), familiar);
      assert.equal(fullName(ref), full);
      // The familiar form must parse back to the same reference.
      assert.deepEqual(parseReference(formatReference(ref)), ref);
      assert.deepEqual(
        parseReference(fullName(ref) + (ref.tag ? ":" + ref.tag : "")).registry,
        ref.registry,
      );
    });
  }
});

/** input → a fragment the error message must contain. */
const INVALID: [string, string][] = [
  ["", "reference is empty"],
  ["Nginx", "repository name must be lowercase"],
  ["Uppercase:tag", "must be lowercase"],
  ["docker/Docker", "must be lowercase"],
  ["docker.io/docker/Docker", "must be lowercase"],
  ["test:5000/Uppercase/lowercase:tag", "must be lowercase"],
  // distribution v0.6 would take "Foo" for a host; see the note in reference.ts.
  ["Foo/bar", "must be lowercase"],
  ["a//b", 'must not contain "//"'],
  ["docker///docker", 'must not contain "//"'],
  ["docker/", 'must not end with "/"'],
  ["foo.com/", 'must not end with "/"'],
  ["/foo", 'must not start with "/"'],
  [":tag", "repository name is missing"],
  [":justtag", "repository name is missing"],
  ["@" + SHA, "repository name is missing"],
  ["name@", 'digest is missing after "@"'],
  ["name:", 'tag is missing after ":"'],
  ["name:@" + SHA, 'tag is missing after ":"'],
  [" nginx", "whitespace"],
  ["nginx ", "whitespace"],
  ["ngi nx", "whitespace"],
  ["nginx\t", "whitespace"],
  ["https://registry.example.com/app", "a reference has no scheme"],
  ["http://localhost:5000/app", "a reference has no scheme"],
  ["https://github.com/docker/docker", "no scheme"],
  ["1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", "image ID"],
  ["-docker", "invalid repository name component"],
  ["-docker/docker", "invalid repository name component"],
  ["docker-/docker", "invalid repository name component"],
  ["-docker-/docker", "invalid repository name component"],
  ["____/____", "invalid repository name component"],
  ["_docker/_docker", "invalid repository name component"],
  ["dock..er/docker", "invalid registry host"],
  ["dock..er/docker", "invalid registry host"],
  ["dock..er/docker", "invalid registry host"],
  ["dock___er/docker", "invalid repository name component"],
  ["aa/asdf$$^/aa", "invalid repository name component"],
  ["-docker.io/docker/docker", "invalid registry host"],
  ["foo-.com/bar", "invalid registry host"],
  ["foo..com/bar", "invalid registry host"],
  [".foo/bar", "invalid registry host"],
  ["foo_bar.com/baz", "invalid registry host"],
  [":5000/foo", "invalid registry host"],
  ["foo:bar/baz", "invalid registry port"],
  ["foo:/baz", "invalid registry port"],
  ["localhost:0/foo", "invalid registry port"],
  ["localhost:65536/foo", "invalid registry port"],
  ["localhost:123456/foo", "invalid registry port"],
  ["[fc00::1]", "invalid repository name component"],
  ["[fc00::1]:5000", "invalid repository name component"],
  ["[2001:db8::1]:tag", "invalid repository name component"],
  ["fc00::1:5000/debian", "invalid registry"],
  ["[fe80::1%eth0]:5000/debian", "invalid registry host"],
  ["[2001:db8:3:4::192.0.2.33]:5000/debian", "invalid registry host"],
  ["[::1/foo", "invalid registry host"],
  ["[::1]x/foo", "invalid registry host"],
  ["[]/foo", "invalid repository name component"],
  ["[]:5000/foo", "invalid registry host"],
  ["[:::]/foo", "invalid registry host"],
  ["[1:2:3:4:5:6:7:8:9]/foo", "invalid registry host"],
  ["name:-tag", "invalid tag"],
  ["name:.tag", "invalid tag"],
  ["name:ta+g", "invalid tag"],
  ["a:" + "t".repeat(129), "invalid tag"],
  ["foo:bar:baz", "invalid repository name component"],
  ["name@sha256", "digest must be algorithm:hex"],
  ["name@:abc", "digest must be algorithm:hex"],
  ["name@md5:" + "f".repeat(32), 'unsupported digest algorithm "md5"'],
  ["name@sha384:" + "f".repeat(96), "unsupported digest algorithm"],
  ["name@SHA256:" + "f".repeat(64), "unsupported digest algorithm"],
  ["repo@sha256:" + "f".repeat(34), "sha256 digest must have 64 hex digits, got 34"],
  ["repo@sha256:" + "f".repeat(65), "must have 64 hex digits"],
  ["repo@sha512:" + "f".repeat(64), "sha512 digest must have 128 hex digits"],
  ["repo@sha256:" + "F".repeat(64), "lower-case hexadecimal"],
  ["repo@sha256:" + "g".repeat(64), "lower-case hexadecimal"],
  ["repo@sha256:../../etc/passwd", "lower-case hexadecimal"],
  ["repo@" + SHA + "@" + SHA, "lower-case hexadecimal"],
  ["x:tag@sha256:zz", "lower-case hexadecimal"],
  ["domain/" + "a".repeat(256) + ":tag", "must not be more than 255 characters"],
  // The path limit counts "library/" for Hub, as Docker does after normalising.
  ["a".repeat(250), "must not be more than 255 characters"],
  ["ünïcode", "invalid repository name component"],
  ["x".repeat(5000), "longer than 4096"],
];

Deno.test("parseReference: invalid references throw InvalidReferenceError", async (t) => {
  for (const [input, fragment] of INVALID) {
    await t.step(JSON.stringify(input.length > 60 ? input.slice(0, 60) + "…" : input), () => {
      assert.throws(
        () => parseReference(input),
        (e: unknown) => {
          assert.ok(e instanceof InvalidReferenceError, `not an InvalidReferenceError: ${e}`);
          assert.ok(e instanceof UsageError);
          assert.equal(e.exitCode, 2);
          assert.ok(
            e.message.includes(fragment),
            `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(fragment)}`,
          );
          assert.ok(e.message.startsWith("invalid reference "), e.message);
          return true;
        },
      );
    });
  }
});

Deno.test("parseReference: messages quote the input and give hints", () => {
  const err = (input: string) => {
    try {
      parseReference(input);
    } catch (e) {
      if (e instanceof InvalidReferenceError) return e;
    }
    throw new Error(`${input} did not fail`);
  };
  assert.equal(
    err("Nginx").message,
    'invalid reference "Nginx": repository name must be lowercase',
  );
  assert.equal(err("Nginx").hint, 'did you mean "nginx"?');
  assert.equal(err("Foo/Bar:Tag").hint, 'did you mean "foo/bar"?');
  assert.equal(err("quay.io/Org/App").hint, 'did you mean "quay.io/org/app"?');
  assert.equal(err("Bad$Name").hint, undefined);
  assert.equal(
    err("https://ghcr.io/org/app:1").hint,
    "write it without the scheme: ghcr.io/org/app:1",
  );
  assert.match(err("0".repeat(64)).hint ?? "", /name@sha256:/);
  // Long hostile input is shortened in the message.
  const long = err("A".repeat(3000));
  assert.ok(long.message.length < 200, long.message);
});

Deno.test("parseReference: non-string input is an InvalidReferenceError", () => {
  for (const bad of [undefined, null, 42, {}]) {
    assert.throws(() => parseReference(bad as unknown as string), InvalidReferenceError);
  }
});

Deno.test("registryApiHost maps Hub to registry-1.docker.io", () => {
  assert.equal(registryApiHost(parseReference("nginx")), "registry-1.docker.io");
  assert.equal(registryApiHost(DOCKER_HUB), "registry-1.docker.io");
  assert.equal(registryApiHost("index.docker.io"), "registry-1.docker.io");
  assert.equal(registryApiHost("Docker.IO"), "registry-1.docker.io");
  assert.equal(registryApiHost(parseReference("ghcr.io/o/a")), "ghcr.io");
  assert.equal(registryApiHost("localhost:5000"), "localhost:5000");
  assert.equal(registryApiHost("docker.io:443"), "docker.io:443");
});

Deno.test("formatReference: familiar form with tag and/or digest", () => {
  const cases: [Reference, string][] = [
    [{ registry: "docker.io", repository: "library/nginx", tag: "latest" }, "nginx:latest"],
    [{ registry: "docker.io", repository: "library/nginx", digest: SHA }, "nginx@" + SHA],
    [
      { registry: "docker.io", repository: "library/nginx", tag: "1", digest: SHA },
      "nginx:1@" + SHA,
    ],
    [{ registry: "docker.io", repository: "user/app", tag: "x" }, "user/app:x"],
    [{ registry: "docker.io", repository: "library/a/b" }, "library/a/b"],
    [{ registry: "quay.io", repository: "org/app", tag: "v1" }, "quay.io/org/app:v1"],
    [{ registry: "localhost:5000", repository: "app", tag: "t" }, "localhost:5000/app:t"],
    [{ registry: "[::1]:5000", repository: "x", digest: SHA }, "[::1]:5000/x@" + SHA],
  ];
  for (const [ref, want] of cases) assert.equal(formatReference(ref), want);
});

Deno.test("isLoopbackRegistry", () => {
  const yes = [
    "localhost",
    "localhost:5000",
    "LOCALHOST:5000",
    "127.0.0.1",
    "127.0.0.1:5000",
    "127.1.2.3:80",
    "127.255.255.255",
    "[::1]",
    "[::1]:5000",
    "[0:0:0:0:0:0:0:1]:5000",
    "[0000::0001]",
    "[::ffff:7f00:1]:5000",
  ];
  const no = [
    "128.0.0.1",
    "126.0.0.1:5000",
    "127.0.0.256",
    "127.0.0",
    "127.0.0.1.5",
    "127.0.0.1:",
    "127.0.0.1:abc",
    "localhost.example.com",
    "mylocalhost",
    "localhost:5000x",
    "docker.io",
    "10.0.0.1:5000",
    "[::2]",
    "[::1",
    "[::1]5000",
    "[::1::]",
    "[1::1]",
    "[::ffff:8000:1]",
    "[fe80::1]:5000",
    "",
    "[]",
    "::1",
  ];
  for (const r of yes) assert.equal(isLoopbackRegistry(r), true, r);
  for (const r of no) assert.equal(isLoopbackRegistry(r), false, r);
  // Works on what parseReference produces.
  assert.equal(isLoopbackRegistry(parseReference("127.0.0.1:5000/x").registry), true);
  assert.equal(isLoopbackRegistry(parseReference("[::1]:5000/x").registry), true);
  assert.equal(isLoopbackRegistry(parseReference("128.0.0.1:5000/x").registry), false);
  assert.equal(isLoopbackRegistry(parseReference("x").registry), false);
});

Deno.test("parseReference: seeded fuzz never throws anything else, and round-trips", () => {
  const rand = prng(0x1ee7);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const alphabet = "abcz09AZ._-/:@[]% \t\u00e9";
  const pieces = [
    "a",
    "library",
    "nginx",
    "docker.io",
    "index.docker.io",
    "localhost",
    "localhost:5000",
    "[::1]",
    "127.0.0.1",
    "/",
    ":",
    "@",
    "__",
    "--",
    ".",
    "latest",
    SHA,
    SHA512,
    "sha256:",
    "f".repeat(64),
    "Up",
  ];
  const seeds = VALID.map(([input]) => input);
  const start = performance.now();
  let accepted = 0;
  for (let n = 0; n < 5000; n++) {
    let input: string;
    const mode = n % 3;
    if (mode === 0) {
      input = "";
      const len = Math.floor(rand() * 40);
      for (let i = 0; i < len; i++) input += pick([...alphabet]);
    } else if (mode === 1) {
      input = "";
      const len = 1 + Math.floor(rand() * 6);
      for (let i = 0; i < len; i++) input += pick(pieces);
    } else {
      // Mutate a valid reference: delete, duplicate or replace a character.
      const chars = [...pick(seeds)];
      const edits = 1 + Math.floor(rand() * 3);
      for (let e = 0; e < edits; e++) {
        const at = Math.floor(rand() * (chars.length + 1));
        const op = rand();
        if (op < 0.33) chars.splice(at, 1);
        else if (op < 0.66) chars.splice(at, 0, pick([...alphabet]));
        else chars.splice(at, 1, pick([...alphabet]));
      }
      input = chars.join("");
    }
    let ref: Reference;
    try {
      ref = parseReference(input);
    } catch (e) {
      if (e instanceof InvalidReferenceError) continue;
      throw new Error(`${JSON.stringify(input)} threw ${e}`);
    }
    accepted++;
    // Invariants of anything accepted.
    assert.ok(ref.tag !== undefined || ref.digest !== undefined, input);
    assert.equal(ref.repository, ref.repository.toLowerCase(), input);
    assert.ok(ref.repository.length <= 255, input);
    assert.ok(!/\s/.test(fullName(ref)), input);
    assert.deepEqual(parseReference(formatReference(ref)), ref, input);
  }
  assert.ok(accepted > 100, `only ${accepted} inputs were accepted: the fuzzer is too weak`);
  assert.ok(performance.now() - start < 5000, "fuzzing took too long");
});

Deno.test("parseReference: hostile long inputs are rejected fast", () => {
  const start = performance.now();
  const hostile = [
    "a".repeat(4096) + "!",
    "a-".repeat(2000) + "!",
    "a" + "-".repeat(4000) + "!",
    "a.".repeat(2000) + "/x",
    "x/" + "a_".repeat(2000),
    "[" + ":".repeat(4000) + "]/x",
    "x:" + "\u0000".repeat(4000),
    "a".repeat(10_000_000),
  ];
  for (const input of hostile) {
    assert.throws(() => parseReference(input), InvalidReferenceError);
  }
  assert.ok(performance.now() - start < 1000, "hostile inputs took too long");
});
