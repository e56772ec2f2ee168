/**
 * The one error catalogue of imgpull. Every failure that `lib/` reports is an
 * {@link ImgpullError}; `main.ts` is the only place that turns one into a
 * message and an exit code. Retries are decided by {@link ImgpullError.retryable},
 * never by catching everything.
 *
 * ```
 * ImgpullError                          exit
 * ├── UsageError                          2   bad flags or arguments
 * │   ├── InvalidReferenceError           2   "Nginx", "a//b", "x:tag@sha256:zz"
 * │   └── InvalidPlatformError            2   "linux", "linux/arm64/v8/x"
 * ├── PlatformError                       1   (the old script's exit code)
 * │   ├── PlatformNotFoundError           1   index has no entry for the request
 * │   └── PlatformMismatchError           1   single manifest for another platform
 * ├── AuthError                           3   401/403, bad credentials, token server refused
 * ├── NotFoundError                       4   unknown repository, tag, manifest or blob
 * ├── IntegrityError                      5   digest or size differs from what was promised
 * ├── NetworkError                        6   connection failed, timeout, 5xx, 429 (retryable)
 * ├── LocalIoError                        7   output not writable, disk full, output is a dir
 * ├── InvalidContentError                 8   malformed/oversized manifest, unknown media type
 * └── InterruptedError                  130   SIGINT / SIGTERM
 * ```
 *
 * @module
 */

/** Process exit codes, one per error family. Documented in the README. */
export const ExitCode = {
  ok: 0,
  platform: 1,
  usage: 2,
  auth: 3,
  notFound: 4,
  integrity: 5,
  network: 6,
  localIo: 7,
  invalidContent: 8,
  interrupted: 130,
} as const;

export type ExitCode = typeof ExitCode[keyof typeof ExitCode];

/** Extra facts an error may carry. */
export interface ErrorDetails {
  /** A short suggestion for the user, printed after the message. */
  hint?: string;
  /** The underlying error, shown only with `--verbose`. */
  cause?: unknown;
}

/** Base class: a message meant for users, an exit code and a retry decision. */
export class ImgpullError extends Error {
  /** The process exit code `main.ts` uses for this error. */
  readonly exitCode: ExitCode = ExitCode.network;
  /** Whether trying the same operation again may succeed. */
  readonly retryable: boolean = false;
  /** A short suggestion for the user. */
  readonly hint?: string;

  constructor(message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.hint = details.hint;
  }
}

/** Bad command line: unknown flag, missing argument, conflicting options. */
export class UsageError extends ImgpullError {
  override readonly exitCode: ExitCode = ExitCode.usage;
}

/** An image reference that Docker would reject. */
export class InvalidReferenceError extends UsageError {}

/** A platform string that is not `os/arch[/variant]`. */
export class InvalidPlatformError extends UsageError {}

/** The requested platform is not available. */
export class PlatformError extends ImgpullError {
  override readonly exitCode: ExitCode = ExitCode.platform;
}

/** An index has no manifest for the requested platform. */
export class PlatformNotFoundError extends PlatformError {
  constructor(
    readonly requested: string,
    /** The platforms the index offers, as written in it. */
    readonly available: readonly string[],
    details: ErrorDetails = {},
  ) {
    super(`No manifest found for platform: ${requested}`, details);
  }
}

/** A single-platform image was built for another platform than requested. */
export class PlatformMismatchError extends PlatformError {
  constructor(readonly requested: string, readonly actual: string, details: ErrorDetails = {}) {
    super(
      `Platform mismatch: requested ${requested}, but image only supports ${actual}`,
      details,
    );
  }
}

/** The registry refused our credentials, or we had none and it wants some. */
export class AuthError extends ImgpullError {
  override readonly exitCode: ExitCode = ExitCode.auth;
}

/** Repository, tag, manifest or blob does not exist. */
export class NotFoundError extends ImgpullError {
  override readonly exitCode: ExitCode = ExitCode.notFound;
}

/** Bytes received differ from the digest or size the descriptor promised. */
export class IntegrityError extends ImgpullError {
  override readonly exitCode: ExitCode = ExitCode.integrity;
}

/** Options for {@link NetworkError}. */
export interface NetworkErrorDetails extends ErrorDetails {
  /** Whether a retry may help (connection reset, 503, 429, ...). Default true. */
  retryable?: boolean;
  /** Server's `Retry-After`, in milliseconds. */
  retryAfterMs?: number;
  /** HTTP status, when there was a response. */
  status?: number;
}

/** The network or the registry failed: connection errors, timeouts, 5xx, 429. */
export class NetworkError extends ImgpullError {
  override readonly retryable: boolean;
  readonly retryAfterMs?: number;
  readonly status?: number;
  constructor(message: string, details: NetworkErrorDetails = {}) {
    super(message, details);
    this.retryable = details.retryable ?? true;
    this.retryAfterMs = details.retryAfterMs;
    this.status = details.status;
  }
}

/** A local file operation failed: unwritable directory, disk full, path is a directory. */
export class LocalIoError extends ImgpullError {
  override readonly exitCode: ExitCode = ExitCode.localIo;
}

/** The registry sent something we cannot accept: malformed, oversized or unsupported. */
export class InvalidContentError extends ImgpullError {
  override readonly exitCode: ExitCode = ExitCode.invalidContent;
}

/** The user interrupted the pull (SIGINT/SIGTERM). */
export class InterruptedError extends ImgpullError {
  override readonly exitCode: ExitCode = ExitCode.interrupted;
  constructor(signal = "SIGINT") {
    super(`Interrupted by ${signal}`);
  }
}
