/** imgpull's version, shown by `--version` and sent in `User-Agent`. */
export const VERSION = "0.1.0";
