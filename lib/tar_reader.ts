/**
 * Reads the table of contents of a tar file (ustar, GNU long names, PAX
 * `path`/`size`) without reading file contents: entries are returned with
 * the offset of their data, so a caller can copy just the ones it needs.
 *
 * The file is untrusted: sizes must be non-negative safe integers written
 * as the format says (octal digits, GNU base-256, PAX decimal digits), every
 * member must lie within the file, and the read position only moves
 * forward, so a hostile tar ends in an {@link InvalidContentError} quickly.
 *
 * @example
 * ```ts
 * using file = await Deno.open("image.tar");
 * for (const entry of await listTar(file)) console.log(entry.name, entry.size);
 * ```
 * @module
 */
import { ImgpullError, InterruptedError, InvalidContentError } from "./errors.ts";

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

/** A numeric header field: octal digits (space/NUL padded) or GNU base-256. */
function numeric(header: Uint8Array, start: number, length: number, what: string): number {
  if (header[start] & 0x80) {
    // GNU base-256; 0xff first means a negative number, never valid here.
    if (header[start] === 0xff) throw new InvalidContentError(`tar header: negative ${what}`);
    let value = header[start] & 0x7f;
    for (let i = start + 1; i < start + length; i++) value = value * 256 + header[i];
    if (!Number.isSafeInteger(value)) {
      throw new InvalidContentError(`tar header: ${what} too large`);
    }
    return value;
  }
  const text = field(header, start, length).replace(/^[ ]+|[ ]+$/g, "");
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) {
    throw new InvalidContentError(`tar header: ${what} is not an octal number`);
  }
  const value = parseInt(text, 8);
  if (!Number.isSafeInteger(value)) throw new InvalidContentError(`tar header: ${what} too large`);
  return value;
}

/** A PAX `size` record: decimal digits only, a safe integer. */
function paxSize(text: string): number {
  const value = /^[0-9]{1,16}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value)) {
    throw new InvalidContentError(
      `tar PAX header: invalid size ${JSON.stringify(text.slice(0, 40))}`,
    );
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

/** Options of {@link listTar}. */
export interface ListTarOptions {
  /** Stops the listing between members. */
  signal?: AbortSignal;
}

/** Lists the members of the tar file open in `file` (read from the start). */
export async function listTar(
  file: Deno.FsFile,
  options: ListTarOptions = {},
): Promise<TarEntry[]> {
  const entries: TarEntry[] = [];
  const header = new Uint8Array(BLOCK);
  const fileSize = (await file.stat()).size;
  let offset = 0;
  let longName: string | undefined;
  let pax: Record<string, string> = {};
  await file.seek(0, Deno.SeekMode.Start);
  for (;;) {
    if (options.signal?.aborted) {
      const reason = options.signal.reason;
      throw reason instanceof ImgpullError ? reason : new InterruptedError();
    }
    const headerAt = offset;
    if (!(await readExactly(file, header))) break;
    offset += BLOCK;
    if (header.every((b) => b === 0)) break;
    let checksum = 0;
    for (let i = 0; i < BLOCK; i++) checksum += i >= 148 && i < 156 ? 0x20 : header[i];
    if (checksum !== numeric(header, 148, 8, "checksum")) {
      throw new InvalidContentError("invalid tar header");
    }
    const size = numeric(header, 124, 12, "size");
    const typeFlag = String.fromCharCode(header[156] || 0x30);
    const padded = size + ((BLOCK - (size % BLOCK)) % BLOCK);
    if (offset + size > fileSize) throw new InvalidContentError("truncated tar file");
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
    const realSize = pax.size !== undefined ? paxSize(pax.size) : size;
    const realPadded = realSize + ((BLOCK - (realSize % BLOCK)) % BLOCK);
    if (offset + realSize > fileSize) {
      throw new InvalidContentError(`truncated tar file: ${name.slice(0, 100)} ends past its end`);
    }
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
    // Every step moves forward (sizes are never negative): a hostile tar cannot loop.
    if (offset <= headerAt) throw new InvalidContentError("invalid tar header");
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
