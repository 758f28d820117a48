//! Cron schedules: when a transfer runs, read as wall-clock times in the transfer's time zone.
//!
//! Expressions have the 5 standard fields (minute hour day-of-month month day-of-week) or
//! are one of the aliases `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. Day and
//! month names (`MON`, `JAN`) are accepted in their own fields. A day-of-month and a
//! day-of-week that are both restricted fire when either matches, as in Vixie cron.
//!
//! Daylight saving time: a wall-clock time skipped by a spring-forward gap fires at the
//! first instant after the gap; a time repeated by a fall-back fires once (at the first of
//! the two instants) for a schedule that names a fixed hour and minute.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// `missed` in [`Due`] stops counting here, so a long outage under a busy schedule costs
/// bounded work.
pub const MAX_MISSED: u32 = 1000;

/// The field names, in order, as error messages call them.
const FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A parsed cron expression and the time zone its times are read in, checked once so a
/// scheduler never meets a bad expression at fire time.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// A fire time a scheduler has yet to act on: it runs once for `at`, whatever `missed` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The most recent fire time in `(last, now]`; record it as the last schedule time.
    pub at: DateTime<Utc>,
    /// Earlier fire times in `(last, now]` that are skipped, at most [`MAX_MISSED`].
    pub missed: u32,
}

impl Schedule {
    /// Parses a 5-field cron expression or alias, read in `time_zone` (an IANA name such as
    /// `Europe/Berlin`; UTC when `None`). The error is one line naming what is wrong.
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
        let tz = match time_zone {
            None => Tz::UTC,
            Some(name) => name.trim().parse::<Tz>().map_err(|_| {
                format!("unknown time zone '{name}' (expected an IANA name such as Europe/Berlin)")
            })?,
        };
        let cron = parse_cron(expr)?;
        let schedule = Schedule { cron, tz };
        // A day that never comes (`0 0 31 2 *`) parses, but a schedule that never fires is
        // a mistake worth reporting now rather than a transfer that silently never runs.
        if schedule.next_after(Utc::now()).is_none() {
            return Err(format!("'{}': never fires", expr.trim()));
        }
        Ok(schedule)
    }

    /// The first fire time strictly after `t`; `None` only when there is none left.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        let next = next.with_timezone(&Utc);
        // croner works in whole seconds; never hand back a time at or before `t`.
        (next > t).then_some(next)
    }

    /// The fire time to act on after a scheduler last acted at `last` and now looks at
    /// `now`: the latest one in `(last, now]`, so downtime yields at most one catch-up run.
    /// `None` when no fire time falls in `(last, now]`.
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<Due> {
        if now <= last {
            return None;
        }
        let local_now = now.with_timezone(&self.tz);
        let at = self
            .cron
            .find_previous_occurrence(&local_now, true)
            .ok()?
            .with_timezone(&Utc);
        if at <= last || at > now {
            return None;
        }
        let mut missed = 0;
        let mut cursor = last;
        while missed < MAX_MISSED {
            match self.next_after(cursor) {
                Some(t) if t < at => {
                    missed += 1;
                    cursor = t;
                }
                _ => break,
            }
        }
        Some(Due { at, missed })
    }
}

/// Expands an alias, checks the field count and names, then hands the fields to croner,
/// naming the field at fault when croner refuses them.
fn parse_cron(expr: &str) -> Result<Cron, String> {
    let trimmed = expr.trim();
    if trimmed.is_empty() {
        return Err(
            "empty cron expression: expected 5 fields (minute hour day-of-month month \
                    day-of-week) or an alias such as @daily"
                .to_string(),
        );
    }
    let expanded = if trimmed.starts_with('@') {
        expand_alias(trimmed).ok_or_else(|| {
            format!(
                "'{trimmed}': unknown alias; expected @hourly, @daily, @weekly, @monthly or @yearly"
            )
        })?
    } else {
        trimmed
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    match fields.len() {
        5 => {}
        6 | 7 => {
            return Err(format!(
                "'{trimmed}': {} fields given, but schedules have 5 (minute hour day-of-month \
                 month day-of-week), without seconds or years",
                fields.len()
            ))
        }
        n => {
            return Err(format!(
                "'{trimmed}': {n} field{} given, expected 5 (minute hour day-of-month month \
                 day-of-week)",
                if n == 1 { "" } else { "s" }
            ))
        }
    }
    for (i, field) in fields.iter().enumerate() {
        check_names(i, field).map_err(|reason| field_error(trimmed, i, field, &reason))?;
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        // `0/15` for `*/15`, as many cron implementations allow.
        .sloppy_ranges(true)
        .build();
    parser.parse(&fields.join(" ")).map_err(|whole| {
        // Parse each field alone (the others `*`) to find the one at fault.
        for (i, field) in fields.iter().enumerate() {
            let mut alone = ["*"; 5];
            alone[i] = field;
            if let Err(e) = parser.parse(&alone.join(" ")) {
                return field_error(trimmed, i, field, &croner_reason(&e));
            }
        }
        format!("'{trimmed}': {}", croner_reason(&whole))
    })
}

fn expand_alias(alias: &str) -> Option<&'static str> {
    Some(match alias.to_ascii_lowercase().as_str() {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * SUN",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        _ => return None,
    })
}

/// Names are only meaningful in their own field; croner would otherwise read `MON` in the
/// minute field as minute 1.
fn check_names(index: usize, field: &str) -> Result<(), String> {
    let upper = field.to_ascii_uppercase();
    for word in upper
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
    {
        let known = match index {
            2 => matches!(word, "L" | "W" | "LW"),
            3 => MONTHS.contains(&word),
            4 => word == "L" || WEEKDAYS.contains(&word),
            _ => false,
        };
        if !known {
            let original = &field[upper.find(word).unwrap_or(0)..][..word.len()];
            return Err(match index {
                3 => format!("'{original}' is not a month (JAN-DEC)"),
                4 => format!("'{original}' is not a day of the week (SUN-SAT)"),
                2 => format!("'{original}' is not a number, L or W"),
                _ => format!("'{original}' is not a number"),
            });
        }
    }
    Ok(())
}

fn field_error(expr: &str, index: usize, field: &str, reason: &str) -> String {
    let range = ["0-59", "0-23", "1-31", "1-12", "0-7"][index];
    format!(
        "'{expr}': invalid {} field '{field}' (values {range}): {reason}",
        FIELDS[index]
    )
}

/// croner's message without its prefix and trailing period, starting lower case.
fn croner_reason(err: &croner::errors::CronError) -> String {
    use croner::errors::CronError::*;
    let text = match err {
        InvalidPattern(m) | IllegalCharacters(m) | ComponentError(m) => m.clone(),
        other => other.to_string(),
    };
    let text = text.trim().trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "not understood".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn parse(expr: &str) -> Schedule {
        Schedule::parse(expr, None).unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    fn next_n(s: &Schedule, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from;
        for _ in 0..n {
            t = s.next_after(t).expect("a next fire time");
            out.push(t);
        }
        out
    }

    #[test]
    fn every_fifteen_minutes() {
        let s = parse("*/15 * * * *");
        assert_eq!(
            next_n(&s, utc(2025, 1, 1, 10, 7), 4),
            vec![
                utc(2025, 1, 1, 10, 15),
                utc(2025, 1, 1, 10, 30),
                utc(2025, 1, 1, 10, 45),
                utc(2025, 1, 1, 11, 0),
            ]
        );
        // Strictly after: a fire time is not its own successor, even within its second.
        let at = utc(2025, 1, 1, 10, 15);
        assert_eq!(s.next_after(at), Some(utc(2025, 1, 1, 10, 30)));
        let just_after = at + chrono::Duration::milliseconds(300);
        assert_eq!(s.next_after(just_after), Some(utc(2025, 1, 1, 10, 30)));
        let just_before = at - chrono::Duration::milliseconds(300);
        assert_eq!(s.next_after(just_before), Some(at));
    }

    #[test]
    fn weekday_and_month_names() {
        // 2025-01-03 is a Friday.
        let s = parse("30 6 * * mon-FRI");
        assert_eq!(
            next_n(&s, utc(2025, 1, 3, 7, 0), 2),
            vec![utc(2025, 1, 6, 6, 30), utc(2025, 1, 7, 6, 30)]
        );
        let s = parse("0 0 1 jan,JUL *");
        assert_eq!(
            next_n(&s, utc(2025, 2, 1, 0, 0), 2),
            vec![utc(2025, 7, 1, 0, 0), utc(2026, 1, 1, 0, 0)]
        );
        // Sunday is 0 and 7.
        let sun = utc(2025, 1, 5, 0, 0);
        assert_eq!(
            parse("0 0 * * 7").next_after(utc(2025, 1, 3, 0, 0)),
            Some(sun)
        );
        assert_eq!(
            parse("0 0 * * 0").next_after(utc(2025, 1, 3, 0, 0)),
            Some(sun)
        );
    }

    #[test]
    fn lists_ranges_steps_and_aliases() {
        let s = parse("5,20 8-10/2 * * *");
        assert_eq!(
            next_n(&s, utc(2025, 1, 1, 0, 0), 5),
            vec![
                utc(2025, 1, 1, 8, 5),
                utc(2025, 1, 1, 8, 20),
                utc(2025, 1, 1, 10, 5),
                utc(2025, 1, 1, 10, 20),
                utc(2025, 1, 2, 8, 5),
            ]
        );
        let from = utc(2025, 1, 1, 10, 30); // a Wednesday
        let next = |e: &str| parse(e).next_after(from).unwrap();
        assert_eq!(next("@hourly"), utc(2025, 1, 1, 11, 0));
        assert_eq!(next("@daily"), utc(2025, 1, 2, 0, 0));
        assert_eq!(next("@weekly"), utc(2025, 1, 5, 0, 0));
        assert_eq!(next("@monthly"), utc(2025, 2, 1, 0, 0));
        assert_eq!(next("@YEARLY"), utc(2026, 1, 1, 0, 0));
        assert_eq!(next("0/20 * * * *"), utc(2025, 1, 1, 10, 40));
    }

    #[test]
    fn time_zone_follows_summer_time() {
        let s = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).unwrap();
        // Winter: CET is UTC+1.
        assert_eq!(
            s.next_after(utc(2025, 1, 15, 0, 0)),
            Some(utc(2025, 1, 15, 8, 0))
        );
        // Summer: CEST is UTC+2.
        assert_eq!(
            s.next_after(utc(2025, 7, 15, 0, 0)),
            Some(utc(2025, 7, 15, 7, 0))
        );
        // The default is UTC.
        assert_eq!(
            parse("0 9 * * *").next_after(utc(2025, 7, 15, 0, 0)),
            Some(utc(2025, 7, 15, 9, 0))
        );
    }

    #[test]
    fn dst_gap_and_overlap_days() {
        // Berlin skips 02:00-03:00 local on 2025-03-30 (01:00 UTC). A run scheduled in the
        // gap fires once, at the first instant after it, and the next day as usual.
        let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            next_n(&s, utc(2025, 3, 29, 12, 0), 2),
            vec![utc(2025, 3, 30, 1, 0), utc(2025, 3, 31, 0, 30)]
        );
        // Hourly runs around the gap: no invented or doubled times.
        let s = Schedule::parse("0 * * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            next_n(&s, utc(2025, 3, 29, 23, 30), 3),
            vec![
                utc(2025, 3, 30, 0, 0), // 01:00 CET
                utc(2025, 3, 30, 1, 0), // 03:00 CEST
                utc(2025, 3, 30, 2, 0), // 04:00 CEST
            ]
        );
        // Berlin repeats 02:00-03:00 local on 2025-10-26; a fixed-time run fires once.
        let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            next_n(&s, utc(2025, 10, 25, 12, 0), 2),
            vec![utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)]
        );
    }

    #[test]
    fn invalid_expressions_name_the_problem() {
        let err = |expr: &str| Schedule::parse(expr, None).unwrap_err();

        let e = err("*/x * * * *");
        assert!(
            e.contains("'*/x * * * *'") && e.contains("minute field '*/x'"),
            "{e}"
        );
        assert!(e.ends_with("'x' is not a number"), "{e}");
        let e = err("0 24 * * *");
        assert!(e.contains("hour field '24'"), "{e}");
        let e = err("0 0 * 13 *");
        assert!(e.contains("month field '13'"), "{e}");
        let e = err("0 0 * FOO *");
        assert!(e.contains("'FOO' is not a month"), "{e}");
        let e = err("MON * * * *");
        assert!(e.contains("minute field 'MON'"), "{e}");
        let e = err("0 0 * * FUNDAY");
        assert!(e.contains("day-of-week field 'FUNDAY'"), "{e}");

        let e = err("0 0 9 * * *");
        assert!(
            e.contains("6 fields") && e.contains("without seconds"),
            "{e}"
        );
        let e = err("0 0 9 * * * 2030");
        assert!(e.contains("7 fields"), "{e}");
        let e = err("0 9 * *");
        assert!(e.contains("4 fields given, expected 5"), "{e}");
        assert!(err("").contains("empty"));
        let e = err("@reboot");
        assert!(e.contains("unknown alias"), "{e}");
        let e = err("0 0 31 2 *");
        assert!(e.contains("never fires"), "{e}");

        let e = Schedule::parse("0 9 * * *", Some("Mars/Base")).unwrap_err();
        assert!(e.contains("unknown time zone 'Mars/Base'"), "{e}");

        for e in [err("*/x * * * *"), err("0 0 9 * * *"), err("@reboot")] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn due_catches_up_once_after_downtime() {
        let s = parse("@hourly");
        // Last acted at 09:00; down until 12:30. 10:00 and 11:00 are skipped, 12:00 runs.
        let due = s.due(utc(2025, 1, 1, 9, 0), utc(2025, 1, 1, 12, 30));
        assert_eq!(
            due,
            Some(Due {
                at: utc(2025, 1, 1, 12, 0),
                missed: 2
            })
        );
        // Nothing new since the last run.
        assert_eq!(s.due(utc(2025, 1, 1, 12, 0), utc(2025, 1, 1, 12, 59)), None);
        // A fire time exactly at `now` is due; one exactly at `last` is not.
        assert_eq!(
            s.due(utc(2025, 1, 1, 12, 0), utc(2025, 1, 1, 13, 0)),
            Some(Due {
                at: utc(2025, 1, 1, 13, 0),
                missed: 0
            })
        );
        assert_eq!(s.due(utc(2025, 1, 1, 13, 0), utc(2025, 1, 1, 13, 0)), None);
        assert_eq!(s.due(utc(2025, 1, 1, 14, 0), utc(2025, 1, 1, 13, 0)), None);
    }

    #[test]
    fn due_caps_the_missed_count() {
        let s = parse("* * * * *");
        let due = s.due(utc(2025, 1, 1, 0, 0), utc(2025, 1, 8, 0, 0)).unwrap();
        assert_eq!(due.at, utc(2025, 1, 8, 0, 0));
        assert_eq!(due.missed, MAX_MISSED);
    }
}
