//! Timestamps: nanoseconds since the Unix epoch, printed as RFC 3339 in UTC.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, in nanoseconds since 1970-01-01T00:00:00Z.
///
/// Prints as RFC 3339 in UTC with microseconds (`2026-11-22T10:00:00.123456Z`), or nanoseconds when the value
/// has sub-microsecond precision, so that pcap (µs) and pcapng/ns captures both round-trip exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

/// A timestamp string that is not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampParseError(String);

impl fmt::Display for TimestampParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid timestamp {:?}: expected RFC 3339 such as 2026-11-22T10:00:00.123456Z",
            self.0
        )
    }
}

impl std::error::Error for TimestampParseError {}

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A duration in nanoseconds as timestamps count them, saturating at `i64::MAX` (292 years).
pub fn duration_nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Timestamp {
    /// The wall clock now (the epoch if the clock is set before it).
    pub fn now() -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(duration_nanos(since))
    }

    /// From seconds and nanoseconds since the epoch, saturating on overflow.
    pub fn from_secs_nanos(secs: i64, nanos: u32) -> Timestamp {
        Timestamp(
            secs.saturating_mul(NANOS_PER_SEC)
                .saturating_add(i64::from(nanos)),
        )
    }

    /// Nanoseconds since the epoch.
    pub fn as_nanos(self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 (`Z` or a numeric offset, 0 to 9 fractional digits).
    pub fn parse(text: &str) -> Result<Timestamp, TimestampParseError> {
        parse_rfc3339(text.as_bytes()).ok_or_else(|| TimestampParseError(text.to_owned()))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Shift the year to start in March so the leap day is the last day of the "year".
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = i64::from(month);
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends `n` as exactly `width` decimal digits (the value is below 10^width).
fn push_digits(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

impl Timestamp {
    /// Appends the RFC 3339 form (as [`fmt::Display`] prints it) to `out`, without going through `fmt`: flow
    /// output prints two timestamps per record, millions of times.
    pub fn write_rfc3339(self, out: &mut Vec<u8>) {
        let secs = self.0.div_euclid(NANOS_PER_SEC);
        let nanos = self.0.rem_euclid(NANOS_PER_SEC) as u64;
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400) as u64;
        if (0..=9999).contains(&year) {
            push_digits(out, year as u64, 4);
        } else {
            out.extend_from_slice(year.to_string().as_bytes());
        }
        out.push(b'-');
        push_digits(out, u64::from(month), 2);
        out.push(b'-');
        push_digits(out, u64::from(day), 2);
        out.push(b'T');
        push_digits(out, sod / 3600, 2);
        out.push(b':');
        push_digits(out, sod / 60 % 60, 2);
        out.push(b':');
        push_digits(out, sod % 60, 2);
        out.push(b'.');
        if nanos.is_multiple_of(1000) {
            push_digits(out, nanos / 1000, 6);
        } else {
            push_digits(out, nanos, 9);
        }
        out.push(b'Z');
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Vec::with_capacity(32);
        self.write_rfc3339(&mut buf);
        f.write_str(&String::from_utf8_lossy(&buf))
    }
}

fn digits(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0')),
    )
}

fn parse_rfc3339(s: &[u8]) -> Option<Timestamp> {
    if s.len() < 20 || s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't' | b' ') {
        return None;
    }
    if s[13] != b':' || s[16] != b':' {
        return None;
    }
    let year = digits(&s[0..4])?;
    let month = u32::try_from(digits(&s[5..7])?).ok()?;
    let day = u32::try_from(digits(&s[8..10])?).ok()?;
    let hour = digits(&s[11..13])?;
    let minute = digits(&s[14..16])?;
    let second = digits(&s[17..19])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // 60 is a leap second; fold it into the next second like most systems do.
    if second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0i64;
    if let Some((b'.', frac_and_more)) = rest.split_first() {
        let n = frac_and_more
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if n == 0 || n > 9 {
            return None;
        }
        nanos = digits(&frac_and_more[..n])? * 10i64.pow(9 - n as u32);
        rest = &frac_and_more[n..];
    }
    let offset_secs = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])?;
            let m = digits(&[*m1, *m2])?;
            let off = h * 3600 + m * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(Timestamp(
        secs.checked_mul(NANOS_PER_SEC)?.checked_add(nanos)?,
    ))
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A duration as the command line and settings spell it: `500ms`, `30s`, `5m`, `2h`, `7d`, or plain seconds
/// (saturating, never overflowing). The error says what is wrong and what would do.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a number with ms, s, m or h, such as 30s")
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86400)),
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m, h or d"
            ));
        }
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_micro_and_nano_precision() {
        let t = Timestamp::parse("2026-11-22T10:00:00.123456Z").ok();
        assert_eq!(
            t.map(|t| t.to_string()).as_deref(),
            Some("2026-11-22T10:00:00.123456Z")
        );
        let t = Timestamp(1_700_000_000_123_456_789);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(Timestamp(-1_000).to_string(), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            Timestamp(i64::MAX).to_string(),
            "2262-04-11T23:47:16.854775807Z"
        );
        assert_eq!(
            Timestamp(i64::MIN).to_string(),
            "1677-09-21T00:12:43.145224192Z"
        );
    }

    #[test]
    fn parses_offsets_and_rejects_garbage() {
        assert_eq!(
            Timestamp::parse("2026-11-22T12:00:00+02:00"),
            Timestamp::parse("2026-11-22T10:00:00Z")
        );
        for bad in [
            "",
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "2026-11-22T10:00:00.Z",
            "x026-11-22T10:00:00Z",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_round_trip_over_four_centuries() {
        for days in (-146_097..146_097 * 2).step_by(17) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
