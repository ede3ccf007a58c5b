/** Control characters a terminal acts on (C0 but newline, DEL, C1, bidi overrides): none may reach the output. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: these are the characters to look for
export const TERMINAL_CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;
