/**
 * A real HTTP proxy for the tests: Debian's `tinyproxy` on a free 127.0.0.1 port with a
 * generated configuration, optionally with Basic authentication. It logs every connection and
 * request line (LogLevel Connect), so tests can tell what went through it. Throws when tinyproxy
 * does not start: proxy tests never skip.
 * @module
 */
import { join } from "node:path";
import { freePort } from "./ports.ts";
import { BackgroundProcess, sleep, tail } from "./process.ts";

/** Options of {@link startTinyproxy}. */
export interface TinyproxyOptions {
  /** Require `Proxy-Authorization: Basic` with these credentials (tinyproxy `BasicAuth`). */
  basicAuth?: { user: string; password: string };
}

/** A running tinyproxy. */
export interface Tinyproxy {
  /** `http://127.0.0.1:PORT` (no credentials). */
  url: string;
  port: number;
  /** `http://USER:PASSWORD@127.0.0.1:PORT` with the configured credentials, else {@link url}. */
  urlWithCredentials: string;
  /** tinyproxy's log so far (connections and request lines). */
  log(): string;
  /** Request lines it received, e.g. `CONNECT 127.0.0.1:5000 HTTP/1.1`, `GET http://… HTTP/1.1`. */
  requests(): string[];
  close(): Promise<void>;
}

const TINYPROXY = "/usr/bin/tinyproxy";

function config(port: number, options: TinyproxyOptions): string {
  const lines = [
    `Port ${port}`,
    "Listen 127.0.0.1",
    "Timeout 30",
    "MaxClients 100",
    // Connection and request lines, without the Info level's noise.
    "LogLevel Connect",
    "Allow 127.0.0.1",
  ];
  if (options.basicAuth) {
    lines.push(`BasicAuth ${options.basicAuth.user} ${options.basicAuth.password}`);
  }
  return `${lines.join("\n")}\n`;
}

/** Waits until the port accepts connections; an error text on exit or timeout. */
async function waitForPort(
  proc: BackgroundProcess,
  port: number,
  timeoutMs = 10_000,
): Promise<string | undefined> {
  const deadline = Date.now() + timeoutMs;
  let lastError = "";
  while (Date.now() < deadline) {
    if (proc.exitStatus) return `exited with code ${proc.exitStatus.code}`;
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      // Our own process must be the one listening (the port may have been taken meanwhile).
      await sleep(50);
      const status = proc.exitStatus as Deno.CommandStatus | undefined;
      return status ? `exited with code ${status.code}` : undefined;
    } catch (e) {
      lastError = String(e);
    }
    await sleep(50);
  }
  return `no listener on 127.0.0.1:${port} within ${timeoutMs} ms (${lastError})`;
}

/** Starts tinyproxy in the foreground on a free loopback port. */
export async function startTinyproxy(options: TinyproxyOptions = {}): Promise<Tinyproxy> {
  const dir = await Deno.makeTempDir({ prefix: "imgpull-tinyproxy-" });
  try {
    for (let attempt = 1;; attempt++) {
      const port = await freePort();
      const configPath = join(dir, "tinyproxy.conf");
      await Deno.writeTextFile(configPath, config(port, options));
      const proc = new BackgroundProcess(TINYPROXY, ["-d", "-c", configPath]);
      const error = await waitForPort(proc, port);
      if (!error) {
        const url = `http://127.0.0.1:${port}`;
        const auth = options.basicAuth;
        return {
          url,
          port,
          urlWithCredentials: auth
            ? `http://${encodeURIComponent(auth.user)}:${
              encodeURIComponent(auth.password)
            }@127.0.0.1:${port}`
            : url,
          log: () => proc.log,
          requests: () =>
            [...proc.log.matchAll(/Request \(file descriptor \d+\): (.+)$/gm)].map((m) => m[1]),
          close: async () => {
            await proc.stop();
            await Deno.remove(dir, { recursive: true });
          },
        };
      }
      await proc.stop();
      if (attempt < 3 && /address already in use|could not create listening/i.test(proc.log)) {
        continue;
      }
      throw new Error(
        `tinyproxy did not start: ${error}\n--- tinyproxy output ---\n${tail(proc.log)}`,
      );
    }
  } catch (e) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw e;
  }
}
