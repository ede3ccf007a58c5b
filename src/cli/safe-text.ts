/**
 * Text from payloads (sensor names, labels, bodies, receiver answers) printed to a
 * terminal: control characters are shown escaped, so a sensor name cannot clear the
 * screen, move the cursor, or fake a row with a newline.
 */

// C0 and C1 controls, DEL, and the bidirectional overrides that reorder what is shown.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;

export function safe(text: unknown): string {
  return String(text ?? "").replace(UNSAFE, (c) => {
    switch (c) {
      case "\n":
        return "\\n";
      case "\r":
        return "\\r";
      case "\t":
        return "\\t";
      case "\u001b":
        return "\\e";
      default: {
        const code = c.charCodeAt(0);
        return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
      }
    }
  });
}

/** Like safe(), but keeps newlines (for multi-line text such as an indented JSON body). */
export function safeLines(text: string): string[] {
  return text.split("\n").map(safe);
}
