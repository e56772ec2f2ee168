/**
 * Docker's daemon configuration (`daemon.json`): `registry-mirrors` (Docker Hub names only,
 * tried in order, then Docker Hub) and `insecure-registries` (hosts or CIDRs that may be reached
 * over plain HTTP). Read from the rootless location `$XDG_CONFIG_HOME/docker/daemon.json`
 * (default `~/.config/docker/daemon.json`) and from `/etc/docker/daemon.json`; for each key the
 * first file that sets it wins, and flags win over both.
 *
 * @module
 */
import type { EnvReader } from "../auth/credentials.ts";
import { UsageError } from "../errors.ts";
import { configError, parseJson, type ReadText, readTextIfExists } from "./toml.ts";

/** What imgpull uses of daemon.json. */
export interface DaemonConfig {
  /** Mirror base URLs, normalised to end with "/". */
  registryMirrors?: string[];
  insecureRegistries?: string[];
  /** Where each came from. */
  mirrorsFile?: string;
  insecureFile?: string;
}

/**
 * dockerd's ValidateMirror: an http(s) URL without user info, query or fragment; a path prefix is
 * allowed. Returns it ending with "/".
 */
export function validateMirrorUrl(value: string, where: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UsageError(`${where}: invalid mirror URL "${value}"`, {
      hint: "a mirror is an http:// or https:// URL, e.g. https://mirror.example.com",
    });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new UsageError(`${where}: invalid mirror URL "${value}": it must be http:// or https://`);
  }
  if (url.username || url.password) {
    throw new UsageError(`${where}: mirror URL must not carry credentials`, {
      hint: "store the mirror's credentials with docker login / podman login for its host",
    });
  }
  if (url.search || url.hash) {
    throw new UsageError(`${where}: invalid mirror URL "${value}": no query or fragment allowed`);
  }
  return value.replace(/\/+$/, "") + "/";
}

/** Parses one daemon.json text. */
export function parseDaemonJson(text: string, file: string): DaemonConfig {
  if (text.trim() === "") return {};
  const raw = parseJson(text, file);
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw configError(file, "expected a JSON object");
  }
  const doc = raw as Record<string, unknown>;
  const list = (key: string): string[] | undefined => {
    const value = doc[key];
    if (value === undefined || value === null) return undefined;
    if (!Array.isArray(value) || value.some((v) => typeof v !== "string")) {
      throw configError(file, `"${key}" must be an array of strings`);
    }
    return value as string[];
  };
  const mirrors = list("registry-mirrors");
  const insecure = list("insecure-registries");
  const result: DaemonConfig = {};
  if (mirrors) {
    result.registryMirrors = mirrors.map((m) => validateMirrorUrl(m, file));
    result.mirrorsFile = file;
  }
  if (insecure) {
    result.insecureRegistries = insecure;
    result.insecureFile = file;
  }
  return result;
}

/** The daemon.json files, most specific first: rootless, then system. */
export function daemonJsonPaths(env: EnvReader, systemRoot = ""): string[] {
  const configHome = env.get("XDG_CONFIG_HOME") ||
    (env.get("HOME") ? `${env.get("HOME")}/.config` : undefined);
  const paths = configHome ? [`${configHome}/docker/daemon.json`] : [];
  paths.push(`${systemRoot}/etc/docker/daemon.json`);
  return paths;
}

/** Reads the daemon.json files; for each key the first file that sets it wins. */
export async function loadDaemonConfig(
  env: EnvReader,
  options: { systemRoot?: string; readFile?: ReadText } = {},
): Promise<DaemonConfig> {
  const read = options.readFile ?? readTextIfExists;
  const merged: DaemonConfig = {};
  for (const path of daemonJsonPaths(env, options.systemRoot)) {
    const text = await read(path);
    if (text === undefined) continue;
    const one = parseDaemonJson(text, path);
    if (!merged.registryMirrors && one.registryMirrors) {
      merged.registryMirrors = one.registryMirrors;
      merged.mirrorsFile = one.mirrorsFile;
    }
    if (!merged.insecureRegistries && one.insecureRegistries) {
      merged.insecureRegistries = one.insecureRegistries;
      merged.insecureFile = one.insecureFile;
    }
  }
  return merged;
}

function ipv4(text: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!m) return undefined;
  const octets = m.slice(1).map(Number);
  if (octets.some((o) => o > 255)) return undefined;
  return ((octets[0] << 24) >>> 0) + (octets[1] << 16) + (octets[2] << 8) + octets[3];
}

/**
 * Whether `registry` ("host[:port]") is listed in `insecure-registries`: exactly (with or without
 * a scheme), by host when the entry has no port, or (IPv4 literals) inside a listed CIDR. Host
 * names are not resolved to match a CIDR (dockerd does resolve them).
 */
export function isInsecureRegistry(registry: string, entries: readonly string[]): boolean {
  const target = registry.toLowerCase();
  const host = target.startsWith("[")
    ? target.slice(0, target.indexOf("]") + 1)
    : target.split(":")[0];
  for (const raw of entries) {
    const entry = raw.trim().toLowerCase().replace(/^https?:\/\//, "").replace(/\/+$/, "");
    if (entry === target || entry === host) return true;
    const cidr = /^([\d.]+)\/(\d{1,2})$/.exec(entry);
    const address = ipv4(host);
    if (cidr && address !== undefined) {
      const net = ipv4(cidr[1]);
      const bits = Number(cidr[2]);
      if (net === undefined || bits > 32) continue;
      const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
      if (((address & mask) >>> 0) === ((net & mask) >>> 0)) return true;
    }
  }
  return false;
}
