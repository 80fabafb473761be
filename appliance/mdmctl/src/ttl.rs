//! Lifetimes and intervals written the way admins type them: `7d`, `12h`, `30m`, `3600s` or
//! `3600`.

/// Parses a lifetime into seconds: a positive whole number with an optional unit suffix,
/// `d` (days), `h` (hours), `m` (minutes) or `s` (seconds, also the default).
///
/// Used as a clap value parser, so the error is the sentence clap shows after the flag.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit_seconds) = match text.char_indices().last() {
        Some((i, 'd')) => (&text[..i], 86_400),
        Some((i, 'h')) => (&text[..i], 3_600),
        Some((i, 'm')) => (&text[..i], 60),
        Some((i, 's')) => (&text[..i], 1),
        Some(_) => (text, 1),
        None => return Err("a lifetime is required, e.g. 7d, 12h, 30m, 3600s or 3600".into()),
    };
    // `u64::from_str` accepts a leading `+`; a lifetime is plain digits only.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a lifetime: write a whole number with an optional unit d, h, m or s \
             (e.g. 7d, 12h, 3600)"
        ));
    }
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large to be a lifetime"))?;
    if count == 0 {
        return Err("a lifetime must be longer than zero".into());
    }
    count
        .checked_mul(unit_seconds)
        .ok_or_else(|| format!("{text:?} is too large to be a lifetime"))
}

/// Parses an interval between automatic runs into seconds: `0` (in any unit) turns them off,
/// anything else reads as [`parse_ttl`] reads a lifetime.
///
/// Used as a clap value parser, so the error is the sentence clap shows after the flag.
pub fn parse_interval(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed
        .strip_suffix(['d', 'h', 'm', 's'])
        .unwrap_or(trimmed);
    if !digits.is_empty() && digits.bytes().all(|b| b == b'0') {
        return Ok(0);
    }
    parse_ttl(text).map_err(|e| e.replace("a lifetime", "an interval"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_scale_to_seconds() {
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert_eq!(parse_ttl("12h"), Ok(43_200));
        assert_eq!(parse_ttl("30m"), Ok(1_800));
        assert_eq!(parse_ttl("3600s"), Ok(3_600));
        assert_eq!(parse_ttl("3600"), Ok(3_600));
        assert_eq!(parse_ttl(" 1d "), Ok(86_400));
    }

    #[test]
    fn malformed_lifetimes_are_refused_with_a_reason() {
        for bad in ["", "d", "7x", "-1d", "+5", "1.5h", "7 d", "1dd", "h7"] {
            let err = parse_ttl(bad).expect_err(bad);
            assert!(!err.is_empty(), "{bad:?} gave an empty error");
        }
        assert!(parse_ttl("0")
            .expect_err("zero")
            .contains("longer than zero"));
        assert!(parse_ttl("0d").is_err());
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(parse_ttl("18446744073709551615s").is_ok());
        assert!(parse_ttl("18446744073709551615d")
            .expect_err("overflow")
            .contains("too large"));
        assert!(parse_ttl("99999999999999999999")
            .expect_err("overflow")
            .contains("too large"));
    }

    #[test]
    fn intervals_accept_zero_as_off() {
        assert_eq!(parse_interval("0"), Ok(0));
        assert_eq!(parse_interval("0m"), Ok(0));
        assert_eq!(parse_interval("00s"), Ok(0));
        assert_eq!(parse_interval("15m"), Ok(900));
        assert_eq!(parse_interval("900"), Ok(900));
        let err = parse_interval("soon").expect_err("not a number");
        assert!(err.contains("not an interval"), "{err}");
        assert!(parse_interval("m").is_err());
        assert!(parse_interval("").is_err());
        assert!(parse_interval("-0").is_err());
    }
}
