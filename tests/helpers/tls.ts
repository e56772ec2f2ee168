/**
 * A throw-away PKI for the TLS test servers, made with the `openssl` CLI: a CA, a server leaf it
 * signs (rustls refuses a CA certificate as the end-entity certificate, so the two must differ),
 * and a token-signing certificate for the Docker token server.
 * @module
 */
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { runOk } from "./process.ts";

/** Paths and PEM texts of a generated test PKI. */
export interface TestPki {
  /** Directory holding every file below. */
  dir: string;
  caCertPath: string;
  caCertPem: string;
  caKeyPath: string;
  serverCertPath: string;
  serverKeyPath: string;
  serverCertPem: string;
  serverKeyPem: string;
  tokenKeyPath: string;
  tokenCertPath: string;
  tokenKeyPem: string;
  tokenCertPem: string;
  /** A client certificate (clientAuth) signed by the CA, for mutual TLS. */
  clientCertPath: string;
  clientKeyPath: string;
}

// Our own config files, so the host's openssl.cnf defaults (v3_ca etc.) cannot add or clash
// with extensions.
const CA_CONFIG = `[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = imgpull test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
`;

function leafConfig(cn: string, extensions: string): string {
  return `[req]
distinguished_name = dn
prompt = no
[dn]
CN = ${cn}
[leaf]
basicConstraints = critical, CA:FALSE
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
${extensions}
`;
}

const SERVER_EXTENSIONS = `keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
`;

const TOKEN_EXTENSIONS = `keyUsage = critical, digitalSignature
`;

const CLIENT_EXTENSIONS = `keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
`;

/**
 * Generates a fresh PKI in `dir` (created if missing): CA, server leaf for 127.0.0.1/localhost,
 * an RSA 2048 token-signing certificate and a client certificate for mutual TLS, all RSA 2048
 * and valid for ten years.
 */
export async function generateTestPki(dir: string): Promise<TestPki> {
  await Deno.mkdir(dir, { recursive: true });
  const p = (name: string) => join(dir, name);
  await Deno.writeTextFile(p("ca.cnf"), CA_CONFIG);
  await Deno.writeTextFile(p("server.cnf"), leafConfig("localhost", SERVER_EXTENSIONS));
  await Deno.writeTextFile(
    p("token.cnf"),
    leafConfig("imgpull test token signer", TOKEN_EXTENSIONS),
  );
  await Deno.writeTextFile(p("client.cnf"), leafConfig("imgpull test client", CLIENT_EXTENSIONS));

  await runOk("openssl", [
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-sha256",
    "-days",
    "3650",
    "-config",
    p("ca.cnf"),
    "-keyout",
    p("ca.key"),
    "-out",
    p("ca.crt"),
  ]);
  // The two leaves are independent: make them in parallel (RSA key generation dominates).
  await Promise.all([signLeaf(dir, "server"), signLeaf(dir, "token"), signLeaf(dir, "client")]);

  const read = (name: string) => Deno.readTextFile(p(name));
  return {
    dir,
    caCertPath: p("ca.crt"),
    caCertPem: await read("ca.crt"),
    caKeyPath: p("ca.key"),
    serverCertPath: p("server.crt"),
    serverKeyPath: p("server.key"),
    serverCertPem: await read("server.crt"),
    serverKeyPem: await read("server.key"),
    tokenKeyPath: p("token.key"),
    tokenCertPath: p("token.crt"),
    tokenKeyPem: await read("token.key"),
    tokenCertPem: await read("token.crt"),
    clientCertPath: p("client.crt"),
    clientKeyPath: p("client.key"),
  };
}

async function signLeaf(dir: string, name: string): Promise<void> {
  const p = (file: string) => join(dir, file);
  await runOk("openssl", [
    "req",
    "-new",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-config",
    p(`${name}.cnf`),
    "-keyout",
    p(`${name}.key`),
    "-out",
    p(`${name}.csr`),
  ]);
  await runOk("openssl", [
    "x509",
    "-req",
    "-sha256",
    "-days",
    "3650",
    "-in",
    p(`${name}.csr`),
    "-CA",
    p("ca.crt"),
    "-CAkey",
    p("ca.key"),
    // A random serial instead of -CAcreateserial, which would leave a .srl file to race on.
    "-set_serial",
    `0x${randomBytes(12).toString("hex")}`,
    "-extfile",
    p(`${name}.cnf`),
    "-extensions",
    "leaf",
    "-out",
    p(`${name}.crt`),
  ]);
}

/** The DER bytes of the first certificate in a PEM text, base64-encoded (the JWS `x5c` form). */
export function pemToDerBase64(pem: string): string {
  const match = pem.match(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/);
  if (!match) throw new Error("no certificate in PEM text");
  return match[1].replace(/\s+/g, "");
}
