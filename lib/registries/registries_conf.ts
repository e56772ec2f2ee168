/**
 * containers-registries.conf(5), version 2 (and the version 1 tables it replaced), as
 * containers/image reads it (`pkg/sysregistriesv2`): the same files, the same drop-in merging,
 * the same checks, the same prefix matching and reference rewriting.
 *
 * Files: `$CONTAINERS_REGISTRIES_CONF`; else `$HOME/.config/containers/registries.conf` when it
 * exists (then only `$HOME/.config/containers/registries.conf.d/`); else
 * `/etc/containers/registries.conf` (absent is fine) — each followed by the `*.conf` drop-ins of
 * `/etc/containers/registries.conf.d/` and `$HOME/.config/containers/registries.conf.d/`, in
 * name order, directory by directory. A drop-in replaces a `[[registry]]` with the same prefix,
 * replaces `unqualified-search-registries`, `credential-helpers` and `short-name-mode` when it
 * sets them, and merges `[aliases]`.
 *
 * Short names keep Docker's rule in imgpull (`nginx` is `docker.io/library/nginx`):
 * `unqualified-search-registries`, `short-name-mode` and `[aliases]` are parsed and checked (a
 * real file must load) but not used to resolve names.
 *
 * @module
 */
import type { EnvReader } from "../auth/credentials.ts";
import {
  configError,
  isTable,
  lineOfMatch,
  type ListDir,
  listFiles,
  parseToml,
  type ReadText,
  readTextIfExists,
  type TomlTable,
} from "./toml.ts";

/** `pull-from-mirror` values. */
export type PullFromMirror = "all" | "digest-only" | "tag-only";

/** A `[[registry.mirror]]`. */
export interface MirrorConf {
  /** `host[:port][/namespace]`, trailing slashes removed. */
  location: string;
  insecure: boolean;
  /** Unset means "all" (unless the registry has `mirror-by-digest-only`). */
  pullFromMirror?: PullFromMirror;
}

/** A `[[registry]]` after post-processing: the prefix is always set. */
export interface RegistryConf {
  /** What it matches: `host[:port][/path]`, or `*.example.com`. */
  prefix: string;
  /** Where it really is; empty for a wildcard prefix without location (no rewrite). */
  location: string;
  insecure: boolean;
  blocked: boolean;
  mirrorByDigestOnly: boolean;
  mirrors: MirrorConf[];
  /** The file that defined it (for messages). */
  file: string;
}

/** An `[aliases]` entry: the value is undefined when set to "" (alias removed). */
export interface AliasConf {
  value?: string;
  file: string;
}

/** The merged configuration. */
export interface RegistriesConf {
  /** Sorted by prefix, one per prefix. */
  registries: RegistryConf[];
  /** Undefined when no file sets it. */
  unqualifiedSearchRegistries?: string[];
  credentialHelpers?: string[];
  shortNameMode?: "enforcing" | "permissive" | "disabled";
  aliases: Record<string, AliasConf>;
  /** The files read, in order. */
  files: string[];
}

/** An empty configuration (no files). */
export function emptyRegistriesConf(): RegistriesConf {
  return { registries: [], aliases: {}, files: [] };
}

const REGISTRY_HEADER = /^[ \t]*\[\[[ \t]*registry[ \t]*\]\]/m;
const MIRROR_HEADER = /^[ \t]*\[\[[ \t]*registry[ \t]*\.[ \t]*mirror[ \t]*\]\]/m;
const DOMAIN =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?$|^\[[0-9a-fA-F:.]+\](?::[0-9]+)?$/;
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;

/** Reads a TOML file's typed fields, naming the file (and the table's line) on a wrong type. */
class Fields {
  constructor(readonly file: string, readonly line?: number) {}
  string(table: TomlTable, key: string, where: string): string | undefined {
    const value = table[key];
    if (value === undefined) return undefined;
    if (typeof value !== "string") throw this.#wrong(key, where, "a string");
    return value;
  }
  boolean(table: TomlTable, key: string, where: string): boolean {
    const value = table[key];
    if (value === undefined) return false;
    if (typeof value !== "boolean") throw this.#wrong(key, where, "true or false");
    return value;
  }
  strings(table: TomlTable, key: string, where: string): string[] | undefined {
    const value = table[key];
    if (value === undefined) return undefined;
    if (!Array.isArray(value) || value.some((v) => typeof v !== "string")) {
      throw this.#wrong(key, where, "an array of strings");
    }
    return value as string[];
  }
  tables(table: TomlTable, key: string, where: string): TomlTable[] {
    const value = table[key];
    if (value === undefined) return [];
    if (!Array.isArray(value) || !value.every(isTable)) {
      throw this.#wrong(key, where, `an array of tables ([[${where ? `${where}.` : ""}${key}]])`);
    }
    return value as TomlTable[];
  }
  #wrong(key: string, where: string, expected: string) {
    return configError(
      this.file,
      `"${where ? `${where}.` : ""}${key}" must be ${expected}`,
      this.line,
    );
  }
}

/**
 * containers/image's parseLocation: trailing slashes go, a URL scheme is refused.
 */
function parseLocation(input: string, file: string, line?: number): string {
  const trimmed = input.replace(/\/+$/, "");
  if (/^https?:\/\//.test(trimmed)) {
    throw configError(file, `invalid location '${input}': URI schemes are not supported`, line);
  }
  return trimmed;
}

/** One file, parsed and post-processed as containers/image's loadConfigFile does. */
export function parseRegistriesConf(
  text: string,
  file: string,
  options: { forceV2?: boolean } = {},
): RegistriesConf {
  const doc = parseToml(text, file);
  const top = new Fields(file);
  const result = emptyRegistriesConf();
  result.files.push(file);

  const v1 = readV1(doc, file);
  const registryTables = top.tables(doc, "registry", "");
  const search = top.strings(doc, "unqualified-search-registries", "");
  const helpers = top.strings(doc, "credential-helpers", "");
  const mode = top.string(doc, "short-name-mode", "");
  const aliasesTable = doc.aliases;
  if (aliasesTable !== undefined && !isTable(aliasesTable)) {
    throw configError(file, `"aliases" must be a table`);
  }
  const v2Nonempty = registryTables.length > 0 || (search?.length ?? 0) > 0 ||
    (helpers?.length ?? 0) > 0 || (mode ?? "") !== "" ||
    Object.keys(aliasesTable ?? {}).length > 0;

  let registries: RegistryConf[];
  let mirrorIndex = 0;
  if (v1) {
    if (options.forceV2) throw configError(file, "registry must be in v2 format but is in v1");
    if (v2Nonempty) throw configError(file, "mixing sysregistry v1/v2 is not supported");
    registries = convertV1(v1, file);
    result.unqualifiedSearchRegistries = v1.search.length > 0 ? v1.search : undefined;
  } else {
    registries = registryTables.map((table, index) => {
      const line = lineOfMatch(text, REGISTRY_HEADER, index);
      const fields = new Fields(file, line);
      const mirrorTables = fields.tables(table, "mirror", "registry");
      const mirrors = mirrorTables.map((m) => {
        const mirrorLine = lineOfMatch(text, MIRROR_HEADER, mirrorIndex++) ?? line;
        const mf = new Fields(file, mirrorLine);
        const pull = mf.string(m, "pull-from-mirror", "registry.mirror");
        return {
          location: mf.string(m, "location", "registry.mirror") ?? "",
          insecure: mf.boolean(m, "insecure", "registry.mirror"),
          pullFromMirror: (pull === "" ? undefined : pull) as PullFromMirror | undefined,
          line: mirrorLine,
        };
      });
      // Refused after the prefix is known, as containers/image does (its message names it).
      const registryPull = fields.string(table, "pull-from-mirror", "registry");
      return {
        prefix: fields.string(table, "prefix", "registry") ?? "",
        location: fields.string(table, "location", "registry") ?? "",
        insecure: fields.boolean(table, "insecure", "registry"),
        blocked: fields.boolean(table, "blocked", "registry"),
        mirrorByDigestOnly: fields.boolean(table, "mirror-by-digest-only", "registry"),
        mirrors: mirrors as MirrorConf[],
        file,
        line,
        registryPull,
      } as RegistryConf & { line?: number; registryPull?: string };
    });
    result.unqualifiedSearchRegistries = search;
  }
  postProcess(registries, file);
  result.registries = uniqueSorted(registries);

  if (result.unqualifiedSearchRegistries) {
    result.unqualifiedSearchRegistries = result.unqualifiedSearchRegistries.map((entry) => {
      const registry = parseLocation(entry, file);
      if (!DOMAIN.test(registry)) {
        throw configError(file, `invalid unqualified-search-registries entry "${registry}"`);
      }
      return registry;
    });
  }
  if (helpers !== undefined) result.credentialHelpers = helpers;
  if (mode !== undefined && mode !== "") {
    if (mode !== "enforcing" && mode !== "permissive" && mode !== "disabled") {
      throw configError(file, `invalid short-name mode: "${mode}"`);
    }
    result.shortNameMode = mode;
  }
  for (const [name, value] of Object.entries(aliasesTable ?? {})) {
    if (typeof value !== "string") throw configError(file, `alias "${name}" must be a string`);
    checkShortName(name, file);
    if (value !== "") checkAliasValue(value, file);
    result.aliases[name] = { value: value === "" ? undefined : value, file };
  }
  return result;
}

interface V1Tables {
  search: string[];
  insecure: string[];
  block: string[];
}

/** The v1 `[registries.search|insecure|block]` tables, or undefined when all are empty. */
function readV1(doc: TomlTable, file: string): V1Tables | undefined {
  const root = doc.registries;
  if (root === undefined) return undefined;
  if (!isTable(root)) throw configError(file, `"registries" must be a table`);
  const list = (name: string): string[] => {
    const table = root[name];
    if (table === undefined) return [];
    if (!isTable(table)) throw configError(file, `"registries.${name}" must be a table`);
    return new Fields(file).strings(table, "registries", `registries.${name}`) ?? [];
  };
  const v1 = { search: list("search"), insecure: list("insecure"), block: list("block") };
  return v1.search.length + v1.insecure.length + v1.block.length > 0 ? v1 : undefined;
}

/** containers/image's ConvertToV2: one registry per location, blocked and insecure flags set. */
function convertV1(v1: V1Tables, file: string): RegistryConf[] {
  const byLocation = new Map<string, RegistryConf>();
  const get = (input: string) => {
    const location = parseLocation(input, file);
    let registry = byLocation.get(location);
    if (!registry) {
      registry = {
        prefix: location,
        location,
        insecure: false,
        blocked: false,
        mirrorByDigestOnly: false,
        mirrors: [],
        file,
      };
      byLocation.set(location, registry);
    }
    return registry;
  };
  for (const blocked of v1.block) get(blocked).blocked = true;
  for (const insecure of v1.insecure) get(insecure).insecure = true;
  return [...byLocation.values()];
}

/** containers/image's postProcessRegistries checks and normalisation (in place). */
function postProcess(registries: RegistryConf[], file: string): void {
  const byKey = new Map<string, RegistryConf[]>();
  for (const reg of registries as (RegistryConf & { line?: number; registryPull?: string })[]) {
    const line = reg.line;
    reg.location = parseLocation(reg.location, file, line);
    if (reg.prefix === "") {
      if (reg.location === "") {
        throw configError(file, "invalid condition: both location and prefix are unset", line);
      }
      reg.prefix = reg.location;
    } else {
      reg.prefix = parseLocation(reg.prefix, file, line);
      if (!reg.prefix.startsWith("*.") && reg.location === "") {
        throw configError(
          file,
          "invalid condition: location is unset and prefix is not in the format: *.example.com",
          line,
        );
      }
    }
    if (reg.registryPull) {
      throw configError(
        file,
        `pull-from-mirror must not be set for a non-mirror registry "${reg.prefix}"`,
        line,
      );
    }
    for (const mirror of reg.mirrors as (MirrorConf & { line?: number })[]) {
      mirror.location = parseLocation(mirror.location, file, mirror.line);
      if (mirror.location === "") {
        throw configError(file, "invalid condition: mirror location is unset", mirror.line);
      }
      if (reg.mirrorByDigestOnly && mirror.pullFromMirror !== undefined) {
        throw configError(
          file,
          `cannot set mirror usage mirror-by-digest-only for the registry ("${reg.prefix}") ` +
            `and pull-from-mirror for per-mirror ("${mirror.location}") at the same time`,
          mirror.line,
        );
      }
      if (
        mirror.pullFromMirror !== undefined &&
        !["all", "digest-only", "tag-only"].includes(mirror.pullFromMirror)
      ) {
        throw configError(
          file,
          `unsupported pull-from-mirror value "${mirror.pullFromMirror}" for mirror ` +
            `"${mirror.location}"`,
          mirror.line,
        );
      }
      delete mirror.line;
    }
    if (reg.prefix.startsWith("*.") && /[/@:]/.test(reg.prefix)) {
      throw configError(
        file,
        `wildcarded prefix should be in the format: *.example.com; "${reg.prefix}" is not`,
        line,
      );
    }
    const key = reg.location === "" ? reg.prefix : reg.location;
    byKey.set(key, [...(byKey.get(key) ?? []), reg]);
  }
  for (const reg of registries as (RegistryConf & { line?: number })[]) {
    for (const other of byKey.get(reg.location === "" ? reg.prefix : reg.location) ?? []) {
      for (const setting of ["insecure", "blocked"] as const) {
        if (reg[setting] !== other[setting]) {
          throw configError(
            file,
            `registry '${reg.location}' is defined multiple times with conflicting ` +
              `'${setting}' setting`,
            (other as { line?: number }).line,
          );
        }
      }
    }
  }
  for (const reg of registries as (RegistryConf & { line?: number; registryPull?: string })[]) {
    delete reg.line;
    delete reg.registryPull;
  }
}

/** The first registry of each prefix wins; the list is sorted by prefix (as containers/image). */
function uniqueSorted(registries: RegistryConf[]): RegistryConf[] {
  const byPrefix = new Map<string, RegistryConf>();
  for (const reg of registries) if (!byPrefix.has(reg.prefix)) byPrefix.set(reg.prefix, reg);
  return [...byPrefix.keys()].sort().map((prefix) => byPrefix.get(prefix)!);
}

/** An alias name: a repository without registry, tag or digest. */
function checkShortName(name: string, file: string): void {
  const bad = (why: string) => configError(file, `invalid short name "${name}": ${why}`);
  if (name.includes("@")) throw bad("must not contain digest");
  const components = name.split("/");
  if (components[components.length - 1].includes(":")) throw bad("must not contain tag");
  if (components.length > 1) {
    const first = components[0];
    if (/[.:]/.test(first) || first === "localhost") throw bad("must not contain registry");
  }
  if (!components.every((c) => PATH_COMPONENT.test(c))) throw bad("not a valid name");
}

/** An alias value: a fully qualified repository, without tag or digest. */
function checkAliasValue(value: string, file: string): void {
  const bad = (why: string) => configError(file, `invalid alias "${value}": ${why}`);
  if (value.includes("@")) throw bad("must not contain digest");
  const components = value.split("/");
  if (components.length > 1 && components[components.length - 1].includes(":")) {
    throw bad("must not contain tag");
  }
  const first = components[0];
  if (components.length < 2 || !(/[.:]/.test(first) || first === "localhost")) {
    throw bad("must contain registry and repository");
  }
  if (!DOMAIN.test(first) || !components.slice(1).every((c) => PATH_COMPONENT.test(c))) {
    throw bad("not a valid reference");
  }
}

/** containers/image's updateWithConfigurationFrom: `updates` (a drop-in) applied to `base`. */
export function mergeRegistriesConf(base: RegistriesConf, updates: RegistriesConf): RegistriesConf {
  const byPrefix = new Map<string, RegistryConf>();
  for (const reg of base.registries) byPrefix.set(reg.prefix, reg);
  for (const reg of updates.registries) byPrefix.set(reg.prefix, reg);
  return {
    registries: [...byPrefix.keys()].sort().map((prefix) => byPrefix.get(prefix)!),
    unqualifiedSearchRegistries: updates.unqualifiedSearchRegistries ??
      base.unqualifiedSearchRegistries,
    credentialHelpers: updates.credentialHelpers ?? base.credentialHelpers,
    shortNameMode: updates.shortNameMode ?? base.shortNameMode,
    aliases: { ...base.aliases, ...updates.aliases },
    files: [...base.files, ...updates.files],
  };
}

/** File access, injectable for tests. */
export interface ConfigIo {
  readFile?: ReadText;
  listDir?: ListDir;
}

/**
 * Loads `file` (absent is an error only when `required`) and the `*.conf` drop-ins of `dirs`,
 * directory by directory, each in name order.
 */
export async function loadRegistriesConfFiles(
  file: string,
  required: boolean,
  dirs: readonly string[],
  io: ConfigIo = {},
): Promise<RegistriesConf> {
  const read = io.readFile ?? readTextIfExists;
  const list = io.listDir ?? listFiles;
  const text = await read(file);
  if (text === undefined && required) {
    throw configError(file, "no such file (named by CONTAINERS_REGISTRIES_CONF)");
  }
  let config = text === undefined ? emptyRegistriesConf() : parseRegistriesConf(text, file);
  for (const dir of dirs) {
    const names = (await list(dir)) ?? [];
    for (const name of names.filter((n) => n.endsWith(".conf")).sort()) {
      const path = `${dir}/${name}`;
      const dropIn = await read(path);
      if (dropIn === undefined) continue;
      config = mergeRegistriesConf(config, parseRegistriesConf(dropIn, path, { forceV2: true }));
    }
  }
  return config;
}

/** Where the files are, as containers/image decides. */
export interface RegistriesConfPaths {
  file: string;
  /** Whether a missing file is an error (it was named explicitly). */
  required: boolean;
  dirs: string[];
}

/**
 * The registries.conf paths for this environment. `systemRoot` prefixes the `/etc` paths
 * (tests; containers/image calls it RootForImplicitAbsolutePaths).
 */
export async function registriesConfPaths(
  env: EnvReader,
  systemRoot = "",
  exists: (path: string) => Promise<boolean> = fileExists,
): Promise<RegistriesConfPaths> {
  const home = env.get("HOME");
  const userFile = home ? `${home}/.config/containers/registries.conf` : undefined;
  const userDir = home ? `${home}/.config/containers/registries.conf.d` : undefined;
  const systemFile = `${systemRoot}/etc/containers/registries.conf`;
  const systemDir = `${systemRoot}/etc/containers/registries.conf.d`;
  const named = env.get("CONTAINERS_REGISTRIES_CONF");
  const bothDirs = userDir ? [systemDir, userDir] : [systemDir];
  if (named) return { file: named, required: true, dirs: bothDirs };
  if (userFile && userDir && await exists(userFile)) {
    return { file: userFile, required: false, dirs: [userDir] };
  }
  return { file: systemFile, required: false, dirs: bothDirs };
}

async function fileExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Loads the registries.conf files this environment uses. */
export async function loadRegistriesConf(
  env: EnvReader,
  options: ConfigIo & { systemRoot?: string } = {},
): Promise<RegistriesConf> {
  const paths = await registriesConfPaths(env, options.systemRoot);
  return await loadRegistriesConfFiles(paths.file, paths.required, paths.dirs, options);
}

/**
 * containers/image's refMatchingPrefix: the length of `prefix` when `ref` (a name or a full
 * reference, starting with a host) matches it at a path boundary (`/`, `:` or `@`), else -1.
 */
export function refMatchingPrefix(ref: string, prefix: string): number {
  if (prefix.startsWith("*.")) return refMatchingSubdomainPrefix(ref, prefix);
  if (ref.length < prefix.length) return -1;
  if (ref.length === prefix.length) return ref === prefix ? prefix.length : -1;
  if (!ref.startsWith(prefix)) return -1;
  return ":/@".includes(ref[prefix.length]) ? prefix.length : -1;
}

/** `*.example.com` matches the host part of `ref` when it ends with `.example.com`. */
function refMatchingSubdomainPrefix(ref: string, prefix: string): number {
  const suffix = prefix.slice(1);
  const index = ref.indexOf(suffix);
  if (index === -1) return -1;
  if (ref.slice(0, index).includes("/")) return -1;
  const end = index + suffix.length;
  if (end === ref.length) return end;
  return ":/@".includes(ref[end]) ? end : -1;
}

/** The registry with the longest prefix matching `name` (host/repository), if any. */
export function findRegistry(config: RegistriesConf, name: string): RegistryConf | undefined {
  let best: RegistryConf | undefined;
  for (const reg of config.registries) {
    if (refMatchingPrefix(name, reg.prefix) !== -1) {
      if (!best || reg.prefix.length > best.prefix.length) best = reg;
    }
  }
  return best;
}

/** A place to pull from, as containers/image's PullSource. */
export interface PullSource {
  /** The mirror, or the registry's own location. */
  endpoint: { location: string; insecure: boolean };
  mirror: boolean;
  /** The reference there: the matched prefix replaced by the endpoint's location. */
  reference: string;
}

/**
 * containers/image's PullSourcesFromReference: mirrors allowed for this kind of reference (tag or
 * digest), in order, then the registry itself. `reference` is `host/repo[:tag][@digest]`.
 */
export function pullSources(
  registry: RegistryConf,
  reference: string,
  digested: boolean,
): PullSource[] {
  const sources: PullSource[] = [];
  const rewrite = (location: string): string => {
    const length = refMatchingPrefix(reference, registry.prefix);
    if (length === -1) {
      throw configError(
        registry.file,
        `invalid prefix '${registry.prefix}' for reference '${reference}'`,
      );
    }
    if (location === "") return reference;
    return location + reference.slice(length);
  };
  for (const mirror of registry.mirrors) {
    if (registry.mirrorByDigestOnly && !digested) continue;
    if (mirror.pullFromMirror === "digest-only" && !digested) continue;
    if (mirror.pullFromMirror === "tag-only" && digested) continue;
    sources.push({
      endpoint: { location: mirror.location, insecure: mirror.insecure },
      mirror: true,
      reference: rewrite(mirror.location),
    });
  }
  sources.push({
    endpoint: { location: registry.location, insecure: registry.insecure },
    mirror: false,
    reference: rewrite(registry.location),
  });
  return sources;
}
