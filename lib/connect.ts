/**
 * From a reference to a registry client that answers for it: the endpoints configured for it
 * (mirrors from flags, daemon.json, registries.conf and containerd hosts.toml, then the
 * upstream), TLS settings, credentials for each endpoint's own host, and the ping that picks the
 * scheme and answers the auth challenge.
 *
 * @module
 */
import { type Credential, type EnvReader, lookupCredentialFor } from "./auth/credentials.ts";
import { AuthError, NetworkError, NotFoundError } from "./errors.ts";
import type { PullEventSink } from "./events.ts";
import type { Reference } from "./reference.ts";
import { describeEndpoint, type Endpoint, endpointsFor } from "./registries/endpoints.ts";
import { RegistryClient } from "./registry.ts";
import { certsDirRoots, endpointTls } from "./tls.ts";

/** How to reach the registry. */
export interface ConnectOptions {
  /** `--username` / `--password`: used before any docker config, for the upstream only. */
  username?: string;
  password?: string;
  /** PEM files of extra CAs (`--ca-cert`). */
  caCertFiles?: string[];
  /** Per-registry certificate directories; default Docker's and Podman's `certs.d`. */
  certsDirs?: string[];
  /** Allow plain HTTP for a registry that is not on loopback. */
  plainHttp?: boolean;
  /**
   * Environment: docker config and auth.json lookup (HOME, DOCKER_CONFIG, REGISTRY_AUTH_FILE,
   * XDG_RUNTIME_DIR, XDG_CONFIG_HOME) and, for {@link connectFirstWorking}, the configuration
   * files (CONTAINERS_REGISTRIES_CONF, XDG_CONFIG_HOME). Without it no file is read.
   */
  env?: EnvReader;
  onEvent?: PullEventSink;
  signal?: AbortSignal;
  /** Overrides the manifest Accept list (tests use it to get schema1). */
  manifestAccept?: readonly string[];
  /** Retries per request or blob segment after a transient failure (default 3). */
  retries?: number;
  /** A transfer that receives nothing for this long is aborted and retried (default 30 s). */
  stallTimeoutMs?: number;
  /**
   * `--registry-mirror URL` (repeatable, in order): mirrors for Docker Hub names, as dockerd's
   * option; they replace daemon.json's `registry-mirrors`.
   */
  registryMirrors?: string[];
  /** `--hosts-dir DIR`: containerd's hosts directory (default /etc/containerd/certs.d). */
  hostsDir?: string;
  /** Prefix of the /etc configuration paths (tests point it at a temporary directory). */
  systemConfigRoot?: string;
  /**
   * The private cache directory: manifests by digest and what each endpoint's `/v2/` said
   * (see RegistryClientOptions.cacheDir); unset with `--no-cache`.
   */
  cacheDir?: string;
  /**
   * Connections to open to the registry ahead of the downloads, while the token and manifests
   * are fetched (see RegistryClientOptions.warmConnections); default none.
   */
  warmConnections?: number;
}

/** Opens a registry client for `ref` itself (no mirrors), with TLS and credentials, and pings it. */
export async function connect(ref: Reference, options: ConnectOptions): Promise<RegistryClient> {
  return (await connectEndpoint(directEndpoint(ref, options), options)).client;
}

function directEndpoint(ref: Reference, options: ConnectOptions): Endpoint {
  return {
    ref,
    scheme: options.plainHttp ? "http" : "https",
    insecure: false,
    apiRoot: "/v2",
    caFiles: [],
    clientPairs: [],
    skipVerifyRequested: false,
    mirror: false,
    source: "the reference",
  };
}

/** A pinged client for one endpoint, and whether it holds credentials. */
interface Connected {
  client: RegistryClient;
  /** Set once the credential lookup found something (401/403 then means "wrong credentials"). */
  hadCredential: () => boolean;
}

/**
 * Opens and pings a client for `endpoint`. A mirror gets only the credentials stored for its own
 * host (and repository); `--username`/`--password` go to the upstream only.
 */
async function connectEndpoint(endpoint: Endpoint, options: ConnectOptions): Promise<Connected> {
  const { ref } = endpoint;
  const tls = await endpointTls(ref.registry, {
    caCertFiles: options.caCertFiles,
    certsDirs: options.certsDirs ??
      certsDirRoots(Deno.build.os, {
        HOME: options.env?.get("HOME"),
        XDG_CONFIG_HOME: options.env?.get("XDG_CONFIG_HOME"),
      }),
    caFiles: endpoint.caFiles,
    clientPairs: endpoint.clientPairs,
  });
  const log = (message: string) => options.onEvent?.({ type: "debug", message });
  let found = false;
  const credential = async (): Promise<Credential | undefined> => {
    if (options.username !== undefined && !endpoint.mirror) {
      found = true;
      return { username: options.username, password: options.password ?? "", source: "flags" };
    }
    if (!options.env) return undefined;
    const result = await lookupCredentialFor(ref.registry, ref.repository, {
      env: options.env,
      log,
    });
    if (result) {
      found = true;
      log(`credentials for ${ref.registry} from ${result.source}`);
    }
    return result;
  };
  const client = new RegistryClient({
    registry: ref.registry,
    repository: ref.repository,
    tls,
    plainHttp: endpoint.scheme === "http",
    insecure: endpoint.insecure,
    apiRoot: endpoint.apiRoot,
    credential,
    log,
    manifestAccept: options.manifestAccept,
    signal: options.signal,
    retries: options.retries,
    stallTimeoutMs: options.stallTimeoutMs,
    cacheDir: options.cacheDir,
    warmConnections: options.warmConnections,
  });
  try {
    await client.ping();
  } catch (e) {
    await client.dispose();
    throw e;
  }
  return { client, hadCredential: () => found };
}

/** What {@link connectFirstWorking} found. */
export interface WorkingEndpoint<T> {
  /** The client of the endpoint that answered; the caller closes it. */
  client: RegistryClient;
  /** The reference at that endpoint (rewritten registry and repository). */
  ref: Reference;
  /** What `attempt` returned there. */
  result: T;
  endpoint: Endpoint;
}

/**
 * Whether a mirror's failure lets the next endpoint be tried: no connection, 5xx/429 after the
 * retries, 404, and 401/403 when no credentials were sent. Wrong credentials, bad content and
 * integrity failures are reported, not hidden behind a fallback.
 */
function skippable(error: unknown, hadCredential: boolean): boolean {
  if (error instanceof NetworkError || error instanceof NotFoundError) return true;
  return error instanceof AuthError && !hadCredential;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Tries the endpoints configured for `ref` in order (mirrors, then the upstream): connects,
 * pings and runs `attempt` (e.g. resolving the image) with the endpoint's client and its
 * rewritten reference. A mirror that fails in a way {@link skippable} accepts is skipped with a
 * one-line notice; when every endpoint fails, the last error is thrown. Retries happen per
 * endpoint, inside the client. The caller's `ref` is never changed.
 *
 * @throws {UsageError} the registry is blocked, or a configuration file is malformed.
 */
export async function connectFirstWorking<T>(
  ref: Reference,
  options: ConnectOptions,
  attempt: (client: RegistryClient, endpointRef: Reference) => Promise<T>,
): Promise<WorkingEndpoint<T>> {
  const endpoints = await endpointsFor(ref, {
    registryMirrors: options.registryMirrors,
    env: options.env,
    hostsDir: options.hostsDir,
    systemRoot: options.systemConfigRoot,
    plainHttp: options.plainHttp,
    noConfigFiles: !options.env,
  });
  const debug = (message: string) => options.onEvent?.({ type: "debug", message });
  if (endpoints.length > 1) {
    debug(
      `endpoints for ${ref.registry}/${ref.repository}: ` +
        endpoints.map(describeEndpoint).join(", "),
    );
  }
  let lastError: unknown;
  for (const [index, endpoint] of endpoints.entries()) {
    const last = index === endpoints.length - 1;
    let connected: Connected | undefined;
    try {
      connected = await connectEndpoint(endpoint, options);
      const result = await attempt(connected.client, endpoint.ref);
      // The client's own name: the scheme it settled on (a loopback fallback to plain HTTP).
      debug(
        `${ref.registry}/${ref.repository} served by ${connected.client.endpointName} ` +
          `(${endpoint.mirror ? "mirror" : "upstream"}, ${endpoint.source})`,
      );
      return { client: connected.client, ref: endpoint.ref, result, endpoint };
    } catch (error) {
      await connected?.client.dispose();
      if (options.signal?.aborted) throw error;
      if (last || !endpoint.mirror || !skippable(error, connected?.hadCredential() ?? false)) {
        throw error;
      }
      lastError = error;
      const tls = endpoint.skipVerifyRequested && error instanceof NetworkError &&
          error.status === undefined
        ? " (hosts.toml skip_verify is not supported: certificates are verified; " +
          "name the mirror's CA with ca = …)"
        : "";
      options.onEvent?.({
        type: "notice",
        message: `mirror ${describeEndpoint(endpoint)} failed: ${messageOf(error)}${tls}; ` +
          `trying ${describeEndpoint(endpoints[index + 1])}`,
      });
    }
  }
  // Unreachable: the last endpoint either returns or throws.
  throw lastError;
}
