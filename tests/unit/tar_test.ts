import assert from "node:assert/strict";
import { digestOf } from "../../lib/digest.ts";
import { tarHeader } from "../../lib/tar.ts";
import { ArchiveFile, planArchive, writeDockerArchive } from "../../lib/writers/docker_archive.ts";

const decoder = new TextDecoder();

async function gnuTar(args: string[]): Promise<string> {
  const out = await new Deno.Command("tar", { args }).output();
  assert.equal(out.code, 0, decoder.decode(out.stderr));
  return decoder.decode(out.stdout);
}

Deno.test("archive: GNU tar reads the laid-out archive, byte for byte", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const layer = new Uint8Array(1_500_000).map((_, i) => (i * 7) % 251);
    const small = new Uint8Array([1, 2, 3]);
    await Deno.writeFile(`${dir}/layer`, layer);
    await Deno.writeFile(`${dir}/small`, small);
    const config = new TextEncoder().encode('{"rootfs":{}}');
    const image = {
      repoTags: ["localhost:5000/app:v1"],
      configDigest: digestOf(config),
      configBytes: config,
      layers: [
        { digest: digestOf(layer), size: layer.byteLength, path: `${dir}/layer` },
        { digest: digestOf(small), size: 3, path: `${dir}/small` },
        { digest: digestOf(layer), size: layer.byteLength, path: `${dir}/layer` },
      ],
    };
    await writeDockerArchive(`${dir}/a.tar`, image);
    assert.equal((await Deno.stat(`${dir}/a.tar`)).size, planArchive(image).size);
    const names = (await gnuTar(["-tf", `${dir}/a.tar`])).trim().split("\n");
    assert.deepEqual(names, [
      "blobs/",
      "blobs/sha256/",
      `blobs/sha256/${digestOf(config).slice(7)}`,
      `blobs/sha256/${digestOf(layer).slice(7)}`,
      `blobs/sha256/${digestOf(small).slice(7)}`,
      "manifest.json",
      "repositories",
    ]);
    await Deno.mkdir(`${dir}/x`);
    await gnuTar(["-xf", `${dir}/a.tar`, "-C", `${dir}/x`]);
    assert.deepEqual(
      await Deno.readFile(`${dir}/x/blobs/sha256/${digestOf(layer).slice(7)}`),
      layer,
    );
    const manifest = JSON.parse(await Deno.readTextFile(`${dir}/x/manifest.json`));
    assert.equal(manifest[0].Layers.length, 3, "a repeated layer is listed twice, stored once");
    assert.deepEqual(
      (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort(),
      ["a.tar", "layer", "small", "x"],
      "no temporary file remains",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("archive: a discarded archive leaves nothing; a wrong-sized layer is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/layer`, new Uint8Array(10));
    const config = new TextEncoder().encode("{}");
    const archive = await ArchiveFile.create(`${dir}/a.tar`, {
      repoTags: [],
      configDigest: digestOf(config),
      configBytes: config,
      layers: [{ digest: digestOf(new Uint8Array(5)), size: 5 }],
    });
    await assert.rejects(
      archive.copyIn(digestOf(new Uint8Array(5)), `${dir}/layer`),
      /changed size/,
    );
    await archive.discard();
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name), ["layer"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tar: long names split into prefix; sizes beyond 8 GiB use GNU base-256", () => {
  const long = `${"d".repeat(120)}/${"f".repeat(90)}`;
  const header = tarHeader(long, 3, "file");
  assert.equal(decoder.decode(header.subarray(0, 90)), "f".repeat(90));
  assert.equal(decoder.decode(header.subarray(345, 465)), "d".repeat(120));
  const big = tarHeader("big", 10 * 1024 ** 3, "file");
  assert.equal(big[124], 0x80);
  let value = 0n;
  for (let i = 125; i < 136; i++) value = (value << 8n) | BigInt(big[i]);
  assert.equal(value, BigInt(10 * 1024 ** 3));
});
