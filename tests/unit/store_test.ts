/**
 * The blob store on its own: resume state validity, a cache only its user can change, locks
 * and partials that never follow planted symlinks, scratch stores of dead processes removed.
 */
import assert from "node:assert/strict";
import { pruneCache } from "../../lib/cache.ts";
import { digestOf } from "../../lib/digest.ts";
import { LocalIoError } from "../../lib/errors.ts";
import { BlobStore, secureCacheDir, validPartialState } from "../../lib/store.ts";

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const MiB = 1024 * 1024;
const DIGEST = digestOf(new Uint8Array([1]));

Deno.test("partial state: an interrupted segmented download is resumable", () => {
  // 4 segments of 1 MiB; the first half-written, the third complete, the others not started.
  const segments = [
    { start: 0, end: MiB, written: MiB / 2 },
    { start: MiB, end: 2 * MiB, written: 0 },
    { start: 2 * MiB, end: 3 * MiB, written: MiB },
    { start: 3 * MiB, end: 4 * MiB, written: 0 },
  ];
  // The file ends where the last written byte is (sparse before it).
  assert.ok(validPartialState({ size: 4 * MiB, segments }, 4 * MiB, 3 * MiB));
  // Nothing written beyond the file's end may be claimed.
  assert.ok(!validPartialState({ size: 4 * MiB, segments }, 4 * MiB, 3 * MiB - 1));
  // Only segments written at the start, file shorter than the next segment's start: valid.
  const early = segments.map((s, i) => ({ ...s, written: i === 0 ? 1000 : 0 }));
  assert.ok(validPartialState({ size: 4 * MiB, segments: early }, 4 * MiB, 1000));
});

Deno.test("partial state: malformed or foreign states are refused", () => {
  const ok = { size: 10, segments: [{ start: 0, end: 10, written: 3 }] };
  assert.ok(validPartialState(ok, 10, 3));
  const bad: unknown[] = [
    null,
    { size: 11, segments: ok.segments },
    { size: 10, segments: [] },
    { size: 10, segments: [{ start: 0, end: 10, written: -1 }] },
    { size: 10, segments: [{ start: 0, end: 10, written: 11 }] },
    { size: 10, segments: [{ start: 0, end: 5, written: 0 }] },
    { size: 10, segments: [{ start: 0, end: 5, written: 0 }, { start: 4, end: 10, written: 0 }] },
    { size: 10, segments: [{ start: 0, end: 10, written: 1.5 }] },
    { size: 10, segments: [{ start: "0", end: 10, written: 0 }] },
  ];
  for (const state of bad) assert.ok(!validPartialState(state, 10, 10), JSON.stringify(state));
});

Deno.test("cache: a new cache is private; blobs are committed 0600", async () => {
  await withDir(async (dir) => {
    const store = await BlobStore.open(`${dir}/a/cache`);
    assert.equal((await Deno.stat(`${dir}/a/cache`)).mode! & 0o777, 0o700);
    const temp = store.tempPath("x");
    await Deno.writeFile(temp, new Uint8Array([1]));
    await store.commit(temp, DIGEST);
    assert.equal((await Deno.stat(store.blobPath(DIGEST))).mode! & 0o777, 0o600);
  });
});

Deno.test("cache: an existing cache readable by others is made private", async () => {
  await withDir(async (dir) => {
    await Deno.mkdir(`${dir}/cache`, { mode: 0o755 });
    await Deno.chmod(`${dir}/cache`, 0o755);
    await BlobStore.open(`${dir}/cache`);
    assert.equal((await Deno.stat(`${dir}/cache`)).mode! & 0o777, 0o700);
  });
});

Deno.test("cache: unsafe roots and areas are refused with a hint", async () => {
  await withDir(async (dir) => {
    await Deno.mkdir(`${dir}/gw`);
    await Deno.chmod(`${dir}/gw`, 0o770);
    await assert.rejects(
      BlobStore.open(`${dir}/gw`),
      (e) =>
        e instanceof LocalIoError && /writable by other users/.test(e.message) &&
        e.hint === `chmod 700 ${dir}/gw`,
    );
    await Deno.mkdir(`${dir}/real`, { mode: 0o700 });
    await Deno.symlink(`${dir}/real`, `${dir}/link`);
    await assert.rejects(BlobStore.open(`${dir}/link`), /symbolic link/);
    await Deno.mkdir(`${dir}/c`, { mode: 0o700 });
    await Deno.symlink(`${dir}/real`, `${dir}/c/blobs`);
    await assert.rejects(BlobStore.open(`${dir}/c`), /blobs in the cache is a symbolic link/);
    await assert.rejects(pruneCache(`${dir}/c`), LocalIoError);
    if (Deno.uid() === 0) {
      await Deno.mkdir(`${dir}/theirs`, { mode: 0o700 });
      await Deno.chown(`${dir}/theirs`, 4242, 4242);
      await assert.rejects(secureCacheDir(`${dir}/theirs`, { create: true }), /another user/);
    }
    // Checking without creating leaves a missing cache missing.
    await secureCacheDir(`${dir}/none`, { create: false });
    assert.ok(!(await Deno.lstat(`${dir}/none`).then(() => true, () => false)));
  });
});

Deno.test("cache: a planted lock symlink is replaced, not followed", async () => {
  await withDir(async (dir) => {
    const store = await BlobStore.open(`${dir}/cache`);
    const lockPath = `${dir}/cache/locks/sha256/${DIGEST.slice(7)}.lock`;
    await Deno.symlink(`${dir}/created`, lockPath);
    const lock = await store.lock(DIGEST);
    lock!.release();
    assert.ok(!(await Deno.lstat(`${dir}/created`).then(() => true, () => false)));
    assert.ok((await Deno.lstat(lockPath)).isFile);
  });
});

Deno.test("cache: a planted partial symlink is removed by readPartial, never written", async () => {
  await withDir(async (dir) => {
    const store = await BlobStore.open(`${dir}/cache`);
    await Deno.writeTextFile(`${dir}/victim`, "victim");
    await Deno.symlink(`${dir}/victim`, store.partialPath(DIGEST));
    await Deno.writeTextFile(
      `${store.partialPath(DIGEST)}.json`,
      JSON.stringify({ size: 6, segments: [{ start: 0, end: 6, written: 6 }] }),
    );
    assert.equal(await store.readPartial(DIGEST, 6), undefined);
    assert.ok(!(await Deno.lstat(store.partialPath(DIGEST)).then(() => true, () => false)));
    await Deno.symlink(`${dir}/victim`, store.partialPath(DIGEST));
    const path = await store.createPartial(DIGEST);
    assert.ok((await Deno.lstat(path)).isFile);
    assert.equal(await Deno.readTextFile(`${dir}/victim`), "victim");
  });
});

Deno.test("cache: prune never follows symlinks inside the cache", async () => {
  await withDir(async (dir) => {
    await BlobStore.open(`${dir}/cache`);
    await Deno.mkdir(`${dir}/victim`);
    await Deno.writeTextFile(`${dir}/victim/keep`, "x");
    await Deno.symlink(`${dir}/victim`, `${dir}/cache/partial/sha256/dir-link`);
    await Deno.symlink(`${dir}/victim/keep`, `${dir}/cache/blobs/sha256/file-link`);
    await pruneCache(`${dir}/cache`);
    assert.equal(await Deno.readTextFile(`${dir}/victim/keep`), "x");
  });
});

Deno.test("cache: touch and use refresh a blob's use time", async () => {
  await withDir(async (dir) => {
    const store = await BlobStore.open(`${dir}/cache`);
    const temp = store.tempPath("x");
    await Deno.writeFile(temp, new Uint8Array([1]));
    await store.commit(temp, DIGEST);
    const old = new Date(Date.now() - 3_600_000);
    await Deno.utime(store.blobPath(DIGEST), old, old);
    assert.equal(await store.use(DIGEST), 1);
    const mtime = (await Deno.stat(store.blobPath(DIGEST))).mtime!.getTime();
    assert.ok(Date.now() - mtime < 60_000);
    assert.equal(await store.touch(digestOf(new Uint8Array([2]))), false);
  });
});

Deno.test("scratch stores: a dead process's store is removed, a live one kept", async () => {
  await withDir(async (dir) => {
    const live = await BlobStore.createIn(dir);
    // A store left by a killed process: its lock file exists and nobody holds it.
    await Deno.mkdir(`${dir}/.imgpull-deadbeef`);
    await Deno.writeFile(`${dir}/.imgpull-deadbeef/.lock`, new Uint8Array());
    await Deno.writeFile(`${dir}/.imgpull-deadbeef/junk`, new Uint8Array(10));
    const next = await BlobStore.createIn(dir);
    const names = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    assert.deepEqual(
      names,
      [live.root, next.root].map((r) => r.slice(dir.length + 1)).sort(),
    );
    await live.remove();
    await next.remove();
  });
});
