/**
 * A private Docker daemon (Debian's docker.io 20.10) for loader tests: its own containerd, its
 * own socket, data, exec and state directories under one temp dir, vfs storage, no networking
 * changes. Nothing is shared with a system dockerd or containerd.
 * @module
 */
import { join } from "node:path";
import { BackgroundProcess, type CommandResult, run, sleep, tail } from "./process.ts";

/** A running private dockerd. */
export interface Dockerd {
  /** `DOCKER_HOST` value, `unix:///tmp/.../docker.sock`. */
  host: string;
  /** Runs the docker CLI against this daemon. */
  docker(args: string[], opts?: { stdin?: Uint8Array }): Promise<CommandResult>;
  /** Recent dockerd and containerd output. */
  log(): string;
  /** Stops dockerd, then containerd, and removes every file they wrote. */
  close(): Promise<void>;
  /** `vfs` (portable, the tests' default) or `overlay2` (what Docker users run). */
  storageDriver: string;
  /** Process ids of containerd and dockerd (for peak-RSS readings). */
  pids(): number[];
}

/**
 * The docker CLI to use. Debian's `docker.io` installs `/usr/bin/docker` (20.10, matching the
 * daemon); a newer CLI earlier on PATH (e.g. /usr/local/bin) would work too but is not what CI
 * installs, so prefer the packaged one.
 */
async function dockerCli(): Promise<string> {
  try {
    await Deno.stat("/usr/bin/docker");
    return "/usr/bin/docker";
  } catch {
    return "docker";
  }
}

function containerdConfig(dir: string): string {
  // Every path containerd would otherwise take from /var/lib, /run or /opt is redirected.
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

/**
 * Starts containerd + dockerd in a fresh temp dir and waits (up to `timeoutMs`) until
 * `docker version` answers over the private socket. Throws with the daemons' log tail when
 * they cannot start: tests must fail, not skip.
 *
 * dockerd is given `--containerd` explicitly because, without it, dockerd 20.10 silently uses
 * a system containerd whenever /run/containerd/containerd.sock exists.
 */
export async function startDockerd(
  options: { timeoutMs?: number; storageDriver?: "vfs" | "overlay2" } = {},
): Promise<Dockerd> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const storageDriver = options.storageDriver ?? "vfs";
  // Short prefix: unix socket paths (including libnetwork's under exec-root) max out at 108.
  const dir = await Deno.makeTempDir({ prefix: "imgpull-dk-" });
  const cli = await dockerCli();
  const host = `unix://${dir}/docker.sock`;
  const cliEnv = {
    DOCKER_HOST: host,
    // Keep the CLI away from ~/.docker (contexts, credentials).
    DOCKER_CONFIG: join(dir, "cli"),
  };
  await Deno.mkdir(join(dir, "cli"));
  await Deno.writeTextFile(join(dir, "containerd.toml"), containerdConfig(dir));
  // Own daemon.json: the host's /etc/docker/daemon.json must not apply, and the trust key
  // would otherwise be created in /etc/docker/key.json.
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

  const docker = (args: string[], opts: { stdin?: Uint8Array } = {}) =>
    run(cli, args, { env: cliEnv, stdin: opts.stdin });

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
      `--storage-driver=${storageDriver}`,
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
    let last: CommandResult | undefined;
    while (true) {
      if (containerd.exitStatus) {
        throw new Error(`containerd exited (${containerd.exitStatus.code})`);
      }
      if (dockerd.exitStatus) throw new Error(`dockerd exited (${dockerd.exitStatus.code})`);
      // containerd may not be listening yet: dockerd retries the connection on its own.
      last = await docker(["info", "--format", "{{.Driver}}"]);
      if (last.code === 0) break;
      if (Date.now() > deadline) {
        throw new Error(`no answer within ${timeoutMs} ms: ${last.stderr.trim()}`);
      }
      await sleep(200);
    }
    if (last.stdout.trim() !== storageDriver) {
      throw new Error(`storage driver is ${last.stdout.trim()}, not ${storageDriver}`);
    }
    const pids = [containerd.child.pid, dockerd.child.pid];
    return { host, docker, log, close, storageDriver, pids: () => pids };
  } catch (e) {
    const message = `startDockerd failed: ${(e as Error).message}\n${log()}`;
    await close().catch(() => {});
    throw new Error(message);
  }
}

/**
 * Unmounts whatever is still mounted below `dir` (deepest first), e.g. the data-root bind mount
 * dockerd makes private, when dockerd was killed before it could clean up.
 */
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
    // mountinfo escapes spaces etc. as octal; our temp paths have none.
    .sort((a, b) => b.length - a.length);
  for (const point of points) await run("umount", ["-l", point]);
}
