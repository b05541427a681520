//! Decimal text → `f64`, correctly rounded (round half to even), without lookup tables.
//!
//! Only the canonical form of `payload_hash` needs it (a float whose raw text is not already
//! canonical), so it is written for size, not speed: `core`'s parser carries ~11 KB of
//! power-of-five tables, 13.6 KB of the gzipped web package. Small inputs take Clinger's
//! exact fast path; the rest start from an approximation and are corrected by comparing the
//! exact decimal value with the halfway points next to the candidate, in big integers.

/// Significant digits kept: rounding never needs more than 768, so past 800 a dropped
/// non-zero tail is replaced by one sticky digit (the value stays strictly between the same
/// halfway points).
const MAX_DIGITS: usize = 800;

/// Parses a JSON number's text (grammar already checked). `None` when it is out of `f64`'s
/// range (rounds to infinity).
pub(super) fn parse(text: &str) -> Option<f64> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exp_part) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // Exponent, saturated far outside the range that matters.
    let mut exp: i64 = 0;
    if let Some(e) = exp_part {
        let (eneg, digits) = match e.as_bytes().first() {
            Some(b'-') => (true, &e[1..]),
            Some(b'+') => (false, &e[1..]),
            _ => (false, e),
        };
        for c in digits.bytes() {
            exp = (exp * 10 + i64::from(c - b'0')).min(1_000_000);
        }
        if eneg {
            exp = -exp;
        }
    }
    // Significant digits (leading zeros dropped), and the decimal exponent of the last one.
    let mut digits: Vec<u8> = Vec::new();
    let mut sticky = false;
    let mut point_shift: i64 = 0;
    for (i, c) in int.bytes().chain(frac.bytes()).enumerate() {
        let d = c - b'0';
        if i >= int.len() {
            point_shift -= 1;
        }
        if digits.is_empty() && d == 0 {
            continue;
        }
        if digits.len() < MAX_DIGITS {
            digits.push(d);
        } else {
            sticky |= d != 0;
            point_shift += 1;
        }
    }
    if sticky {
        digits.push(1);
        point_shift -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
        point_shift += 1;
    }
    let sign = if neg { -1.0 } else { 1.0 };
    if digits.is_empty() {
        return Some(sign * 0.0);
    }
    let e10 = exp + point_shift; // value = digits × 10^e10
    let n = digits.len() as i64;
    if n + e10 > 310 {
        return None;
    }
    if n + e10 < -330 {
        return Some(sign * 0.0);
    }
    let e10 = e10 as i32; // within ±1200 here
                          // Clinger's fast path: both factors exact, one rounding.
    if n <= 15 && e10.abs() <= 22 {
        let m = digits.iter().fold(0u64, |m, &d| m * 10 + u64::from(d)) as f64;
        let p = (0..e10.abs()).fold(1.0f64, |p, _| p * 10.0);
        return Some(sign * if e10 >= 0 { m * p } else { m / p });
    }
    // Approximation from the first 19 digits, then exact correction.
    let lead = digits.len().min(19);
    let w = digits[..lead]
        .iter()
        .fold(0u64, |m, &d| m * 10 + u64::from(d)) as f64;
    let e = e10 + (digits.len() - lead) as i32;
    let mut z = w * 10f64.powi(e / 2) * 10f64.powi(e - e / 2);
    if !z.is_finite() {
        z = f64::MAX;
    }
    let big = Big::from_digits(&digits);
    for _ in 0..4096 {
        match step(&big, e10, z) {
            Step::Done(v) => return v.map(|v| sign * v),
            Step::Move(next) => z = next,
        }
    }
    // Unreachable with the approximation above (a few ulps off at most).
    Some(sign * z)
}

enum Step {
    /// The correctly rounded value (`None`: rounds to infinity).
    Done(Option<f64>),
    /// Try this candidate instead.
    Move(f64),
}

/// Compares the exact value `big × 10^e10` with the halfway points around `z` (positive,
/// finite) and either settles or moves one step.
fn step(big: &Big, e10: i32, z: f64) -> Step {
    let bits = z.to_bits();
    let (exp_bits, frac) = ((bits >> 52) as i32, bits & ((1 << 52) - 1));
    let (m, q) = if exp_bits == 0 {
        (frac, -1074)
    } else {
        (frac | (1 << 52), exp_bits - 1075)
    };
    // Upper halfway point: (2m + 1) × 2^(q-1).
    match cmp_scaled(big, e10, 2 * m + 1, q - 1) {
        std::cmp::Ordering::Greater => {
            let up = f64::from_bits(bits + 1);
            return if up.is_finite() {
                Step::Move(up)
            } else {
                Step::Done(None)
            };
        }
        std::cmp::Ordering::Equal => {
            // A tie: the even mantissa wins.
            let up = f64::from_bits(bits + 1);
            return Step::Done(if m % 2 == 0 {
                Some(z)
            } else if up.is_finite() {
                Some(up)
            } else {
                None
            });
        }
        std::cmp::Ordering::Less => {}
    }
    if m == 0 {
        return Step::Done(Some(0.0));
    }
    // Lower halfway point; below a power of two the gap to the predecessor is half as wide.
    let (lx, lq) = if frac == 0 && exp_bits > 1 {
        (4 * m - 1, q - 2)
    } else {
        (2 * m - 1, q - 1)
    };
    match cmp_scaled(big, e10, lx, lq) {
        std::cmp::Ordering::Less => Step::Move(f64::from_bits(bits - 1)),
        std::cmp::Ordering::Equal => Step::Done(Some(if m % 2 == 0 {
            z
        } else {
            f64::from_bits(bits - 1)
        })),
        std::cmp::Ordering::Greater => Step::Done(Some(z)),
    }
}

/// `big × 10^e10` compared with `x × 2^p`, exactly.
fn cmp_scaled(big: &Big, e10: i32, x: u64, p: i32) -> std::cmp::Ordering {
    let mut left = big.clone();
    let mut right = Big::from_u64(x);
    // 10^e = 5^e × 2^e: the fives go to the side they multiply, the twos are balanced.
    if e10 >= 0 {
        left.mul_pow5(e10 as u32);
    } else {
        right.mul_pow5(e10.unsigned_abs());
    }
    let base = e10.min(p);
    left.shl((e10 - base) as u32);
    right.shl((p - base) as u32);
    left.cmp(&right)
}

/// An unsigned big integer, little-endian 32-bit limbs, no leading zero limbs.
#[derive(Clone, PartialEq, Eq)]
struct Big(Vec<u32>);

impl Big {
    fn from_u64(v: u64) -> Self {
        let mut b = Big(vec![v as u32, (v >> 32) as u32]);
        b.trim();
        b
    }

    fn from_digits(digits: &[u8]) -> Self {
        let mut b = Big(Vec::new());
        // Nine digits at a time.
        for chunk in digits.chunks(9) {
            let v = chunk.iter().fold(0u32, |v, &d| v * 10 + u32::from(d));
            b.mul_add(10u32.pow(chunk.len() as u32), v);
        }
        b
    }

    fn trim(&mut self) {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
    }

    /// `self = self × m + a`.
    fn mul_add(&mut self, m: u32, a: u32) {
        let mut carry = u64::from(a);
        for limb in &mut self.0 {
            let v = u64::from(*limb) * u64::from(m) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
    }

    fn mul_pow5(&mut self, mut n: u32) {
        // 5^13 is the largest power of five below 2^32.
        while n > 0 {
            let k = n.min(13);
            self.mul_add(5u32.pow(k), 0);
            n -= k;
        }
    }

    fn shl(&mut self, n: u32) {
        let (limbs, bits) = ((n / 32) as usize, n % 32);
        if bits > 0 {
            let mut carry = 0u32;
            for limb in &mut self.0 {
                let v = (*limb << bits) | carry;
                carry = *limb >> (32 - bits);
                *limb = v;
            }
            if carry > 0 {
                self.0.push(carry);
            }
        }
        if limbs > 0 && !self.0.is_empty() {
            self.0.splice(0..0, std::iter::repeat_n(0, limbs));
        }
    }
}

impl PartialOrd for Big {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Big {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.iter().rev().cmp(other.0.iter().rev()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    fn check(t: &str) {
        let want: f64 = t.parse().unwrap();
        let got = super::parse(t);
        if want.is_finite() {
            assert_eq!(got.map(f64::to_bits), Some(want.to_bits()), "{t}");
        } else {
            assert_eq!(got, None, "{t}");
        }
    }

    #[test]
    fn hard_cases_match_core() {
        for t in [
            "0",
            "-0",
            "0.0",
            "1",
            "-1.5",
            "0.1",
            "0.3",
            "1e23",
            "8.98846567431158e307",
            "2.2250738585072011e-308",
            "2.2250738585072012e-308",
            "2.2250738585072014e-308",
            "4.9406564584124654e-324",
            "2.4703282292062327e-324",
            "2.4703282292062328e-324",
            "5e-324",
            "1e-400",
            "1.7976931348623157e308",
            "1.7976931348623158e308",
            "1.7976931348623159e308",
            "1e309",
            "9007199254740993",
            "9007199254740995",
            "18446744073709551616",
            "123456789012345678901234567890",
            "7.2057594037927933e16",
            "1.00000000000000011102230246251565404236316680908203125",
            "1.00000000000000011102230246251565404236316680908203124",
            "1.00000000000000011102230246251565404236316680908203126",
            "4.4501477170144023e-308",
            "0.000000000000000000000000000000000001e36",
            "100000000000000000000000e-23",
            "3.0517578125e-05",
            "1e22",
            "1e-22",
            "123456789012345.6",
            "0.000001",
            "1e1000000",
            "1e-1000000",
        ] {
            check(t);
        }
        // A long mantissa (past the 800 kept digits) with a tail that decides the rounding.
        let long = format!(
            "1.00000000000000011102230246251565404236316680908203125{}1",
            "0".repeat(900)
        );
        check(&long);
        let long = format!("9007199254740993{}e-{}", "0".repeat(1000), 1000);
        check(&long);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn random_doubles_round_trip(bits in any::<u64>(), digits in 1usize..40) {
            let f = f64::from_bits(bits);
            prop_assume!(f.is_finite());
            // Shortest form, and a longer decimal that lands near halfway points.
            check(&format!("{f:e}"));
            check(&format!("{f:.digits$e}"));
        }

        #[test]
        fn random_decimal_texts(t in "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?") {
            check(&t);
        }
    }
}
