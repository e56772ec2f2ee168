/**
 * imgpull as a library: pull an image from any OCI/Docker registry, for any
 * platform, into an archive that `docker load` and `podman load` accept,
 * without a Docker daemon.
 *
 * @example
 * ```ts
 * import { pull } from "./mod.ts";
 * const result = await pull({ reference: "nginx:latest", platform: "linux/arm64" });
 * console.log(result.output, result.imageId);
 * ```
 * @module
 */
export {
  connect,
  defaultOutputName,
  listImagePlatforms,
  pull,
  type PullOptions,
  type PullResult,
  repoTagFor,
} from "./pull.ts";
export type { PullEvent, PullEventSink } from "./events.ts";
export * from "./errors.ts";
export { parseReference, type Reference } from "./reference.ts";
export { formatPlatform, parsePlatform, type Platform } from "./platform.ts";
export { VERSION } from "./version.ts";
