//! The text form of gRPC's `grpc-timeout` header: up to 8 digits and a unit (`H`, `M`, `S`, `m`,
//! `u`, `n`). One parser and one encoder for the proxy (which reads the caller's deadline and
//! forwards what is left), the demo apps (which pass it on) and the tests.

use std::time::Duration;

/// Parses a `grpc-timeout` value; anything else (no unit, more than 8 digits) is `None`.
pub fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `left` in the finest unit that fits 8 digits, rounded down (so a forwarded deadline never
/// grows).
pub fn encode(left: Duration) -> String {
    const MAX: u128 = 99_999_999;
    [(left.as_nanos(), 'n'), (left.as_micros(), 'u'), (left.as_millis(), 'm')]
        .into_iter()
        .chain([(u128::from(left.as_secs()), 'S'), (u128::from(left.as_secs() / 60), 'M')])
        .find(|(n, _)| *n <= MAX)
        .map_or_else(|| format!("{}H", (left.as_secs() / 3600).min(99_999_999)), |(n, unit)| format!("{n}{unit}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_by_unit_and_malformed_ones_do_not() {
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("1234567890S"), None);
    }

    #[test]
    fn encoded_values_round_trip_in_the_finest_unit_that_fits() {
        assert_eq!(encode(Duration::from_nanos(99_123_456)), "99123456n");
        assert_eq!(parse("99123456n"), Some(Duration::from_nanos(99_123_456)));
        assert_eq!(encode(Duration::from_micros(98_765_432)), "98765432u");
        assert_eq!(encode(Duration::from_millis(2_500_000)), "2500000m");
        assert_eq!(parse(&encode(Duration::from_millis(2_500_000))), Some(Duration::from_millis(2_500_000)));
        assert_eq!(encode(Duration::from_secs(200_000_000)), "3333333M");
        assert_eq!(encode(Duration::ZERO), "0n");
    }
}
