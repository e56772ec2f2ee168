/**
 * CNCF Distribution in proxy mode (a pull-through cache, `proxy: remoteurl:`), for the mirror
 * tests: it fetches from the upstream with the credentials given, stores what it served, and logs
 * every request it receives.
 * @module
 */
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { freePort } from "./ports.ts";
import { BackgroundProcess, sleep, tail } from "./process.ts";

/** Options for {@link startProxyRegistry}. */
export interface ProxyRegistryOptions {
  /** The upstream registry, `https://127.0.0.1:PORT`. */
  remoteUrl: string;
  username?: string;
  password?: string;
  /** A CA file the proxy must trust for the upstream (and its token service). */
  caCertPath?: string;
  /** Cache storage. */
  storageDir: string;
}

/** A running pull-through cache (plain HTTP on loopback). */
export interface ProxyRegistry {
  host: string;
  url: string;
  log(): string;
  close(): Promise<void>;
}

/** Starts `docker-registry serve` with a `proxy` section; fails loudly when it does not come up. */
export async function startProxyRegistry(opts: ProxyRegistryOptions): Promise<ProxyRegistry> {
  const dir = await Deno.makeTempDir({ prefix: "imgpull-proxy-" });
  for (let attempt = 1;; attempt++) {
    const port = await freePort();
    const configPath = join(dir, "config.yml");
    await Deno.writeTextFile(
      configPath,
      JSON.stringify({
        version: "0.1",
        log: { level: "info", formatter: "text" },
        storage: {
          filesystem: { rootdirectory: opts.storageDir },
          maintenance: { uploadpurging: { enabled: false } },
        },
        http: { addr: `127.0.0.1:${port}`, secret: randomBytes(16).toString("hex") },
        proxy: {
          remoteurl: opts.remoteUrl,
          ...(opts.username ? { username: opts.username, password: opts.password } : {}),
        },
      }),
    );
    const proc = new BackgroundProcess("docker-registry", ["serve", configPath], {
      env: opts.caCertPath ? { SSL_CERT_FILE: opts.caCertPath } : {},
    });
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 15_000;
    let up = false;
    while (Date.now() < deadline && !proc.exitStatus) {
      if (proc.log.includes(`listening on 127.0.0.1:${port}`)) {
        try {
          const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(2_000) });
          await res.body?.cancel();
          up = true;
          break;
        } catch {
          // not yet
        }
      }
      await sleep(50);
    }
    if (up) {
      return {
        host: `127.0.0.1:${port}`,
        url,
        log: () => proc.log,
        close: async () => {
          await proc.stop();
          await Deno.remove(dir, { recursive: true });
        },
      };
    }
    await proc.stop();
    if (attempt < 3 && proc.log.includes("address already in use")) continue;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw new Error(`docker-registry (proxy) did not start\n${tail(proc.log)}`);
  }
}
