/**
 * Child-process plumbing shared by the test helpers: one-shot commands and long-running
 * servers whose output is drained (a full pipe would block the child) into a bounded log tail.
 * @module
 */

/** What a finished command printed, decoded as UTF-8. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options for {@link run}. */
export interface RunOptions {
  cwd?: string;
  env?: Record<string, string>;
  /** Bytes written to the child's stdin (stdin is closed otherwise). */
  stdin?: Uint8Array;
}

const decoder = new TextDecoder();

/** Runs a command to completion and returns its exit code and output; never throws on exit code. */
export async function run(
  cmd: string,
  args: string[],
  opts: RunOptions = {},
): Promise<CommandResult> {
  const command = new Deno.Command(cmd, {
    args,
    cwd: opts.cwd,
    env: opts.env,
    stdin: opts.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  });
  let output: Deno.CommandOutput;
  if (opts.stdin) {
    const child = command.spawn();
    const writer = child.stdin.getWriter();
    await writer.write(opts.stdin);
    await writer.close();
    output = await child.output();
  } else {
    output = await command.output();
  }
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Like {@link run}, but throws an Error carrying the command line and stderr on a non-zero exit. */
export async function runOk(
  cmd: string,
  args: string[],
  opts: RunOptions = {},
): Promise<CommandResult> {
  const result = await run(cmd, args, opts);
  if (result.code !== 0) {
    throw new Error(
      `${cmd} ${args.join(" ")} exited with ${result.code}\n${
        tail(result.stderr || result.stdout)
      }`,
    );
  }
  return result;
}

/** The last `max` characters of a log, prefixed with an ellipsis when cut. */
export function tail(text: string, max = 4000): string {
  return text.length <= max ? text : `…${text.slice(text.length - max)}`;
}

/** Options for {@link BackgroundProcess}. */
export interface BackgroundOptions {
  cwd?: string;
  env?: Record<string, string>;
  /** Characters of combined stdout/stderr kept for error messages. */
  logLimit?: number;
}

/**
 * A long-running child (a server). Its stdout and stderr are read continuously into a bounded
 * tail so the child never blocks on a full pipe, and so failures can quote its last words.
 */
export class BackgroundProcess {
  readonly child: Deno.ChildProcess;
  /** Resolves when the child exits. */
  readonly status: Promise<Deno.CommandStatus>;
  #exitStatus: Deno.CommandStatus | undefined;
  #log = "";
  readonly #logLimit: number;
  readonly #readers: ReadableStreamDefaultReader<Uint8Array>[] = [];
  readonly #drains: Promise<void>[];

  constructor(readonly cmd: string, readonly args: string[], opts: BackgroundOptions = {}) {
    this.#logLimit = opts.logLimit ?? 256 * 1024;
    this.child = new Deno.Command(cmd, {
      args,
      cwd: opts.cwd,
      env: opts.env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.status = this.child.status.then((s) => (this.#exitStatus = s));
    this.#drains = [this.#drain(this.child.stdout), this.#drain(this.child.stderr)];
  }

  /** Everything the child printed so far (bounded; oldest output dropped first). */
  get log(): string {
    return this.#log;
  }

  /** The exit status once the child has exited, else undefined. */
  get exitStatus(): Deno.CommandStatus | undefined {
    return this.#exitStatus;
  }

  async #drain(stream: ReadableStream<Uint8Array>): Promise<void> {
    const reader = stream.getReader();
    this.#readers.push(reader);
    const streamDecoder = new TextDecoder();
    try {
      while (true) {
        const { done, value } = await reader.read();
        if (done) break;
        this.#log += streamDecoder.decode(value, { stream: true });
        if (this.#log.length > this.#logLimit * 2) {
          this.#log = this.#log.slice(this.#log.length - this.#logLimit);
        }
      }
    } catch {
      // Cancelled by stop(): nothing left to read.
    } finally {
      reader.releaseLock();
    }
  }

  /**
   * Stops the child: SIGTERM, up to `graceMs` to exit, then SIGKILL. Waits for the exit and for
   * the output pipes (grandchildren that inherited them get `pipeGraceMs`, then the reads are
   * cancelled), so no op or resource outlives the call.
   */
  async stop(graceMs = 10_000, pipeGraceMs = 2_000): Promise<Deno.CommandStatus> {
    if (!this.#exitStatus) {
      trySignal(this.child, "SIGTERM");
      if (!(await settlesWithin(this.status, graceMs))) trySignal(this.child, "SIGKILL");
    }
    const status = await this.status;
    if (!(await settlesWithin(Promise.all(this.#drains), pipeGraceMs))) {
      await Promise.all(this.#readers.map((r) => r.cancel().catch(() => {})));
      await Promise.all(this.#drains);
    }
    return status;
  }
}

function trySignal(child: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    child.kill(signal);
  } catch {
    // Already exited.
  }
}

/** Waits up to `ms` for `p`; true when it settled in time. Clears its timer either way. */
export async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([p.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
