/**
 * Which proxy Deno uses for a URL, as imgpull works it out to name it in errors: the variable
 * order, NO_PROXY, Deno's parsing quirks, and credentials kept out of what is printed.
 */
import assert from "node:assert/strict";
import { proxyFor } from "../../lib/transport.ts";
import { redact } from "../../lib/redact.ts";

const env = (vars: Record<string, string>) => (name: string) => vars[name];
const proxied = (url: string, vars: Record<string, string>) =>
  proxyFor(new URL(url), env(vars))?.display;

Deno.test("proxyFor: HTTPS_PROXY for https, HTTP_PROXY for http, ALL_PROXY first", () => {
  const vars = { HTTPS_PROXY: "http://s:3128", HTTP_PROXY: "http://p:3128" };
  assert.equal(proxied("https://r.example/v2/", vars), "http://s:3128");
  assert.equal(proxied("http://r.example/v2/", vars), "http://p:3128");
  assert.equal(proxied("https://r.example/", { ...vars, ALL_PROXY: "http://a:1" }), "http://a:1");
  assert.equal(proxied("https://r.example/", { HTTP_PROXY: "http://p:3128" }), undefined);
});

Deno.test("proxyFor: upper case wins, lower case is honoured", () => {
  assert.equal(proxied("https://r/", { https_proxy: "http://low:1" }), "http://low:1");
  assert.equal(proxied("http://r/", { http_proxy: "http://low:1" }), "http://low:1");
  assert.equal(
    proxied("https://r/", { HTTPS_PROXY: "http://up:1", https_proxy: "http://low:1" }),
    "http://up:1",
  );
});

Deno.test("proxyFor: loopback is proxied too unless NO_PROXY lists it", () => {
  const vars = { HTTPS_PROXY: "http://p:3128" };
  assert.equal(proxied("https://127.0.0.1:5000/", vars), "http://p:3128");
  assert.equal(proxied("https://localhost:5000/", vars), "http://p:3128");
  for (
    const noProxy of ["localhost", ".localhost", "127.0.0.1", "127.0.0.0/8", "*", "x, localhost"]
  ) {
    const host = noProxy.includes("127") ? "127.0.0.1" : "localhost";
    assert.equal(proxied(`https://${host}:5000/`, { ...vars, NO_PROXY: noProxy }), undefined);
  }
  assert.equal(
    proxied("https://reg.corp.example/", { ...vars, no_proxy: "corp.example" }),
    undefined,
  );
  assert.equal(
    proxied("https://notcorp.example/", { ...vars, NO_PROXY: "corp.example" }),
    "http://p:3128",
  );
  assert.equal(proxied("https://10.1.2.3/", { ...vars, NO_PROXY: "10.0.0.0/8" }), undefined);
  assert.equal(proxied("https://11.1.2.3/", { ...vars, NO_PROXY: "10.0.0.0/8" }), "http://p:3128");
  assert.equal(proxied("https://[::1]:5000/", { ...vars, NO_PROXY: "::1" }), undefined);
});

Deno.test("proxyFor: parsing as Deno does it", () => {
  // No scheme: http. A path is ignored. Unsupported schemes and `user@` without ":" are not used.
  assert.equal(proxied("https://r/", { HTTPS_PROXY: "p.corp:8080" }), "http://p.corp:8080");
  assert.equal(proxied("https://r/", { HTTPS_PROXY: "http://p.corp/path" }), "http://p.corp");
  assert.equal(proxied("https://r/", { HTTPS_PROXY: "ftp://p.corp" }), undefined);
  assert.equal(proxied("https://r/", { HTTPS_PROXY: "http://bob@p.corp:1" }), undefined);
  assert.equal(
    proxied("https://r/", { HTTPS_PROXY: "socks5://p.corp:1080" }),
    "socks5://p.corp:1080",
  );
  assert.equal(proxied("https://r/", { HTTPS_PROXY: "" }), undefined);
  // In a CGI context HTTP_PROXY may come from a request header: Deno ignores it.
  assert.equal(
    proxied("http://r/", { HTTP_PROXY: "http://p:1", REQUEST_METHOD: "GET" }),
    undefined,
  );
});

Deno.test("proxyFor: credentials never reach the display and are redacted everywhere", () => {
  const proxy = proxyFor(
    new URL("https://r/"),
    env({ HTTPS_PROXY: "http://alice:pr%40xy-Secret@p.corp:3128" }),
  );
  assert.equal(proxy?.display, "http://p.corp:3128");
  assert.equal(proxy?.authorization, `Basic ${btoa("alice:pr@xy-Secret")}`);
  assert.equal(redact("pw pr@xy-Secret"), "pw ***");
  assert.equal(redact(`h ${btoa("alice:pr@xy-Secret")}`), "h ***");
});

Deno.test("proxyFor: an unusable upper-case variable falls back to the lower-case one", () => {
  assert.equal(
    proxied("https://r/", { HTTPS_PROXY: "ftp://x", https_proxy: "http://low:1" }),
    "http://low:1",
  );
});
