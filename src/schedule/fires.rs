//! When a schedule fires: the next fire after a moment, the fires missed while
//! the daemon was down, the as-of date of a fire, and the retry backoff. Pure
//! functions of a cron, a time zone and instants; the daemon supplies the clock.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use chrono_tz::Tz;

use crate::config::CatchUp;

/// At most this many missed fires are caught up with `catch_up: all`; older
/// ones are dropped (and logged by the daemon).
pub const MAX_CATCH_UP: usize = 1000;

/// The first fire strictly after `after`, evaluated in `tz` (so a daily 02:30
/// follows the local clock across daylight-saving changes). `None` when the
/// cron never fires again.
///
/// croner searches local wall-clock time, which repeats in the autumn fall
/// back: started in either pass of the repeated hour it can answer the first
/// pass of a local time (an instant before `after`) or jump over the second
/// pass. So besides croner's answer (kept only when strictly after `after`;
/// it handles the spring-forward gap and far fires), the search runs at the
/// fixed UTC offset in force at `after` and a few hours later, keeping a
/// match only where `tz` really has that offset. Interval crons (a wildcard or
/// stepped second, minute or hour) thus fire in both passes of the repeated
/// hour; fixed-time crons (one second, minute and hour) fire in the first only.
pub fn next_fire(cron: &croner::Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::{Offset, TimeZone};
    // Whole seconds: croner keeps a fraction of the start.
    let start = after.trunc_subsecs(0);
    let mut best = cron
        .iter_after(start.with_timezone(&tz))
        .take(8)
        .map(|t| t.with_timezone(&Utc))
        .find(|t| *t > after);
    let fixed_time = matches!(cron.determine_job_type(), croner::JobType::FixedTime);
    let offset_at = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    let mut offsets = vec![offset_at(start)];
    for hours in [1, 2, 3] {
        let o = offset_at(start + chrono::Duration::hours(hours));
        if !offsets.contains(&o) {
            offsets.push(o);
        }
    }
    for o in offsets {
        let Some(t) = cron
            .iter_after(start.with_timezone(&o))
            .take(8)
            .map(|t| t.with_timezone(&Utc))
            .find(|t| *t > after)
        else {
            continue;
        };
        if offset_at(t) != o || best.is_some_and(|b| b <= t) {
            continue;
        }
        // The second pass of a repeated local time: fixed-time crons fired
        // in the first.
        let naive = t.with_timezone(&o).naive_local();
        let second_pass = tz
            .from_local_datetime(&naive)
            .earliest()
            .is_some_and(|first| first.with_timezone(&Utc) < t);
        if fixed_time && second_pass {
            continue;
        }
        best = Some(t);
    }
    best
}

/// The fires in `(after, until]`, oldest first, at most `limit` of them (the
/// newest kept), and whether older ones were dropped.
pub fn fires_between(
    cron: &croner::Cron,
    tz: Tz,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
) -> (Vec<DateTime<Utc>>, bool) {
    let mut out = std::collections::VecDeque::new();
    let mut dropped = false;
    let mut at = after;
    while let Some(next) = next_fire(cron, tz, at) {
        if next > until {
            break;
        }
        if out.len() == limit {
            out.pop_front();
            dropped = true;
        }
        out.push_back(next);
        at = next;
    }
    (out.into(), dropped)
}

/// The missed fires to run on start, from the last fire in the run history
/// (`None`: the pipeline never fired, so nothing was missed).
pub fn catch_up(
    policy: CatchUp,
    cron: &croner::Cron,
    tz: Tz,
    last_fire: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (Vec<DateTime<Utc>>, bool) {
    let Some(last) = last_fire else {
        return (Vec::new(), false);
    };
    match policy {
        CatchUp::None => (Vec::new(), false),
        CatchUp::Latest => {
            let (fires, dropped) = fires_between(cron, tz, last, now, 1);
            let _ = dropped;
            (fires, false)
        }
        CatchUp::All => fires_between(cron, tz, last, now, MAX_CATCH_UP),
    }
}

/// The as-of date of a fire: its date in the pipeline's time zone.
pub fn as_of(fire: DateTime<Utc>, tz: Tz) -> NaiveDate {
    fire.with_timezone(&tz).date_naive()
}

/// The wait before retry `attempt` (1 for the first): `delay`, doubling each
/// time, capped at a day.
pub fn backoff(delay: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    delay
        .checked_mul(factor)
        .unwrap_or(Duration::from_secs(86_400))
        .min(Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_cron;
    use chrono::TimeZone;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn local(fires: &[DateTime<Utc>], tz: Tz) -> Vec<String> {
        fires
            .iter()
            .map(|f| f.with_timezone(&tz).to_rfc3339())
            .collect()
    }

    #[test]
    fn daily_0230_across_the_spring_forward() {
        // 2026-03-29 in Amsterdam: 02:00 CET jumps to 03:00 CEST; 02:30 does not
        // exist that day, and the job fires at the first instant after the gap.
        let tz: Tz = "Europe/Amsterdam".parse().unwrap();
        let cron = parse_cron("0 30 2 * * *").unwrap();
        let (fires, _) = fires_between(
            &cron,
            tz,
            utc("2026-03-27T12:00:00Z"),
            utc("2026-03-31T12:00:00Z"),
            100,
        );
        assert_eq!(
            local(&fires, tz),
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00",
            ]
        );
        assert_eq!(
            fires
                .iter()
                .map(|f| as_of(*f, tz).to_string())
                .collect::<Vec<_>>(),
            ["2026-03-28", "2026-03-29", "2026-03-30", "2026-03-31"]
        );
    }

    #[test]
    fn daily_0230_across_the_fall_back() {
        // 2026-10-25 in Amsterdam: 03:00 CEST goes back to 02:00 CET; 02:30
        // happens twice, the job fires once.
        let tz: Tz = "Europe/Amsterdam".parse().unwrap();
        let cron = parse_cron("0 30 2 * * *").unwrap();
        let (fires, _) = fires_between(
            &cron,
            tz,
            utc("2026-10-23T12:00:00Z"),
            utc("2026-10-26T12:00:00Z"),
            100,
        );
        assert_eq!(
            local(&fires, tz),
            [
                "2026-10-24T02:30:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-26T02:30:00+01:00",
            ]
        );
        // The day of the fall back lasts 25 hours.
        assert_eq!((fires[2] - fires[1]).num_hours(), 25);
    }

    /// Every fire of `cron` in `(from, until]` by repeated `next_fire`.
    fn walk(cron: &str, tz: Tz, from: &str, until: &str) -> Vec<DateTime<Utc>> {
        let cron = parse_cron(cron).unwrap();
        let (from, until) = (utc(from), utc(until));
        let mut out = Vec::new();
        let mut at = from;
        while let Some(next) = next_fire(&cron, tz, at) {
            assert!(next > at, "{next} is not after {at}");
            if next > until {
                break;
            }
            out.push(next);
            at = next;
            assert!(out.len() < 10_000);
        }
        out
    }

    #[test]
    fn hourly_across_the_fall_back_fires_every_hour() {
        // 2026-10-25 in Amsterdam: 01:00 UTC is 02:00 CEST -> 02:00 CET.
        let tz: Tz = "Europe/Amsterdam".parse().unwrap();
        let fires = walk(
            "0 0 * * * *",
            tz,
            "2026-10-24T22:30:00Z",
            "2026-10-25T03:30:00Z",
        );
        assert_eq!(
            fires,
            [
                utc("2026-10-24T23:00:00Z"),
                utc("2026-10-25T00:00:00Z"),
                utc("2026-10-25T01:00:00Z"),
                utc("2026-10-25T02:00:00Z"),
                utc("2026-10-25T03:00:00Z"),
            ]
        );
    }

    #[test]
    fn every_15_minutes_across_the_fall_back_fires_the_repeated_hour_twice() {
        let tz: Tz = "Europe/Amsterdam".parse().unwrap();
        let fires = walk(
            "0 */15 * * * *",
            tz,
            "2026-10-24T23:59:00Z",
            "2026-10-25T02:59:00Z",
        );
        // 00:00 to 02:45 UTC every 15 minutes: 12 fires, none dropped, none twice.
        let expected: Vec<_> = (0..12)
            .map(|i| utc("2026-10-25T00:00:00Z") + chrono::Duration::minutes(15 * i))
            .collect();
        assert_eq!(fires, expected);
        // Local 02:00, 02:15, 02:30, 02:45 each happen twice.
        let locals = local(&fires, tz);
        for t in ["02:00", "02:15", "02:30", "02:45"] {
            assert_eq!(
                locals
                    .iter()
                    .filter(|l| l.contains(&format!("T{t}:00")))
                    .count(),
                2,
                "{t} in {locals:?}"
            );
        }
    }

    #[test]
    fn next_fire_is_after_its_start_through_the_fall_back() {
        let tz: Tz = "Europe/Amsterdam".parse().unwrap();
        let from = utc("2026-10-25T00:00:00Z");
        let until = utc("2026-10-25T02:00:00Z");
        for cron in [
            "0 */15 * * * *",
            "0 0 * * * *",
            "0 30 2 * * *",
            "*/10 * * * * *",
        ] {
            let c = parse_cron(cron).unwrap();
            let mut at = from;
            while at <= until {
                let next = next_fire(&c, tz, at).unwrap();
                assert!(next > at, "{cron}: next_fire({at}) = {next}");
                at += chrono::Duration::seconds(7);
            }
        }
        // Started in the second 02:00-02:30 (CET), a daily 02:30 (which
        // fires once on that day, at 02:30 CEST, already past) is next due
        // the day after, never the past 02:30 CEST.
        let c = parse_cron("0 30 2 * * *").unwrap();
        assert_eq!(
            next_fire(&c, tz, utc("2026-10-25T01:10:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn a_cron_with_a_far_year_is_accepted() {
        // The tests' "never fires while they run" schedule.
        let cron = parse_cron("0 0 0 1 1 * 2099").unwrap();
        assert_eq!(
            next_fire(&cron, Tz::UTC, utc("2026-12-31T23:59:59Z")),
            Some(utc("2099-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn next_fire_is_strictly_after() {
        let cron = parse_cron("*/2 * * * * *").unwrap();
        let at = utc("2026-01-01T00:00:00Z");
        assert_eq!(
            next_fire(&cron, Tz::UTC, at),
            Some(utc("2026-01-01T00:00:02Z"))
        );
        let at = utc("2026-01-01T00:00:00.5Z");
        assert_eq!(
            next_fire(&cron, Tz::UTC, at),
            Some(utc("2026-01-01T00:00:02Z"))
        );
    }

    #[test]
    fn catch_up_policies() {
        let cron = parse_cron("0 0 * * * *").unwrap();
        let last = Some(utc("2026-01-01T00:00:05Z"));
        let now = utc("2026-01-01T03:30:00Z");
        let all = catch_up(CatchUp::All, &cron, Tz::UTC, last, now).0;
        assert_eq!(
            all,
            [
                utc("2026-01-01T01:00:00Z"),
                utc("2026-01-01T02:00:00Z"),
                utc("2026-01-01T03:00:00Z")
            ]
        );
        let latest = catch_up(CatchUp::Latest, &cron, Tz::UTC, last, now).0;
        assert_eq!(latest, [utc("2026-01-01T03:00:00Z")]);
        assert!(
            catch_up(CatchUp::None, &cron, Tz::UTC, last, now)
                .0
                .is_empty()
        );
        assert!(
            catch_up(CatchUp::All, &cron, Tz::UTC, None, now)
                .0
                .is_empty()
        );
        // Nothing missed.
        let recent = Some(utc("2026-01-01T03:00:01Z"));
        assert!(
            catch_up(CatchUp::All, &cron, Tz::UTC, recent, now)
                .0
                .is_empty()
        );
    }

    #[test]
    fn catch_up_all_is_capped() {
        let cron = parse_cron("* * * * * *").unwrap();
        let last = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let now = last + chrono::Duration::seconds(5000);
        let (fires, dropped) = catch_up(CatchUp::All, &cron, Tz::UTC, Some(last), now);
        assert_eq!(fires.len(), MAX_CATCH_UP);
        assert!(dropped);
        assert_eq!(fires.last(), Some(&now));
    }

    #[test]
    fn as_of_is_the_fire_date_in_the_time_zone() {
        let tz: Tz = "Europe/Amsterdam".parse().unwrap();
        let fire = utc("2026-03-28T23:30:00Z");
        assert_eq!(as_of(fire, tz).to_string(), "2026-03-29");
        assert_eq!(as_of(fire, Tz::UTC).to_string(), "2026-03-28");
        let tz: Tz = "America/Los_Angeles".parse().unwrap();
        assert_eq!(
            as_of(utc("2026-01-01T05:00:00Z"), tz).to_string(),
            "2025-12-31"
        );
    }

    #[test]
    fn backoff_doubles() {
        let d = Duration::from_secs(1);
        assert_eq!(backoff(d, 1), Duration::from_secs(1));
        assert_eq!(backoff(d, 2), Duration::from_secs(2));
        assert_eq!(backoff(d, 3), Duration::from_secs(4));
        assert_eq!(backoff(d, 100), Duration::from_secs(86_400));
    }
}
