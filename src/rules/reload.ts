/**
 * Reload (`RuleEngine.reconfigure`): what happens to the series of each rule.
 *
 * A rule with the same version (hash of its state-defining fields, conditions.ts) keeps
 * its series and takes the new severity/labels/extra/notify/repeat/cooldown. A removed
 * rule ends its series: firing ones send `alert.resolved` (silent ones `sensor.returned`)
 * with reason "rule removed", and their rows are removed. A changed rule (same name,
 * same kind) judges its series again on their last known value, so an operator who
 * lowers a threshold does not get `alert.resolved` for a value that is above both:
 *
 * - a firing (or clearing) series that the new rule would keep firing (the value is not
 *   clear under its condition and hysteresis) stays firing: no event, its `since`,
 *   repeats and windows continue; otherwise it is resolved with reason "rule changed";
 * - a pending series whose value still meets the new condition stays pending from when
 *   it started (a new `for` counts from there); otherwise it is ok again, quietly;
 * - an ok series stays ok until its next reading (a stale value never fires);
 * - a silent `absent_for` series stays silent; a seen one keeps its last time.
 *
 * Carried over only when the series still matches the new rule and its value means the
 * same (raw value, or the same aggregate/rate window; SeriesMachine.adopt); otherwise
 * the series ends as with a removed rule, with reason "rule changed". The same applies
 * to a rule changed while the agent was down (restore.ts: rows record what their value
 * is). A batched forward rule sends what it buffered first (forward.ts).
 */
import type { CompiledRule } from "./compile.js";
import type { EngineCore } from "./core.js";
import type { Forwarder } from "./forward.js";

/** Hands every series and buffer to its rule in `nextByName`, or ends it. */
export function reloadRules(
  core: EngineCore,
  forwarder: Forwarder,
  nextByName: ReadonlyMap<string, CompiledRule>,
  now: number,
): void {
  for (const s of core.series.values()) {
    const nr = nextByName.get(s.rule.name);
    if (nr && nr.version === s.rule.version && s.retarget(nr)) continue;
    if (nr && s.adopt(core, nr, s.basis())) continue;
    s.end(core, now, nr ? "rule changed" : "rule removed");
    core.drop(s);
  }
  forwarder.reload(core, nextByName, now);
}

/** Repeat and cooldown may have changed on kept rules: schedules everything afresh. */
export function rescheduleAll(core: EngineCore, forwarder: Forwarder, now: number): void {
  core.queue.clear();
  for (const s of core.series.values()) {
    s.dueAt = undefined;
    s.schedule(core, now);
  }
  forwarder.requeue(core, now);
}
