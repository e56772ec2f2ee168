/**
 * A recording reverse proxy on 127.0.0.1 for the mirror tests: it forwards every request to a
 * plain-HTTP registry and remembers what arrived (method, path, `Authorization`, `User-Agent`),
 * so a test can prove that a host received nothing at all, or never a credential.
 * @module
 */

/** One request the recorder forwarded. */
export interface RecordedRequest {
  method: string;
  path: string;
  authorization: string | null;
  userAgent: string | null;
  status: number;
}

/** A running recorder. */
export interface Recorder {
  /** `127.0.0.1:PORT` */
  host: string;
  /** `http://127.0.0.1:PORT` */
  url: string;
  requests: RecordedRequest[];
  close(): Promise<void>;
}

/** Headers that belong to one hop and must not be forwarded. */
const HOP_BY_HOP = ["connection", "keep-alive", "transfer-encoding", "upgrade", "host"];

/** Starts a recorder in front of `targetUrl` (`http://127.0.0.1:PORT`). */
export function startRecorder(targetUrl: string): Promise<Recorder> {
  const requests: RecordedRequest[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (req) => {
      const url = new URL(req.url);
      const record: RecordedRequest = {
        method: req.method,
        path: url.pathname + url.search,
        authorization: req.headers.get("Authorization"),
        userAgent: req.headers.get("User-Agent"),
        status: 0,
      };
      requests.push(record);
      const headers = new Headers(req.headers);
      for (const name of HOP_BY_HOP) headers.delete(name);
      const upstream = await fetch(new URL(record.path, targetUrl), {
        method: req.method,
        headers,
        body: req.body,
        redirect: "manual",
      });
      record.status = upstream.status;
      const out = new Headers(upstream.headers);
      for (const name of HOP_BY_HOP) out.delete(name);
      return new Response(upstream.body, { status: upstream.status, headers: out });
    },
  );
  const { port } = server.addr;
  return Promise.resolve({
    host: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    requests,
    close: async () => {
      await server.shutdown();
      await server.finished;
    },
  });
}
