/**
 * The services the conformance corpus shares across all rows: one anonymous HTTP Distribution on
 * 127.0.0.1 (schema1 pushes enabled, which tests/helpers/registry.ts cannot configure), a second
 * one on `[::1]` over the same storage, the private dockerd of tests/helpers/dockerd.ts, and a
 * private containerd (native snapshotter: no overlay mounts) for `ctr images import`.
 *
 * Tests in several `Deno.test`s share these, so besides the async {@link CorpusServices.close} a
 * synchronous {@link CorpusServices.closeSync} exists for the `unload` event, which is all that
 * runs when a test filter left out the closing test.
 *
 * The proxy rows need more ({@link startCorpusProxies}): two tinyproxies and a TLS registry over
 * the same storage. Only their group uses them, so that group starts and stops them itself.
 * @module
 */
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { BackgroundProcess, type CommandResult, run, sleep, tail } from "../process.ts";
import { type Dockerd, startDockerd } from "../dockerd.ts";
import { type RunningRegistry, startRegistry } from "../registry.ts";
import { startTinyproxy, type Tinyproxy } from "../tinyproxy.ts";
import { generateTestPki } from "../tls.ts";

/** A Distribution process of the corpus. */
export interface CorpusRegistry {
  /** `127.0.0.1:PORT` or `[::1]:PORT`. */
  host: string;
  url: string;
  port: number;
  log(): string;
  stop(): Promise<void>;
  pid: number;
}

/** Picks a free TCP port on `hostname` (the OS chooses; another process may race us). */
function freePortOn(hostname: string): number {
  const listener = Deno.listen({ hostname, port: 0, transport: "tcp" });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Ports fetch refuses (WHATWG bad ports) that the OS might still hand out. */
const BAD_PORTS = new Set([5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6697, 10080]);

/**
 * Starts `docker-registry serve` on `bind` (`127.0.0.1` or `::1`), plain HTTP, anonymous, with
 * schema1 manifest pushes allowed (`compatibility.schema1.enabled`) and foreign-layer URLs
 * allowed. Throws with the registry's log when it does not answer `GET /v2/`.
 */
export async function startCorpusRegistry(
  storageDir: string,
  configDir: string,
  bind: "127.0.0.1" | "::1",
): Promise<CorpusRegistry> {
  await Deno.mkdir(configDir, { recursive: true });
  for (let attempt = 1;; attempt++) {
    let port = freePortOn(bind);
    while (BAD_PORTS.has(port)) port = freePortOn(bind);
    const host = bind === "::1" ? `[::1]:${port}` : `127.0.0.1:${port}`;
    const config = {
      version: "0.1",
      log: { level: "info", formatter: "text" },
      storage: {
        filesystem: { rootdirectory: storageDir },
        delete: { enabled: true },
        maintenance: { uploadpurging: { enabled: false } },
      },
      http: { addr: host, secret: randomBytes(16).toString("hex") },
      validation: { manifests: { urls: { allow: ["^https?://"] } } },
      compatibility: { schema1: { enabled: true } },
    };
    const configPath = join(configDir, `config-${bind === "::1" ? "v6" : "v4"}.yml`);
    await Deno.writeTextFile(configPath, JSON.stringify(config, null, 2));
    const proc = new BackgroundProcess("docker-registry", ["serve", configPath]);
    const url = `http://${host}`;
    const error = await waitForV2(proc, url);
    if (!error) {
      return {
        host,
        url,
        port,
        log: () => proc.log,
        stop: async () => void await proc.stop(),
        pid: proc.child.pid,
      };
    }
    await proc.stop();
    if (attempt < 3 && proc.log.includes("address already in use")) continue;
    throw new Error(
      `docker-registry on ${host} did not start: ${error}\n--- registry output ---\n${
        tail(proc.log)
      }`,
    );
  }
}

async function waitForV2(proc: BackgroundProcess, url: string): Promise<string | undefined> {
  const deadline = Date.now() + 15_000;
  let last = "";
  while (Date.now() < deadline) {
    if (proc.exitStatus) return `exited with code ${proc.exitStatus.code}`;
    try {
      const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(2_000) });
      await res.body?.cancel();
      if (res.status === 200) return undefined;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = String((e as Error).cause ?? e);
    }
    await sleep(100);
  }
  return `no answer from ${url}/v2/ (${last})`;
}

/** A private containerd for `ctr`. */
export interface CorpusContainerd {
  /** The gRPC socket, for `ctr --address`. */
  address: string;
  /** Runs `ctr --address … ARGS`. */
  ctr(args: string[]): Promise<CommandResult>;
  log(): string;
  stop(): Promise<void>;
  pid: number;
}

/**
 * Starts containerd with root, state and sockets under `dir` (short: unix socket paths max out
 * at 108 bytes) and waits for `ctr version`. The `native` snapshotter must be loaded: imports
 * unpack with it, so no overlay mount is needed.
 */
export async function startContainerd(dir: string): Promise<CorpusContainerd> {
  await Deno.mkdir(dir, { recursive: true });
  const address = join(dir, "c.sock");
  await Deno.writeTextFile(
    join(dir, "config.toml"),
    `version = 2
root = "${dir}/root"
state = "${dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "${address}"
[ttrpc]
  address = "${address}.ttrpc"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "${dir}/opt"
`,
  );
  const proc = new BackgroundProcess("containerd", [
    "--config",
    join(dir, "config.toml"),
    "--log-level",
    "warn",
  ]);
  const ctr = (args: string[]) => run("ctr", ["--address", address, ...args]);
  // As long as dockerd gets: on two busy cores containerd once took more than 20 s to answer.
  const deadline = Date.now() + 60_000;
  let last: CommandResult | undefined;
  while (true) {
    if (proc.exitStatus) break;
    last = await ctr(["plugins", "ls", "--quiet"]).catch(() => undefined);
    if (last?.code === 0) {
      const plugins = await ctr(["plugins", "ls"]);
      if (/snapshotter\.v1\s+native\s+\S+\s+ok/.test(plugins.stdout)) {
        return {
          address,
          ctr,
          log: () => proc.log,
          stop: async () => void await proc.stop(),
          pid: proc.child.pid,
        };
      }
      await proc.stop();
      throw new Error(`containerd has no working native snapshotter:\n${plugins.stdout}`);
    }
    if (Date.now() > deadline) break;
    await sleep(200);
  }
  await proc.stop();
  throw new Error(
    `containerd did not start: ${last?.stderr.trim() ?? "exited"}\n--- containerd output ---\n${
      tail(proc.log)
    }`,
  );
}

/** Everything the corpus rows share. */
export interface CorpusServices {
  root: string;
  /** The registries' storage (every registry of the corpus serves the same repositories). */
  storage: string;
  /** HOME for imgpull (no docker config: no host credentials). */
  home: string;
  registry: CorpusRegistry;
  registry6: CorpusRegistry;
  dockerd: Dockerd;
  containerd: CorpusContainerd;
  close(): Promise<void>;
  /** Best-effort synchronous teardown for the `unload` event. */
  closeSync(): void;
}

/**
 * Starts every shared service (dockerd overlapped with the rest). Any that does not start makes
 * this throw, with its log: the corpus must fail, never skip.
 */
export async function startCorpusServices(): Promise<CorpusServices> {
  const root = await Deno.makeTempDir({ prefix: "imgpull-corpus-" });
  const stops: (() => Promise<void>)[] = [];
  const pids: number[] = [];
  let dockerd: Dockerd | undefined;
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    for (const stop of stops.reverse()) await stop().catch((e) => console.error("cleanup:", e));
    await unmountUnder(root);
    await Deno.remove(root, { recursive: true }).catch(() => {});
  };
  const closeSync = () => {
    if (closed) return;
    closed = true;
    const all = [...(dockerd?.pids() ?? []).reverse(), ...pids];
    for (const pid of all) {
      try {
        Deno.kill(pid, "SIGTERM");
      } catch { /* gone */ }
      waitForExitSync(pid, 15_000);
    }
    const dockerDir = dockerd?.host.replace(/^unix:\/\//, "").replace(/\/docker\.sock$/, "");
    for (const dir of [dockerDir, root]) {
      if (!dir) continue;
      new Deno.Command("sh", {
        args: ["-c", `grep -o " ${dir}[^ ]*" /proc/self/mountinfo | sort -r | xargs -r umount -l`],
      }).outputSync();
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch { /* best effort */ }
    }
  };
  const dockerdPromise = startDockerd({ timeoutMs: 60_000 });
  dockerdPromise.then((d) => {
    dockerd = d;
    stops.push(() => d.close());
  }, () => {});
  try {
    const storage = join(root, "storage");
    const registry = await startCorpusRegistry(storage, join(root, "registry"), "127.0.0.1");
    stops.push(registry.stop);
    pids.push(registry.pid);
    const registry6 = await startCorpusRegistry(storage, join(root, "registry"), "::1");
    stops.push(registry6.stop);
    pids.push(registry6.pid);
    const containerd = await startContainerd(join(root, "ctd"));
    stops.push(containerd.stop);
    pids.push(containerd.pid);
    await dockerdPromise;
    const home = join(root, "home");
    await Deno.mkdir(home);
    return {
      root,
      storage,
      home,
      registry,
      registry6,
      dockerd: dockerd!,
      containerd,
      close,
      closeSync,
    };
  } catch (e) {
    // dockerd may still be starting: let it finish either way before tearing down.
    await dockerdPromise.catch(() => {});
    await close();
    throw e;
  }
}

/** The proxies of the `registries` rows, and the TLS registry behind the CONNECT one. */
export interface CorpusProxies {
  /** tinyproxy without authentication: plain-HTTP registries are fetched with absolute URIs. */
  open: Tinyproxy;
  /** tinyproxy that requires Basic auth; its `urlWithCredentials` carries them. */
  guarded: Tinyproxy;
  /** Distribution over TLS with htpasswd Basic auth, on the corpus storage. */
  tls: RunningRegistry;
  /** `--ca-cert` for {@link tls}. */
  caCertPath: string;
  /** A `DOCKER_CONFIG` directory whose config.json holds the credentials for {@link tls}. */
  dockerConfig: string;
  /** Passwords (plain, and as Basic tokens) that imgpull must never print. */
  secrets: string[];
  close(): Promise<void>;
}

/**
 * Starts an open tinyproxy, a tinyproxy with Basic auth, and a TLS + Basic Distribution on the
 * corpus storage (so images pushed to the plain registry are there too), with a throw-away CA
 * and a docker config for its credentials. Throws (after stopping what started) when one fails.
 */
export async function startCorpusProxies(services: CorpusServices): Promise<CorpusProxies> {
  const dir = join(services.root, "proxies");
  const proxyAuth = { user: "corpus-proxy", password: `proxy-${randomBytes(9).toString("hex")}` };
  const registryAuth = { user: "corpus", password: `registry-${randomBytes(9).toString("hex")}` };
  const openProxy = startTinyproxy();
  const guardedProxy = startTinyproxy({ basicAuth: proxyAuth });
  const pki = generateTestPki(join(dir, "pki"));
  const tlsRegistry = pki.then((pki) =>
    startRegistry({
      mode: "basic",
      storageDir: services.storage,
      pki,
      users: { [registryAuth.user]: registryAuth.password },
    })
  );
  const settled = await Promise.allSettled([openProxy, guardedProxy, tlsRegistry]);
  const closers = settled.flatMap((s) => s.status === "fulfilled" ? [s.value.close] : []);
  const close = async () => {
    for (const stop of closers) await stop().catch((e) => console.error("cleanup:", e));
  };
  const failed = settled.find((s) => s.status === "rejected");
  if (failed) {
    await close();
    throw failed.reason;
  }
  try {
    const tls = await tlsRegistry;
    const dockerConfig = join(dir, "docker");
    await Deno.mkdir(dockerConfig, { recursive: true });
    const basic = (a: { user: string; password: string }) => btoa(`${a.user}:${a.password}`);
    await Deno.writeTextFile(
      join(dockerConfig, "config.json"),
      JSON.stringify({ auths: { [tls.host]: { auth: basic(registryAuth) } } }),
    );
    return {
      open: await openProxy,
      guarded: await guardedProxy,
      tls,
      caCertPath: (await pki).caCertPath,
      dockerConfig,
      secrets: [proxyAuth.password, basic(proxyAuth), registryAuth.password, basic(registryAuth)],
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/** Lazily unmounts whatever is still mounted below `dir` (a `ctr images mount` left by a crash). */
async function unmountUnder(dir: string): Promise<void> {
  const mountinfo = await Deno.readTextFile("/proc/self/mountinfo").catch(() => "");
  const points = mountinfo.split("\n").map((l) => l.split(" ")[4])
    .filter((p): p is string => !!p && p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const p of points) await run("umount", ["-l", p]);
}

/**
 * Waits (blocking) until `pid` has exited or `ms` passed. During `unload` nothing reaps our
 * children, so an exited child stays a zombie: state `Z` in /proc/PID/stat counts as exited.
 */
function waitForExitSync(pid: number, ms: number): void {
  const deadline = Date.now() + ms;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  while (Date.now() < deadline) {
    let stat: string;
    try {
      stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    } catch {
      return;
    }
    if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) return;
    Atomics.wait(pause, 0, 0, 100);
  }
}
