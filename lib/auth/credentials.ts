/**
 * Credential lookup in Docker's client configuration (`$DOCKER_CONFIG/config.json`, else
 * `~/.docker/config.json`), following docker/cli: a `credHelpers` entry for the registry, else
 * `credsStore`, runs `docker-credential-<name> get`; plain `auths` entries come last.
 *
 * Choices that differ from docker/cli, on purpose:
 * - When a helper has nothing for the registry (not found, or not installed), the `auths`
 *   entry is still tried; docker would stop at the helper.
 * - A malformed config file is an error ({@link UsageError}), not a warning: silently pulling
 *   anonymously would hide the problem behind a confusing 401 later.
 * - Only the `auths` entries that match the registry are decoded, so a broken entry for another
 *   registry does not stop a pull.
 * - Registry keys are compared case-insensitively; `credHelpers` keys are normalised like
 *   `auths` keys (docker matches them exactly).
 * - Helpers run with a cleared environment (a scoped `--allow-run` refuses to spawn while
 *   `LD_*`/`DYLD_*` are set) holding PATH, HOME and a fixed list of variables that common
 *   helpers need; a helper that hangs is killed after 60 s.
 *
 * No secret ever reaches an error message, a log line or {@link Credential.source}.
 *
 * @module
 */
import { join } from "node:path";
import { AuthError, ImgpullError, LocalIoError, UsageError } from "../errors.ts";

/** What we can authenticate with. */
export interface Credential {
  username?: string;
  password?: string;
  /** OAuth2 refresh token (config.json "identitytoken"); used with the refresh_token grant at the token realm. */
  identityToken?: string;
  /** Where it came from, for --verbose logs (never the secret): "flags", "config.json auths", "credsStore desktop", "credHelpers ecr-login". */
  source: string;
}

/** Read access to environment variables; `Deno.env` fits. */
export interface EnvReader {
  get(name: string): string | undefined;
}

/** What a credential helper run produced. */
export interface HelperResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options for {@link lookupCredential}. */
export interface CredentialLookupOptions {
  /** Environment accessor (so tests can inject): get("HOME"), get("DOCKER_CONFIG"). */
  env: EnvReader;
  /**
   * Runs `docker-credential-<helper> get` with the server URL on stdin; injectable for tests.
   * The default uses Deno.Command with PATH (and a few other variables) taken from `env`.
   * It may throw `Deno.errors.NotFound` (helper not installed) or `Deno.errors.NotCapable`
   * (no `--allow-run`); both are handled like the default runner's.
   */
  runHelper?: (helper: string, serverUrl: string) => Promise<HelperResult>;
  /** Reads a file as text or returns undefined if it does not exist; injectable. Default Deno.readTextFile. */
  readFile?: (path: string) => Promise<string | undefined>;
  /** How long the default runner waits for a helper before killing it. Default 60 000 ms. */
  helperTimeoutMs?: number;
  /** Debug notes for --verbose (never secrets), e.g. that a configured helper is not installed. */
  log?: (message: string) => void;
}

/** The key Docker stores Hub credentials under, and the server URL its helpers receive. */
const HUB_SERVER_URL = "https://index.docker.io/v1/";
/** Host names that all mean Docker Hub. */
const HUB_HOSTS: ReadonlySet<string> = new Set([
  "docker.io",
  "index.docker.io",
  "registry-1.docker.io",
]);
/** A helper that prints more than this is broken or hostile. */
const MAX_HELPER_OUTPUT = 64 * 1024;
const MAX_OUTPUT_TEXT = "64 KiB";
/** Helpers may wait on a GUI or a network; do not hang the pull forever. */
const DEFAULT_HELPER_TIMEOUT_MS = 60_000;
/** What docker-credential-helpers print when they have nothing for the server. */
const NOT_FOUND_MESSAGE = "credentials not found in native keychain";
/** Username with which helpers mark the secret as an identity token. */
const TOKEN_USERNAME = "<token>";
/** Helper names become part of a program name: no path separators. */
const HELPER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * Variables the helper child gets besides PATH and HOME. The environment is otherwise cleared
 * because a scoped `--allow-run` refuses to spawn with `LD_*`/`DYLD_*` set; these are the ones
 * the common helpers need (pass, secretservice, ecr-login, gcloud, acr-env, wincred).
 */
const HELPER_ENV_PASSTHROUGH = [
  "USER",
  "LOGNAME",
  "TMPDIR",
  "XDG_RUNTIME_DIR",
  "XDG_CONFIG_HOME",
  "XDG_DATA_HOME",
  "DBUS_SESSION_BUS_ADDRESS",
  "GNUPGHOME",
  "PASSWORD_STORE_DIR",
  "SystemRoot",
  "USERPROFILE",
  "APPDATA",
  "LOCALAPPDATA",
  "TEMP",
  "TMP",
  "PATHEXT",
  "HTTP_PROXY",
  "HTTPS_PROXY",
  "NO_PROXY",
  "http_proxy",
  "https_proxy",
  "no_proxy",
  "AWS_PROFILE",
  "AWS_REGION",
  "AWS_DEFAULT_REGION",
  "AWS_ACCESS_KEY_ID",
  "AWS_SECRET_ACCESS_KEY",
  "AWS_SESSION_TOKEN",
  "AWS_CONFIG_FILE",
  "AWS_SHARED_CREDENTIALS_FILE",
  "AWS_ROLE_ARN",
  "AWS_ROLE_SESSION_NAME",
  "AWS_WEB_IDENTITY_TOKEN_FILE",
  "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
  "AWS_CONTAINER_CREDENTIALS_FULL_URI",
  "AWS_CONTAINER_AUTHORIZATION_TOKEN",
  "AWS_SDK_LOAD_CONFIG",
  "AWS_ECR_DISABLE_CACHE",
  "AWS_ECR_CACHE_DIR",
  "AWS_ECR_IGNORE_CREDS_STORAGE",
  "GOOGLE_APPLICATION_CREDENTIALS",
  "CLOUDSDK_CONFIG",
  "AZURE_CLIENT_ID",
  "AZURE_CLIENT_SECRET",
  "AZURE_TENANT_ID",
  "AZURE_FEDERATED_TOKEN_FILE",
  "AZURE_AUTHORITY_HOST",
];

type JsonObject = Record<string, unknown>;

/** The parts of config.json we use. */
interface DockerConfig {
  auths: JsonObject;
  credHelpers: JsonObject;
  credsStore?: string;
}

/**
 * Looks up credentials for a registry ("docker.io" for Hub, else "host[:port]"), first match
 * wins: config.json credHelpers[registry] → credsStore → auths. Returns undefined when none.
 *
 * @throws {UsageError} config.json is malformed, names an invalid helper, or a permission
 *   (`--allow-read`, `--allow-run`, `--allow-env`) is missing.
 * @throws {LocalIoError} config.json exists but cannot be read, or the helper is not executable.
 * @throws {AuthError} the helper failed, timed out or answered nonsense.
 */
export async function lookupCredential(
  registry: string,
  opts: CredentialLookupOptions,
): Promise<Credential | undefined> {
  const dir = dockerConfigDir(opts.env);
  if (dir === undefined) return undefined;
  const path = join(dir, "config.json");
  const text = await (opts.readFile ?? readTextFileIfExists)(path);
  // docker treats an empty file like a missing one.
  if (text === undefined || text.trim() === "") return undefined;
  const config = parseConfig(text, path);

  const target = hostnameOf(registry);
  const isHub = HUB_HOSTS.has(target);
  const serverUrl = isHub ? HUB_SERVER_URL : target;
  const matches = (key: string) => {
    const host = hostnameOf(key);
    return isHub ? HUB_HOSTS.has(host) : host === target;
  };

  const helperKey = matchingKeys(config.credHelpers, serverUrl, matches)[0];
  let helper: { name: string; kind: "credHelpers" | "credsStore" } | undefined;
  if (helperKey !== undefined) {
    const name = config.credHelpers[helperKey];
    if (typeof name !== "string") {
      throw configError(path, `credHelpers["${helperKey}"] must be a string`);
    }
    // An empty entry means "no helper for this registry", as in docker.
    if (name !== "") helper = { name, kind: "credHelpers" };
  } else if (config.credsStore) {
    helper = { name: config.credsStore, kind: "credsStore" };
  }
  if (helper) {
    const found = await fromHelper(helper.name, helper.kind, serverUrl, path, opts);
    if (found) return found;
  }

  for (const key of matchingKeys(config.auths, serverUrl, matches)) {
    const found = fromAuthEntry(config.auths[key], key, path);
    if (found) return found;
  }
  return undefined;
}

/**
 * The Docker client config directory: $DOCKER_CONFIG, else $HOME/.docker (USERPROFILE when
 * HOME is unset, as on Windows). Undefined when none of them is set.
 *
 * @throws {UsageError} reading the environment is not allowed.
 */
export function dockerConfigDir(env: EnvReader): string | undefined {
  const configured = readEnv(env, "DOCKER_CONFIG");
  if (configured) return configured;
  const home = readEnv(env, "HOME") || readEnv(env, "USERPROFILE");
  return home ? join(home, ".docker") : undefined;
}

function readEnv(env: EnvReader, name: string): string | undefined {
  try {
    return env.get(name);
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) {
      throw new UsageError(`not allowed to read the environment variable ${name}`, {
        hint: "run with --allow-env=DOCKER_CONFIG,HOME,PATH (or --allow-env)",
      });
    }
    throw error;
  }
}

async function readTextFileIfExists(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    if (error instanceof Deno.errors.NotCapable) {
      throw new UsageError(`not allowed to read ${path}`, {
        hint: `run with --allow-read=${path} (or --allow-read)`,
      });
    }
    throw new LocalIoError(`cannot read ${path}: ${errorMessage(error)}`, { cause: error });
  }
}

function configError(path: string, reason: string): UsageError {
  return new UsageError(`cannot parse ${path}: ${reason}`, {
    hint: "fix the file, or set DOCKER_CONFIG to a directory with a valid config.json",
  });
}

function parseConfig(text: string, path: string): DockerConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    // V8 may quote a piece of the input, which can be a credential: keep only the position.
    throw configError(path, jsonErrorReason(error));
  }
  if (!isObject(raw)) throw configError(path, "expected a JSON object");
  const auths = field(raw, "auths") ?? {};
  if (!isObject(auths)) throw configError(path, `"auths" must be an object`);
  const credHelpers = field(raw, "credHelpers") ?? {};
  if (!isObject(credHelpers)) throw configError(path, `"credHelpers" must be an object`);
  const credsStore = field(raw, "credsStore") ?? undefined;
  if (credsStore !== undefined && typeof credsStore !== "string") {
    throw configError(path, `"credsStore" must be a string`);
  }
  return { auths, credHelpers, credsStore };
}

function jsonErrorReason(error: unknown): string {
  const message = errorMessage(error);
  if (message.includes("end of JSON input")) return "invalid JSON (unexpected end of input)";
  const where = /line (\d+) column (\d+)/.exec(message);
  const position = where ? ` at line ${where[1]}, column ${where[2]}` : "";
  const kind = message.split(" in JSON")[0];
  return /["'`]/.test(kind) || kind === message
    ? `invalid JSON${position}`
    : `invalid JSON (${kind[0].toLowerCase()}${kind.slice(1)})${position}`;
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Go's encoding/json matches field names case-insensitively; so does docker. */
function field(object: JsonObject, name: string): unknown {
  if (Object.hasOwn(object, name)) return object[name];
  const lower = name.toLowerCase();
  for (const key of Object.keys(object)) {
    if (key.toLowerCase() === lower) return object[key];
  }
  return undefined;
}

/**
 * docker/cli's ConvertToHostname: drops a scheme, user info and path, so that
 * "https://host:5000/v1/" and "host:5000" compare equal. Lower-cased, as host names are.
 */
function hostnameOf(key: string): string {
  let rest = key.trim();
  const scheme = rest.indexOf("://");
  if (scheme >= 0) rest = rest.slice(scheme + 3);
  rest = rest.split(/[/?#]/, 1)[0];
  const at = rest.lastIndexOf("@");
  if (scheme >= 0 && at >= 0) rest = rest.slice(at + 1);
  return rest.toLowerCase();
}

/** Keys of `object` for the registry: the exact key first, then the others in file order. */
function matchingKeys(
  object: JsonObject,
  exactKey: string,
  matches: (key: string) => boolean,
): string[] {
  const keys = Object.hasOwn(object, exactKey) ? [exactKey] : [];
  for (const key of Object.keys(object)) {
    if (key !== exactKey && matches(key)) keys.push(key);
  }
  return keys;
}

function fromAuthEntry(entry: unknown, key: string, path: string): Credential | undefined {
  if (entry === null || entry === undefined) return undefined;
  if (!isObject(entry)) throw configError(path, `auths["${key}"] must be an object`);
  const text = (name: string): string | undefined => {
    const value = field(entry, name) ?? undefined;
    if (value !== undefined && typeof value !== "string") {
      throw configError(path, `auths["${key}"].${name} must be a string`);
    }
    return value === "" ? undefined : value;
  };
  let username = text("username");
  let password = text("password");
  const auth = text("auth");
  if (auth !== undefined) [username, password] = decodeAuth(auth, key, path);
  const identityToken = text("identitytoken");
  // Docker Desktop leaves `{}` entries next to credsStore: they hold nothing.
  if (username === undefined && password === undefined && identityToken === undefined) {
    return undefined;
  }
  return credential({ username, password, identityToken }, "config.json auths");
}

/** `auth` is base64 of "user:password"; the password may itself contain colons. */
function decodeAuth(auth: string, key: string, path: string): [string, string] {
  let decoded: string;
  try {
    const binary = atob(auth);
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    decoded = new TextDecoder().decode(bytes);
  } catch {
    throw configError(path, `auths["${key}"].auth is not valid base64`);
  }
  const colon = decoded.indexOf(":");
  if (colon <= 0) {
    throw configError(path, `auths["${key}"].auth does not hold "username:password"`);
  }
  // docker trims NUL padding that some tools leave behind.
  return [decoded.slice(0, colon), decoded.slice(colon + 1).replace(/^\0+|\0+$/g, "")];
}

/** Builds a Credential without undefined properties (tidier logs and comparisons). */
function credential(
  parts: { username?: string; password?: string; identityToken?: string },
  source: string,
): Credential {
  const result: Credential = { source };
  if (parts.username !== undefined) result.username = parts.username;
  if (parts.password !== undefined) result.password = parts.password;
  if (parts.identityToken !== undefined) result.identityToken = parts.identityToken;
  return result;
}

async function fromHelper(
  name: string,
  kind: "credHelpers" | "credsStore",
  serverUrl: string,
  path: string,
  opts: CredentialLookupOptions,
): Promise<Credential | undefined> {
  if (!HELPER_NAME.test(name)) {
    throw configError(path, `${kind} names an invalid helper "${name}"`);
  }
  const program = `docker-credential-${name}`;
  const run = opts.runHelper ??
    defaultHelperRunner(opts.env, opts.helperTimeoutMs ?? DEFAULT_HELPER_TIMEOUT_MS);
  let result: HelperResult;
  try {
    result = await run(name, serverUrl);
  } catch (error) {
    if (error instanceof ImgpullError) throw error;
    if (error instanceof Deno.errors.NotFound) {
      // Like a helper without an entry: a stale credsStore must not block public pulls.
      opts.log?.(`${program} (${kind}) is not installed; ignoring it`);
      return undefined;
    }
    if (error instanceof Deno.errors.NotCapable) {
      throw new UsageError(`not allowed to run ${program} (${kind} in ${path})`, {
        hint: `run with --allow-run=${program}`,
      });
    }
    if (error instanceof Deno.errors.PermissionDenied) {
      throw new LocalIoError(`cannot run ${program}: permission denied`, {
        hint: `make ${program} executable, or remove ${kind} from ${path}`,
        cause: error,
      });
    }
    throw new AuthError(`cannot run ${program}: ${errorMessage(error)}`, { cause: error });
  }

  if (result.code !== 0) {
    if (isNotFoundMessage(result.stdout) || isNotFoundMessage(result.stderr)) {
      opts.log?.(`${program} has no credentials for ${serverUrl}`);
      return undefined;
    }
    const detail = failureLine(result);
    throw new AuthError(
      `${program} get failed for ${serverUrl} (exit code ${result.code})` +
        (detail ? `: ${detail}` : ""),
      { hint: `check ${program}, or the ${kind} setting in ${path}` },
    );
  }

  const answer = parseHelperAnswer(result.stdout);
  if (!answer) {
    // Never quote the output: it is where the secret would be.
    throw new AuthError(`${program} get returned malformed output for ${serverUrl}`, {
      hint: `check ${program}, or the ${kind} setting in ${path}`,
    });
  }
  const source = `${kind} ${name}`;
  if (answer.username === TOKEN_USERNAME) {
    return answer.secret ? credential({ identityToken: answer.secret }, source) : undefined;
  }
  if (!answer.username && !answer.secret) return undefined;
  return credential({ username: answer.username || undefined, password: answer.secret }, source);
}

function isNotFoundMessage(text: string): boolean {
  return text.toLowerCase().includes(NOT_FOUND_MESSAGE);
}

/**
 * The first line of what a failed helper said, for the error message. stderr first; the
 * docker-credential-helpers print their errors on stdout, so use that unless it looks like the
 * JSON answer (which would carry the secret).
 */
function failureLine(result: HelperResult): string {
  const firstLine = (text: string) => text.trim().split(/\r?\n/, 1)[0]?.trim() ?? "";
  let line = firstLine(result.stderr);
  if (!line) {
    const out = firstLine(result.stdout);
    if (!out.startsWith("{") && !out.startsWith("[")) line = out;
  }
  return line.length > 200 ? `${line.slice(0, 200)}…` : line;
}

function parseHelperAnswer(stdout: string): { username: string; secret: string } | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(stdout);
  } catch {
    return undefined;
  }
  if (!isObject(raw)) return undefined;
  const username = field(raw, "Username") ?? "";
  const secret = field(raw, "Secret") ?? "";
  if (typeof username !== "string" || typeof secret !== "string") return undefined;
  return { username, secret };
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The environment a helper runs with: PATH, HOME and {@link HELPER_ENV_PASSTHROUGH}. */
function helperEnvironment(env: EnvReader): Record<string, string> {
  const result: Record<string, string> = {};
  // Without PATH the helper would look "not installed": make a missing permission loud.
  for (const name of ["PATH", "HOME"]) {
    const value = readEnv(env, name);
    if (value !== undefined) result[name] = value;
  }
  for (const name of HELPER_ENV_PASSTHROUGH) {
    let value: string | undefined;
    try {
      value = env.get(name);
    } catch {
      // A scoped --allow-env may not cover the optional variables.
      continue;
    }
    if (value !== undefined) result[name] = value;
  }
  return result;
}

/** Runs `docker-credential-<helper> get` with Deno.Command; PATH comes from `env`. */
function defaultHelperRunner(env: EnvReader, timeoutMs: number) {
  return async (helper: string, serverUrl: string): Promise<HelperResult> => {
    const program = `docker-credential-${helper}`;
    const stop = new AbortController();
    const child = new Deno.Command(program, {
      args: ["get"],
      clearEnv: true,
      env: helperEnvironment(env),
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      // Aborting kills the helper; the readers cancel their pipes on the same signal, since a
      // grandchild (gpg, sleep, ...) may hold them open long after the helper is gone.
      signal: stop.signal,
    }).spawn();
    let failure: string | undefined;
    const halt = (why: string) => {
      failure ??= why;
      stop.abort();
    };
    const timer = setTimeout(() => halt(`did not answer within ${timeoutMs} ms`), timeoutMs);
    try {
      // allSettled: every pipe must be finished with even if another read fails.
      const [, stdout, stderr, status] = await Promise.allSettled([
        writeInput(child.stdin, serverUrl),
        readCapped(child.stdout, stop.signal, () => halt(`wrote more than ${MAX_OUTPUT_TEXT}`)),
        readCapped(child.stderr, stop.signal),
        child.status,
      ]);
      if (failure) throw new AuthError(`${program} ${failure}`);
      return { code: settled(status).code, stdout: settled(stdout), stderr: settled(stderr) };
    } finally {
      clearTimeout(timer);
    }
  };
}

function settled<T>(outcome: PromiseSettledResult<T>): T {
  if (outcome.status === "rejected") throw outcome.reason;
  return outcome.value;
}

async function writeInput(stdin: WritableStream<Uint8Array>, text: string): Promise<void> {
  const writer = stdin.getWriter();
  try {
    await writer.write(new TextEncoder().encode(text));
    await writer.close();
  } catch {
    // The helper may exit without reading its input; its exit status tells the story.
  }
}

/**
 * Reads a pipe to its end or until `signal` aborts, keeping at most MAX_HELPER_OUTPUT bytes.
 * Past the cap it calls `onOverflow` once and drains the rest unless that aborts.
 */
async function readCapped(
  stream: ReadableStream<Uint8Array>,
  signal: AbortSignal,
  onOverflow?: () => void,
): Promise<string> {
  const reader = stream.getReader();
  // Cancelling ends the pending read and closes the pipe resource.
  const cancel = () => void reader.cancel().catch(() => {});
  signal.addEventListener("abort", cancel, { once: true });
  const chunks: Uint8Array[] = [];
  let size = 0;
  let overflowed = false;
  try {
    if (signal.aborted) cancel();
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      if (overflowed) continue;
      if (size + value.byteLength > MAX_HELPER_OUTPUT) {
        overflowed = true;
        onOverflow?.();
        continue;
      }
      chunks.push(value);
      size += value.byteLength;
    }
  } finally {
    signal.removeEventListener("abort", cancel);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return new TextDecoder().decode(bytes);
}

/** Options for {@link lookupCredentialFor}: those of {@link lookupCredential}. */
export type RepositoryCredentialOptions = CredentialLookupOptions;

/**
 * The containers-auth.json(5) files, in the order containers/image reads them:
 * `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`; then
 * `$XDG_CONFIG_HOME/containers/auth.json` (default `$HOME/.config/containers/auth.json`).
 * containers/image's last resort without XDG_RUNTIME_DIR, `/run/containers/$UID/auth.json`, is
 * not read (it would need the user id).
 */
export function authJsonPaths(env: EnvReader): string[] {
  const paths: string[] = [];
  const named = readEnv(env, "REGISTRY_AUTH_FILE");
  const runtime = readEnv(env, "XDG_RUNTIME_DIR");
  if (named) paths.push(named);
  else if (runtime) paths.push(join(runtime, "containers", "auth.json"));
  const configHome = readEnv(env, "XDG_CONFIG_HOME") ||
    (readEnv(env, "HOME") ? join(readEnv(env, "HOME")!, ".config") : undefined);
  if (configHome) paths.push(join(configHome, "containers", "auth.json"));
  return paths;
}

/**
 * containers/image's authKeysForKey: `host/a/b/c`, `host/a/b`, `host/a`, `host` — the most
 * specific first.
 */
export function authKeysFor(registry: string, repository: string): string[] {
  const keys: string[] = [];
  let key = repository ? `${registry}/${repository}` : registry;
  for (;;) {
    keys.push(key);
    const slash = key.lastIndexOf("/");
    if (slash === -1) return keys;
    key = key.slice(0, slash);
  }
}

/**
 * Credentials for `repository` at `registry` ("docker.io" for Hub, else "host[:port]"): the
 * auth.json files first ({@link authJsonPaths}; in each, a `credHelpers` entry for the host, then
 * the most specific `auths` key among `host/namespace/…/repo` … `host`, then any key naming the
 * host as a URL), then Docker's config.json ({@link lookupCredential}). Only keys of this
 * registry's host are ever used, so a mirror gets the mirror's credentials, never the upstream's.
 */
export async function lookupCredentialFor(
  registry: string,
  repository: string,
  opts: RepositoryCredentialOptions,
): Promise<Credential | undefined> {
  for (const path of authJsonPaths(opts.env)) {
    const text = await (opts.readFile ?? readTextFileIfExists)(path);
    if (text === undefined || text.trim() === "") continue;
    const found = await fromAuthJson(parseConfig(text, path), path, registry, repository, opts);
    if (found) return found;
  }
  return await lookupCredential(registry, opts);
}

async function fromAuthJson(
  config: DockerConfig,
  path: string,
  registry: string,
  repository: string,
  opts: RepositoryCredentialOptions,
): Promise<Credential | undefined> {
  const host = registry.toLowerCase();
  const helper = field(config.credHelpers, host);
  if (typeof helper === "string" && helper !== "") {
    const found = await fromHelper(helper, "credHelpers", host, path, opts);
    if (found) return { ...found, source: `${found.source} (${path})` };
  }
  for (const key of authKeysFor(host, repository)) {
    if (Object.hasOwn(config.auths, key)) {
      const found = fromAuthEntry(config.auths[key], key, path);
      if (found) return { ...found, source: `${path} auths["${key}"]` };
    }
  }
  const isHub = HUB_HOSTS.has(host);
  for (const key of Object.keys(config.auths)) {
    // URL-shaped keys ("https://host/v1/") name a whole host; plain keys with a path are
    // namespace keys and match only exactly (above).
    if (!key.includes("://") && key.includes("/")) continue;
    const keyHost = hostnameOf(key);
    if (keyHost === host || (isHub && HUB_HOSTS.has(keyHost))) {
      const found = fromAuthEntry(config.auths[key], key, path);
      if (found) return { ...found, source: `${path} auths["${key}"]` };
    }
  }
  return undefined;
}
