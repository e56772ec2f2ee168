/**
 * Free TCP ports on 127.0.0.1 for child processes that cannot bind port 0 themselves.
 * @module
 */

/**
 * Ports that fetch refuses to contact (WHATWG "bad ports"). The OS rarely hands them out, but a
 * server on one of them would make every fetch fail with a confusing error.
 */
// deno-fmt-ignore
const FETCH_BLOCKED_PORTS = new Set([
  1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101, 102,
  103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427, 465,
  512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636, 989, 990, 993,
  995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668,
  6669, 6679, 6697, 10080,
]);

/** Ports already handed out by this process: never hand one out twice to concurrent starters. */
const handedOut = new Set<number>();

/**
 * Returns a TCP port on 127.0.0.1 that was free a moment ago: binds port 0, reads the port the
 * OS chose, closes the listener. Another process may grab it before the caller binds it, so
 * callers that start servers should retry on "address already in use".
 */
export function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
    const { port } = listener.addr as Deno.NetAddr;
    listener.close();
    if (!FETCH_BLOCKED_PORTS.has(port) && !handedOut.has(port)) {
      handedOut.add(port);
      return Promise.resolve(port);
    }
  }
  return Promise.reject(
    new Error("freePort: the OS kept handing out blocked or already used ports"),
  );
}

/** True when `port` is one that fetch refuses to contact. */
export function isFetchBlockedPort(port: number): boolean {
  return FETCH_BLOCKED_PORTS.has(port);
}
