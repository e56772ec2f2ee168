/**
 * Tar (ustar) headers: regular files and directories, names up to 255 bytes
 * (ustar prefix split), sizes beyond 8 GiB in GNU base-256. Timestamps are
 * 0 so that the same image gives the same archive. Members are laid out by
 * {@link ../writers/docker_archive.ts} with {@link tarEntrySize}.
 *
 * @example
 * ```ts
 * const header = tarHeader("manifest.json", 2, "file"); // 512 bytes
 * tarEntrySize(2); // 1024: header, data, padding
 * ```
 * @module
 */

const BLOCK = 512;
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
