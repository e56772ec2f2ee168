/**
 * Which certificates to trust for a registry: CA files given with
 * `--ca-cert`, plus Docker's and Podman's per-registry directories
 * (`/etc/docker/certs.d/<host[:port]>/`, `/etc/containers/certs.d/…`):
 * `*.crt` files are CAs, a `*.cert` with its `*.key` is a client
 * certificate for mutual TLS. Every file is tried with the TLS stack as it
 * is read, so one it refuses is named in the error.
 *
 * @module
 */
import { UsageError } from "./errors.ts";
import { createTlsClient, type TlsOptions } from "./transport.ts";

/** Where per-registry certificate directories are looked for on Linux (system-wide). */
export const CERTS_D_ROOTS = ["/etc/docker/certs.d", "/etc/containers/certs.d"];

/**
 * The `certs.d` roots of Docker and podman on each OS, in order: the system-wide ones, then the
 * user's (rootless podman, Docker Desktop).
 *
 * @example
 * ```ts
 * certsDirRoots("linux", { HOME: "/home/u" });
 * // ["/etc/docker/certs.d", "/etc/containers/certs.d", "/home/u/.config/containers/certs.d"]
 * certsDirRoots("windows", {}); // ["C:\\ProgramData\\docker\\certs.d"]
 * ```
 */
export function certsDirRoots(
  os: typeof Deno.build.os,
  env: { HOME?: string; XDG_CONFIG_HOME?: string },
): string[] {
  const home = env.HOME || undefined;
  if (os === "windows") {
    return ["C:\\ProgramData\\docker\\certs.d", ...(home ? [`${home}\\.docker\\certs.d`] : [])];
  }
  const config = env.XDG_CONFIG_HOME || (home ? `${home}/.config` : undefined);
  const user = [
    ...(os === "darwin" && home ? [`${home}/.docker/certs.d`] : []),
    ...(config ? [`${config}/containers/certs.d`] : []),
  ];
  return [...CERTS_D_ROOTS, ...user];
}

async function readIfPresent(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.PermissionDenied) {
      return undefined;
    }
    throw e;
  }
}

async function listDir(path: string): Promise<string[]> {
  try {
    const names: string[] = [];
    for await (const entry of Deno.readDir(path)) if (entry.isFile) names.push(entry.name);
    return names.sort();
  } catch {
    // Absent or unreadable: no per-registry certificates.
    return [];
  }
}

/**
 * Throws the {@link createTlsClient} error (a NetworkError naming `files`) when the TLS stack
 * refuses this material: a malformed PEM, an X.509 v1 client certificate, a mismatched key.
 */
function checkTls(tls: TlsOptions): void {
  createTlsClient(tls).close();
}

/**
 * Builds the TLS options for `registryHost` ("host[:port]"). A file that is not PEM at all is a
 * usage error; one the TLS stack refuses is a NetworkError naming it.
 */
export async function registryTls(
  registryHost: string,
  caCertFiles: readonly string[] = [],
  certsDirs: readonly string[] = CERTS_D_ROOTS,
): Promise<TlsOptions> {
  const caCerts: string[] = [];
  for (const file of caCertFiles) {
    const pem = await readIfPresent(file);
    if (pem === undefined) throw new UsageError(`cannot read CA certificate ${file}`);
    if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
      throw new UsageError(`${file} is not a PEM certificate`);
    }
    checkTls({ caCerts: [pem], files: [file] });
    caCerts.push(pem);
  }
  const files = [...caCertFiles];
  const tls: TlsOptions = { caCerts, files };
  for (const root of certsDirs) {
    const dir = `${root}/${registryHost}`;
    for (const name of await listDir(dir)) {
      if (name.endsWith(".crt")) {
        const pem = await readIfPresent(`${dir}/${name}`);
        if (pem) {
          checkTls({ caCerts: [pem], files: [`${dir}/${name}`] });
          caCerts.push(pem);
          files.push(`${dir}/${name}`);
        }
      } else if (name.endsWith(".cert") && !tls.cert) {
        const certFile = `${dir}/${name}`;
        const keyFile = `${dir}/${name.slice(0, -".cert".length)}.key`;
        const cert = await readIfPresent(certFile);
        const key = await readIfPresent(keyFile);
        if (cert && key) {
          checkTls({ cert, key, files: [certFile, keyFile] });
          files.push(certFile, keyFile);
          tls.cert = cert;
          tls.key = key;
        }
      }
    }
  }
  return tls;
}

/**
 * TLS options for one endpoint: {@link registryTls} for its host, plus the CA files and client
 * certificate pairs its configuration names (containerd hosts.toml `ca` and `client`; a pair
 * with an empty key path is one file holding both). The first client pair wins.
 */
export async function endpointTls(
  registryHost: string,
  options: {
    caCertFiles?: readonly string[];
    certsDirs?: readonly string[];
    caFiles?: readonly string[];
    clientPairs?: readonly (readonly [string, string])[];
  },
): Promise<TlsOptions> {
  const tls = await registryTls(
    registryHost,
    [...(options.caCertFiles ?? []), ...(options.caFiles ?? [])],
    options.certsDirs,
  );
  const pair = options.clientPairs?.[0];
  if (pair) {
    const [certFile, keyFile] = [pair[0], pair[1] || pair[0]];
    const cert = await readIfPresent(certFile);
    const key = await readIfPresent(keyFile);
    if (cert === undefined) throw new UsageError(`cannot read client certificate ${certFile}`);
    if (key === undefined) throw new UsageError(`cannot read client key ${keyFile}`);
    checkTls({ cert, key, files: [certFile, keyFile] });
    tls.cert = cert;
    tls.key = key;
    tls.files = [...(tls.files ?? []), certFile, keyFile];
  }
  return tls;
}
