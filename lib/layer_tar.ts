/**
 * A streaming reader of layer tars (the uncompressed content of image
 * layers): ustar, GNU long names and link names (`L`/`K`), PAX extended
 * headers (`path`, `linkpath`, `size`, `uid`, `gid`, `uname`, `gname`,
 * `mtime`, `SCHILY.xattr.*`), octal and GNU base-256 numbers. Entries come
 * one by one with their metadata; a regular file's content can be streamed
 * before asking for the next entry, or is skipped.
 *
 * Names are **byte strings**: each UTF-16 code unit holds one byte of the
 * name as stored (a UTF-8 name `ü` is the two units `\xc3\xbc`), so that
 * names that are not valid UTF-8 survive unchanged and compare byte for
 * byte. {@link displayName} turns one into readable text for messages.
 *
 * The input is hostile: header checksums are checked, numbers must be well
 * formed and non-negative where that matters, names, link names and PAX
 * headers are bounded ({@link LayerTarLimits}), the total size is bounded,
 * truncation and unsupported entry types (sparse files, multi-volume
 * parts) are {@link InvalidContentError}s. Nothing is buffered beyond one
 * header and one PAX record set.
 *
 * @example
 * ```ts
 * const reader = new LayerTarReader(chunks);
 * for (let e = await reader.next(); e; e = await reader.next()) {
 *   if (e.kind === "file") for await (const part of reader.content()) use(part);
 * }
 * ```
 * @module
 */
import { ImgpullError, InterruptedError, InvalidContentError } from "./errors.ts";

const BLOCK = 512;
const KiB = 1024;
const MiB = 1024 * KiB;

/** What a tar entry is, after GNU/PAX headers have been folded in. */
export type EntryKind = "file" | "hardlink" | "symlink" | "char" | "block" | "directory" | "fifo";

/** One entry of a layer tar. Strings are byte strings (see the module notes). */
export interface LayerTarHeader {
  /** The name as stored (PAX `path`, GNU long name, or ustar prefix + name); not normalised. */
  name: string;
  kind: EntryKind;
  /** Content bytes that follow the header: the file size for regular files, else 0. */
  size: number;
  /** Permission bits with setuid, setgid and sticky (the low 12 bits of the mode field). */
  mode: number;
  uid: number;
  gid: number;
  uname: string;
  gname: string;
  /** Seconds since the epoch; may be fractional or negative (PAX `mtime`). */
  mtime: number;
  /** Target of a symlink or hard link; empty otherwise. */
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Extended attributes (`SCHILY.xattr.NAME`), name → raw value, in header order. */
  xattrs: Map<string, Uint8Array>;
}

/** Bounds that keep a hostile layer from exhausting memory. */
export interface LayerTarLimits {
  /** Longest entry name or link name, in bytes (default 4096, Linux's PATH_MAX). */
  maxNameBytes?: number;
  /** Largest PAX extended header (all records of one entry), in bytes (default 1 MiB). */
  maxPaxBytes?: number;
  /** Largest total size of the tar stream, in bytes (default: unbounded). */
  maxTotalBytes?: number;
}

/** Options of {@link LayerTarReader}. */
export interface LayerTarOptions extends LayerTarLimits {
  /** Names the layer in messages, e.g. its digest. */
  label?: string;
  /** Checked between entries and between content chunks. */
  signal?: AbortSignal;
}

/** Default of {@link LayerTarLimits.maxNameBytes}. */
export const DEFAULT_MAX_NAME_BYTES = 4096;
/** Default of {@link LayerTarLimits.maxPaxBytes}. */
export const DEFAULT_MAX_PAX_BYTES = 1 * MiB;

/** Decodes a byte string as UTF-8 for messages (invalid bytes become U+FFFD), at most 200 chars. */
export function displayName(bytes: string): string {
  const text = new TextDecoder().decode(byteStringToBytes(bytes));
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

/** The bytes of a byte string. */
export function byteStringToBytes(s: string): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** A byte string of some bytes. */
export function bytesToByteString(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode(...bytes.subarray(i, Math.min(bytes.length, i + 8192)));
  }
  return s;
}

/** A byte string of a text (its UTF-8 bytes). */
export function utf8ByteString(text: string): string {
  return bytesToByteString(new TextEncoder().encode(text));
}

/** Pulls exact byte counts out of a chunk stream. */
class ByteSource {
  readonly #chunks: AsyncIterator<Uint8Array>;
  #chunk: Uint8Array = new Uint8Array(0);
  #pos = 0;
  #ended = false;
  /** Bytes handed out so far. */
  consumed = 0;

  constructor(chunks: AsyncIterable<Uint8Array>, readonly maxTotal: number, readonly what: string) {
    this.#chunks = chunks[Symbol.asyncIterator]();
  }

  async #fill(): Promise<boolean> {
    while (this.#pos >= this.#chunk.byteLength) {
      if (this.#ended) return false;
      const next = await this.#chunks.next();
      if (next.done) {
        this.#ended = true;
        return false;
      }
      this.#chunk = next.value;
      this.#pos = 0;
    }
    return true;
  }

  #count(n: number): void {
    this.consumed += n;
    if (this.consumed > this.maxTotal) {
      throw new InvalidContentError(`${this.what} is larger than ${this.maxTotal} bytes`);
    }
  }

  /** Up to `max` bytes (a view), or undefined at the end of the stream. */
  async take(max: number): Promise<Uint8Array | undefined> {
    if (!(await this.#fill())) return undefined;
    const n = Math.min(max, this.#chunk.byteLength - this.#pos);
    const out = this.#chunk.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    this.#count(n);
    return out;
  }

  /** Exactly `n` bytes (a copy); undefined when the stream ends before the first byte. */
  async exactly(n: number): Promise<Uint8Array | undefined> {
    // Fast path: a view of the current chunk (callers never write to it).
    if (this.#chunk.byteLength - this.#pos >= n) return await this.take(n);
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const part = await this.take(n - filled);
      if (!part) {
        if (filled === 0) return undefined;
        throw new InvalidContentError(`${this.what} is truncated`);
      }
      out.set(part, filled);
      filled += part.byteLength;
    }
    return out;
  }

  async skip(n: number): Promise<void> {
    while (n > 0) {
      const part = await this.take(n);
      if (!part) throw new InvalidContentError(`${this.what} is truncated`);
      n -= part.byteLength;
    }
  }

  async close(): Promise<void> {
    await this.#chunks.return?.();
  }
}

function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

/** A NUL-terminated header field as a byte string. */
function field(header: Uint8Array, start: number, length: number): string {
  let end = start;
  let ascii = true;
  for (; end < start + length && header[end] !== 0; end++) if (header[end] > 0x7f) ascii = false;
  if (end === start) return "";
  const bytes = header.subarray(start, end);
  // ASCII decodes the same as bytes, and the native decoder is much faster.
  return ascii ? asciiDecoder.decode(bytes) : bytesToByteString(bytes);
}

const asciiDecoder = new TextDecoder();

/** Parses "%d %s=%s\n" records (values are byte strings). */
function parsePax(data: Uint8Array, what: string): Map<string, string> {
  const records = new Map<string, string>();
  let pos = 0;
  while (pos < data.byteLength) {
    // Trailing NULs pad some writers' headers.
    if (data[pos] === 0) break;
    const space = data.indexOf(0x20, pos);
    const digits = space < 0 ? "" : bytesToByteString(data.subarray(pos, space));
    const length = /^[1-9][0-9]{0,8}$/.test(digits) ? Number(digits) : NaN;
    const end = pos + length;
    if (!(length > digits.length + 1) || end > data.byteLength || data[end - 1] !== 0x0a) {
      throw new InvalidContentError(`${what}: malformed PAX record`);
    }
    const record = data.subarray(space + 1, end - 1);
    const eq = record.indexOf(0x3d);
    if (eq <= 0) throw new InvalidContentError(`${what}: malformed PAX record`);
    records.set(
      bytesToByteString(record.subarray(0, eq)),
      bytesToByteString(record.subarray(eq + 1)),
    );
    pos = end;
  }
  return records;
}

/** A PAX decimal integer (uid, gid, size). */
function paxInteger(value: string, key: string, what: string): number {
  const n = /^[0-9]{1,16}$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n)) {
    throw new InvalidContentError(
      `${what}: invalid PAX ${key} ${JSON.stringify(value.slice(0, 40))}`,
    );
  }
  return n;
}

/** A PAX time: optional sign, digits, optional fraction. */
function paxTime(value: string, what: string): number {
  if (!/^-?[0-9]{1,16}(\.[0-9]{0,32})?$/.test(value)) {
    throw new InvalidContentError(
      `${what}: invalid PAX mtime ${JSON.stringify(value.slice(0, 40))}`,
    );
  }
  const n = Number(value);
  if (!Number.isFinite(n)) throw new InvalidContentError(`${what}: invalid PAX mtime`);
  return n;
}

/**
 * A numeric header field: octal digits (space or NUL padded) or GNU base-256
 * (high bit set; 0xff first is negative). Negative values are refused unless
 * `signed`.
 */
function numeric(
  header: Uint8Array,
  start: number,
  length: number,
  name: string,
  what: string,
  signed = false,
): number {
  const first = header[start];
  if (first & 0x80) {
    const negative = first === 0xff;
    if (negative && !signed) throw new InvalidContentError(`${what}: negative ${name}`);
    let value = 0n;
    for (let i = start; i < start + length; i++) {
      value = (value << 8n) | BigInt(i === start ? first & 0x7f : header[i]);
    }
    if (negative) value -= 1n << BigInt(8 * length - 1);
    if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < -BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new InvalidContentError(`${what}: ${name} out of range`);
    }
    return Number(value);
  }
  // Octal digits, optionally surrounded by spaces, ended by NUL or the field's end.
  let i = start;
  const end = start + length;
  while (i < end && header[i] === 0x20) i++;
  let value = 0;
  for (; i < end && header[i] >= 0x30 && header[i] <= 0x37; i++) {
    value = value * 8 + header[i] - 0x30;
  }
  while (i < end && header[i] === 0x20) i++;
  if (i < end && header[i] !== 0) {
    throw new InvalidContentError(`${what}: ${name} is not a number`);
  }
  if (!Number.isSafeInteger(value)) throw new InvalidContentError(`${what}: ${name} out of range`);
  return value;
}

function checksumOk(header: Uint8Array, what: string): boolean {
  const stored = numeric(header, 148, 8, "checksum", what);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : header[i];
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

const KINDS: Record<string, EntryKind> = {
  "0": "file",
  "\0": "file",
  "7": "file",
  "1": "hardlink",
  "2": "symlink",
  "3": "char",
  "4": "block",
  "5": "directory",
  "6": "fifo",
};

/** Meta headers folded into the next entry. */
interface Pending {
  longName?: string;
  longLink?: string;
  pax: Map<string, string>;
  paxBytes: number;
}

/**
 * Reads a layer tar entry by entry. Call {@link next} for each header; for a
 * regular file, {@link content} streams its bytes (optional: whatever is not
 * read is skipped by the following {@link next}). Stops at the first zero
 * block or at the end of the stream (trailing bytes after the end-of-archive
 * blocks are not read).
 */
export class LayerTarReader {
  readonly #source: ByteSource;
  readonly #what: string;
  readonly #maxName: number;
  readonly #maxPax: number;
  readonly #signal?: AbortSignal;
  /** Content bytes of the current entry not yet read, and its padding. */
  #left = 0;
  #pad = 0;
  #done = false;
  /** Entries returned so far. */
  count = 0;

  constructor(chunks: AsyncIterable<Uint8Array>, options: LayerTarOptions = {}) {
    this.#what = options.label ? `layer ${options.label}` : "layer tar";
    this.#source = new ByteSource(chunks, options.maxTotalBytes ?? Infinity, this.#what);
    this.#maxName = options.maxNameBytes ?? DEFAULT_MAX_NAME_BYTES;
    this.#maxPax = options.maxPaxBytes ?? DEFAULT_MAX_PAX_BYTES;
    this.#signal = options.signal;
  }

  /** Uncompressed bytes read so far. */
  get bytesRead(): number {
    return this.#source.consumed;
  }

  #checkAbort(): void {
    const signal = this.#signal;
    if (signal?.aborted) {
      throw signal.reason instanceof ImgpullError ? signal.reason : new InterruptedError();
    }
  }

  /** The next entry, or undefined at the end of the archive. */
  async next(): Promise<LayerTarHeader | undefined> {
    if (this.#done) return undefined;
    await this.#source.skip(this.#left + this.#pad);
    this.#left = this.#pad = 0;
    const pending: Pending = { pax: new Map(), paxBytes: 0 };
    for (;;) {
      this.#checkAbort();
      const header = await this.#source.exactly(BLOCK);
      if (!header || header.every((b) => b === 0)) {
        if (pending.longName !== undefined || pending.longLink !== undefined || pending.paxBytes) {
          throw new InvalidContentError(`${this.#what}: extended header without an entry`);
        }
        this.#done = true;
        return undefined;
      }
      if (!checksumOk(header, this.#what)) {
        throw new InvalidContentError(`${this.#what}: invalid tar header checksum`);
      }
      const flag = String.fromCharCode(header[156]);
      const size = numeric(header, 124, 12, "size", this.#what);
      switch (flag) {
        case "x":
          await this.#readPax(size, pending);
          continue;
        case "g":
          // Global PAX headers carry nothing an image uses (moby ignores them too).
          if (size > this.#maxPax) {
            throw new InvalidContentError(`${this.#what}: PAX global header too large`);
          }
          await this.#source.skip(size + padding(size));
          continue;
        case "L":
          pending.longName = await this.#readLongName(size, "long name");
          continue;
        case "K":
          pending.longLink = await this.#readLongName(size, "long link name");
          continue;
      }
      const kind = KINDS[flag];
      if (!kind) {
        const shown = /^[\x21-\x7e]$/.test(flag) ? `'${flag}'` : `0x${header[156].toString(16)}`;
        throw new InvalidContentError(
          `${this.#what}: unsupported tar entry type ${shown}` +
            (flag === "S" ? " (GNU sparse file)" : ""),
        );
      }
      return this.#entry(header, kind, size, pending);
    }
  }

  async #readPax(size: number, pending: Pending): Promise<void> {
    pending.paxBytes += size;
    if (pending.paxBytes > this.#maxPax) {
      throw new InvalidContentError(
        `${this.#what}: PAX extended header larger than ${this.#maxPax} bytes`,
      );
    }
    const data = await this.#source.exactly(size + padding(size));
    if (!data && size > 0) throw new InvalidContentError(`${this.#what} is truncated`);
    for (const [key, value] of parsePax(data?.subarray(0, size) ?? new Uint8Array(0), this.#what)) {
      if (key.startsWith("GNU.sparse.")) {
        throw new InvalidContentError(`${this.#what}: sparse files are not supported`);
      }
      pending.pax.set(key, value);
    }
  }

  async #readLongName(size: number, what: string): Promise<string> {
    if (size > this.#maxName + 1) {
      throw new InvalidContentError(
        `${this.#what}: GNU ${what} longer than ${this.#maxName} bytes`,
      );
    }
    const data = await this.#source.exactly(size + padding(size));
    if (!data && size > 0) throw new InvalidContentError(`${this.#what} is truncated`);
    const text = bytesToByteString(data?.subarray(0, size) ?? new Uint8Array(0));
    return text.replace(/\0.*$/s, "");
  }

  #entry(header: Uint8Array, flagKind: EntryKind, size: number, p: Pending): LayerTarHeader {
    const what = this.#what;
    const magic = field(header, 257, 8);
    // POSIX ustar ("ustar\0" "00") has a name prefix; GNU ("ustar  ") uses that area otherwise.
    const ustar = header[257 + 5] === 0 && magic.startsWith("ustar");
    const prefix = ustar ? field(header, 345, 155) : "";
    const short = field(header, 0, 100);
    let name = p.pax.get("path") || p.longName || (prefix ? `${prefix}/${short}` : short);
    const linkname = p.pax.get("linkpath") || p.longLink || field(header, 157, 100);
    let kind = flagKind;
    // Old (v7) tars mark directories by a trailing slash on a regular entry.
    if (header[156] === 0 && name.endsWith("/")) kind = "directory";
    if (name.length > this.#maxName || linkname.length > this.#maxName) {
      throw new InvalidContentError(`${what}: entry name longer than ${this.#maxName} bytes`);
    }
    if (name.includes("\0") || linkname.includes("\0")) {
      throw new InvalidContentError(`${what}: entry name contains a NUL byte`);
    }
    if (name === "") throw new InvalidContentError(`${what}: entry with an empty name`);
    const pax = p.pax;
    const paxSize = pax.get("size");
    const realSize = paxSize !== undefined && paxSize !== ""
      ? paxInteger(paxSize, "size", what)
      : size;
    const hasDevices = ustar || magic.startsWith("ustar");
    const xattrs = new Map<string, Uint8Array>();
    for (const [key, value] of pax) {
      if (key.startsWith("SCHILY.xattr.") && key.length > 13) {
        xattrs.set(key.slice(13), byteStringToBytes(value));
      }
    }
    const text = (key: string, fallback: string) => {
      const value = pax.get(key);
      return value !== undefined && value !== "" ? value : fallback;
    };
    const int = (key: string, fallback: () => number) => {
      const value = pax.get(key);
      return value !== undefined && value !== "" ? paxInteger(value, key, what) : fallback();
    };
    const mtimeText = pax.get("mtime");
    name = name.replace(/\0+$/, "");
    const entry: LayerTarHeader = {
      name,
      kind,
      size: kind === "file" ? realSize : 0,
      mode: numeric(header, 100, 8, "mode", what) & 0o7777,
      uid: int("uid", () => numeric(header, 108, 8, "uid", what)),
      gid: int("gid", () => numeric(header, 116, 8, "gid", what)),
      uname: text("uname", field(header, 265, 32)),
      gname: text("gname", field(header, 297, 32)),
      mtime: mtimeText !== undefined && mtimeText !== ""
        ? paxTime(mtimeText, what)
        : numeric(header, 136, 12, "mtime", what, true),
      linkname: kind === "symlink" || kind === "hardlink" ? linkname : "",
      devmajor: hasDevices ? numeric(header, 329, 8, "devmajor", what) : 0,
      devminor: hasDevices ? numeric(header, 337, 8, "devminor", what) : 0,
      xattrs,
    };
    if (entry.uname.length > 256 || entry.gname.length > 256) {
      throw new InvalidContentError(`${what}: user or group name too long`);
    }
    this.#left = entry.size;
    this.#pad = padding(entry.size);
    this.count++;
    return entry;
  }

  /**
   * Streams the rest of the current entry's content (views into the
   * decompressor's buffers: copy what you keep). Ends at the entry's end.
   */
  async *content(): AsyncGenerator<Uint8Array> {
    while (this.#left > 0) {
      this.#checkAbort();
      const part = await this.#source.take(this.#left);
      if (!part) throw new InvalidContentError(`${this.#what} is truncated`);
      this.#left -= part.byteLength;
      yield part;
    }
  }

  /** Releases the input (stops its decompressor). */
  async close(): Promise<void> {
    this.#done = true;
    await this.#source.close();
  }
}

/** Reads just the headers of a layer tar (content is skipped). */
export async function* readLayerHeaders(
  chunks: AsyncIterable<Uint8Array>,
  options: LayerTarOptions = {},
): AsyncGenerator<LayerTarHeader> {
  const reader = new LayerTarReader(chunks, options);
  try {
    for (let e = await reader.next(); e; e = await reader.next()) yield e;
  } finally {
    await reader.close();
  }
}
