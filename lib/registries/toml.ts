/**
 * TOML and JSON configuration files as the ecosystem writes them, read with a real TOML parser
 * (`smol-toml`). Every refusal is a {@link UsageError} naming the file and, when known, the line.
 *
 * @module
 */
import { parse, TomlError } from "npm:smol-toml@1.9.1";
import { LocalIoError, UsageError } from "../errors.ts";

/** A parsed TOML table. */
export type TomlTable = Record<string, unknown>;

/** Reads a text file; undefined when it does not exist. Injectable in tests. */
export type ReadText = (path: string) => Promise<string | undefined>;

/** Lists the file names of a directory; undefined when it does not exist. */
export type ListDir = (path: string) => Promise<string[] | undefined>;

/** Reads `path`, undefined when absent. Missing permission is a usage error naming the file. */
export async function readTextIfExists(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    if (e instanceof Deno.errors.NotCapable) {
      throw new UsageError(`not allowed to read ${path}`, {
        hint: `run with --allow-read=${path} (or --allow-read)`,
      });
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new UsageError(`${path} is a directory, not a configuration file`);
    }
    throw new LocalIoError(`cannot read ${path}: ${e instanceof Error ? e.message : e}`, {
      cause: e,
    });
  }
}

/** The regular files of `dir` (links followed), undefined when the directory does not exist. */
export async function listFiles(dir: string): Promise<string[] | undefined> {
  try {
    const names: string[] = [];
    for await (const entry of Deno.readDir(dir)) {
      if (entry.isFile) names.push(entry.name);
      else if (entry.isSymlink) {
        const info = await Deno.stat(`${dir}/${entry.name}`).catch(() => undefined);
        if (info?.isFile) names.push(entry.name);
      }
    }
    return names;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) {
      return undefined;
    }
    if (e instanceof Deno.errors.NotCapable) {
      throw new UsageError(`not allowed to read ${dir}`, {
        hint: `run with --allow-read=${dir} (or --allow-read)`,
      });
    }
    throw new LocalIoError(`cannot read ${dir}: ${e instanceof Error ? e.message : e}`, {
      cause: e,
    });
  }
}

/** A configuration error: `file:line: reason` (line when known), exit code 2. */
export function configError(file: string, reason: string, line?: number): UsageError {
  return new UsageError(`${file}${line ? `:${line}` : ""}: ${reason}`, {
    hint: "fix the file (or point the variable that names it elsewhere)",
  });
}

/** Parses TOML; a syntax error names the file and line. */
export function parseToml(text: string, file: string): TomlTable {
  try {
    return parse(text) as TomlTable;
  } catch (e) {
    if (e instanceof TomlError) {
      // The first line of smol-toml's message says what is wrong; the rest is a code excerpt.
      const reason = e.message.split("\n", 1)[0].replace(/^Invalid TOML document: /, "");
      throw configError(file, `invalid TOML: ${reason}`, e.line);
    }
    throw configError(file, `invalid TOML: ${e instanceof Error ? e.message : e}`);
  }
}

/**
 * Parses JSON; a syntax error names the file and line (V8 reports a position; the input is never
 * quoted, since these files can hold secrets).
 */
export function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    const at = /line (\d+) column (\d+)/.exec(message);
    if (at) throw configError(file, `invalid JSON at column ${at[2]}`, Number(at[1]));
    const offset = /position (\d+)/.exec(message)?.[1] ?? jsonErrorOffset(text);
    const line = offset === undefined
      ? undefined
      : text.slice(0, Number(offset)).split("\n").length;
    throw configError(file, "invalid JSON", line);
  }
}

/**
 * The offset of the first JSON syntax error in `text` (V8 does not always say where, and its
 * message quotes the input). A small recursive-descent checker; undefined when none is found.
 */
export function jsonErrorOffset(text: string): number | undefined {
  let i = 0;
  const fail = (): never => {
    throw i;
  };
  const space = () => {
    while (i < text.length && " \t\r\n".includes(text[i])) i++;
  };
  const literal = (word: string) => {
    if (text.startsWith(word, i)) i += word.length;
    else fail();
  };
  const string = () => {
    if (text[i] !== '"') fail();
    i++;
    while (i < text.length && text[i] !== '"') {
      if (text[i] === "\\") i++;
      else if (text.charCodeAt(i) < 0x20) fail();
      i++;
    }
    if (i >= text.length) fail();
    i++;
  };
  const value = (depth: number): void => {
    if (depth > 512) fail();
    space();
    const c = text[i];
    if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      i++;
      space();
      if (text[i] === close) {
        i++;
        return;
      }
      for (;;) {
        if (c === "{") {
          space();
          string();
          space();
          if (text[i] !== ":") fail();
          i++;
        }
        value(depth + 1);
        space();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === close) {
          i++;
          return;
        }
        fail();
      }
    }
    if (c === '"') return string();
    if (c === "t") return literal("true");
    if (c === "f") return literal("false");
    if (c === "n") return literal("null");
    const number = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (!number) fail();
    i += number![0].length;
  };
  try {
    value(0);
    space();
    return i < text.length ? i : undefined;
  } catch (at) {
    if (typeof at === "number") return at;
    throw at;
  }
}

/** 1-based line of the `index`-th (0-based) match of `pattern` in `text`, if any. */
export function lineOfMatch(text: string, pattern: RegExp, index: number): number | undefined {
  const global = new RegExp(
    pattern.source,
    pattern.flags.includes("g") ? pattern.flags : pattern.flags + "g",
  );
  let n = 0;
  for (const match of text.matchAll(global)) {
    if (n++ === index) return text.slice(0, match.index).split("\n").length;
  }
  return undefined;
}

/** Whether `value` is a plain table. */
export function isTable(value: unknown): value is TomlTable {
  return typeof value === "object" && value !== null && !Array.isArray(value) &&
    !(value instanceof Date);
}
