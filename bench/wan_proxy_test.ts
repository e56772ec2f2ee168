/**
 * Self-test of the WAN emulator: throughput ≈ cap and first-byte latency ≈ delay, for one and
 * several connections, in both directions. Not part of `tests/` (it measures timing, which a
 * loaded CI machine would make flaky). Run it with:
 *
 *     deno test --allow-net bench/wan_proxy_test.ts
 * @module
 */
import assert from "node:assert/strict";
import { mbit, Pacer, startWanProxy, type WanProxy } from "./wan_proxy.ts";

/** A server that, per connection, either sends `size` bytes at once or counts what it gets. */
interface TestServer {
  port: number;
  /** Bytes received per connection, in accept order (upload tests). */
  received: number[];
  close(): Promise<void>;
}

const encoder = new TextEncoder();

/**
 * Protocol: the client sends one line: `send N` (server answers N bytes, then closes), `ping`
 * (server echoes `pong` for every `ping` line it gets) or `sink` (server counts bytes until EOF,
 * then answers `got N`). With `push`, the server sends `hello` as soon as it accepts.
 */
function startServer(push = false): Promise<TestServer> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const received: number[] = [];
  const tasks: Promise<void>[] = [];
  const handle = async (conn: Deno.Conn) => {
    try {
      if (push) await conn.write(encoder.encode("hello\n"));
      const buf = new Uint8Array(64 * 1024);
      let line = "";
      while (!line.includes("\n")) {
        const n = await conn.read(buf);
        if (n === null) return;
        line += new TextDecoder().decode(buf.subarray(0, n));
      }
      const [cmd, arg] = line.split("\n")[0].split(" ");
      if (cmd === "send") {
        const data = new Uint8Array(Number(arg)).fill(120);
        let off = 0;
        while (off < data.byteLength) off += await conn.write(data.subarray(off));
      } else if (cmd === "ping") {
        await conn.write(encoder.encode("pong\n"));
        while (true) {
          const n = await conn.read(buf);
          if (n === null) break;
          await conn.write(encoder.encode("pong\n"));
        }
      } else if (cmd === "sink") {
        const index = received.push(0) - 1;
        // Bytes after the command line in the first read count too.
        received[index] = line.length - line.indexOf("\n") - 1;
        while (true) {
          const n = await conn.read(buf);
          if (n === null) break;
          received[index] += n;
        }
        await conn.write(encoder.encode(`got ${received[index]}\n`));
      }
    } catch {
      // Client went away.
    } finally {
      try {
        conn.close();
      } catch {
        // Closed.
      }
    }
  };
  const accept = (async () => {
    try {
      for await (const conn of listener) tasks.push(handle(conn));
    } catch {
      // Closed.
    }
  })();
  return Promise.resolve({
    port: (listener.addr as Deno.NetAddr).port,
    received,
    async close() {
      listener.close();
      await accept;
      await Promise.all(tasks);
    },
  });
}

/** Downloads `size` bytes through the proxy; returns first/last byte times (ms from request). */
async function download(proxy: WanProxy, size: number) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.port });
  const start = performance.now();
  await conn.write(encoder.encode(`send ${size}\n`));
  const buf = new Uint8Array(256 * 1024);
  let got = 0;
  let first = 0;
  // Time at which 10% had arrived: the rate is measured from there, after the pipe is full.
  let tenth = 0;
  while (true) {
    const n = await conn.read(buf);
    if (n === null) break;
    if (got === 0) first = performance.now() - start;
    got += n;
    if (!tenth && got >= size / 10) tenth = performance.now() - start;
  }
  const last = performance.now() - start;
  conn.close();
  assert.equal(got, size);
  return { first, last, rate: ((size * 0.9) / (last - tenth)) * 1000 };
}

function near(actual: number, expected: number, tolerance: number, what: string): void {
  const ok = Math.abs(actual - expected) <= expected * tolerance;
  assert.ok(ok, `${what}: ${actual.toFixed(1)}, expected ${expected} ± ${tolerance * 100}%`);
}

Deno.test("pacer: reservations add up to the rate, FIFO across callers", () => {
  const p = new Pacer(1_000_000, 0); // 1000 bytes per ms
  assert.equal(p.reserve(1000, 0), 1);
  assert.equal(p.reserve(1000, 0), 2);
  assert.equal(p.reserve(500, 1), 1.5);
  // An idle link gets no credit beyond the burst (0 here).
  assert.equal(p.reserve(1000, 100), 1);
});

Deno.test("one connection: throughput ≈ cap, first byte ≈ delay, ping ≈ RTT", async () => {
  const server = await startServer(true);
  const delayMs = 25;
  const cap = mbit(32); // 4 MB/s
  const proxy = await startWanProxy({
    target: `127.0.0.1:${server.port}`,
    delayMs,
    perConnectionBps: cap,
  });
  try {
    // Server-first bytes (pushed at accept) arrive one delay after the connection.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.port });
    const t0 = performance.now();
    const buf = new Uint8Array(1024);
    await conn.read(buf);
    const firstByte = performance.now() - t0;
    console.log(`  server-first byte after ${firstByte.toFixed(1)} ms (delay ${delayMs})`);
    near(firstByte, delayMs, 0.25, "first byte ms");
    // Round trips on the open connection (past the handshake window) take 2 × delay.
    await conn.write(encoder.encode("ping\n"));
    await conn.read(buf);
    const rtts: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      await conn.write(encoder.encode("x"));
      await conn.read(buf);
      rtts.push(performance.now() - t);
    }
    conn.close();
    const rtt = rtts.sort((a, b) => a - b)[2];
    console.log(`  ping RTT ${rtt.toFixed(1)} ms (expected ${2 * delayMs})`);
    near(rtt, 2 * delayMs, 0.2, "RTT ms");
  } finally {
    await proxy.close();
    await server.close();
  }

  // A fresh connection: request at connect + RTT (handshake) + delay, answer one delay later.
  const plain = await startServer(false);
  const proxy2 = await startWanProxy({
    target: `127.0.0.1:${plain.port}`,
    delayMs,
    perConnectionBps: cap,
  });
  try {
    const size = 6_000_000;
    const r = await download(proxy2, size);
    console.log(
      `  6 MB: first byte ${r.first.toFixed(1)} ms, done ${r.last.toFixed(0)} ms, ` +
        `${(r.rate / 125_000).toFixed(1)} Mbit/s (cap 32)`,
    );
    near(r.first, 4 * delayMs, 0.25, "first byte of a new connection ms");
    near(r.rate, cap, 0.08, "bytes/s");
    // Latency does not eat throughput: total ≈ handshake + request + size / rate + delay.
    near(r.last, 4 * delayMs + (size / cap) * 1000, 0.08, "total ms");
    assert.equal(proxy2.stats.connections, 1);
    assert.equal(proxy2.stats.bytesDown, size);
  } finally {
    await proxy2.close();
    await plain.close();
  }
});

Deno.test("several connections: each at its cap; the aggregate cap is shared", async () => {
  const server = await startServer(false);
  const delayMs = 25;
  const cap = mbit(32);
  const size = 4_000_000;
  try {
    // No aggregate cap: three connections, each ≈ its own cap.
    let proxy = await startWanProxy({
      target: `127.0.0.1:${server.port}`,
      delayMs,
      perConnectionBps: cap,
    });
    try {
      const rs = await Promise.all([1, 2, 3].map(() => download(proxy, size)));
      for (const r of rs) {
        console.log(
          `  3 conns, no total cap: first ${r.first.toFixed(1)} ms, ` +
            `${(r.rate / 125_000).toFixed(1)} Mbit/s`,
        );
        near(r.rate, cap, 0.08, "per-connection bytes/s");
        near(r.first, 4 * delayMs, 0.25, "first byte ms");
      }
      assert.equal(proxy.stats.peakActive, 3);
    } finally {
      await proxy.close();
    }

    // Aggregate 48 Mbit/s over four 32 Mbit/s connections: each gets about a quarter.
    const total = mbit(48);
    proxy = await startWanProxy({
      target: `127.0.0.1:${server.port}`,
      delayMs,
      perConnectionBps: cap,
      aggregateBps: total,
    });
    try {
      const t = performance.now();
      const rs = await Promise.all([1, 2, 3, 4].map(() => download(proxy, size)));
      const wall = performance.now() - t;
      const aggregate = (4 * size) / ((wall - 4 * delayMs) / 1000);
      console.log(
        `  4 conns, total cap 48: ${(aggregate / 125_000).toFixed(1)} Mbit/s together; each ${
          rs.map((r) => (r.rate / 125_000).toFixed(1)).join(", ")
        }`,
      );
      near(aggregate, total, 0.08, "aggregate bytes/s");
      for (const r of rs) near(r.rate, total / 4, 0.15, "fair share bytes/s");
    } finally {
      await proxy.close();
    }
  } finally {
    await server.close();
  }
});

Deno.test("upload direction is capped too", async () => {
  const server = await startServer(false);
  const cap = mbit(32);
  const proxy = await startWanProxy({
    target: `127.0.0.1:${server.port}`,
    delayMs: 10,
    perConnectionBps: cap,
  });
  try {
    const size = 4_000_000;
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.port });
    const t = performance.now();
    await conn.write(encoder.encode("sink\n"));
    const data = new Uint8Array(size);
    let off = 0;
    while (off < size) off += await conn.write(data.subarray(off));
    await conn.closeWrite();
    const buf = new Uint8Array(64);
    const n = await conn.read(buf);
    const ms = performance.now() - t;
    conn.close();
    assert.equal(new TextDecoder().decode(buf.subarray(0, n ?? 0)).trim(), `got ${size}`);
    const rate = (size / (ms - 40)) * 1000;
    console.log(`  upload 4 MB: ${(rate / 125_000).toFixed(1)} Mbit/s (cap 32)`);
    near(rate, cap, 0.08, "upload bytes/s");
  } finally {
    await proxy.close();
    await server.close();
  }
});

Deno.test("no caps, no delay: a plain fast proxy", async () => {
  const server = await startServer(false);
  const proxy = await startWanProxy({ target: `127.0.0.1:${server.port}` });
  try {
    const r = await download(proxy, 200_000_000);
    console.log(`  unlimited: ${(r.rate / 125_000).toFixed(0)} Mbit/s`);
    assert.ok(r.rate > mbit(1000), "a proxy without caps should move > 1 Gbit/s on loopback");
  } finally {
    await proxy.close();
    await server.close();
  }
});

Deno.test("the benchmark link: 16 connections fill 400 Mbit/s", async () => {
  const server = await startServer(false);
  const total = mbit(400);
  const proxy = await startWanProxy({
    target: `127.0.0.1:${server.port}`,
    delayMs: 25,
    perConnectionBps: mbit(32),
    aggregateBps: total,
  });
  try {
    const size = 5_000_000;
    const t = performance.now();
    const rs = await Promise.all(Array.from({ length: 16 }, () => download(proxy, size)));
    const wall = performance.now() - t;
    // From the first byte on: connection setup is not the link's throughput.
    const aggregate = (16 * size) / ((wall - Math.min(...rs.map((r) => r.first))) / 1000);
    console.log(
      `  16 × 32 Mbit/s under 400 total: ${(aggregate / 125_000).toFixed(0)} Mbit/s; ` +
        `first bytes ${Math.min(...rs.map((r) => r.first)).toFixed(0)}–${
          Math.max(...rs.map((r) => r.first)).toFixed(0)
        } ms`,
    );
    near(aggregate, total, 0.08, "aggregate bytes/s");
  } finally {
    await proxy.close();
    await server.close();
  }
});
