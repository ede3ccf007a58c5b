/**
 * A throwaway CA with a server certificate (for 127.0.0.1 and localhost) and a client
 * certificate, made with openssl in a temp directory, for brokers that require mutual TLS.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestCerts {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

function openssl(...args: string[]): void {
  execFileSync("openssl", args, { stdio: "ignore" });
}

export function makeCerts(): TestCerts {
  const dir = mkdtempSync(join(tmpdir(), "edgehook-certs-"));
  chmodSync(dir, 0o755);
  const f = (n: string) => join(dir, n);
  openssl(
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-days",
    "2",
    "-subj",
    "/CN=edgehook test CA",
    "-keyout",
    f("ca.key"),
    "-out",
    f("ca.crt"),
  );
  writeFileSync(f("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  for (const who of ["server", "client"]) {
    openssl(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      `/CN=${who}`,
      "-keyout",
      f(`${who}.key`),
      "-out",
      f(`${who}.csr`),
    );
    openssl(
      "x509",
      "-req",
      "-in",
      f(`${who}.csr`),
      "-CA",
      f("ca.crt"),
      "-CAkey",
      f("ca.key"),
      "-CAcreateserial",
      "-days",
      "2",
      "-extfile",
      f("san.ext"),
      "-out",
      f(`${who}.crt`),
    );
  }
  // Brokers started as root drop privileges; let them read their key.
  for (const n of ["ca.crt", "server.crt", "server.key", "client.crt", "client.key"]) chmodSync(f(n), 0o644);
  return {
    dir,
    ca: f("ca.crt"),
    serverCert: f("server.crt"),
    serverKey: f("server.key"),
    clientCert: f("client.crt"),
    clientKey: f("client.key"),
  };
}
