/**
 * One ordered list of endpoints per reference, as containers/image builds its pull sources:
 * the mirrors that may serve this reference, in order, then the upstream (unless blocked).
 *
 * Sources, merged in this order:
 * 1. Docker Hub names only: `--registry-mirror` URLs (flags), else daemon.json `registry-mirrors`.
 * 2. registries.conf: the `[[registry]]` with the longest matching prefix — its mirrors (filtered
 *    by `mirror-by-digest-only` / `pull-from-mirror`), and its `location` as the upstream.
 * 3. containerd hosts.toml for the reference's registry: `[host."URL"]` mirrors with the
 *    capabilities this reference needs, and `server` as the upstream unless registries.conf
 *    already rewrote it.
 * 4. The upstream: the reference's own registry (or its rewritten location).
 *
 * A blocked registry is a {@link UsageError} before any request.
 *
 * @module
 */
import type { EnvReader } from "../auth/credentials.ts";
import { UsageError } from "../errors.ts";
import { DOCKER_HUB, parseReference, type Reference } from "../reference.ts";
import { type ContainerdHost, DEFAULT_HOSTS_DIR, loadHostsFor } from "./containerd_hosts.ts";
import {
  type DaemonConfig,
  isInsecureRegistry,
  loadDaemonConfig,
  validateMirrorUrl,
} from "./daemon_json.ts";
import {
  findRegistry,
  loadRegistriesConf,
  pullSources,
  type RegistriesConf,
} from "./registries_conf.ts";

/** One place to try. */
export interface Endpoint {
  /** The reference at this endpoint: its registry ("host[:port]", "docker.io"), repository, tag, digest. */
  ref: Reference;
  /** "https": HTTPS only (HTTP fallback for loopback); "http": plain HTTP only. */
  scheme: "https" | "http";
  /** HTTPS first, plain HTTP when HTTPS cannot connect (and credentials may go over HTTP). */
  insecure: boolean;
  /** API root path: "/v2", or "/prefix/v2" for a mirror under a path. */
  apiRoot: string;
  /** Extra CA files and client certificate pairs for this endpoint (hosts.toml). */
  caFiles: string[];
  clientPairs: [string, string][];
  /** hosts.toml asked for `skip_verify`, which imgpull cannot do per host. */
  skipVerifyRequested: boolean;
  /** A mirror (skipped on failure) or the upstream. */
  mirror: boolean;
  /** Where it was configured: "--registry-mirror", a file path, or "the reference". */
  source: string;
}

/** Where the configuration comes from. */
export interface EndpointOptions {
  /** `--registry-mirror` URLs, in order (Docker Hub names only); replace daemon.json's list. */
  registryMirrors?: readonly string[];
  /** Environment (HOME, XDG_CONFIG_HOME, CONTAINERS_REGISTRIES_CONF). */
  env?: EnvReader;
  /** containerd hosts directory (`--hosts-dir`); default /etc/containerd/certs.d. */
  hostsDir?: string;
  /** Prefix for the /etc paths (tests). */
  systemRoot?: string;
  /** Skip every configuration file (flags only). */
  noConfigFiles?: boolean;
  /** `--plain-http`: the upstream is plain HTTP. */
  plainHttp?: boolean;
}

/** A short text naming an endpoint: `https://host[/prefix]/repository (mirror, from …)`. */
export function describeEndpoint(endpoint: Endpoint): string {
  const host = endpoint.ref.registry === DOCKER_HUB
    ? "registry-1.docker.io"
    : endpoint.ref.registry;
  const prefix = endpoint.apiRoot === "/v2" ? "" : endpoint.apiRoot.replace(/\/v2$/, "");
  const kind = endpoint.mirror ? "mirror" : "upstream";
  return `${endpoint.scheme}://${host}${prefix}/${endpoint.ref.repository} (${kind}, ${endpoint.source})`;
}

/** `host/repo[:tag][@digest]`, as containers/image's reference.String(). */
function referenceString(ref: Reference): string {
  let s = `${ref.registry}/${ref.repository}`;
  if (ref.tag !== undefined) s += `:${ref.tag}`;
  if (ref.digest !== undefined) s += `@${ref.digest}`;
  return s;
}

function plainEndpoint(ref: Reference, mirror: boolean, source: string): Endpoint {
  return {
    ref,
    scheme: "https",
    insecure: false,
    apiRoot: "/v2",
    caFiles: [],
    clientPairs: [],
    skipVerifyRequested: false,
    mirror,
    source,
  };
}

/** A Docker Hub mirror URL (flag or daemon.json) as an endpoint serving `ref`'s repository. */
function hubMirror(url: string, ref: Reference, source: string, daemon: DaemonConfig): Endpoint {
  const parsed = new URL(validateMirrorUrl(url, source));
  const scheme = parsed.protocol === "http:" ? "http" : "https";
  const insecure = scheme === "https" &&
    isInsecureRegistry(parsed.host, daemon.insecureRegistries ?? []);
  return {
    ...plainEndpoint({ ...ref, registry: parsed.host.toLowerCase() }, true, source),
    scheme,
    insecure,
    apiRoot: `${parsed.pathname.replace(/\/+$/, "")}/v2`,
  };
}

function containerdEndpoint(host: ContainerdHost, ref: Reference, file: string): Endpoint {
  return {
    ref: { ...ref, registry: host.host.toLowerCase() },
    scheme: host.scheme,
    insecure: false,
    apiRoot: host.apiRoot,
    caFiles: host.caFiles,
    clientPairs: host.clientPairs,
    skipVerifyRequested: host.skipVerify,
    mirror: !host.server,
    source: file,
  };
}

function rewritten(reference: string, file: string): Reference {
  try {
    return parseReference(reference);
  } catch (e) {
    throw new UsageError(
      `${file}: the rewritten reference ${reference} is not valid: ${(e as Error).message}`,
    );
  }
}

/** Loaded configuration, reusable for several references. */
export interface EndpointConfig {
  registriesConf?: RegistriesConf;
  daemon: DaemonConfig;
}

/** Reads registries.conf and daemon.json (unless `noConfigFiles`). */
export async function loadEndpointConfig(options: EndpointOptions): Promise<EndpointConfig> {
  if (options.noConfigFiles || !options.env) return { daemon: {} };
  const io = { systemRoot: options.systemRoot };
  const env = permittedEnv(options.env);
  return {
    registriesConf: await loadRegistriesConf(env, io),
    daemon: await loadDaemonConfig(env, io),
  };
}

/** A missing `--allow-env` for a variable is a usage error naming it, not a crash. */
function permittedEnv(env: EnvReader): EnvReader {
  return {
    get(name) {
      try {
        return env.get(name);
      } catch (e) {
        if (e instanceof Deno.errors.NotCapable) {
          throw new UsageError(`not allowed to read the environment variable ${name}`, {
            hint: `run with --allow-env=${name} (see the README's permission list)`,
          });
        }
        throw e;
      }
    },
  };
}

/**
 * The endpoints to try for `ref`, in order: mirrors first, the upstream last.
 *
 * @throws {UsageError} the registry is blocked, or a configuration file is malformed.
 */
export async function endpointsFor(
  ref: Reference,
  options: EndpointOptions,
  config?: EndpointConfig,
): Promise<Endpoint[]> {
  const loaded = config ?? await loadEndpointConfig(options);
  const { daemon, registriesConf } = loaded;
  const digested = ref.digest !== undefined;
  const list: Endpoint[] = [];

  if (ref.registry === DOCKER_HUB) {
    const fromFlags = options.registryMirrors && options.registryMirrors.length > 0;
    const urls = fromFlags ? options.registryMirrors! : daemon.registryMirrors ?? [];
    const source = fromFlags ? "--registry-mirror" : daemon.mirrorsFile ?? "daemon.json";
    for (const url of urls) list.push(hubMirror(url, ref, source, daemon));
  }

  let upstream = plainEndpoint(ref, false, "the reference");
  let upstreamRewritten = false;
  const name = `${ref.registry}/${ref.repository}`;
  const registry = registriesConf ? findRegistry(registriesConf, name) : undefined;
  if (registry) {
    if (registry.blocked) {
      throw new UsageError(`registry ${registry.prefix} is blocked in ${registry.file}`, {
        hint: `${name} matches a [[registry]] with blocked = true`,
      });
    }
    for (const source of pullSources(registry, referenceString(ref), digested)) {
      const endpoint = {
        ...plainEndpoint(rewritten(source.reference, registry.file), source.mirror, registry.file),
        insecure: source.endpoint.insecure,
      };
      if (source.mirror) list.push(endpoint);
      else {
        upstream = endpoint;
        upstreamRewritten = endpoint.ref.registry !== ref.registry ||
          endpoint.ref.repository !== ref.repository;
      }
    }
  }

  if (!options.noConfigFiles && options.env) {
    const hosts = await loadHostsFor(ref.registry, options.hostsDir ?? DEFAULT_HOSTS_DIR);
    if (hosts) {
      for (const host of hosts.hosts) {
        if (!host.pull || (!digested && !host.resolve)) continue;
        list.push(containerdEndpoint(host, upstream.ref, hosts.file));
      }
      if (hosts.server && !upstreamRewritten) {
        upstream = containerdEndpoint(hosts.server, upstream.ref, hosts.file);
      } else if (!hosts.server) {
        upstream.caFiles = hosts.defaults.caFiles;
        upstream.clientPairs = hosts.defaults.clientPairs;
        upstream.skipVerifyRequested = hosts.defaults.skipVerify;
      }
    }
  }

  if (options.plainHttp) upstream.scheme = "http";
  if (isInsecureRegistry(upstream.ref.registry, daemon.insecureRegistries ?? [])) {
    upstream.insecure = true;
  }
  list.push(upstream);

  // The same place twice (a mirror listed in two files) is tried once.
  const seen = new Set<string>();
  return list.filter((e) => {
    const key = `${e.scheme} ${e.ref.registry} ${e.apiRoot} ${e.ref.repository}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}
