import assert from "node:assert/strict";
import { digestOf } from "../../lib/digest.ts";
import { IntegrityError } from "../../lib/errors.ts";
import { CacheEntryCorruptError } from "../../lib/store.ts";
import { tarHeader } from "../../lib/tar.ts";
import {
  ArchiveFile,
  planArchive,
  removeAbandonedArchives,
  writeDockerArchive,
} from "../../lib/writers/docker_archive.ts";

const decoder = new TextDecoder();

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

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

Deno.test("archive: a damaged stored blob is evicted, never archived", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const good = new Uint8Array(3000).fill(0x41);
    const digest = digestOf(good);
    const damaged = good.slice();
    damaged.set([1, 2, 3, 4], 1000);
    await Deno.writeFile(`${dir}/blob`, damaged);
    const config = new TextEncoder().encode("{}");
    const archive = await ArchiveFile.create(`${dir}/a.tar`, {
      repoTags: [],
      configDigest: digestOf(config),
      configBytes: config,
      layers: [{ digest, size: good.byteLength }],
    });
    await assert.rejects(
      archive.copyIn(digest, `${dir}/blob`),
      (e) =>
        e instanceof CacheEntryCorruptError && e instanceof IntegrityError &&
        e.digest === digest && /damaged/.test(e.message),
    );
    assert.ok(!(await exists(`${dir}/blob`)), "the damaged entry is evicted");
    // A vanished entry (pruned meanwhile) is reported the same way.
    await assert.rejects(archive.copyIn(digest, `${dir}/blob`), CacheEntryCorruptError);
    // The caller repairs it: the right bytes go in, and the archive commits.
    await Deno.writeFile(`${dir}/blob`, good);
    await archive.copyIn(digest, `${dir}/blob`);
    await archive.commit();
    const names = (await gnuTar(["-tf", `${dir}/a.tar`])).trim().split("\n");
    assert.ok(names.includes(`blobs/sha256/${digest.slice(7)}`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("archive: a file bigger than its member writes nothing past it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bytes = new Uint8Array(1024).fill(0x41);
    const digest = digestOf(bytes);
    await Deno.writeFile(`${dir}/blob`, bytes);
    const config = new TextEncoder().encode("{}");
    const image = {
      repoTags: [],
      configDigest: digestOf(config),
      configBytes: config,
      // The plan says 512: the next member's header starts right after it.
      layers: [{ digest, size: 512 }],
    };
    const archive = await ArchiveFile.create(`${dir}/a.tar`, image);
    await assert.rejects(
      archive.copyIn(digest, `${dir}/blob`),
      (e) => e instanceof IntegrityError && !(e instanceof CacheEntryCorruptError),
    );
    const next = planArchive(image).members.find((m) => m.name === "manifest.json")!;
    const data = await Deno.readFile(archive.path);
    assert.equal(decoder.decode(data.subarray(next.offset, next.offset + 13)), "manifest.json");
    assert.ok(await exists(`${dir}/blob`), "a blob of the right content is not evicted");
    await archive.discard();
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name), ["blob"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("archive: copying a stored blob in refreshes its use time", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bytes = new Uint8Array(100).fill(3);
    await Deno.writeFile(`${dir}/blob`, bytes);
    const old = new Date(Date.now() - 3_600_000);
    await Deno.utime(`${dir}/blob`, old, old);
    const config = new TextEncoder().encode("{}");
    const layer = { digest: digestOf(bytes), size: 100, path: `${dir}/blob` };
    await writeDockerArchive(`${dir}/a.tar`, {
      repoTags: [],
      configDigest: digestOf(config),
      configBytes: config,
      layers: [layer],
    });
    assert.ok(Date.now() - (await Deno.stat(`${dir}/blob`)).mtime!.getTime() < 60_000);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("archive: temporary archives of dead pulls are removed, live ones kept", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const config = new TextEncoder().encode("{}");
    const image = { repoTags: [], configDigest: digestOf(config), configBytes: config, layers: [] };
    const live = await ArchiveFile.create(`${dir}/a.tar`, image);
    // Left by a killed pull (nobody holds its lock), plus one of another destination.
    await Deno.writeFile(`${dir}/.a.tar.0123abcd.partial`, new Uint8Array(10));
    await Deno.writeFile(`${dir}/.b.tar.0123abcd.partial`, new Uint8Array(10));
    assert.equal(await removeAbandonedArchives(`${dir}/a.tar`), 1);
    const names = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    assert.deepEqual(names, [".b.tar.0123abcd.partial", live.path.slice(dir.length + 1)].sort());
    // A second pull to the same destination keeps the first one's file.
    const second = await ArchiveFile.create(`${dir}/a.tar`, image);
    assert.ok(await exists(live.path));
    await second.discard();
    await live.commit();
    assert.ok(await exists(`${dir}/a.tar`));
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
