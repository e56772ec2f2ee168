/**
 * Reads the table of contents of a tar file (ustar, GNU long names, PAX
 * `path`/`size`) without reading file contents: entries are returned with
 * the offset of their data, so a caller can copy just the ones it needs.
 *
 * @example
 * ```ts
 * using file = await Deno.open("image.tar");
 * for (const entry of await listTar(file)) console.log(entry.name, entry.size);
 * ```
 * @module
 */
import { InvalidContentError } from "./errors.ts";

const BLOCK = 512;
const decoder = new TextDecoder();

/** One member of a tar file. */
export interface TarEntry {
  name: string;
  /** "file", "directory", or another type flag character. */
  type: string;
  size: number;
  /** Offset of the first data byte in the tar file. */
  offset: number;
}

function field(header: Uint8Array, start: number, length: number): string {
  const bytes = header.subarray(start, start + length);
  const end = bytes.indexOf(0);
  return decoder.decode(end >= 0 ? bytes.subarray(0, end) : bytes);
}

function numeric(header: Uint8Array, start: number, length: number): number {
  if (header[start] & 0x80) {
    // GNU base-256.
    let value = 0;
    for (let i = start + 1; i < start + length; i++) value = value * 256 + header[i];
    return value;
  }
  const text = field(header, start, length).trim();
  const value = text === "" ? 0 : parseInt(text, 8);
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new InvalidContentError("invalid tar header");
  }
  return value;
}

async function readExactly(file: Deno.FsFile, buffer: Uint8Array): Promise<boolean> {
  let filled = 0;
  while (filled < buffer.byteLength) {
    const n = await file.read(buffer.subarray(filled));
    if (n === null) return false;
    filled += n;
  }
  return true;
}

function parsePax(text: string): Record<string, string> {
  const records: Record<string, string> = {};
  let rest = text;
  while (rest.length > 0) {
    const space = rest.indexOf(" ");
    const length = Number(rest.slice(0, space));
    if (space < 0 || !Number.isSafeInteger(length) || length <= 0) break;
    const record = rest.slice(space + 1, length - 1);
    const eq = record.indexOf("=");
    if (eq > 0) records[record.slice(0, eq)] = record.slice(eq + 1);
    rest = rest.slice(length);
  }
  return records;
}

/** Lists the members of the tar file open in `file` (read from the start). */
export async function listTar(file: Deno.FsFile): Promise<TarEntry[]> {
  const entries: TarEntry[] = [];
  const header = new Uint8Array(BLOCK);
  let offset = 0;
  let longName: string | undefined;
  let pax: Record<string, string> = {};
  await file.seek(0, Deno.SeekMode.Start);
  for (;;) {
    if (!(await readExactly(file, header))) break;
    offset += BLOCK;
    if (header.every((b) => b === 0)) break;
    let checksum = 0;
    for (let i = 0; i < BLOCK; i++) checksum += i >= 148 && i < 156 ? 0x20 : header[i];
    if (checksum !== numeric(header, 148, 8)) throw new InvalidContentError("invalid tar header");
    const size = numeric(header, 124, 12);
    const typeFlag = String.fromCharCode(header[156] || 0x30);
    const padded = size + ((BLOCK - (size % BLOCK)) % BLOCK);
    if (typeFlag === "L" || typeFlag === "x") {
      if (size > 1024 * 1024) throw new InvalidContentError("tar extended header too large");
      const data = new Uint8Array(padded);
      if (!(await readExactly(file, data))) throw new InvalidContentError("truncated tar file");
      offset += padded;
      const text = decoder.decode(data.subarray(0, size));
      if (typeFlag === "L") longName = text.replace(/\0+$/, "");
      else pax = parsePax(text);
      continue;
    }
    const ustar = field(header, 257, 6).startsWith("ustar");
    const prefix = ustar ? field(header, 345, 155) : "";
    let name = longName ?? pax.path ??
      (prefix ? `${prefix}/${field(header, 0, 100)}` : field(header, 0, 100));
    const realSize = pax.size !== undefined ? Number(pax.size) : size;
    const realPadded = realSize + ((BLOCK - (realSize % BLOCK)) % BLOCK);
    name = name.replace(/^\.\//, "");
    entries.push({
      name,
      type: typeFlag === "0" || typeFlag === "\0"
        ? "file"
        : typeFlag === "5"
        ? "directory"
        : typeFlag,
      size: realSize,
      offset,
    });
    offset += realPadded;
    await file.seek(offset, Deno.SeekMode.Start);
    longName = undefined;
    pax = {};
  }
  return entries;
}

/** Reads a small member fully into memory. */
export async function readTarEntry(
  file: Deno.FsFile,
  entry: TarEntry,
  max = 16 * 1024 * 1024,
): Promise<Uint8Array<ArrayBuffer>> {
  if (entry.size > max) throw new InvalidContentError(`${entry.name} is too large`);
  const data = new Uint8Array(entry.size);
  await file.seek(entry.offset, Deno.SeekMode.Start);
  if (!(await readExactly(file, data))) throw new InvalidContentError("truncated tar file");
  return data;
}
