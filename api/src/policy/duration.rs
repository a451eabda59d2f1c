//! Durations as the Gateway API writes them (GEP-2257): one to four pairs of a
//! number (at most five digits) and a unit `h`, `m`, `s` or `ms`, such as
//! `500ms`, `10s` or `1h30m`. Policy objects carry durations as these strings; the
//! policy model holds [`std::time::Duration`].

use std::time::Duration;

/// The regular expression the API server checks durations against (the same as
/// the Gateway API's `Duration` type).
pub const PATTERN: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "{0:?} is not a duration; write it like \"500ms\", \"10s\" or \"1h30m\" (units h, m, s, ms)"
    )]
    Syntax(String),
}

/// Parses a Gateway API duration such as `500ms` or `1h30m`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError::Syntax(text.to_owned());
    let bytes = text.as_bytes();
    let mut total = Duration::ZERO;
    let mut pairs = 0;
    let mut at = 0;
    while at < bytes.len() {
        let digits_start = at;
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            at += 1;
        }
        let digits = &text[digits_start..at];
        if digits.is_empty() || digits.len() > 5 {
            return Err(bad());
        }
        let number: u64 = digits.parse().map_err(|_| bad())?;
        let unit_start = at;
        while at < bytes.len() && bytes[at].is_ascii_alphabetic() {
            at += 1;
        }
        let unit = match &text[unit_start..at] {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            _ => return Err(bad()),
        };
        // At most 4 pairs of 99999 hours: no overflow is possible.
        total += unit * u32::try_from(number).map_err(|_| bad())?;
        pairs += 1;
    }
    if pairs == 0 || pairs > 4 {
        return Err(bad());
    }
    Ok(total)
}

/// Writes a duration in the Gateway API form, the shortest that is exact
/// (`1h30m`, `500ms`, `0s`). Sub-millisecond parts are dropped.
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let (hours, rest) = (millis / 3_600_000, millis % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (seconds, millis) = (rest / 1000, rest % 1000);
    for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_api_durations() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1h1m1s1ms"), Ok(Duration::from_millis(3_661_001)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_what_the_gateway_api_refuses() {
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10us",
            "123456s",
            "1h1m1s1ms1h",
            " 1s",
            "1S",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.to_string().contains("\"500ms\""), "{err}");
        }
    }

    #[test]
    fn formats_the_shortest_exact_form() {
        for text in ["500ms", "10s", "1h30m", "1h1m1s1ms", "0s", "2m"] {
            assert_eq!(format(parse(text).expect(text)), text);
        }
    }
}
