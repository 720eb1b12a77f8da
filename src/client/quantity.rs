//! Kubernetes resource quantities (`500m`, `2`, `128Mi`, `1G`, `1e3`) as integers: CPU in
//! millicores, everything else in base units (rounded up, like the scheduler). The one
//! parser: the scheduler counts requests with it, the kubelet turns limits into cgroup
//! settings with it.
//!
//! Limits: values beyond `i64` saturate; malformed quantities return `None` (the apiserver
//! validates them, so callers treat `None` as zero).

/// Parses `q` scaled by `scale` (1000 for millicores, 1 for bytes), rounding up.
pub fn parse_scaled(q: &str, scale: i64) -> Option<i64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let v = (num * mult * scale as f64 - 1e-9).ceil();
    Some(if v >= i64::MAX as f64 {
        i64::MAX
    } else {
        v as i64
    })
}

/// CPU in millicores.
pub fn millicores(q: &str) -> i64 {
    parse_scaled(q, 1000).unwrap_or(0)
}

/// Memory (or any non-CPU resource) in base units.
pub fn units(q: &str) -> i64 {
    parse_scaled(q, 1).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpu_and_memory_quantities_parse_to_integers() {
        assert_eq!(millicores("500m"), 500);
        assert_eq!(millicores("2"), 2000);
        assert_eq!(millicores("0.1"), 100);
        assert_eq!(units("128Mi"), 128 << 20);
        assert_eq!(units("1G"), 1_000_000_000);
        assert_eq!(units("1e3"), 1000);
        assert_eq!(parse_scaled("12Q", 1), None);
        assert_eq!(parse_scaled("0.5", 1000), Some(500));
        assert_eq!(parse_scaled("128Mi", 1000), Some((128 << 20) * 1000));
        assert_eq!(parse_scaled("1e3", 1000), Some(1_000_000));
        assert_eq!(parse_scaled("", 1), None);
        assert_eq!(parse_scaled("1e999999", 1), Some(i64::MAX));
    }

    proptest! {
        #[test]
        fn whole_mebibytes_round_trip(n in 0i64..1_000_000) {
            prop_assert_eq!(units(&format!("{n}Mi")), n << 20);
            prop_assert_eq!(millicores(&format!("{n}m")), n);
        }
    }
}
