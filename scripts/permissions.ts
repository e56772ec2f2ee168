/**
 * The permissions imgpull runs with, in one place: the README's "Permissions" table, the `pull`
 * task, the flags baked into compiled binaries (scripts/compile.ts) and the tests' CLI runner.
 * tests/integration/bundle_test.ts fails when any of those drifts from this list.
 * @module
 */

/**
 * The variables imgpull reads: docker config, podman's auth.json and registries.conf, rootless
 * daemon.json, default platform, credential helpers, cache, TERM (no cursor movement on a dumb
 * terminal), and the proxy variables (Deno uses
 * them without any permission; reading them lets an error name the proxy that failed).
 */
export const ALLOWED_ENV = [
  "HOME",
  "DOCKER_CONFIG",
  "DOCKER_DEFAULT_PLATFORM",
  "PATH",
  "XDG_CACHE_HOME",
  "LOCALAPPDATA",
  "XDG_CONFIG_HOME",
  "XDG_RUNTIME_DIR",
  "REGISTRY_AUTH_FILE",
  "CONTAINERS_REGISTRIES_CONF",
  "TERM",
  "HTTPS_PROXY",
  "https_proxy",
  "HTTP_PROXY",
  "http_proxy",
  "ALL_PROXY",
  "all_proxy",
  "NO_PROXY",
  "no_proxy",
] as const;

/** `deno run` / `deno compile` permission flags, exactly as the README documents them. */
export const PERMISSIONS: readonly string[] = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  `--allow-env=${ALLOWED_ENV.join(",")}`,
  "--allow-run",
];
