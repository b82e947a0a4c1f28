//! When a digest route's digests are due: its times of day on its weekdays, in its time zone.
//! Pure; the caller passes the clock.

use chrono::{DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::{DigestSettings, WEEKDAYS, parse_time_of_day};

/// A digest route's schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Times of day, sorted, without repeats.
    times: Vec<NaiveTime>,
    /// Monday first; `true` where the schedule runs.
    weekdays: [bool; 7],
    tz: Tz,
}

impl Schedule {
    /// The schedule of `digest`, with `default_tz` when it names none. `None` when the
    /// settings are invalid (configuration validation names the problem).
    pub fn new(digest: &DigestSettings, default_tz: Tz) -> Option<Self> {
        let mut times = digest
            .schedule
            .iter()
            .map(|t| parse_time_of_day(t))
            .collect::<Option<Vec<_>>>()?;
        times.sort();
        times.dedup();
        if times.is_empty() {
            return None;
        }
        let mut weekdays = [digest.weekdays.is_empty(); 7];
        for day in &digest.weekdays {
            let index = WEEKDAYS
                .iter()
                .position(|d| *d == day.trim().to_lowercase())?;
            weekdays[index] = true;
        }
        let tz = digest.tz(default_tz)?;
        Some(Self {
            times,
            weekdays,
            tz,
        })
    }

    /// The instant `time` on `date` in the zone. A time skipped by a daylight-saving change
    /// fires when the clocks have moved on (an hour later); a repeated one fires the first
    /// time.
    fn instant(&self, date: NaiveDate, time: NaiveTime) -> Option<DateTime<Utc>> {
        let local = date.and_time(time);
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
            LocalResult::None => self
                .tz
                .from_local_datetime(&(local + chrono::Duration::hours(1)))
                .earliest()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// The scheduled instants of the local day `date` (none on a day off), earliest first.
    fn on(&self, date: NaiveDate) -> Vec<DateTime<Utc>> {
        if !self.weekdays[date.weekday().num_days_from_monday() as usize] {
            return Vec::new();
        }
        self.times
            .iter()
            .filter_map(|t| self.instant(date, *t))
            .collect()
    }

    /// The latest scheduled instant at or before `now`.
    pub fn latest_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = now.with_timezone(&self.tz).date_naive();
        // A week back always holds a scheduled day; one more covers time-zone edges.
        (0..=8u64).find_map(|back| {
            let date = today.checked_sub_days(Days::new(back))?;
            self.on(date).into_iter().rev().find(|t| *t <= now)
        })
    }

    /// The first scheduled instant after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = now.with_timezone(&self.tz).date_naive();
        (0..=8u64).find_map(|ahead| {
            let date = today.checked_add_days(Days::new(ahead))?;
            self.on(date).into_iter().find(|t| *t > now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DigestGroupBy;

    fn schedule(times: &[&str], weekdays: &[&str], tz: &str) -> Schedule {
        let settings = DigestSettings {
            schedule: times.iter().map(|t| (*t).to_owned()).collect(),
            weekdays: weekdays.iter().map(|t| (*t).to_owned()).collect(),
            timezone: Some(tz.to_owned()),
            group_by: DigestGroupBy::Author,
            max_lines: 20,
            grace: std::time::Duration::from_secs(3600),
            send_empty: false,
        };
        Schedule::new(&settings, chrono_tz::UTC).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn boundaries_in_shanghai() {
        let s = schedule(&["18:00"], &[], "Asia/Shanghai");
        // 18:00 in Shanghai is 10:00 UTC.
        assert_eq!(
            s.latest_at_or_before(utc("2026-11-25T10:00:00Z")),
            Some(utc("2026-11-25T10:00:00Z")),
            "exactly at the time: due"
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-11-25T09:59:59Z")),
            Some(utc("2026-11-24T10:00:00Z")),
            "a second before: yesterday's"
        );
        assert_eq!(
            s.next_after(utc("2026-11-25T10:00:00Z")),
            Some(utc("2026-11-26T10:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-11-25T09:59:59Z")),
            Some(utc("2026-11-25T10:00:00Z"))
        );
        // Just after local midnight (16:30 UTC the day before).
        assert_eq!(
            s.latest_at_or_before(utc("2026-11-25T16:30:00Z")),
            Some(utc("2026-11-25T10:00:00Z"))
        );
    }

    #[test]
    fn several_times_and_weekdays() {
        // 2026-11-27 is a Friday.
        let s = schedule(&["18:00", "09:30", "18:00"], &["mon", "fri"], "UTC");
        assert_eq!(
            s.next_after(utc("2026-11-27T12:00:00Z")),
            Some(utc("2026-11-27T18:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-11-27T18:00:00Z")),
            Some(utc("2026-11-30T09:30:00Z")),
            "after Friday evening: Monday morning"
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-11-29T12:00:00Z")),
            Some(utc("2026-11-27T18:00:00Z")),
            "on Sunday: Friday evening's"
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-11-30T09:29:00Z")),
            Some(utc("2026-11-27T18:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_changes() {
        // Berlin springs forward on 2026-03-29 at 02:00 → 03:00; 02:30 does not exist.
        let s = schedule(&["02:30"], &[], "Europe/Berlin");
        assert_eq!(
            s.next_after(utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T01:30:00Z")),
            "the skipped 02:30 fires at 03:30 CEST"
        );
        // Berlin falls back on 2026-10-25 at 03:00 → 02:00; 02:30 happens twice.
        assert_eq!(
            s.next_after(utc("2026-10-24T12:00:00Z")),
            Some(utc("2026-10-25T00:30:00Z")),
            "the repeated 02:30 fires the first time (CEST)"
        );
        // An ordinary day after the change is 02:30 CET = 01:30 UTC.
        assert_eq!(
            s.next_after(utc("2026-10-25T12:00:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn invalid_settings_give_none() {
        let mut settings = DigestSettings {
            schedule: vec!["25:00".to_owned()],
            weekdays: vec![],
            timezone: None,
            group_by: DigestGroupBy::Author,
            max_lines: 20,
            grace: std::time::Duration::from_secs(3600),
            send_empty: false,
        };
        assert!(Schedule::new(&settings, chrono_tz::UTC).is_none());
        settings.schedule = vec!["18:00".to_owned()];
        settings.weekdays = vec!["someday".to_owned()];
        assert!(Schedule::new(&settings, chrono_tz::UTC).is_none());
        settings.weekdays = vec![];
        settings.timezone = Some("Mars/Olympus".to_owned());
        assert!(Schedule::new(&settings, chrono_tz::UTC).is_none());
    }
}
