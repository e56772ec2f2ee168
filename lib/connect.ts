/**
 * From a reference to a registry client that answers for it: TLS settings, credentials, and
 * the ping that picks the scheme and answers the auth challenge.
 *
 * @module
 */
import { type Credential, type EnvReader, lookupCredential } from "./auth/credentials.ts";
import type { PullEventSink } from "./events.ts";
import type { Reference } from "./reference.ts";
import { RegistryClient } from "./registry.ts";
import { registryTls } from "./tls.ts";

/** How to reach the registry. */
export interface ConnectOptions {
  /** `--username` / `--password`: used before any docker config. */
  username?: string;
  password?: string;
  /** PEM files of extra CAs (`--ca-cert`). */
  caCertFiles?: string[];
  /** Per-registry certificate directories; default Docker's and Podman's `certs.d`. */
  certsDirs?: string[];
  /** Allow plain HTTP for a registry that is not on loopback. */
  plainHttp?: boolean;
  /** Environment for docker config lookup (HOME, DOCKER_CONFIG). */
  env?: EnvReader;
  onEvent?: PullEventSink;
  signal?: AbortSignal;
  /** Overrides the manifest Accept list (tests use it to get schema1). */
  manifestAccept?: readonly string[];
  /** Retries per request or blob segment after a transient failure (default 3). */
  retries?: number;
  /** A transfer that receives nothing for this long is aborted and retried (default 30 s). */
  stallTimeoutMs?: number;
}

/** Opens a registry client for `ref`, with TLS settings and credentials, and pings it. */
export async function connect(ref: Reference, options: ConnectOptions): Promise<RegistryClient> {
  const tls = await registryTls(ref.registry, options.caCertFiles, options.certsDirs);
  const log = (message: string) => options.onEvent?.({ type: "debug", message });
  const credential = async (): Promise<Credential | undefined> => {
    if (options.username !== undefined) {
      return { username: options.username, password: options.password ?? "", source: "flags" };
    }
    if (!options.env) return undefined;
    const found = await lookupCredential(ref.registry, { env: options.env });
    if (found) log(`credentials for ${ref.registry} from ${found.source}`);
    return found;
  };
  const client = new RegistryClient({
    registry: ref.registry,
    repository: ref.repository,
    tls,
    plainHttp: options.plainHttp,
    credential,
    log,
    manifestAccept: options.manifestAccept,
    signal: options.signal,
    retries: options.retries,
    stallTimeoutMs: options.stallTimeoutMs,
  });
  try {
    await client.ping();
  } catch (e) {
    client.close();
    throw e;
  }
  return client;
}
