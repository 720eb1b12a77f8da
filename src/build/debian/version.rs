//! Debian version comparison, as dpkg does it (deb-version(7)).
//!
//! A version is `[epoch:]upstream[-revision]`. The epoch compares numerically (absent = 0).
//! Upstream and revision compare with dpkg's alternating rule: a run of non-digits compares
//! character by character, where `~` sorts before everything (even the end of the string),
//! the end of the string before letters, and letters before all other characters; then a run
//! of digits compares numerically (leading zeros ignored). An absent revision equals `0`.
//! Limits: no validation — any string compares; malformed input just yields some total order.

use std::cmp::Ordering;

/// Compares two Debian version strings the way `dpkg --compare-versions` does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

/// Does `candidate` satisfy the relation `op` `reference` (`>=`, `<=`, `=`, `<<`, `>>`,
/// and the obsolete `<`/`>` meaning `<=`/`>=`)?
pub fn satisfies(candidate: &str, op: &str, reference: &str) -> bool {
    let ord = compare(candidate, reference);
    match op {
        ">=" | ">" => ord != Ordering::Less,
        "<=" | "<" => ord != Ordering::Greater,
        "=" => ord == Ordering::Equal,
        ">>" => ord == Ordering::Greater,
        "<<" => ord == Ordering::Less,
        _ => false,
    }
}

/// Splits into (epoch, upstream, revision).
fn split(v: &str) -> (u64, &str, &str) {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((up, rev)) => (epoch, up, rev),
        None => (epoch, rest, ""),
    }
}

/// The sort weight of one byte of a non-digit run; `None` is the end of the run.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit run.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let wa = weight(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let wb = weight(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            if i < a.len() && !a[i].is_ascii_digit() {
                i += 1;
            }
            if j < b.len() && !b[j].is_ascii_digit() {
                j += 1;
            }
        }
        // Digit run: skip leading zeros, then the longer run is bigger, else first difference.
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let si = i;
        let sj = j;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (da, db) = (&a[si..i], &b[sj..j]);
        let ord = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dpkg_orderings_hold() {
        let less = [
            ("1.0~rc1", "1.0"),
            ("2.0", "1:0.9"),
            ("1.0-1", "1.0-1+deb12u1"),
            ("1.0~~", "1.0~"),
            ("1.0~", "1.0"),
            ("1.0", "1.0a"),
            ("1.0a", "1.0+"),
            ("1.0", "1.0.1"),
            ("1.2", "1.10"),
            ("1.1.5+ds1-1", "1.1.5+ds1-1+deb12u1"),
            ("6.1.0-26", "6.1.0-27"),
            ("6.1.112-1", "6.1.115-1"),
            ("2.36-9+deb12u9", "2.36-9+deb12u10"),
            ("0:1.0", "1:0.1"),
            ("1.0-1", "1.0-2"),
            ("1.0-1~bpo12+1", "1.0-1"),
            ("9", "10"),
        ];
        for (a, b) in less {
            assert_eq!(compare(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(compare(b, a), Ordering::Greater, "{b} > {a}");
        }
        for (a, b) in [
            ("1.0", "1.00"),
            ("0:1.0", "1.0"),
            ("1.0-0", "1.0"),
            ("01", "1"),
        ] {
            assert_eq!(compare(a, b), Ordering::Equal, "{a} = {b}");
        }
    }

    #[test]
    fn relations_follow_the_comparison() {
        assert!(satisfies("2.36-9", ">=", "2.34"));
        assert!(!satisfies("2.34", ">>", "2.34"));
        assert!(satisfies("2.34", "=", "2.34"));
        assert!(satisfies("2.33", "<<", "2.34"));
        assert!(satisfies("2.34", "<=", "2.34"));
        assert!(!satisfies("2.35", "<=", "2.34"));
        assert!(!satisfies("1", "??", "1"));
    }

    fn version() -> impl Strategy<Value = String> {
        "([0-9]{1,2}:)?[0-9][0-9a-z.+~]{0,6}(-[0-9a-z.+~]{1,4})?"
    }

    proptest! {
        #[test]
        fn comparison_is_antisymmetric(a in version(), b in version()) {
            prop_assert_eq!(compare(&a, &b), compare(&b, &a).reverse());
        }

        #[test]
        fn comparison_is_reflexive(a in version()) {
            prop_assert_eq!(compare(&a, &a), Ordering::Equal);
        }

        #[test]
        fn comparison_is_transitive(a in version(), b in version(), c in version()) {
            let mut v = [a, b, c];
            v.sort_by(|x, y| compare(x, y));
            prop_assert_ne!(compare(&v[0], &v[1]), Ordering::Greater);
            prop_assert_ne!(compare(&v[1], &v[2]), Ordering::Greater);
            prop_assert_ne!(compare(&v[0], &v[2]), Ordering::Greater);
        }

        #[test]
        fn a_tilde_suffix_sorts_before_the_bare_version(a in version()) {
            let (e, up, rev) = split(&a);
            let pre = if rev.is_empty() { format!("{e}:{up}~x") } else { format!("{e}:{up}~x-{rev}") };
            prop_assert_eq!(compare(&pre, &a), Ordering::Less);
        }
    }
}
