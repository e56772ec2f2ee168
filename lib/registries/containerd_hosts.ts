/**
 * containerd's registry hosts (`docs/hosts.md`), as Kubernetes nodes are configured:
 * `<dir>/<host[:port]>/hosts.toml`, else `<dir>/_default/hosts.toml`, with `dir` defaulting to
 * `/etc/containerd/certs.d` (`--hosts-dir` in imgpull, as in `ctr`). `[host."URL"]` tables are
 * tried in file order, then `server` (else the registry itself).
 *
 * `skip_verify = true` cannot be honoured for one host (Deno has no per-client switch): the
 * certificate is still verified, and a failure says so.
 *
 * @module
 */
import { configError, isTable, parseToml, type ReadText, readTextIfExists } from "./toml.ts";

/** The default hosts directory. */
export const DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d";

/** One host of a hosts.toml. */
export interface ContainerdHost {
  /** `https` or `http`. */
  scheme: "https" | "http";
  /** `host[:port]`. */
  host: string;
  /** The API root: `/v2`, `/prefix/v2`, or the URL's own path with `override_path`. */
  apiRoot: string;
  /** Whether it may resolve tags (`resolve`) and fetch content by digest (`pull`). */
  resolve: boolean;
  pull: boolean;
  /** Absolute CA file paths. */
  caFiles: string[];
  /** Client certificate and key file pairs (one file may hold both: key path "" then). */
  clientPairs: [string, string][];
  /** `skip_verify = true` was asked for. */
  skipVerify: boolean;
  /** Whether this is the `server` (upstream) rather than a `[host]` mirror. */
  server: boolean;
}

/** A parsed hosts.toml. */
export interface ContainerdHostsFile {
  file: string;
  /** Mirrors in file order. */
  hosts: ContainerdHost[];
  /** `server`, when set. */
  server?: ContainerdHost;
  /** Top-level settings that apply to the default upstream when `server` is unset. */
  defaults: Omit<ContainerdHost, "scheme" | "host" | "apiRoot" | "server">;
}

function strings(value: unknown, file: string, key: string, dir: string): string[] {
  if (value === undefined) return [];
  const list = typeof value === "string" ? [value] : value;
  if (!Array.isArray(list) || list.some((v) => typeof v !== "string")) {
    throw configError(file, `invalid type for "${key}": expected a string or an array of strings`);
  }
  return (list as string[]).map((p) => (p.startsWith("/") ? p : `${dir}/${p}`));
}

function clientPairs(value: unknown, file: string, dir: string): [string, string][] {
  if (value === undefined) return [];
  const abs = (p: string) => (p.startsWith("/") ? p : `${dir}/${p}`);
  if (typeof value === "string") return [[abs(value), ""]];
  if (!Array.isArray(value)) throw configError(file, `invalid type for "client"`);
  return value.map((entry): [string, string] => {
    if (typeof entry === "string") return [abs(entry), ""];
    if (Array.isArray(entry) && entry.length === 2 && entry.every((e) => typeof e === "string")) {
      return [abs(entry[0]), abs(entry[1])];
    }
    throw configError(file, `invalid pair for "client": expected ["cert", "key"]`);
  });
}

function settings(table: Record<string, unknown>, file: string, dir: string, where: string) {
  const capabilities = table.capabilities;
  let resolve = true;
  let pull = true;
  if (capabilities !== undefined) {
    if (!Array.isArray(capabilities) || capabilities.some((c) => typeof c !== "string")) {
      throw configError(file, `${where}capabilities must be an array of strings`);
    }
    if (capabilities.length > 0) {
      resolve = false;
      pull = false;
      for (const c of capabilities as string[]) {
        const name = c.toLowerCase();
        if (name === "pull") pull = true;
        else if (name === "resolve") resolve = true;
        else if (name !== "push") throw configError(file, `unknown capability ${c}`);
      }
    }
  }
  const skip = table.skip_verify;
  if (skip !== undefined && typeof skip !== "boolean") {
    throw configError(file, `${where}skip_verify must be true or false`);
  }
  const override = table.override_path;
  if (override !== undefined && typeof override !== "boolean") {
    throw configError(file, `${where}override_path must be true or false`);
  }
  return {
    resolve,
    pull,
    caFiles: strings(table.ca, file, "ca", dir),
    clientPairs: clientPairs(table.client, file, dir),
    skipVerify: skip === true,
    overridePath: override === true,
  };
}

/** containerd's parseHostConfig for a URL: scheme defaults to https, path gets `/v2`. */
function hostUrl(server: string, overridePath: boolean, file: string) {
  const text = server.startsWith("http") ? server : `https://${server}`;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw configError(file, `unable to parse server ${server}`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw configError(file, `unsupported scheme in ${server}`);
  }
  let path = url.pathname.replace(/\/+$/, "");
  if (!overridePath && !path.endsWith("/v2")) path += "/v2";
  return { scheme: url.protocol.slice(0, -1) as "https" | "http", host: url.host, apiRoot: path };
}

/** Parses a hosts.toml (`dir` resolves relative certificate paths). */
export function parseHostsToml(text: string, file: string, dir: string): ContainerdHostsFile {
  const doc = parseToml(text, file);
  const hostsTable = doc.host ?? {};
  if (!isTable(hostsTable)) throw configError(file, `"host" must be a table of [host."URL"]`);
  const hosts: ContainerdHost[] = [];
  // smol-toml keeps tables in file order (URL keys are never array-index-like).
  for (const [url, table] of Object.entries(hostsTable)) {
    if (!isTable(table)) throw configError(file, `host."${url}" must be a table`);
    const s = settings(table, file, dir, `host."${url}".`);
    hosts.push({ ...hostUrl(url, s.overridePath, file), ...strip(s), server: false });
  }
  const top = settings(doc, file, dir, "");
  const serverValue = doc.server;
  if (serverValue !== undefined && typeof serverValue !== "string") {
    throw configError(file, `"server" must be a string`);
  }
  const server = serverValue
    ? { ...hostUrl(serverValue, top.overridePath, file), ...strip(top), server: true }
    : undefined;
  return { file, hosts, server, defaults: strip(top) };
}

function strip(s: ReturnType<typeof settings>) {
  const { overridePath: _, ...rest } = s;
  return rest;
}

/**
 * containerd's directories for `registry`: `host_port_` (a port written as containerd does),
 * `host:port`, then `_default`.
 */
export function hostDirCandidates(registry: string, hostsDir = DEFAULT_HOSTS_DIR): string[] {
  const colon = registry.lastIndexOf(":");
  const dirs = colon > 0 && !registry.endsWith("]")
    ? [`${hostsDir}/${registry.slice(0, colon)}_${registry.slice(colon + 1)}_`]
    : [];
  return [...dirs, `${hostsDir}/${registry}`, `${hostsDir}/_default`];
}

/**
 * The hosts.toml for `registry` ("docker.io" for Docker Hub, else "host[:port]"): the first
 * existing directory of {@link hostDirCandidates} is used, as containerd does; without a
 * hosts.toml in it, there is nothing to use (its certificate files are not read).
 */
export async function loadHostsFor(
  registry: string,
  hostsDir = DEFAULT_HOSTS_DIR,
  io: { readFile?: ReadText; isDir?: (path: string) => Promise<boolean> } = {},
): Promise<ContainerdHostsFile | undefined> {
  const read = io.readFile ?? readTextIfExists;
  const isDir = io.isDir ?? directoryExists;
  for (const dir of hostDirCandidates(registry, hostsDir)) {
    if (!await isDir(dir)) continue;
    const text = await read(`${dir}/hosts.toml`);
    return text === undefined || text.trim() === ""
      ? undefined
      : parseHostsToml(text, `${dir}/hosts.toml`, dir);
  }
  return undefined;
}

async function directoryExists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}
