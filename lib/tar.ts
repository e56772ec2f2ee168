/**
 * A minimal streaming tar (ustar) writer: regular files and directories,
 * names up to 255 bytes (ustar prefix split), sizes beyond 8 GiB in GNU
 * base-256. Entries are written in order straight to an output file; a
 * file's bytes are copied from disk in large chunks and never held whole.
 * Timestamps are 0 so that the same image gives the same archive.
 *
 * @example
 * ```ts
 * const out = await Deno.open("image.tar", { write: true, create: true });
 * const tar = new TarWriter(out);
 * await tar.addBytes("manifest.json", new TextEncoder().encode("[]"));
 * await tar.finish();
 * out.close();
 * ```
 * @module
 */

const BLOCK = 512;
const COPY_BUFFER_BYTES = 1024 * 1024;
const encoder = new TextEncoder();

/** Bytes of padding after `size` bytes of content. */
export function tarPadding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

/** Size an entry takes in the archive: header, content, padding. */
export function tarEntrySize(size: number): number {
  return BLOCK + size + tarPadding(size);
}

function writeString(header: Uint8Array, offset: number, length: number, value: string): void {
  const bytes = encoder.encode(value);
  if (bytes.byteLength > length) throw new RangeError(`tar field too long: ${value}`);
  header.set(bytes, offset);
}

function writeOctal(header: Uint8Array, offset: number, length: number, value: number): void {
  // length-1 octal digits and a NUL terminator.
  writeString(header, offset, length, value.toString(8).padStart(length - 1, "0") + "\0");
}

function writeSize(header: Uint8Array, size: number): void {
  if (size < 8 ** 11) {
    writeOctal(header, 124, 12, size);
    return;
  }
  // GNU base-256: high bit set, big-endian value in the remaining bytes.
  header[124] = 0x80;
  let rest = BigInt(size);
  for (let i = 135; i > 124; i--) {
    header[i] = Number(rest & 0xffn);
    rest >>= 8n;
  }
}

function splitName(name: string): { prefix: string; name: string } {
  if (encoder.encode(name).byteLength <= 100) return { prefix: "", name };
  for (let i = name.indexOf("/"); i >= 0; i = name.indexOf("/", i + 1)) {
    const prefix = name.slice(0, i), rest = name.slice(i + 1);
    if (encoder.encode(prefix).byteLength <= 155 && encoder.encode(rest).byteLength <= 100) {
      return { prefix, name: rest };
    }
  }
  throw new RangeError(`tar entry name too long: ${name}`);
}

/** Builds one 512-byte ustar header. */
export function tarHeader(name: string, size: number, type: "file" | "directory"): Uint8Array {
  const header = new Uint8Array(BLOCK);
  const parts = splitName(name);
  writeString(header, 0, 100, parts.name);
  writeOctal(header, 100, 8, type === "directory" ? 0o755 : 0o644);
  writeOctal(header, 108, 8, 0);
  writeOctal(header, 116, 8, 0);
  writeSize(header, size);
  writeOctal(header, 136, 12, 0);
  header[156] = type === "directory" ? 0x35 : 0x30; // '5' or '0'
  writeString(header, 257, 6, "ustar\0");
  writeString(header, 263, 2, "00");
  writeString(header, 345, 155, parts.prefix);
  // The checksum is computed with its own field as spaces.
  header.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of header) sum += b;
  writeString(header, 148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
  return header;
}

/** Writes tar entries sequentially to an open file. */
export class TarWriter {
  readonly #out: Deno.FsFile;
  #buffer = new Uint8Array(COPY_BUFFER_BYTES);

  constructor(out: Deno.FsFile) {
    this.#out = out;
  }

  async #write(bytes: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < bytes.byteLength) offset += await this.#out.write(bytes.subarray(offset));
  }

  /** Adds a directory entry (`name` without trailing slash). */
  async addDirectory(name: string): Promise<void> {
    await this.#write(tarHeader(`${name}/`, 0, "directory"));
  }

  /** Adds a file whose content is in memory. */
  async addBytes(name: string, bytes: Uint8Array): Promise<void> {
    await this.#write(tarHeader(name, bytes.byteLength, "file"));
    await this.#write(bytes);
    await this.#write(new Uint8Array(tarPadding(bytes.byteLength)));
  }

  /**
   * Adds a file copied from `path`, which must hold exactly `size` bytes
   * (it was verified before; a change since then is an error).
   */
  async addFile(name: string, path: string, size: number): Promise<void> {
    await this.#write(tarHeader(name, size, "file"));
    using source = await Deno.open(path, { read: true });
    let copied = 0;
    for (;;) {
      const n = await source.read(this.#buffer);
      if (n === null) break;
      copied += n;
      if (copied > size) break;
      await this.#write(this.#buffer.subarray(0, n));
    }
    if (copied !== size) throw new Error(`${path} changed size while being archived`);
    await this.#write(new Uint8Array(tarPadding(size)));
  }

  /** Writes the two zero blocks that end an archive. */
  async finish(): Promise<void> {
    await this.#write(new Uint8Array(BLOCK * 2));
  }
}
