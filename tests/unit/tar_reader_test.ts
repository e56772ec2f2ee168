/**
 * The tar reader and `--import-tar` against hostile input: every bad size is an
 * InvalidContentError (exit 8) without looping, and an abort stops the import.
 */
import assert from "node:assert/strict";
import { importTar } from "../../lib/cache.ts";
import { digestOf } from "../../lib/digest.ts";
import { InterruptedError, InvalidContentError } from "../../lib/errors.ts";
import { listTar } from "../../lib/tar_reader.ts";
import { writeDockerArchive } from "../../lib/writers/docker_archive.ts";
import { HOSTILE_TARS, hostileTar } from "../helpers/scenarios/security_cache.ts";

for (const kind of HOSTILE_TARS) {
  Deno.test(`tar reader: ${kind} member size is invalid content`, async () => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeFile(`${dir}/h.tar`, hostileTar(kind));
      using file = await Deno.open(`${dir}/h.tar`);
      const started = performance.now();
      await assert.rejects(listTar(file), InvalidContentError);
      assert.ok(performance.now() - started < 1000);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

/** A docker-archive with two layers written by imgpull itself. */
async function savedArchive(dir: string): Promise<string> {
  const config = new TextEncoder().encode('{"rootfs":{}}');
  const layers = [new Uint8Array(3 * 1024 * 1024).fill(7), new Uint8Array(5000).fill(9)];
  for (const [i, l] of layers.entries()) await Deno.writeFile(`${dir}/l${i}`, l);
  await writeDockerArchive(`${dir}/saved.tar`, {
    repoTags: ["app:v1"],
    configDigest: digestOf(config),
    configBytes: config,
    layers: layers.map((l, i) => ({
      digest: digestOf(l),
      size: l.byteLength,
      path: `${dir}/l${i}`,
    })),
  });
  return `${dir}/saved.tar`;
}

Deno.test("import-tar: a docker-archive imports its layers", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const tar = await savedArchive(dir);
    const result = await importTar(`${dir}/cache`, tar);
    assert.equal(result.layers, 2);
    using file = await Deno.open(tar);
    const names = (await listTar(file)).map((e) => e.name);
    assert.ok(names.includes("manifest.json"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("import-tar: an aborted signal rejects with InterruptedError", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const tar = await savedArchive(dir);
    const before = new AbortController();
    before.abort(new InterruptedError("SIGTERM"));
    await assert.rejects(
      importTar(`${dir}/cache`, tar, () => {}, { signal: before.signal }),
      (e) => e instanceof InterruptedError && /SIGTERM/.test(e.message),
    );
    // Aborted mid-way (after the first layer), without a reason of ours: still InterruptedError.
    const during = new AbortController();
    await assert.rejects(
      importTar(`${dir}/cache2`, tar, () => during.abort(), { signal: during.signal }),
      InterruptedError,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
