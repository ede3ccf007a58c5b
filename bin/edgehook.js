#!/usr/bin/env node
// dist/edgehook.js is the bundle `npm run build` makes (scripts/bundle.mjs).
import { main } from "../dist/edgehook.js";

await main(process.argv.slice(2));
