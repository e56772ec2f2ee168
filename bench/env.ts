/**
 * The benchmark environment: the generated images in a persistent Distribution storage, a
 * token server and a TLS + token registry from tests/helpers, and — for the `wan` link — a WAN
 * emulator in front of each (the token realm the registry advertises points through its own
 * proxy, and both proxies share one aggregate cap, like one access link).
 * @module
 */
import { join } from "node:path";
import { startRegistry } from "../tests/helpers/registry.ts";
import { generateTestPki } from "../tests/helpers/tls.ts";
import { startTokenServer } from "../tests/helpers/token_server.ts";
import { type BenchImage, type ImageName, prepareImage, pushImage } from "./images.ts";
import { mbit, sharedLink, startWanProxy, type WanProxy } from "./wan_proxy.ts";

/** The emulated link's parameters. */
export interface WanParams {
  /** One-way delay, ms (RTT is twice this). */
  delayMs: number;
  /** Cap per TCP connection and direction, Mbit/s (0: none). */
  connMbit: number;
  /** Cap shared by all connections, per direction, Mbit/s (0: none). */
  totalMbit: number;
}

/** Defaults: a good home/office link to a registry in a nearby region. */
export const DEFAULT_WAN: WanParams = { delayMs: 25, connMbit: 32, totalMbit: 400 };

/** Service and issuer shared by the token server and the registry. */
const SERVICE = "imgpull-bench-registry";
const ISSUER = "imgpull-bench-issuer";

/** A running environment. */
export interface BenchEnv {
  link: "wan" | "loopback";
  wan?: WanParams;
  /** `127.0.0.1:PORT` clients use: the registry proxy, or the registry itself on loopback. */
  host: string;
  /** The token realm the registry advertises. */
  realm: string;
  service: string;
  user: string;
  password: string;
  /** The test CA (PEM file). */
  caCertPath: string;
  caCertPem: string;
  /** A directory holding only `ca.crt` (skopeo `--src-cert-dir`, docker certs.d layout). */
  certDir: string;
  images: BenchImage[];
  registryProxy?: WanProxy;
  tokenProxy?: WanProxy;
  /** A pull token for `repo` from the realm (through the proxy on `wan`). */
  token(repo: string): Promise<string>;
  /** Recent registry output. */
  registryLog(): string;
  close(): Promise<void>;
}

/** Options for {@link startBenchEnv}. */
export interface BenchEnvOptions {
  link: "wan" | "loopback";
  wan?: WanParams;
  images: ImageName[];
  /** Generated blobs and the registry storage live here, across runs. */
  cacheDir: string;
  log?: (line: string) => void;
}

/** Generates (or reuses) the images, pushes them and starts the services. */
export async function startBenchEnv(opts: BenchEnvOptions): Promise<BenchEnv> {
  const log = opts.log ?? (() => {});
  const wan = opts.link === "wan" ? (opts.wan ?? DEFAULT_WAN) : undefined;
  const closers: (() => Promise<void>)[] = [];
  const tmp = await Deno.makeTempDir({ prefix: "imgpull-bench-env-" });
  const close = async () => {
    for (const c of closers.reverse()) await c().catch((e) => log(`cleanup: ${e}`));
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  };
  try {
    const images: BenchImage[] = [];
    for (const name of opts.images) images.push(await prepareImage(name, opts.cacheDir, log));

    // One storage for every run: pushing is then only HEAD requests.
    const storageDir = join(opts.cacheDir, "registry");
    const pki = await generateTestPki(join(tmp, "pki"));
    const certDir = join(tmp, "certs");
    await Deno.mkdir(certDir);
    await Deno.copyFile(pki.caCertPath, join(certDir, "ca.crt"));

    const pusher = await startRegistry({ mode: "http", storageDir });
    try {
      for (const image of images) await pushImage(pusher.url, image, opts.cacheDir);
    } finally {
      await pusher.close();
    }

    const user = "bench";
    const password = "bench-password";
    const tokenServer = await startTokenServer({
      pki,
      service: SERVICE,
      issuer: ISSUER,
      users: { [user]: password },
      expiresIn: 3600,
    });
    closers.push(() => tokenServer.close());

    let realm = tokenServer.url;
    let tokenProxy: WanProxy | undefined;
    // 0 Mbit/s means no cap.
    const link = wan && wan.totalMbit > 0 ? sharedLink(mbit(wan.totalMbit)) : undefined;
    const perConnectionBps = wan && wan.connMbit > 0 ? mbit(wan.connMbit) : undefined;
    if (wan) {
      tokenProxy = await startWanProxy({
        target: new URL(tokenServer.url).host,
        delayMs: wan.delayMs,
        perConnectionBps,
        link,
      });
      closers.push(() => tokenProxy!.close());
      realm = `https://${tokenProxy.host}/token`;
    }
    const registry = await startRegistry({
      mode: "token",
      storageDir,
      pki,
      token: { realm, service: SERVICE, issuer: ISSUER },
    });
    closers.push(() => registry.close());
    let host = registry.host;
    let registryProxy: WanProxy | undefined;
    if (wan) {
      registryProxy = await startWanProxy({
        target: registry.host,
        delayMs: wan.delayMs,
        perConnectionBps,
        link,
      });
      closers.push(() => registryProxy!.close());
      host = registryProxy.host;
    }

    const client = Deno.createHttpClient({ caCerts: [pki.caCertPem] });
    closers.push(() => Promise.resolve(client.close()));
    const token = async (repo: string): Promise<string> => {
      const url = new URL(realm);
      url.searchParams.set("service", SERVICE);
      url.searchParams.set("scope", `repository:${repo}:pull`);
      const res = await fetch(url, {
        client,
        headers: { Authorization: `Basic ${btoa(`${user}:${password}`)}` },
      });
      const body = await res.json() as { token?: string; access_token?: string };
      const t = body.token ?? body.access_token;
      if (!res.ok || !t) throw new Error(`token request failed: HTTP ${res.status}`);
      return t;
    };

    return {
      link: opts.link,
      wan,
      host,
      realm,
      service: SERVICE,
      user,
      password,
      caCertPath: pki.caCertPath,
      caCertPem: pki.caCertPem,
      certDir,
      images,
      registryProxy,
      tokenProxy,
      token,
      registryLog: () => registry.log(),
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/** Reads every blob file of the images once, so no tool pays for cold disk reads. */
export async function warmPageCache(image: BenchImage, cacheDir: string): Promise<void> {
  const storage = join(cacheDir, "registry", "docker", "registry", "v2", "blobs", "sha256");
  for (const blob of image.blobs) {
    const hex = blob.digest.slice("sha256:".length);
    try {
      using file = await Deno.open(join(storage, hex.slice(0, 2), hex, "data"));
      const buf = new Uint8Array(1 << 20);
      while ((await file.read(buf)) !== null) {
        // Reading is the point.
      }
    } catch {
      // Not there (e.g. storage layout changed): the tools will read it anyway.
    }
  }
}
