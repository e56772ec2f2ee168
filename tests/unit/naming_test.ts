import assert from "node:assert/strict";
import { defaultOutputName, repoTagFor, repoTagFromName } from "../../lib/pull.ts";
import { UsageError } from "../../lib/errors.ts";
import { parseReference } from "../../lib/reference.ts";
import { archiveDocuments } from "../../lib/writers/docker_archive.ts";

const HEX = "a".repeat(64);

Deno.test("naming: default output follows the old script and never holds ':'", () => {
  const cases: [string, string][] = [
    ["nginx", "library_nginx.tar"],
    ["nginx:latest", "library_nginx.tar"],
    ["ubuntu:20.04", "library_ubuntu_20.04.tar"],
    ["localhost:5000/org/app:v1", "org_app_v1.tar"],
    [`nginx@sha256:${HEX}`, `library_nginx_sha256-${HEX.slice(0, 12)}.tar`],
    [`nginx:1.27@sha256:${HEX}`, "library_nginx_1.27.tar"],
  ];
  for (const [input, expected] of cases) {
    const name = defaultOutputName(parseReference(input));
    assert.equal(name, expected, input);
    assert.ok(!name.includes(":"));
  }
});

Deno.test("naming: RepoTags use familiar names and a valid tag for digest pulls", () => {
  assert.equal(repoTagFor(parseReference("nginx")), "nginx:latest");
  assert.equal(repoTagFor(parseReference("quay.io/org/app:v1")), "quay.io/org/app:v1");
  assert.equal(repoTagFor(parseReference("localhost:5000/app")), "localhost:5000/app:latest");
  assert.equal(repoTagFor(parseReference(`nginx@sha256:${HEX}`)), `nginx:sha256-${HEX}`);
  assert.equal(repoTagFor(parseReference(`nginx:1.27@sha256:${HEX}`)), "nginx:1.27");
});

Deno.test("naming: IPv6 registries get names that docker, podman and containerd load", () => {
  assert.equal(repoTagFor(parseReference("[::1]:5000/app:1")), "localhost:5000/app:1");
  assert.equal(repoTagFor(parseReference("[::1]/app")), "localhost/app:latest");
  assert.equal(
    repoTagFor(parseReference("[fd00::7]:5000/org/app:1")),
    "ipv6-fd00--7:5000/org/app:1",
  );
  // Each must parse back as a reference with a plain host name.
  for (const ref of ["[::1]:5000/app:1", "[fd00::7]:5000/org/app:1"]) {
    const parsed = parseReference(repoTagFor(parseReference(ref)));
    assert.ok(!parsed.registry.includes("["), ref);
  }
});

Deno.test("naming: --tag NAME[:TAG] chooses RepoTags", () => {
  assert.equal(repoTagFromName("myapp"), "myapp:latest");
  assert.equal(repoTagFromName("registry.local/team/app:v2"), "registry.local/team/app:v2");
  assert.equal(repoTagFromName("docker.io/library/nginx:1"), "nginx:1");
  assert.throws(() => repoTagFromName(`app@sha256:${HEX}`), UsageError);
  assert.throws(() => repoTagFromName("Bad Name"), UsageError);
});

Deno.test("docker-archive: manifest.json and repositories documents", () => {
  const docs = archiveDocuments({
    repoTags: ["localhost:5000/app:v1"],
    configDigest: `sha256:${HEX}`,
    configBytes: new Uint8Array(),
    layers: [{ digest: `sha256:${"b".repeat(64)}`, path: "/x", size: 1 }],
  });
  assert.deepEqual(JSON.parse(docs.manifest), [{
    Config: `blobs/sha256/${HEX}`,
    RepoTags: ["localhost:5000/app:v1"],
    Layers: [`blobs/sha256/${"b".repeat(64)}`],
  }]);
  assert.deepEqual(JSON.parse(docs.repositories), { "localhost:5000/app": { v1: HEX } });
});
