/**
 * A WAN emulator for benchmarks: a TCP byte proxy on 127.0.0.1 that adds a one-way delay and
 * rate caps between a client and a target (a registry, a token server). TLS passes through
 * untouched: the proxy never looks at the bytes.
 *
 * Model, per connection and per direction:
 *
 * 1. **Rate (serialisation).** Bytes are read from the sending socket only as fast as the link
 *    allows: every chunk read reserves time on a per-connection pacer and, when an aggregate cap
 *    is set, on a pacer shared by every connection (the access link). A pacer is a virtual clock
 *    (GCRA): a chunk of `n` bytes finishes serialising `n / rate` after the previous one, with
 *    a small burst tolerance so late timers do not lose capacity. While the proxy is not
 *    reading, the sender's TCP buffers fill and TCP flow control slows it down, as on a real
 *    bottleneck.
 * 2. **Delay (propagation).** Each chunk is stamped with the time its last byte finished
 *    serialising and put in a FIFO delay line; a writer forwards it once `stamp + delay` has
 *    passed. Nothing sleeps per chunk on the data path, so throughput and latency are
 *    independent: a 32 Mbit/s connection with 25 ms delay moves 32 Mbit/s once the pipe is
 *    full, and the first byte arrives after 25 ms.
 * 3. **Handshake.** The client's TCP connection to the proxy completes at once on loopback; to
 *    charge the SYN / SYN-ACK round trip a real link costs, client bytes that arrive less than
 *    one RTT (2 × delay) after the connection was accepted are treated as sent at accept + RTT.
 *
 * Not modelled: loss, reordering, TCP slow start and congestion control, jitter.
 *
 * Library: `startWanProxy({ target, delayMs, perConnectionBps, aggregateBps })`.
 * CLI: `deno run --allow-net bench/wan_proxy.ts --target 127.0.0.1:5000 --delay-ms 25
 * --conn-mbit 32 --total-mbit 400 [--port N]`, stops on Ctrl-C and prints its counters.
 * @module
 */

/** Bytes per second for a rate in Mbit/s (10^6 bits). */
export function mbit(n: number): number {
  return n * 125_000;
}

/**
 * A virtual-clock pacer: `reserve(n)` books `n` bytes on the link and returns how long (ms)
 * until they have been serialised. Reservations are served in call order (FIFO), so several
 * connections sharing one pacer share its rate.
 */
export class Pacer {
  readonly bytesPerMs: number;
  readonly #burstMs: number;
  /** When the link finishes everything booked so far (performance.now() time base). */
  #busyUntil = -Infinity;

  /**
   * @param bytesPerSecond the rate.
   * @param burstMs credit an idle link may accumulate, in ms of traffic; it also absorbs timers
   *   that fire late, which would otherwise waste link time.
   */
  constructor(bytesPerSecond: number, burstMs = 10) {
    if (!(bytesPerSecond > 0)) throw new RangeError(`rate must be positive: ${bytesPerSecond}`);
    this.bytesPerMs = bytesPerSecond / 1000;
    this.#burstMs = burstMs;
  }

  /** Books `n` bytes now; returns the ms until they are through (0 when within the burst). */
  reserve(n: number, now = performance.now()): number {
    this.#busyUntil = Math.max(this.#busyUntil, now - this.#burstMs) + n / this.bytesPerMs;
    return Math.max(0, this.#busyUntil - now);
  }
}

/** The shared access link: one pacer per direction. */
export interface SharedLink {
  /** Client → target. */
  up: Pacer;
  /** Target → client. */
  down: Pacer;
}

/** An aggregate cap that several proxies (registry, token server) can share. */
export function sharedLink(bytesPerSecond: number): SharedLink {
  return { up: new Pacer(bytesPerSecond), down: new Pacer(bytesPerSecond) };
}

/** Options for {@link startWanProxy}. */
export interface WanProxyOptions {
  /** `127.0.0.1:PORT` (or `host:port`) to forward to. */
  target: string;
  /** One-way delay in ms, applied in each direction (RTT = 2 × delayMs). Default 0. */
  delayMs?: number;
  /** Cap per connection and direction, bytes/s. Default: none. */
  perConnectionBps?: number;
  /** Cap shared by all connections of this proxy, per direction, bytes/s. Default: none. */
  aggregateBps?: number;
  /** An aggregate cap shared with other proxies; wins over `aggregateBps`. */
  link?: SharedLink;
  /** Port to listen on (127.0.0.1), default 0 (the OS chooses). */
  port?: number;
  /** Charge one RTT for the TCP handshake (see the module doc). Default true. */
  handshakeRtt?: boolean;
  /** Bytes a direction may hold in its delay line before it stops reading. Default 32 MiB. */
  maxQueueBytes?: number;
}

/** Counters of a proxy (live object; read it any time). */
export interface WanProxyStats {
  /** Connections accepted since start (or the last reset). */
  connections: number;
  /** Connections open now. */
  active: number;
  /** Most connections open at once since start (or the last reset). */
  peakActive: number;
  /** Bytes forwarded client → target. */
  bytesUp: number;
  /** Bytes forwarded target → client. */
  bytesDown: number;
}

/** A running proxy. */
export interface WanProxy {
  hostname: string;
  port: number;
  /** `127.0.0.1:PORT`. */
  host: string;
  stats: WanProxyStats;
  /** Zeroes the counters (`active` stays, `peakActive` restarts from it). */
  resetStats(): void;
  /** Stops listening, drops every connection and waits until all tasks ended. */
  close(): Promise<void>;
}

interface Chunk {
  /** null marks the end of the stream (forward a FIN). */
  data: Uint8Array | null;
  /** When the chunk may be forwarded (performance.now() time base). */
  due: number;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Read size for a rate: about 4 ms of traffic, between 16 KiB and 128 KiB. */
function chunkSize(bytesPerMs: number): number {
  if (!Number.isFinite(bytesPerMs)) return 128 * 1024;
  return Math.min(128 * 1024, Math.max(16 * 1024, Math.round(bytesPerMs * 4)));
}

function parseTarget(target: string): { hostname: string; port: number } {
  const colon = target.lastIndexOf(":");
  const port = Number(target.slice(colon + 1));
  if (colon <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new Error(`target must be host:port, got "${target}"`);
  }
  return { hostname: target.slice(0, colon).replace(/^\[|\]$/g, ""), port };
}

/** One direction of one connection: pacer-gated reader → delay line → writer. */
class Direction {
  readonly #queue: Chunk[] = [];
  #queued = 0;
  /** Wakes the writer when a chunk arrives. */
  #wakeWriter: (() => void) | undefined;
  /** Wakes the reader when the queue drained below the limit. */
  #wakeReader: (() => void) | undefined;
  #aborted = false;

  constructor(
    readonly src: Deno.Conn,
    readonly dst: Deno.Conn,
    readonly pacers: Pacer[],
    readonly delayMs: number,
    /** Bytes may not count as sent before this time (handshake emulation). */
    readonly notBefore: number,
    readonly maxQueue: number,
    readonly count: (n: number) => void,
  ) {}

  abort(): void {
    this.#aborted = true;
    this.#wakeReader?.();
    this.#wakeWriter?.();
  }

  #push(chunk: Chunk): void {
    this.#queue.push(chunk);
    if (chunk.data) this.#queued += chunk.data.byteLength;
    this.#wakeWriter?.();
  }

  async read(): Promise<void> {
    const rate = Math.min(...this.pacers.map((p) => p.bytesPerMs));
    const size = chunkSize(rate);
    try {
      while (!this.#aborted) {
        while (this.#queued > this.maxQueue && !this.#aborted) {
          await new Promise<void>((resolve) => (this.#wakeReader = resolve));
          this.#wakeReader = undefined;
        }
        if (this.#aborted) return;
        const buf = new Uint8Array(size);
        const n = await this.src.read(buf);
        const now = performance.now();
        if (n === null) {
          this.#push({ data: null, due: Math.max(now, this.notBefore) + this.delayMs });
          return;
        }
        let wait = 0;
        for (const pacer of this.pacers) wait = Math.max(wait, pacer.reserve(n, now));
        const sent = Math.max(now + wait, this.notBefore);
        this.#push({ data: buf.subarray(0, n), due: sent + this.delayMs });
        if (wait > 0) await sleep(wait);
      }
    } catch {
      // Reset or closed by the other side: end this direction like a FIN.
      this.#push({ data: null, due: performance.now() + this.delayMs });
    }
  }

  /** Forwards chunks as they become due; resolves after forwarding the end of the stream. */
  async write(): Promise<void> {
    while (!this.#aborted) {
      if (this.#queue.length === 0) {
        await new Promise<void>((resolve) => (this.#wakeWriter = resolve));
        this.#wakeWriter = undefined;
        continue;
      }
      const wait = this.#queue[0].due - performance.now();
      if (wait > 0) {
        // Whole milliseconds: a fractional timeout may fire at once and spin.
        await sleep(Math.ceil(wait));
        continue;
      }
      // Everything due now goes out in one write.
      const now = performance.now();
      const parts: Uint8Array[] = [];
      let total = 0;
      let eof = false;
      while (this.#queue.length > 0 && this.#queue[0].due <= now) {
        const chunk = this.#queue.shift()!;
        if (!chunk.data) {
          eof = true;
          break;
        }
        parts.push(chunk.data);
        total += chunk.data.byteLength;
      }
      if (total > 0) {
        const out = parts.length === 1 ? parts[0] : concat(parts, total);
        await writeAll(this.dst, out);
        this.#queued -= total;
        this.count(total);
        if (this.#queued <= this.maxQueue) this.#wakeReader?.();
      }
      if (eof) {
        try {
          await this.dst.closeWrite();
        } catch {
          // Already closed.
        }
        return;
      }
    }
  }
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.byteLength;
  }
  return out;
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < data.byteLength) offset += await conn.write(data.subarray(offset));
}

/** Starts a proxy on 127.0.0.1 in front of `target`. */
export function startWanProxy(options: WanProxyOptions): Promise<WanProxy> {
  const target = parseTarget(options.target);
  const delayMs = options.delayMs ?? 0;
  const handshakeRtt = options.handshakeRtt ?? true;
  const maxQueue = options.maxQueueBytes ?? 32 * 1024 * 1024;
  const link = options.link ??
    (options.aggregateBps ? sharedLink(options.aggregateBps) : undefined);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: options.port ?? 0 });
  const { port } = listener.addr as Deno.NetAddr;

  const stats: WanProxyStats = {
    connections: 0,
    active: 0,
    peakActive: 0,
    bytesUp: 0,
    bytesDown: 0,
  };
  const open = new Set<{ abort(): void }>();
  const tasks = new Set<Promise<void>>();

  const handle = async (client: Deno.Conn): Promise<void> => {
    const accepted = performance.now();
    let server: Deno.Conn;
    try {
      server = await Deno.connect({ hostname: target.hostname, port: target.port });
    } catch {
      client.close();
      return;
    }
    for (const conn of [client, server]) {
      try {
        (conn as Deno.TcpConn).setNoDelay(true);
      } catch {
        // Not a TCP socket.
      }
    }
    stats.connections++;
    stats.active++;
    stats.peakActive = Math.max(stats.peakActive, stats.active);
    const perConn = (dir: "up" | "down") => {
      const pacers: Pacer[] = [];
      if (options.perConnectionBps) pacers.push(new Pacer(options.perConnectionBps));
      if (link) pacers.push(link[dir]);
      return pacers;
    };
    const up = new Direction(
      client,
      server,
      perConn("up"),
      delayMs,
      handshakeRtt ? accepted + 2 * delayMs : 0,
      maxQueue,
      (n) => (stats.bytesUp += n),
    );
    const down = new Direction(
      server,
      client,
      perConn("down"),
      delayMs,
      0,
      maxQueue,
      (n) => (stats.bytesDown += n),
    );
    let closed = false;
    const closeBoth = () => {
      if (closed) return;
      closed = true;
      up.abort();
      down.abort();
      for (const conn of [client, server]) {
        try {
          conn.close();
        } catch {
          // Already closed.
        }
      }
    };
    const entry = { abort: closeBoth };
    open.add(entry);
    // A write failure (peer gone) ends the whole connection.
    const writer = (d: Direction) => d.write().catch(closeBoth);
    await Promise.all([up.read(), down.read(), writer(up), writer(down)]);
    closeBoth();
    open.delete(entry);
    stats.active--;
  };

  const track = (p: Promise<void>) => {
    tasks.add(p);
    p.catch(() => {}).finally(() => tasks.delete(p));
  };

  const acceptLoop = (async () => {
    try {
      for await (const conn of listener) track(handle(conn));
    } catch {
      // Listener closed.
    }
  })();

  return Promise.resolve({
    hostname: "127.0.0.1",
    port,
    host: `127.0.0.1:${port}`,
    stats,
    resetStats() {
      stats.connections = 0;
      stats.peakActive = stats.active;
      stats.bytesUp = 0;
      stats.bytesDown = 0;
    },
    async close() {
      try {
        listener.close();
      } catch {
        // Already closed.
      }
      await acceptLoop;
      for (const entry of open) entry.abort();
      await Promise.all([...tasks]);
    },
  });
}

function usage(code = 2): never {
  (code === 0 ? console.log : console.error)(
    "usage: deno run --allow-net bench/wan_proxy.ts --target HOST:PORT [--port N] " +
      "[--delay-ms MS] [--conn-mbit MBIT] [--total-mbit MBIT] [--no-handshake-rtt]",
  );
  Deno.exit(code);
}

async function main(args: string[]): Promise<void> {
  const { parseArgs } = await import("node:util");
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        target: { type: "string" },
        port: { type: "string", default: "0" },
        "delay-ms": { type: "string", default: "25" },
        "conn-mbit": { type: "string", default: "32" },
        "total-mbit": { type: "string", default: "400" },
        "no-handshake-rtt": { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    console.error((e as Error).message);
    usage();
  }
  if (values.help) usage(0);
  if (!values.target) usage();
  const num = (s: string) => {
    const n = Number(s);
    if (!Number.isFinite(n) || n < 0) usage();
    return n;
  };
  const connMbit = num(values["conn-mbit"]);
  const totalMbit = num(values["total-mbit"]);
  const proxy = await startWanProxy({
    target: values.target,
    port: num(values.port),
    delayMs: num(values["delay-ms"]),
    perConnectionBps: connMbit > 0 ? mbit(connMbit) : undefined,
    aggregateBps: totalMbit > 0 ? mbit(totalMbit) : undefined,
    handshakeRtt: !values["no-handshake-rtt"],
  });
  console.log(
    `wan_proxy: 127.0.0.1:${proxy.port} -> ${values.target}, one-way delay ${
      values["delay-ms"]
    } ms, ${connMbit || "unlimited"} Mbit/s per connection, ${
      totalMbit || "unlimited"
    } Mbit/s total`,
  );
  const stop = new Promise<void>((resolve) => {
    Deno.addSignalListener("SIGINT", resolve);
    Deno.addSignalListener("SIGTERM", resolve);
  });
  await stop;
  await proxy.close();
  console.log(JSON.stringify(proxy.stats));
  Deno.exit(0);
}

if (import.meta.main) await main(Deno.args);
