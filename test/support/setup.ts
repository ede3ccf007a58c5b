import { afterAll } from "vitest";
import { killLeftovers } from "./children.js";

afterAll(() => killLeftovers());
