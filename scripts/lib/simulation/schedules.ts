import { CronExpressionParser } from "cron-parser";
import type { SimulatedTier } from "./tier";

/** One firing of a pre-warm schedule: at `at` (ms since the epoch) the group's minimum becomes `minSize`. */
export interface ScheduleFiring {
  readonly at: number;
  readonly minSize: number;
}

const CRON_FIELD = /^(\*|[0-9]+|[A-Za-z]{3})(-([0-9]+|[A-Za-z]{3}))?(\/[0-9]+)?$/;

/** The instants (ms) at which each pre-warm schedule fires in [from, to], and the last one before from. */
export function scheduleFirings(
  tier: Pick<SimulatedTier, "tier" | "prewarmSchedule">,
  from: Date,
  to: Date,
): {
  readonly before: ScheduleFiring | undefined;
  readonly firings: ScheduleFiring[];
} {
  let before: ScheduleFiring | undefined;
  const firings: ScheduleFiring[] = [];
  tier.prewarmSchedule.forEach((s, i) => {
    const key = `crucible:fleet.tiers.${tier.tier}.prewarmSchedule[${i}]`;
    const fields = s.recurrence.trim().split(/\s+/);
    if (fields.length !== 5 || !fields.every((f) => f.split(",").every((part) => CRON_FIELD.test(part)))) {
      throw new Error(
        `${key}.recurrence "${s.recurrence}" is a cron form the simulation does not support; Auto Scaling takes Unix cron: five fields of numbers, names, *, ranges, lists and steps`,
      );
    }
    const timeZone = s.timeZone ?? "UTC";
    try {
      new Intl.DateTimeFormat("en-US", { timeZone });
    } catch {
      throw new Error(`${key}.timeZone "${timeZone}" is not an IANA time zone such as Europe/Berlin`);
    }
    const parse = (currentDate: Date) => {
      try {
        return CronExpressionParser.parse(s.recurrence, { tz: timeZone, currentDate });
      } catch (err) {
        throw new Error(
          `${key}.recurrence "${s.recurrence}" cannot be read: ${err instanceof Error ? err.message : String(err)}`,
        );
      }
    };
    const back = parse(from);
    if (back.hasPrev()) {
      const at = back.prev().getTime();
      if (!before || at > before.at) before = { at, minSize: s.minSize };
    }
    const ahead = parse(new Date(from.getTime() - 1));
    for (let at = ahead.next().getTime(); at <= to.getTime(); at = ahead.next().getTime()) {
      firings.push({ at, minSize: s.minSize });
    }
  });
  return { before, firings: firings.sort((a, b) => a.at - b.at) };
}
