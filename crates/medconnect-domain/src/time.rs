//! Calendar rules for retention: parsing instants, formatting them for storage, and adding
//! calendar years and days.
//!
//! All instants are UTC with one-second precision. Stored instants use one fixed-width form
//! (`2031-10-16T07:13:55Z`) so that comparing the stored strings orders them in time.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};

/// Error returned when a string is not an instant MedConnect accepts.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid instant {value:?}: expected RFC 3339 such as 2031-10-16T07:13:55Z or \
     2031-10-16T09:13:55+02:00, or a date such as 2031-10-16 (midnight UTC)"
)]
pub struct InvalidInstant {
    pub value: String,
}

/// Parses an RFC 3339 instant with any offset, or a bare `YYYY-MM-DD` date taken as midnight
/// UTC, and returns it in UTC truncated to the second.
pub fn parse_instant(value: &str) -> Result<DateTime<Utc>, InvalidInstant> {
    parse_precise(value).map(truncate_to_second)
}

/// Parses like [`parse_instant`] but rounds a fractional second up. Use it for instants that
/// start a retention period, so that rounding never moves a due date earlier.
pub fn parse_instant_rounding_up(value: &str) -> Result<DateTime<Utc>, InvalidInstant> {
    let precise = parse_precise(value)?;
    let truncated = truncate_to_second(precise);
    if truncated == precise {
        Ok(truncated)
    } else {
        Ok(truncated + Duration::seconds(1))
    }
}

fn parse_precise(value: &str) -> Result<DateTime<Utc>, InvalidInstant> {
    let trimmed = value.trim();
    if let Ok(instant) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(instant.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(trimmed, "%Y-%m-%d") {
        if let Some(midnight) = date.and_hms_opt(0, 0, 0) {
            return Ok(Utc.from_utc_datetime(&midnight));
        }
    }
    // The value is echoed in the error, so PHI pasted by mistake is masked.
    Err(InvalidInstant { value: crate::sanitize::sanitize(value) })
}

/// Formats an instant in the fixed-width storage form `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_instant(instant: DateTime<Utc>) -> String {
    instant.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Drops the sub-second part of an instant.
pub fn truncate_to_second(instant: DateTime<Utc>) -> DateTime<Utc> {
    instant.with_nanosecond(0).unwrap_or(instant)
}

/// Adds `years` calendar years to an instant, keeping the time of day.
///
/// A 29 February start whose anniversary falls in a common year lands on 1 March, never on
/// 28 February, so a period computed here is never shorter than its full length.
pub fn add_years(instant: DateTime<Utc>, years: u32) -> DateTime<Utc> {
    let naive = instant.naive_utc();
    // Past the calendar's range the period is effectively endless, so saturate at the
    // latest date rather than wrap around into the past.
    let Some(target_year) = i32::try_from(years).ok().and_then(|y| naive.year().checked_add(y))
    else {
        return DateTime::<Utc>::MAX_UTC;
    };
    let date = NaiveDate::from_ymd_opt(target_year, naive.month(), naive.day())
        .or_else(|| NaiveDate::from_ymd_opt(target_year, 3, 1));
    match date {
        Some(date) => Utc.from_utc_datetime(&NaiveDateTime::new(date, naive.time())),
        None => DateTime::<Utc>::MAX_UTC,
    }
}

/// Subtracts `years` calendar years, keeping the time of day. A 29 February start lands on
/// 28 February of a common year.
pub fn sub_years(instant: DateTime<Utc>, years: u32) -> DateTime<Utc> {
    let naive = instant.naive_utc();
    let Some(target_year) = i32::try_from(years).ok().and_then(|y| naive.year().checked_sub(y))
    else {
        return DateTime::<Utc>::MIN_UTC;
    };
    let date = NaiveDate::from_ymd_opt(target_year, naive.month(), naive.day())
        .or_else(|| NaiveDate::from_ymd_opt(target_year, 2, 28));
    match date {
        Some(date) => Utc.from_utc_datetime(&NaiveDateTime::new(date, naive.time())),
        None => DateTime::<Utc>::MIN_UTC,
    }
}

/// Adds `days` days of 24 hours. In UTC every calendar day has 24 hours, so this is also
/// calendar-day arithmetic.
pub fn add_days(instant: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    instant.checked_add_signed(Duration::days(i64::from(days))).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Subtracts `days` days of 24 hours.
pub fn sub_days(instant: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    instant.checked_sub_signed(Duration::days(i64::from(days))).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(value: &str) -> DateTime<Utc> {
        parse_instant(value).expect("test instant parses")
    }

    #[test]
    fn add_years_table() {
        let cases = [
            // (start, years, expected)
            ("2020-02-29T10:00:00Z", 7, "2027-03-01T10:00:00Z"),
            ("2020-02-29T10:00:00Z", 4, "2024-02-29T10:00:00Z"),
            ("2020-02-29T00:00:00Z", 1, "2021-03-01T00:00:00Z"),
            ("2019-02-28T23:59:59Z", 7, "2026-02-28T23:59:59Z"),
            ("2016-12-31T23:59:59Z", 7, "2023-12-31T23:59:59Z"),
            ("2023-10-16T07:13:55Z", 7, "2030-10-16T07:13:55Z"),
            ("1999-03-01T00:00:00Z", 1, "2000-03-01T00:00:00Z"),
        ];
        for (start, years, expected) in cases {
            let got = format_instant(add_years(utc(start), years));
            assert_eq!(got, expected, "{start} + {years} years");
        }
    }

    #[test]
    fn parse_instant_table() {
        let cases = [
            ("2031-10-16T07:13:55Z", "2031-10-16T07:13:55Z"),
            ("2031-10-16T09:13:55+02:00", "2031-10-16T07:13:55Z"),
            ("2031-10-15T23:13:55-08:00", "2031-10-16T07:13:55Z"),
            ("2020-02-29T23:30:00-05:00", "2020-03-01T04:30:00Z"),
            ("2031-10-16T07:13:55.999Z", "2031-10-16T07:13:55Z"),
            ("2031-10-16", "2031-10-16T00:00:00Z"),
            (" 2031-10-16 ", "2031-10-16T00:00:00Z"),
        ];
        for (input, expected) in cases {
            assert_eq!(format_instant(utc(input)), expected, "input {input:?}");
        }
    }

    #[test]
    fn invalid_instant_masks_phi() {
        let err = parse_instant("Alice368 Gleason633").expect_err("a name");
        assert!(!err.to_string().contains("Alice368"), "{err}");
        assert!(err.to_string().contains("[name]"), "{err}");
    }

    #[test]
    fn rounding_up_never_moves_earlier() {
        let cases = [
            ("2015-01-01T00:30:00.900Z", "2015-01-01T00:30:01Z"),
            ("2015-01-01T00:30:00Z", "2015-01-01T00:30:00Z"),
            ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00Z"),
        ];
        for (input, expected) in cases {
            let got = parse_instant_rounding_up(input).expect("parses");
            assert_eq!(format_instant(got), expected, "input {input:?}");
        }
    }

    #[test]
    fn parse_instant_rejects_malformed() {
        for bad in ["", "2031-13-01", "2021-02-29", "16/10/2031", "2031-10-16T25:00:00Z", "now"] {
            let err = parse_instant(bad).expect_err(bad);
            let shown = crate::sanitize::sanitize(bad);
            assert!(err.to_string().contains(&format!("{shown:?}")), "{err}");
        }
    }

    #[test]
    fn stored_form_orders_like_time() {
        let earlier = format_instant(utc("2030-09-30T23:59:59Z"));
        let later = format_instant(utc("2030-10-01T00:00:00Z"));
        assert!(earlier < later);
    }

    #[test]
    fn add_years_saturates_instead_of_wrapping() {
        let start = utc("2020-01-01T00:00:00Z");
        assert_eq!(add_years(start, u32::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(add_years(start, 400_000), DateTime::<Utc>::MAX_UTC);
        assert_eq!(add_days(start, u32::MAX), DateTime::<Utc>::MAX_UTC);
        assert!(add_years(start, 1) > start);
    }

    #[test]
    fn add_days_crosses_leap_day() {
        let got = add_days(utc("2024-02-01T12:00:00Z"), 90);
        assert_eq!(format_instant(got), "2024-05-01T12:00:00Z");
        assert_eq!(format_instant(sub_days(got, 90)), "2024-02-01T12:00:00Z");
    }
}
