/**
 * Names an output gets: the file name (the old `docker_pull.py`'s rule), the `RepoTags` entry
 * docker and podman load the image as, and the names an OCI layout records. Pure values.
 *
 * @module
 */
import { UsageError } from "./errors.ts";
import { familiarName, isLoopbackRegistry, parseReference, type Reference } from "./reference.ts";

/**
 * The archive name the old `docker_pull.py` used (`library_nginx.tar` for
 * `nginx`): the repository path with `/` → `_`, plus `_<tag>` for a tag
 * other than `latest`, or `_sha256-<12 hex>` for a pull by digest only.
 * It never contains `:` (which breaks `podman load`).
 */
export function defaultOutputName(ref: Reference, extension = ".tar"): string {
  let name = ref.repository.replaceAll("/", "_");
  if (ref.tag && ref.tag !== "latest") name += `_${ref.tag}`;
  else if (!ref.tag && ref.digest) name += `_${ref.digest.replace(":", "-").slice(0, 19)}`;
  return `${name.replaceAll(":", "_")}${extension}`;
}

/**
 * The `RepoTags` entry: the familiar name with the tag (`nginx:latest`,
 * `quay.io/org/app:v1`). A pull by digest alone has no tag, so the tag is
 * `sha256-<full hex>` (as cosign names digests): valid, and the digest can
 * be read back from it. An IPv6 registry gets a name loaders accept (see
 * {@link loadableRegistry}).
 */
export function repoTagFor(ref: Reference): string {
  const tag = ref.tag ?? `${ref.digest!.replace(":", "-")}`;
  const registry = loadableRegistry(ref.registry);
  const name = registry === ref.registry ? familiarName(ref) : `${registry}/${ref.repository}`;
  return `${name}:${tag}`;
}

/**
 * docker 20.10, podman 4.3 and containerd 1.6 refuse a bracketed IPv6 host in an image name
 * (`invalid reference format`). `[::1]:PORT` is tagged as `localhost:PORT` (the same
 * registry); any other IPv6 address as `ipv6-<address with "-" for ":">[:PORT]`, a host name
 * that cannot collide with a real one. Other registries are kept as they are.
 *
 * @example
 * ```ts
 * loadableRegistry("[::1]:5000"); // "localhost:5000"
 * loadableRegistry("[fd00::7]:5000"); // "ipv6-fd00--7:5000"
 * ```
 */
export function loadableRegistry(registry: string): string {
  if (!registry.startsWith("[")) return registry;
  const close = registry.indexOf("]");
  const address = registry.slice(1, close);
  const port = registry.slice(close + 1);
  if (isLoopbackRegistry(registry)) return `localhost${port}`;
  return `ipv6-${address.replaceAll(":", "-").replaceAll(".", "-")}${port}`;
}

/**
 * `--tag NAME[:TAG]`: the RepoTags entry the user chose (the tag defaults to `latest`).
 * A digest has no place in a tag.
 */
export function repoTagFromName(name: string): string {
  let ref: Reference;
  try {
    ref = parseReference(name);
  } catch (e) {
    throw new UsageError(`invalid --tag ${JSON.stringify(name)}`, { cause: e });
  }
  if (ref.digest) throw new UsageError(`--tag takes NAME[:TAG], not a digest (${name})`);
  return repoTagFor({ ...ref, tag: ref.tag ?? "latest" });
}

/**
 * The full name an OCI layout records for containerd (`io.containerd.image.name`): registry,
 * repository and tag, Docker Hub spelled out (`docker.io/library/nginx:latest`).
 *
 * @example
 * ```ts
 * fullImageName(parseReference("nginx")); // "docker.io/library/nginx:latest"
 * ```
 */
export function fullImageName(ref: Reference, tag = tagFor(ref)): string {
  return `${loadableRegistry(ref.registry)}/${ref.repository}:${tag}`;
}

/** The tag an output records: the reference's, or `sha256-<hex>` for a pull by digest alone. */
export function tagFor(ref: Reference): string {
  return ref.tag ?? ref.digest!.replace(":", "-");
}
