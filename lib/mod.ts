/**
 * imgpull as a library: pull an image from any OCI/Docker registry, for any
 * platform, into an archive that `docker load` and `podman load` accept,
 * without a Docker daemon. Every blob is verified against its digest while it
 * streams; nothing unverified reaches the output path.
 *
 * The library never prints and never exits: progress arrives as
 * {@link PullEvent}s and failures are {@link ImgpullError}s, each with the
 * exit code the `imgpull` command uses for it. It needs the same permissions
 * as the command (the list in `scripts/permissions.ts`: `--allow-net --allow-read
 * --allow-write --allow-env=HOME,DOCKER_CONFIG,… --allow-run`, the last only for
 * `docker-credential-*` helpers).
 *
 * ## Pulling: {@link pull}, {@link PullOptions}, {@link PullResult}
 *
 * ```ts
 * import { pull } from "@imgpull/imgpull";
 *
 * const result = await pull({
 *   reference: "nginx:1.27",
 *   platform: "linux/arm64",
 *   output: "nginx-arm64.tar",
 *   maxConcurrentDownloads: 3,
 *   onEvent: (event) => {
 *     if (event.type === "warning") console.warn(event.message);
 *   },
 * });
 * console.log(result.output, result.imageId, result.repoTags, result.layers, result.bytes);
 * ```
 *
 * ## Other outputs and several images: {@link OutputFormat}, {@link PulledImage}
 *
 * The same choices as the command's `--format`, `--all-platforms`, several references and
 * `--registry-mirror`: every image goes into one output, shared blobs once.
 *
 * ```ts
 * import { OUTPUT_FORMATS, pull } from "@imgpull/imgpull";
 *
 * console.log(OUTPUT_FORMATS); // ["docker-archive", "oci-archive", "oci-dir", "rootfs"]
 * const result = await pull({
 *   references: ["alpine:3.20", "busybox:1.36"],
 *   format: "oci-archive",
 *   allPlatforms: true,
 *   output: "bundle.tar",
 *   registryMirrors: ["https://mirror.gcr.io"],
 * });
 * for (const image of result.images) console.log(image.reference, image.imageId);
 * ```
 *
 * ## Listing platforms: {@link listImagePlatforms}, {@link PlatformEntry}
 *
 * ```ts
 * import { listImagePlatforms } from "@imgpull/imgpull";
 *
 * for (const entry of await listImagePlatforms("alpine:3.20")) {
 *   console.log(entry.platform, entry.digest, entry.mediaType);
 * }
 * ```
 *
 * ## Talking to a registry: {@link connect}, {@link ConnectOptions}, {@link EnvReader}
 *
 * `connect` opens an authenticated {@link RegistryClient} (TLS settings,
 * credentials from the options or the docker config, a ping of `/v2/`) for
 * lower-level work such as fetching a manifest ({@link FetchedManifest}).
 * {@link pull} and {@link listImagePlatforms} take the same
 * {@link ConnectOptions}. {@link RegistryClientOptions}, {@link TlsOptions}
 * and {@link Credential} describe what a client is built from.
 *
 * ```ts
 * import { connect, parseReference } from "@imgpull/imgpull";
 *
 * const ref = parseReference("registry.example.com:5000/team/app:v1");
 * const client = await connect(ref, {
 *   username: "ci",
 *   password: Deno.env.get("REGISTRY_PASSWORD"),
 *   caCertFiles: ["ca.pem"],
 *   env: { get: (name) => Deno.env.get(name) }, // an EnvReader: HOME, DOCKER_CONFIG
 *   retries: 5,
 * });
 * try {
 *   const manifest = await client.getManifest("v1");
 *   console.log(manifest.contentType, manifest.digestHeader, manifest.bytes.length);
 * } finally {
 *   client.close();
 * }
 * ```
 *
 * ## Names: {@link defaultOutputName}, {@link repoTagFor}
 *
 * ```ts
 * import { defaultOutputName, parseReference, repoTagFor } from "@imgpull/imgpull";
 *
 * const ref = parseReference("ubuntu:20.04");
 * defaultOutputName(ref); // "library_ubuntu_20.04.tar"
 * repoTagFor(ref); // "ubuntu:20.04"
 * ```
 *
 * ## References and platforms: {@link parseReference}, {@link Reference},
 * {@link parsePlatform}, {@link formatPlatform}, {@link Platform}
 *
 * ```ts
 * import { formatPlatform, parsePlatform, parseReference } from "@imgpull/imgpull";
 *
 * parseReference("nginx"); // { registry: "docker.io", repository: "library/nginx", tag: "latest" }
 * const platform = parsePlatform("linux/aarch64"); // { os: "linux", architecture: "arm64" }
 * formatPlatform(platform); // "linux/arm64"
 * ```
 *
 * ## Progress: {@link PullEvent}, {@link PullEventSink}
 *
 * ```ts
 * import { pull, type PullEventSink } from "@imgpull/imgpull";
 *
 * const onEvent: PullEventSink = (event) => {
 *   if (event.type === "blob-done") console.log(`${event.digest} ${event.size} bytes`);
 * };
 * await pull({ reference: "alpine", onEvent });
 * ```
 *
 * ## Errors: {@link ImgpullError}, {@link ExitCode} and the error classes
 *
 * `UsageError` (`InvalidReferenceError`, `InvalidPlatformError`),
 * `PlatformError` (`PlatformNotFoundError`, `PlatformMismatchError`),
 * `AuthError`, `NotFoundError`, `IntegrityError`, `NetworkError`,
 * `LocalIoError`, `InvalidContentError`, `InterruptedError`; see
 * `errors.ts` for the catalogue.
 *
 * ```ts
 * import { AuthError, ImgpullError, pull } from "@imgpull/imgpull";
 *
 * const controller = new AbortController(); // abort → InterruptedError
 * try {
 *   await pull({ reference: "private.example.com/app", signal: controller.signal });
 * } catch (e) {
 *   if (e instanceof AuthError) console.error("check the credentials");
 *   else if (e instanceof ImgpullError) console.error(e.message, e.hint ?? "", e.exitCode);
 *   else throw e;
 * }
 * ```
 *
 * ## Version: {@link VERSION}, {@link buildInfo}, {@link BuildInfo}
 *
 * ```ts
 * import { buildInfo, VERSION } from "@imgpull/imgpull";
 *
 * console.log(VERSION); // "0.1.0"
 * const { deno, target, commit } = buildInfo();
 * ```
 *
 * @module
 */
export { connect, type ConnectOptions } from "./connect.ts";
export {
  defaultOutputName,
  listImagePlatforms,
  OUTPUT_FORMATS,
  type OutputFormat,
  pull,
  type PulledImage,
  type PullOptions,
  type PullResult,
  repoTagFor,
} from "./pull.ts";
export type { PlatformEntry } from "./resolve.ts";
export type { FetchedManifest, RegistryClient, RegistryClientOptions } from "./registry.ts";
export type { Credential, EnvReader } from "./auth/credentials.ts";
export type { TlsOptions } from "./transport.ts";
export type { PullEvent, PullEventSink } from "./events.ts";
export * from "./errors.ts";
export { parseReference, type Reference } from "./reference.ts";
export { formatPlatform, parsePlatform, type Platform, type PlatformDefaults } from "./platform.ts";
export { type BuildInfo, buildInfo, VERSION } from "./version.ts";
