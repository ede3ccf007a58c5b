/** Types for scripts/check-cycles.mjs, so tests can call it in-process. */
export function importGraph(root: string): Map<string, string[]>;
export function findCycles(graph: Map<string, string[]>): { modules: string[]; cycle: string[] }[];
