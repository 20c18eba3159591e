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
pub fn next_fire(cron: &croner::Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Whole seconds: croner keeps a fraction of the start.
    let after = after.trunc_subsecs(0);
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
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
