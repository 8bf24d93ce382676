//! Human sizes ("1G", "512M", "4096") and times for the command line and the configuration.

use serde::{Deserialize, Deserializer};

/// Parses a size: a number of bytes with an optional unit, in powers of 1024 whatever the
/// spelling (`20G`, `20GB` and `20GiB` are all 20 GiB), with a fraction if wanted (`1.5G`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    use parse_size::Error;
    let cfg = parse_size::Config::new().with_binary();
    cfg.parse_size(s.trim()).map_err(|e| match e {
        Error::Empty => {
            format!("size {s:?} is empty; give a number with an optional unit (e.g. 1G)")
        }
        Error::PosOverflow => format!("size {s:?} is too large (more than 16 EiB)"),
        _ => format!(
            "size {s:?} is not a number with an optional unit: use K, M, G, T or P \
             (powers of 1024), e.g. 512M, 20G or 1.5T"
        ),
    })
}

/// A size in a TOML file: an integer or a string with a unit.
pub fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        N(u64),
        T(String),
    }
    match S::deserialize(d)? {
        S::N(n) => Ok(n),
        S::T(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

pub fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses a `--point` time: RFC 3339 as `haven points` prints it (`2026-12-02T14:48:59.102Z`;
/// an offset such as `+01:00` in place of `Z`; any number of fraction digits, or none), or
/// `@UNIX_SECONDS`. Returns the last microsecond the time names: a time written to the
/// millisecond (or second) covers that whole millisecond (or second), so a time copied from
/// `haven points` finds the point printed with it although its stored time has microseconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some(secs) = t.strip_prefix('@') {
        return secs
            .parse::<u64>()
            .ok()
            .and_then(|v| v.checked_mul(1_000_000))
            .map(|us| us + 999_999)
            .ok_or_else(|| {
                format!("time {s:?}: after @ give whole seconds since 1970 (e.g. @1796223805)")
            });
    }
    let ts: jiff::Timestamp = t.parse().map_err(|e| bad_time(s, e))?;
    let ns = ts.as_nanosecond();
    if ns < 0 {
        return Err(format!(
            "time {s:?} is before 1970; no recovery point is that old"
        ));
    }
    let last_ns = ns + precision_ns(t) - 1;
    Ok(u64::try_from(last_ns / 1000).expect("a jiff timestamp fits in u64 microseconds"))
}

fn bad_time(s: &str, e: jiff::Error) -> String {
    let time = s.trim().split_once(['T', 't', ' ']).map(|(_, time)| time);
    let hint = match time {
        Some(time) if !time.contains(['Z', 'z', '+', '-']) => {
            " (add Z for UTC, or an offset such as +01:00)"
        }
        _ => "",
    };
    format!(
        "time {s:?} is not a valid time{hint}: {e}; use RFC 3339 as `haven points` prints it \
         (e.g. 2026-12-02T14:48:59.102Z or 2026-12-02T15:48:59+01:00) or @UNIX_SECONDS"
    )
}

/// The unit of the last digit of a time's seconds: 1 s without a fraction, 1 ms for `.123`.
fn precision_ns(t: &str) -> i128 {
    let time = t.split_once(['T', 't', ' ']).map_or("", |(_, time)| time);
    let digits = time.split_once(['.', ',']).map_or(0, |(_, frac)| {
        frac.bytes().take_while(u8::is_ascii_digit).count()
    });
    10i128.pow(9 - digits.min(9) as u32)
}

/// Formats microseconds since the epoch as RFC 3339 in UTC with milliseconds
/// (`2026-12-02T14:48:59.102Z`): what `--point` accepts back.
pub fn format_time(us: u64) -> String {
    haven_runtime::api::time_rfc3339(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("20GB"), Ok(20 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(" 64 M "), Ok(64 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert!(parse_size("1X").unwrap_err().contains("e.g. 512M"));
        assert!(parse_size("").unwrap_err().contains("empty"));
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn times_as_points_prints_them() {
        let printed = format_time(1_796_223_806_641_905);
        assert_eq!(printed, "2026-12-02T15:03:26.641Z");
        // The printed time covers its whole millisecond: it finds the point printed with it.
        assert_eq!(parse_time(&printed).unwrap(), 1_796_223_806_641_999);
        assert_eq!(
            parse_time("2026-12-02T16:03:26.641+01:00").unwrap(),
            1_796_223_806_641_999
        );
        assert_eq!(
            parse_time("2026-12-02t15:03:26.641z").unwrap(),
            1_796_223_806_641_999
        );
        assert_eq!(
            parse_time("2026-12-02T15:03:26Z").unwrap(),
            1_796_223_806_999_999
        );
        assert_eq!(
            parse_time("2026-12-02T15:03:26.641905Z").unwrap(),
            1_796_223_806_641_905
        );
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), 999_999);
        assert_eq!(parse_time("@10").unwrap(), 10_999_999);
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn bad_times_say_why() {
        let e = parse_time("2026-02-30T00:00:00Z").unwrap_err();
        assert!(e.contains("2026-02-30") && e.contains("RFC 3339"), "{e}");
        let e = parse_time("2026-12-02T15:03:26").unwrap_err();
        assert!(e.contains("add Z for UTC"), "{e}");
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-01T00:00:00Z").is_err());
        assert!(parse_time("1969-12-31T23:59:59Z")
            .unwrap_err()
            .contains("before 1970"));
        assert!(parse_time("@x").is_err());
    }
}
