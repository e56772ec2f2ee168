import assert from "node:assert/strict";
import { join } from "node:path";
import { Checkpointer, InOrderHasher } from "../../lib/blob_progress.ts";
import { digestOf } from "../../lib/digest.ts";
import type { Segment } from "../../lib/segments.ts";
import type { PartialState } from "../../lib/store.ts";

const KiB = 1024;

Deno.test("in-order hasher: segments arriving out of order hash as the whole blob", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const blob = new Uint8Array(3 * 1024 * KiB + 5).map((_, i) => (i * 7) % 251);
    const path = join(dir, "file");
    const offset = 100; // the blob's place in the file, as in an archive
    await Deno.writeFile(path, new Uint8Array(offset + blob.byteLength));
    const file = await Deno.open(path, { write: true });
    const third = Math.ceil(blob.byteLength / 3);
    const segments: Segment[] = [0, 1, 2].map((i) => ({
      start: i * third,
      end: Math.min(blob.byteLength, (i + 1) * third),
      written: 0,
    }));
    const hasher = new InOrderHasher("sha256", { path, offset }, () => segments);
    // The last segment first, then the middle, then the first in two pieces: written, then offered.
    const arrive = async (segment: Segment, length: number) => {
      const position = segment.start + segment.written;
      const bytes = blob.subarray(position, position + length);
      await file.seek(offset + position, Deno.SeekMode.Start);
      await file.write(bytes);
      segment.written += length;
      hasher.offer(position, bytes);
    };
    await arrive(segments[2], segments[2].end - segments[2].start);
    assert.equal(hasher.cursor, 0);
    await arrive(segments[1], segments[1].end - segments[1].start);
    await arrive(segments[0], 1000);
    assert.equal(hasher.cursor, 1000, "bytes at the cursor are hashed at once");
    await arrive(segments[0], segments[0].end - segments[0].start - 1000);
    file.close();
    await hasher.settle();
    assert.equal(hasher.cursor, blob.byteLength);
    assert.equal(hasher.digest(), digestOf(blob));
    // A restart hashes from byte 0 again.
    await hasher.reset();
    assert.equal(hasher.cursor, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpointer: at most one save per interval, copies of the segments, on demand", async () => {
  const segments: Segment[] = [{ start: 0, end: 10, written: 3 }, {
    start: 10,
    end: 20,
    written: 0,
  }];
  const saved: PartialState[] = [];
  const checkpoints = new Checkpointer(20, () => segments, (state) => {
    saved.push(state);
    return Promise.resolve();
  }, 60_000);
  checkpoints.maybe();
  checkpoints.maybe();
  await checkpoints.settled();
  assert.equal(saved.length, 1);
  segments[0].written = 10;
  assert.equal(saved[0].segments[0].written, 3, "a copy, not the live segments");
  await checkpoints.now();
  assert.equal(saved.length, 2);
  assert.deepEqual(saved[1], { size: 20, segments });
  // Segments of unknown end (schema1) are never saved.
  const unknown = new Checkpointer(-1, () => [{ start: 0, end: Infinity, written: 5 }], () => {
    throw new Error("saved");
  }, 0);
  await unknown.now();
});
