/**
 * Headless Chromium from Debian's `chromium` package (scripts/test-deps.sh installs it),
 * driven by playwright-core, which never downloads a browser: it is told where the
 * browser is. Each launch gets a fresh profile directory, removed on close.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BrowserContext, chromium, type Page } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";

const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export interface Browser {
  page: Page;
  close(): Promise<void>;
}

/** A page in a fresh headless Chromium; `viewport` defaults to a phone's. */
export async function openBrowser(viewport = { width: 412, height: 915 }): Promise<Browser> {
  const profile = mkdtempSync(join(tmpdir(), "edgehook-chromium-"));
  let context: BrowserContext | undefined;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      viewport,
      deviceScaleFactor: 1,
      timeout: 30_000,
    });
  } catch (err) {
    rmSync(profile, { recursive: true, force: true });
    throw err;
  }
  const ctx = context;
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  return {
    page,
    close: async () => {
      await ctx.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
