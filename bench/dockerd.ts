/**
 * A private Docker daemon for the benchmarks. Like tests/helpers/dockerd.ts (its own containerd,
 * socket, data, exec and state directories under one temp dir; nothing shared with a system
 * daemon), but with the `overlay2` storage driver that Docker users actually run: `vfs`, which
 * the test helper uses for portability, copies the whole image for every layer and would make
 * `docker pull` of a many-layer image look far slower than it is. Falls back to the test helper
 * (vfs) when overlay mounts are not allowed here.
 * @module
 */
import { join } from "node:path";
import { type Dockerd, startDockerd } from "../tests/helpers/dockerd.ts";
import {
  BackgroundProcess,
  type CommandResult,
  run,
  sleep,
  tail,
} from "../tests/helpers/process.ts";

/** A running private dockerd plus what the benchmark needs to measure it. */
export interface BenchDockerd extends Dockerd {
  /** `overlay2`, or `vfs` when the test helper had to be used. */
  storageDriver: string;
  /** Process ids of dockerd and containerd (for peak-RSS readings), when known. */
  pids(): Promise<number[]>;
}

function containerdConfig(dir: string): string {
  return `version = 2
root = "${dir}/containerd/root"
state = "${dir}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "${dir}/containerd.sock"
[ttrpc]
  address = "${dir}/containerd.sock.ttrpc"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "${dir}/containerd/opt"
`;
}

async function cli(): Promise<string> {
  try {
    await Deno.stat("/usr/bin/docker");
    return "/usr/bin/docker";
  } catch {
    return "docker";
  }
}

async function unmountUnder(dir: string): Promise<void> {
  let mountinfo: string;
  try {
    mountinfo = await Deno.readTextFile("/proc/self/mountinfo");
  } catch {
    return;
  }
  const points = mountinfo.split("\n")
    .map((line) => line.split(" ")[4])
    .filter((p): p is string => !!p && (p === dir || p.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const point of points) await run("umount", ["-l", point]);
}

async function startOverlay2(timeoutMs: number): Promise<BenchDockerd> {
  const dir = await Deno.makeTempDir({ prefix: "imgpull-bk-" });
  const docker = await cli();
  const host = `unix://${dir}/docker.sock`;
  const cliEnv = { DOCKER_HOST: host, DOCKER_CONFIG: join(dir, "cli") };
  await Deno.mkdir(join(dir, "cli"));
  await Deno.writeTextFile(join(dir, "containerd.toml"), containerdConfig(dir));
  await Deno.writeTextFile(
    join(dir, "daemon.json"),
    JSON.stringify({ "deprecated-key-path": join(dir, "key.json") }),
  );
  let containerd: BackgroundProcess | undefined;
  let dockerd: BackgroundProcess | undefined;
  const log = () =>
    `--- dockerd ---\n${tail(dockerd?.log ?? "")}\n--- containerd ---\n${
      tail(containerd?.log ?? "", 1500)
    }`;
  const dockerCmd = (args: string[], opts: { stdin?: Uint8Array } = {}) =>
    run(docker, args, { env: cliEnv, stdin: opts.stdin });
  const close = async () => {
    await dockerd?.stop(15_000);
    await containerd?.stop(10_000);
    await unmountUnder(dir);
    await Deno.remove(dir, { recursive: true });
  };
  try {
    containerd = new BackgroundProcess("containerd", [
      "--config",
      join(dir, "containerd.toml"),
      "--log-level",
      "warn",
    ]);
    dockerd = new BackgroundProcess("dockerd", [
      `--containerd=${dir}/containerd.sock`,
      "--storage-driver=overlay2",
      "--iptables=false",
      "--ip-masq=false",
      "--bridge=none",
      `--host=${host}`,
      `--data-root=${dir}/data`,
      `--exec-root=${dir}/exec`,
      `--pidfile=${dir}/docker.pid`,
      `--config-file=${dir}/daemon.json`,
    ]);
    const deadline = Date.now() + timeoutMs;
    let last: CommandResult;
    while (true) {
      if (containerd.exitStatus) {
        throw new Error(`containerd exited (${containerd.exitStatus.code})`);
      }
      if (dockerd.exitStatus) throw new Error(`dockerd exited (${dockerd.exitStatus.code})`);
      last = await dockerCmd(["info", "--format", "{{.Driver}}"]);
      if (last.code === 0) break;
      if (Date.now() > deadline) {
        throw new Error(`no answer within ${timeoutMs} ms: ${last.stderr}`);
      }
      await sleep(200);
    }
    if (last.stdout.trim() !== "overlay2") throw new Error(`driver is ${last.stdout.trim()}`);
    const pids = [containerd.child.pid, dockerd.child.pid];
    return {
      host,
      docker: dockerCmd,
      log,
      close,
      storageDriver: "overlay2",
      pids: () => Promise.resolve(pids),
    };
  } catch (e) {
    const message = `overlay2 dockerd failed: ${(e as Error).message}\n${log()}`;
    await close().catch(() => {});
    throw new Error(message);
  }
}

/** Pids of the processes whose command line mentions `needle` (e.g. the helper's temp dir). */
async function pidsMentioning(needle: string): Promise<number[]> {
  const out: number[] = [];
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const cmdline = await Deno.readTextFile(`/proc/${entry.name}/cmdline`);
      if (cmdline.includes(needle)) out.push(Number(entry.name));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

/**
 * Starts an overlay2 dockerd, else the test helper's vfs one. `log` receives a line saying which.
 */
export async function startBenchDockerd(log: (line: string) => void): Promise<BenchDockerd> {
  try {
    return await startOverlay2(30_000);
  } catch (e) {
    log(`[bench] ${(e as Error).message.split("\n")[0]}; using the test helper's vfs dockerd`);
  }
  const d = await startDockerd();
  const dir = d.host.replace(/^unix:\/\//, "").replace(/\/docker\.sock$/, "");
  return { ...d, storageDriver: "vfs", pids: () => pidsMentioning(dir) };
}
