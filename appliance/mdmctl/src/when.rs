//! Points in time typed on the command line: an RFC 3339 time, or a duration meaning "that
//! long ago" (`30m`, `2h`, `7d`), for filters such as `activity --since`.
//!
//! A relative time is kept relative until the command runs, so parsing stays free of the
//! clock and [`When::instant`] can be tested with a fixed "now".

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::ttl::parse_ttl;

/// A time filter as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// An absolute time.
    At(OffsetDateTime),
    /// This many seconds before the command runs.
    Ago(u64),
}

/// Parses `--since`/`--until`: RFC 3339 first, then a duration as [`parse_ttl`] reads it.
///
/// Used as a clap value parser, so the error is the sentence clap shows after the flag.
pub fn parse_when(text: &str) -> Result<When, String> {
    let trimmed = text.trim();
    if let Ok(t) = OffsetDateTime::parse(trimmed, &Rfc3339) {
        return Ok(When::At(t));
    }
    parse_ttl(trimmed).map(When::Ago).map_err(|_| {
        format!(
            "{trimmed:?} is neither an RFC 3339 time (2024-05-01T10:00:00Z) nor a duration ago \
             (30m, 2h, 7d)"
        )
    })
}

impl When {
    /// The instant meant, in UTC; a relative one is counted back from `now`, to the second.
    pub fn instant(self, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
        let t = match self {
            When::At(t) => t,
            When::Ago(seconds) => {
                let back = i64::try_from(seconds)
                    .ok()
                    .map(time::Duration::seconds)
                    .and_then(|d| now.checked_sub(d))
                    .ok_or_else(|| format!("{seconds} seconds ago is before any date"))?;
                back.replace_nanosecond(0).unwrap_or(back)
            }
        };
        Ok(t.to_offset(UtcOffset::UTC))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn absolute_times_are_kept_and_normalised_to_utc() {
        let w = parse_when("2024-05-01T12:00:00+02:00").expect("rfc 3339");
        assert_eq!(w, When::At(datetime!(2024-05-01 10:00 UTC)));
        let now = datetime!(2030-01-01 00:00 UTC);
        let t = w.instant(now).expect("instant");
        assert_eq!(t, datetime!(2024-05-01 10:00 UTC));
        assert_eq!(t.offset(), UtcOffset::UTC);
        let w = parse_when(" 2024-05-01T10:00:00.250Z ").expect("fraction");
        assert_eq!(
            w.instant(now).expect("instant"),
            datetime!(2024-05-01 10:00:00.25 UTC)
        );
    }

    #[test]
    fn durations_count_back_from_now_to_the_second() {
        let now = datetime!(2024-05-08 10:00:30.5 UTC);
        assert_eq!(parse_when("2h"), Ok(When::Ago(7_200)));
        assert_eq!(
            When::Ago(7 * 86_400).instant(now).expect("7d"),
            datetime!(2024-05-01 10:00:30 UTC)
        );
        assert_eq!(
            parse_when("30m")
                .expect("30m")
                .instant(now)
                .expect("instant"),
            datetime!(2024-05-08 09:30:30 UTC)
        );
    }

    #[test]
    fn other_text_is_refused_with_both_forms_named() {
        for bad in [
            "yesterday",
            "2024-05-01",
            "2024-05-01 10:00:00",
            "-2h",
            "0",
            "",
        ] {
            let err = parse_when(bad).expect_err(bad);
            assert!(
                err.contains("RFC 3339") && err.contains("7d"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn absurd_durations_are_an_error_not_a_wrap() {
        let now = datetime!(2024-05-01 00:00 UTC);
        assert!(When::Ago(u64::MAX).instant(now).is_err());
        assert!(When::Ago(400_000 * 365 * 86_400).instant(now).is_err());
    }
}
