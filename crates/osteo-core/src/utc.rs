//! UTC calendar time from the system clock, without a date-time dependency: for audit records
//! and the dates of DICOM objects.

/// A UTC instant broken into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Year.
    pub year: i64,
    /// Month, 1 to 12.
    pub month: i64,
    /// Day of the month, 1 to 31.
    pub day: i64,
    /// Hour, 0 to 23.
    pub hour: u64,
    /// Minute, 0 to 59.
    pub minute: u64,
    /// Second, 0 to 59.
    pub second: u64,
    /// Milliseconds, 0 to 999.
    pub millis: u32,
}

impl Utc {
    /// The instant `since` after the Unix epoch.
    pub fn at(since: std::time::Duration) -> Self {
        let secs = since.as_secs();
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Self {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            millis: since.subsec_millis(),
        }
    }

    /// RFC 3339 with milliseconds, for example `2026-12-07T07:51:00.123Z` (the audit log's
    /// times, FHIR's instants).
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }

    /// Now, from the system clock (the epoch if the clock is before it).
    pub fn now() -> Self {
        Self::at(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_give_their_calendar_fields() {
        let t = Utc::at(std::time::Duration::from_millis(951_782_400_123)); // 2000-02-29
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
        assert_eq!((t.hour, t.minute, t.second, t.millis), (0, 0, 0, 123));
        let t = Utc::at(std::time::Duration::from_secs(1_798_761_599)); // 2026-12-31T23:59:59
        assert_eq!((t.year, t.month, t.day), (2026, 12, 31));
        assert_eq!((t.hour, t.minute, t.second), (23, 59, 59));
    }
}
