/**
 * A private Docker daemon for the benchmarks: the test helper's (its own containerd, socket,
 * data, exec and state directories under one temp dir; nothing shared with a system daemon),
 * with the `overlay2` storage driver that Docker users actually run. `vfs`, which the tests use
 * for portability, copies the whole image for every layer and would make `docker pull` of a
 * many-layer image look far slower than it is; it is the fallback when overlay mounts are not
 * allowed here.
 * @module
 */
import { type Dockerd, startDockerd } from "../tests/helpers/dockerd.ts";

/** A running private dockerd (see {@link Dockerd}: `storageDriver`, `pids()`). */
export type BenchDockerd = Dockerd;

/** Starts an overlay2 dockerd, else a vfs one. `log` receives a line saying which. */
export async function startBenchDockerd(log: (line: string) => void): Promise<BenchDockerd> {
  try {
    return await startDockerd({ storageDriver: "overlay2" });
  } catch (e) {
    log(`[bench] ${(e as Error).message.split("\n")[0]}; using a vfs dockerd`);
  }
  return await startDockerd();
}
