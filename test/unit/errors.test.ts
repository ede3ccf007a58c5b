import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ErrorCodes } from "../../src/errors.js";

describe("error codes", () => {
  it("are all listed in README.md with their meaning, and README lists no others", () => {
    const readme = readFileSync("README.md", "utf8");
    for (const [code, meaning] of Object.entries(ErrorCodes)) {
      expect(readme).toContain(`| \`${code}\` | ${meaning} |`);
    }
    const listed = [...readme.matchAll(/\| `(EDGEHOOK_[A-Z_]+)` \|/g)].map((m) => m[1]);
    expect(listed.sort()).toEqual(Object.keys(ErrorCodes).sort());
  });
});
