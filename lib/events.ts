/**
 * Progress as events: `lib/` reports what happens, the CLI decides how to
 * show it (bars on a TTY, plain lines elsewhere, nothing with --quiet).
 * @module
 */

/** Something worth telling the user while a pull runs. */
export type PullEvent =
  /** The platform that will be pulled, as the registry names it. */
  | { type: "platform"; requested: string; chosen: string; exact: boolean; digest?: string }
  /** A layer transfer begins; `index` is its position in the image (bottom first). */
  | { type: "blob-start"; digest: string; size: number; index: number }
  /** Bytes of a blob have arrived (cumulative). */
  | { type: "blob-progress"; digest: string; received: number; size: number }
  /** A blob is on disk and verified. */
  | { type: "blob-done"; digest: string; size: number; reused: boolean }
  /** A notable fact: a layer converted, a foreign layer skipped, a fallback taken. */
  | { type: "notice"; message: string }
  /** Something the user should know even with --quiet: the pull goes on, but not as asked. */
  | { type: "warning"; message: string }
  /** Detail for --verbose. Never contains secrets. */
  | { type: "debug"; message: string };

/** Receives events; must not throw. */
export type PullEventSink = (event: PullEvent) => void;
