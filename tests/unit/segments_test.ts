import assert from "node:assert/strict";
import { planSegments, type Segment, SegmentScheduler } from "../../lib/segments.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const limits = { connections: 16, maxSegmentBytes: 8 * MiB, minSegmentBytes: 512 * KiB };

function covers(segments: Segment[], size: number): void {
  let next = 0;
  for (const s of segments) {
    assert.equal(s.start, next, `segments ${JSON.stringify(segments)}`);
    assert.ok(s.end > s.start);
    next = s.end;
  }
  assert.equal(next, size);
}

Deno.test("segments: one per connection within the limits, covering the blob", () => {
  assert.deepEqual(planSegments(900 * KiB, limits), [{ start: 0, end: 900 * KiB, written: 0 }]);
  assert.equal(planSegments(16 * MiB, limits).length, 16);
  assert.equal(planSegments(512 * MiB, limits).length, 64);
  assert.equal(planSegments(2 * MiB, limits).length, 4); // never under 512 KiB
  assert.equal(planSegments(64 * MiB, { ...limits, connections: 1 }).length, 1);
  assert.equal(planSegments(25_000_000, limits).length, 16);
  assert.equal(planSegments(3 * MiB, limits).length, 6, "medium blobs use several connections");
  for (
    const size of [1, 1 * MiB, 3 * MiB + 17, 8 * MiB + 1, 25_000_000, 100 * MiB + 1, 512 * MiB + 7]
  ) {
    covers(planSegments(size, limits), size);
  }
});

Deno.test("segments: queued segments are handed out in order, then nothing without progress", () => {
  const segments = planSegments(4 * MiB, { ...limits, connections: 4 });
  const scheduler = new SegmentScheduler(segments, { minSplitBytes: 256 * KiB });
  assert.deepEqual(
    [0, 1, 2, 3].map(() => scheduler.take(0)?.start),
    [0, 1, 2, 3].map((i) => i * MiB),
  );
  assert.equal(scheduler.queued, 0);
  // Nothing is known of the active segments' rates: no split.
  assert.equal(scheduler.take(10), undefined);
});

Deno.test("segments: the tail that would finish last is split for an idle connection", () => {
  const segments = planSegments(32 * MiB, { ...limits, connections: 2, maxSegmentBytes: 16 * MiB });
  const scheduler = new SegmentScheduler(segments, { minSplitBytes: 256 * KiB });
  const [a, b] = [scheduler.take(0)!, scheduler.take(0)!];
  scheduler.began(a, 0);
  scheduler.began(b, 0);
  scheduler.progressed(a, 0, 50); // first bytes after 50 ms: a request costs 50 ms
  scheduler.progressed(b, 0, 50);
  scheduler.progressed(a, 16 * MiB, 1050); // a is done
  scheduler.progressed(b, 4 * MiB, 1050); // b has 12 MiB left, 3 s at its rate
  a.written = 16 * MiB;
  scheduler.ended(a);
  const tail = scheduler.take(1050)!;
  assert.equal(tail.start, b.end);
  assert.equal(b.end, 16 * MiB + 4 * MiB + 6 * MiB); // half of what b has left
  assert.equal(tail.end, 32 * MiB);
  assert.equal(tail.written, 0);
  covers(scheduler.segments, 32 * MiB);
  assert.equal(scheduler.segments.length, 3);
});

Deno.test("segments: no split when the half left takes less than a new request's start", () => {
  const segments = planSegments(2 * MiB, { ...limits, connections: 2 });
  const scheduler = new SegmentScheduler(segments, { minSplitBytes: 256 * KiB });
  const [a, b] = [scheduler.take(0)!, scheduler.take(0)!];
  scheduler.began(a, 0);
  scheduler.began(b, 0);
  scheduler.progressed(b, 0, 200); // a request costs 200 ms here
  scheduler.progressed(b, 512 * KiB - 64 * KiB, 400); // 64 KiB left: ~30 ms
  scheduler.ended(a);
  assert.equal(scheduler.take(400), undefined);
  assert.equal(b.end, 2 * MiB);
});

Deno.test("segments: never split below what has arrived, nor into pieces under the minimum", () => {
  const scheduler = new SegmentScheduler([{ start: 0, end: 1 * MiB, written: 0 }], {
    minSplitBytes: 256 * KiB,
  });
  const a = scheduler.take(0)!;
  scheduler.began(a, 0);
  scheduler.progressed(a, 1, 1);
  scheduler.progressed(a, 700 * KiB, 10_001); // very slow; 324 KiB left
  assert.equal(scheduler.take(10_001), undefined); // halves would be under 256 KiB
  const b = new SegmentScheduler([{ start: 0, end: 4 * MiB, written: 0 }], {
    minSplitBytes: 256 * KiB,
  });
  const s = b.take(0)!;
  b.began(s, 0);
  b.progressed(s, 1, 1);
  b.progressed(s, 1 * MiB + 5, 10_001);
  const tail = b.take(10_001)!;
  assert.ok(tail.start >= 1 * MiB + 5 + 256 * KiB, `${tail.start}`);
  assert.equal(tail.start % (64 * KiB), 0);
  covers(b.segments, 4 * MiB);
});

Deno.test("segments: a resumed segment's earlier bytes do not count as its rate", () => {
  const scheduler = new SegmentScheduler([{ start: 0, end: 64 * MiB, written: 32 * MiB }], {
    minSplitBytes: 256 * KiB,
  });
  const a = scheduler.take(0)!;
  scheduler.began(a, 0);
  scheduler.progressed(a, 32 * MiB, 50);
  scheduler.progressed(a, 32 * MiB + 1 * MiB, 1050); // 1 MiB/s, 31 MiB left
  const tail = scheduler.take(1050)!;
  assert.equal(a.end, tail.start);
  assert.ok(tail.start > 48 * MiB && tail.start < 49 * MiB, `${tail.start}`);
});

Deno.test("segments: a blob over one connection is spread when its source proves far or slow", () => {
  const one = () => {
    const scheduler = new SegmentScheduler([{ start: 0, end: 64 * MiB, written: 0 }], {
      minSplitBytes: 256 * KiB,
    });
    const segment = scheduler.take(0)!;
    scheduler.began(segment, 0);
    return { scheduler, segment };
  };
  // Far: no byte for a quarter of a second (a slow first byte alone is a handshake, maybe).
  let { scheduler, segment } = one();
  assert.equal(scheduler.spreadDecision(segment, 100), "wait");
  assert.equal(scheduler.spreadDecision(segment, 260), "spread");
  ({ scheduler, segment } = one());
  scheduler.progressed(segment, 64 * KiB, 60);
  assert.equal(scheduler.spreadDecision(segment, 100), "wait");
  // Near and fast (1 GB/s): left alone after half a second.
  ({ scheduler, segment } = one());
  scheduler.progressed(segment, 64 * KiB, 1);
  scheduler.progressed(segment, 50 * MiB, 50);
  assert.equal(scheduler.spreadDecision(segment, 50), "wait");
  scheduler.progressed(segment, 60 * MiB, 510);
  assert.equal(scheduler.spreadDecision(segment, 510), "stay");
  // Near but slow (1 MiB/s): spread.
  ({ scheduler, segment } = one());
  scheduler.progressed(segment, 64 * KiB, 1);
  scheduler.progressed(segment, 300 * KiB, 200);
  assert.equal(scheduler.spreadDecision(segment, 200), "spread");
  // Spreading: what is left, past what has arrived, in equal queued pieces.
  const queued = scheduler.spread(segment, 4);
  assert.equal(queued, 3);
  assert.equal(scheduler.queued, 3);
  covers(scheduler.segments, 64 * MiB);
  assert.ok(segment.end > 300 * KiB);
  const sizes = scheduler.segments.slice(1).map((s) => s.end - s.start);
  assert.ok(sizes.every((n) => Math.abs(n - sizes[0]) <= 64 * KiB), `${sizes}`);
  assert.equal(scheduler.take(200)!.start, segment.end);
});

Deno.test("segments: a spread never makes pieces under the minimum", () => {
  const scheduler = new SegmentScheduler([{ start: 0, end: 700 * KiB, written: 0 }], {
    minSplitBytes: 256 * KiB,
  });
  const segment = scheduler.take(0)!;
  scheduler.began(segment, 0);
  scheduler.progressed(segment, 200 * KiB, 20);
  assert.equal(scheduler.spread(segment, 16), 0); // 500 KiB left: fewer than two pieces
  assert.equal(segment.end, 700 * KiB);
});
