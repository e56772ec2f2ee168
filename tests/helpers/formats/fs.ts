/**
 * Root filesystems compared as a user sees them: a tar is extracted with GNU tar (as root, owners
 * and devices kept), then every path is described by type, mode, owner, content hash, link target,
 * hard-link group, device number and file mtime. Paths the container runtime adds are left out.
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { runOk } from "../process.ts";

/** Paths a runtime adds to a container (or manages); never compared. */
export const RUNTIME_PATHS =
  /^(\.dockerenv|dev|proc|sys|etc\/(hosts|hostname|resolv\.conf|mtab))(\/|$)/;

/** What one path of an extracted tree is. */
export interface PathFacts {
  type: string;
  mode?: string;
  owner: string;
  /** SHA-256 of a regular file's content. */
  content?: string;
  /** A symlink's target. */
  target?: string;
  /** Hard-link group: every path sharing the inode, sorted. */
  links?: string;
  rdev?: number;
  mtime?: number;
}

function typeOf(info: Deno.FileInfo): string {
  if (info.isFile) return "file";
  if (info.isDirectory) return "dir";
  if (info.isSymlink) return "symlink";
  if (info.isCharDevice) return "char";
  if (info.isBlockDevice) return "block";
  if (info.isFifo) return "fifo";
  return "other";
}

/** Facts of every path under `root` (runtime paths left out). */
export async function describeTree(root: string): Promise<Map<string, PathFacts>> {
  const facts = new Map<string, PathFacts>();
  const inodes = new Map<number, string[]>();
  const walk = async (dir: string, rel: string): Promise<void> => {
    for await (const entry of Deno.readDir(dir)) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      if (RUNTIME_PATHS.test(path)) continue;
      const full = join(dir, entry.name);
      const info = await Deno.lstat(full);
      const f: PathFacts = {
        type: typeOf(info),
        mode: (info.mode! & 0o7777).toString(8),
        owner: `${info.uid}:${info.gid}`,
      };
      if (info.isFile) {
        f.content = createHash("sha256").update(await Deno.readFile(full)).digest("hex");
        f.mtime = Math.floor(info.mtime!.getTime() / 1000);
        if (info.nlink! > 1) inodes.set(info.ino!, [...inodes.get(info.ino!) ?? [], path]);
      }
      if (info.isSymlink) {
        // A symlink's own mode means nothing on Linux.
        f.target = await Deno.readLink(full);
        delete f.mode;
      }
      if (info.isCharDevice || info.isBlockDevice) f.rdev = info.rdev!;
      facts.set(path, f);
      if (info.isDirectory) await walk(full, path);
    }
  };
  await walk(root, "");
  for (const paths of inodes.values()) {
    for (const p of paths) facts.get(p)!.links = paths.sort().join(" ");
  }
  return facts;
}

/** `tar -x -p --numeric-owner -f TAR -C DIR` (DIR created). */
export async function extractTar(tarPath: string, dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await runOk("tar", ["-x", "-p", "--numeric-owner", "-f", tarPath, "-C", dir]);
}

/** Lines `path\n  expected: …\n  actual:   …` for every path whose facts differ. */
export function diffTrees(
  expected: Map<string, PathFacts>,
  actual: Map<string, PathFacts>,
): string[] {
  const out: string[] = [];
  for (const path of [...new Set([...expected.keys(), ...actual.keys()])].sort()) {
    const e = JSON.stringify(expected.get(path));
    const a = JSON.stringify(actual.get(path));
    if (e !== a) out.push(`${path}\n  expected: ${e}\n  actual:   ${a}`);
  }
  return out;
}
