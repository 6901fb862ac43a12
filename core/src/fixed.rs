//! Fixed-point money: [`Price`], [`Quantity`] and [`Money`] as scaled `i64` integers.
//!
//! Every value shares one scale per kind, so two prices of different instruments
//! compare and subtract without conversion; the per-instrument precision (how many
//! decimals the venue uses) lives in the [`crate::instrument::Instrument`] and is used
//! for validation and display. Parsing is exact: the decimal string is read digit by
//! digit, never through `f64`.

// rkyv's derive makes a resolver type per newtype, named from the macro's tokens; it has no
// Debug and needs none.
#![allow(missing_debug_implementations)]

use std::fmt;

/// Decimals carried by a [`Price`] (`raw = value * 10^9`; range ±9.2e9).
pub const PRICE_DECIMALS: u32 = 9;
/// Decimals carried by a [`Quantity`] (`raw = value * 10^8`; range ±9.2e10), Binance's own.
pub const QTY_DECIMALS: u32 = 8;
/// Decimals carried by [`Money`] (`raw = value * 10^9`; range ±9.2e9 quote units).
pub const MONEY_DECIMALS: u32 = 9;

/// `10^PRICE_DECIMALS`.
pub const PRICE_SCALE: i64 = 1_000_000_000;
/// `10^QTY_DECIMALS`.
pub const QTY_SCALE: i64 = 100_000_000;
/// `10^MONEY_DECIMALS`.
pub const MONEY_SCALE: i64 = 1_000_000_000;

/// Why a decimal string was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// The string was empty.
    #[error("empty decimal string")]
    Empty,
    /// A character other than digits, one `.` and a leading `-`.
    #[error("invalid character {0:?} in decimal string")]
    InvalidChar(char),
    /// No digits on one side of the point (`"."`, `"1."`, `".5"`).
    #[error("malformed decimal: digits are required on both sides of '.'")]
    Malformed,
    /// More significant fractional digits than the type can carry.
    #[error("more than {0} significant decimals")]
    TooPrecise(u32),
    /// The value does not fit the fixed-point range.
    #[error("value out of range")]
    Overflow,
    /// A negative value where only non-negative values make sense.
    #[error("negative value not allowed")]
    Negative,
    /// Zero or negative where only a positive value makes sense (a price).
    #[error("value must be positive")]
    NotPositive,
}

/// Parses `s` as a decimal with `decimals` fractional digits into a scaled `i64`.
///
/// Exact: extra fractional digits are accepted only when they are zeros.
pub fn parse_scaled(s: &str, decimals: u32) -> Result<i64, DecimalError> {
    parse_scaled_bytes(s.as_bytes(), decimals)
}

/// `10^n` for `n <= 18`.
const POW10: [i64; 19] = {
    let mut t = [1i64; 19];
    let mut i = 1;
    while i < 19 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// [`parse_scaled`] over raw bytes (exchange frames are bytes; no UTF-8 check needed).
///
/// The common shape — up to 18 integer digits, an optional fraction — takes one pass with no
/// overflow checks per digit; anything else goes the careful way.
#[inline]
pub fn parse_scaled_bytes(bytes: &[u8], decimals: u32) -> Result<i64, DecimalError> {
    let (negative, digits) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    let n = digits.len();
    let mut i = 0;
    let mut int_part: i64 = 0;
    while i < n && digits[i].is_ascii_digit() {
        if i == 18 {
            // 19 digits may not fit: the careful way says so exactly.
            return parse_scaled_careful(bytes, decimals);
        }
        int_part = int_part * 10 + i64::from(digits[i] - b'0');
        i += 1;
    }
    if i == 0 || decimals > 18 {
        return parse_scaled_careful(bytes, decimals);
    }
    let mut frac: i64 = 0;
    let mut frac_digits: u32 = 0;
    if i < n {
        if digits[i] != b'.' {
            return Err(DecimalError::InvalidChar(char::from(digits[i])));
        }
        i += 1;
        if i == n {
            return Err(DecimalError::Malformed);
        }
        while i < n {
            let b = digits[i];
            if !b.is_ascii_digit() {
                return Err(DecimalError::InvalidChar(char::from(b)));
            }
            if frac_digits < decimals {
                frac = frac * 10 + i64::from(b - b'0');
                frac_digits += 1;
            } else if b != b'0' {
                return Err(DecimalError::TooPrecise(decimals));
            }
            i += 1;
        }
    }
    let frac_scaled = frac * POW10[(decimals - frac_digits) as usize];
    let magnitude =
        int_part.checked_mul(POW10[decimals as usize]).and_then(|v| v.checked_add(frac_scaled)).ok_or(DecimalError::Overflow)?;
    Ok(if negative { -magnitude } else { magnitude })
}

/// The careful parse: every digit checked for overflow; the reference for the fast path.
fn parse_scaled_careful(bytes: &[u8], decimals: u32) -> Result<i64, DecimalError> {
    if bytes.is_empty() {
        return Err(DecimalError::Empty);
    }
    let (negative, digits) = match bytes[0] {
        b'-' => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    if digits.is_empty() {
        return Err(DecimalError::Malformed);
    }
    let mut int_part: i64 = 0;
    let mut frac: i64 = 0;
    let mut frac_digits: u32 = 0;
    let mut int_digits = 0usize;
    let mut seen_point = false;
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                let d = i64::from(b - b'0');
                if seen_point {
                    if frac_digits < decimals {
                        frac = frac * 10 + d;
                        frac_digits += 1;
                    } else if d != 0 {
                        return Err(DecimalError::TooPrecise(decimals));
                    }
                } else {
                    int_digits += 1;
                    int_part = int_part.checked_mul(10).and_then(|v| v.checked_add(d)).ok_or(DecimalError::Overflow)?;
                }
            }
            b'.' if !seen_point => seen_point = true,
            other => return Err(DecimalError::InvalidChar(char::from(other))),
        }
    }
    if int_digits == 0 || (seen_point && digits.last() == Some(&b'.')) {
        return Err(DecimalError::Malformed);
    }
    let scale = 10i64.pow(decimals);
    let frac_scaled = frac * 10i64.pow(decimals - frac_digits);
    let magnitude = int_part.checked_mul(scale).and_then(|v| v.checked_add(frac_scaled)).ok_or(DecimalError::Overflow)?;
    Ok(if negative { -magnitude } else { magnitude })
}

/// Writes `raw / 10^decimals` with exactly `shown` decimals (truncating extra digits).
fn fmt_scaled(f: &mut fmt::Formatter<'_>, raw: i64, decimals: u32, shown: Option<u32>) -> fmt::Result {
    let scale = 10u64.pow(decimals);
    let sign = if raw < 0 { "-" } else { "" };
    let abs = raw.unsigned_abs();
    let int = abs / scale;
    let frac = abs % scale;
    let shown = shown.unwrap_or(f.precision().map_or(decimals, |p| p as u32)).min(decimals);
    if shown == 0 {
        return write!(f, "{sign}{int}");
    }
    let frac = frac / 10u64.pow(decimals - shown);
    write!(f, "{sign}{int}.{frac:0width$}", width = shown as usize)
}

macro_rules! fixed_type {
    ($(#[$doc:meta])* $name:ident, $decimals:expr, $scale:expr) => {
        $(#[$doc])*
        #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        #[rkyv(derive(Debug))]
        #[repr(transparent)]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name {
            /// The value times the type's scale.
            pub raw: i64,
        }

        impl $name {
            /// Zero.
            pub const ZERO: Self = Self { raw: 0 };
            /// Decimals carried by the raw value.
            pub const DECIMALS: u32 = $decimals;
            /// `10^DECIMALS`.
            pub const SCALE: i64 = $scale;

            /// Wraps a raw scaled value.
            #[inline]
            pub const fn from_raw(raw: i64) -> Self {
                Self { raw }
            }

            /// A whole number of units.
            #[inline]
            pub const fn from_units(units: i64) -> Self {
                Self { raw: units * $scale }
            }

            /// Parses a decimal string such as `"61837.63000000"`, exactly.
            pub fn parse(s: &str) -> Result<Self, DecimalError> {
                parse_scaled(s, $decimals).map(Self::from_raw)
            }

            /// Parses decimal text given as bytes, exactly.
            #[inline]
            pub fn parse_bytes(s: &[u8]) -> Result<Self, DecimalError> {
                parse_scaled_bytes(s, $decimals).map(Self::from_raw)
            }

            /// True when zero.
            #[inline]
            pub const fn is_zero(self) -> bool {
                self.raw == 0
            }

            /// Checked addition.
            #[inline]
            pub fn checked_add(self, other: Self) -> Option<Self> {
                self.raw.checked_add(other.raw).map(Self::from_raw)
            }

            /// Checked subtraction.
            #[inline]
            pub fn checked_sub(self, other: Self) -> Option<Self> {
                self.raw.checked_sub(other.raw).map(Self::from_raw)
            }

            /// Absolute value.
            #[inline]
            pub const fn abs(self) -> Self {
                Self { raw: self.raw.abs() }
            }

            /// A lossy `f64` for display, charts and statistics; never for money arithmetic.
            #[inline]
            pub fn to_f64_lossy(self) -> f64 {
                self.raw as f64 / $scale as f64
            }
        }

        impl std::ops::Add for $name {
            type Output = Self;
            #[inline]
            fn add(self, other: Self) -> Self {
                Self { raw: self.raw + other.raw }
            }
        }

        impl std::ops::Sub for $name {
            type Output = Self;
            #[inline]
            fn sub(self, other: Self) -> Self {
                Self { raw: self.raw - other.raw }
            }
        }

        impl std::ops::Neg for $name {
            type Output = Self;
            #[inline]
            fn neg(self) -> Self {
                Self { raw: -self.raw }
            }
        }

        impl std::ops::AddAssign for $name {
            #[inline]
            fn add_assign(&mut self, other: Self) {
                self.raw += other.raw;
            }
        }

        impl std::ops::SubAssign for $name {
            #[inline]
            fn sub_assign(&mut self, other: Self) {
                self.raw -= other.raw;
            }
        }

        impl std::str::FromStr for $name {
            type Err = DecimalError;
            fn from_str(s: &str) -> Result<Self, DecimalError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt_scaled(f, self.raw, $decimals, None)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                fmt_scaled(f, self.raw, $decimals, None)?;
                write!(f, ")")
            }
        }
    };
}

fixed_type!(
    /// A price, `raw = value * 10^9`.
    Price,
    PRICE_DECIMALS,
    PRICE_SCALE
);
fixed_type!(
    /// A quantity in base units, `raw = value * 10^8`; signed so it can hold positions.
    Quantity,
    QTY_DECIMALS,
    QTY_SCALE
);
fixed_type!(
    /// An amount of quote currency (USD(T)): notionals, PnL, fees, margin; `raw = value * 10^9`.
    Money,
    MONEY_DECIMALS,
    MONEY_SCALE
);

impl Quantity {
    /// Parses a non-negative quantity (sizes on the wire are never negative).
    pub fn parse_unsigned(s: &str) -> Result<Self, DecimalError> {
        Self::parse_unsigned_bytes(s.as_bytes())
    }

    /// [`parse_unsigned`](Self::parse_unsigned) over bytes.
    #[inline]
    pub fn parse_unsigned_bytes(s: &[u8]) -> Result<Self, DecimalError> {
        let q = Self::parse_bytes(s)?;
        if q.raw < 0 {
            return Err(DecimalError::Negative);
        }
        Ok(q)
    }

    /// The smaller of two quantities.
    #[inline]
    pub fn min(self, other: Self) -> Self {
        if self.raw <= other.raw {
            self
        } else {
            other
        }
    }
}

impl Price {
    /// Parses a price that must be positive (every price on the wire: a level, a quote, a
    /// trade). Text that is not an exact decimal in range (`NaN`, `inf`, `1e400`) is refused by
    /// the parse itself.
    #[inline]
    pub fn parse_positive_bytes(s: &[u8]) -> Result<Self, DecimalError> {
        let p = Self::parse_bytes(s)?;
        if p.raw <= 0 {
            return Err(DecimalError::NotPositive);
        }
        Ok(p)
    }

    /// Writes the price with `decimals` digits after the point.
    pub fn display_with(self, decimals: u32) -> impl fmt::Display {
        struct Shown(i64, u32);
        impl fmt::Display for Shown {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt_scaled(f, self.0, PRICE_DECIMALS, Some(self.1))
            }
        }
        Shown(self.raw, decimals)
    }
}

/// `price * qty` as [`Money`], exact up to the money scale (truncated toward zero),
/// `None` on overflow.
#[inline]
pub fn notional(price: Price, qty: Quantity) -> Option<Money> {
    // price.raw is 1e9-scaled, qty.raw 1e8-scaled: their product is 1e17-scaled; money wants 1e9.
    let wide = i128::from(price.raw) * i128::from(qty.raw);
    let magnitude = div_1e8(wide.unsigned_abs());
    let signed = if wide < 0 { -(magnitude as i128) } else { magnitude as i128 };
    i64::try_from(signed).ok().map(Money::from_raw)
}

/// `a / 10^8` rounded toward zero. A 128-bit division is a slow library call; since
/// `10^8 = 2^8 × 390_625`, products below 2^72 (every realistic notional) take a shift and
/// a 64-bit division by a constant instead.
#[inline]
fn div_1e8(a: u128) -> u128 {
    if a >> 72 == 0 {
        u128::from(((a >> 8) as u64) / 390_625)
    } else {
        a / 100_000_000
    }
}

/// `money * bps / 10_000`, truncated toward zero (fees and basis-point limits).
#[inline]
pub fn apply_bps(money: Money, bps: i64) -> Money {
    match money.raw.checked_mul(bps) {
        Some(p) => Money::from_raw(p / 10_000),
        None => Money::from_raw((i128::from(money.raw) * i128::from(bps) / 10_000) as i64),
    }
}

/// `a / b` of two money amounts as a ratio in basis points (0 when `b` is 0).
#[inline]
pub fn ratio_bps(a: Money, b: Money) -> i64 {
    if b.raw == 0 {
        return 0;
    }
    (i128::from(a.raw) * 10_000 / i128::from(b.raw)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exchange_strings_exactly() {
        let cases: &[(&str, i64)] = &[
            ("61837.63000000", 61_837_630_000_000),
            ("0.000", 0),
            ("0.00000001", 10),
            ("1", PRICE_SCALE),
            ("-2.5", -2_500_000_000),
            ("0.123456789", 123_456_789),
            ("0.1234567890000", 123_456_789),
        ];
        for &(s, raw) in cases {
            assert_eq!(Price::parse(s), Ok(Price::from_raw(raw)), "{s}");
        }
    }

    #[test]
    fn rejects_bad_strings_with_reason() {
        let cases: &[(&str, DecimalError)] = &[
            ("", DecimalError::Empty),
            ("-", DecimalError::Malformed),
            (".5", DecimalError::Malformed),
            ("1.", DecimalError::Malformed),
            ("1e5", DecimalError::InvalidChar('e')),
            ("1.2.3", DecimalError::InvalidChar('.')),
            (" 1", DecimalError::InvalidChar(' ')),
            ("NaN", DecimalError::InvalidChar('N')),
            ("0.0000000001", DecimalError::TooPrecise(9)),
            ("99999999999", DecimalError::Overflow),
        ];
        for &(s, err) in cases {
            assert_eq!(Price::parse(s), Err(err), "{s:?}");
        }
        assert_eq!(Quantity::parse_unsigned("-1"), Err(DecimalError::Negative));
        for (s, err) in [
            ("-1", DecimalError::NotPositive),
            ("0", DecimalError::NotPositive),
            ("-0.000000001", DecimalError::NotPositive),
            ("NaN", DecimalError::InvalidChar('N')),
            ("inf", DecimalError::InvalidChar('i')),
            ("1e400", DecimalError::InvalidChar('e')),
            ("99999999999", DecimalError::Overflow),
        ] {
            assert_eq!(Price::parse_positive_bytes(s.as_bytes()), Err(err), "{s:?}");
        }
        assert_eq!(Price::parse_positive_bytes(b"0.000000001"), Ok(Price::from_raw(1)));
        assert_eq!(Quantity::parse("0.000000001"), Err(DecimalError::TooPrecise(8)));
    }

    #[test]
    fn displays_round_trip() {
        assert_eq!(Price::parse("61837.63").unwrap().to_string(), "61837.630000000");
        assert_eq!(format!("{:.2}", Price::parse("61837.63").unwrap()), "61837.63");
        assert_eq!(Price::parse("-0.5").unwrap().display_with(1).to_string(), "-0.5");
        assert_eq!(Quantity::parse("0.001").unwrap().to_string(), "0.00100000");
    }

    #[test]
    fn notional_is_exact() {
        let p = Price::parse("61837.63").unwrap();
        let q = Quantity::parse("0.015").unwrap();
        assert_eq!(notional(p, q), Some(Money::parse("927.56445").unwrap()));
        assert_eq!(apply_bps(Money::from_units(1000), 10), Money::from_units(1));
        assert_eq!(ratio_bps(Money::from_units(85), Money::from_units(100)), 8_500);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn display_then_parse_is_identity(raw in -i64::MAX..=i64::MAX) {
                let p = Price::from_raw(raw);
                prop_assert_eq!(Price::parse(&p.to_string()), Ok(p));
                let q = Quantity::from_raw(raw);
                prop_assert_eq!(Quantity::parse(&q.to_string()), Ok(q));
            }

            #[test]
            fn fast_notional_equals_wide_division(p in any::<i64>(), q in any::<i64>()) {
                let wide = i128::from(p) * i128::from(q) / i128::from(QTY_SCALE);
                let expected = i64::try_from(wide).ok().map(Money::from_raw);
                prop_assert_eq!(notional(Price::from_raw(p), Quantity::from_raw(q)), expected);
                let small = (p % 100_000_000_000_000, q % 10_000_000_000);
                let wide = i128::from(small.0) * i128::from(small.1) / i128::from(QTY_SCALE);
                prop_assert_eq!(notional(Price::from_raw(small.0), Quantity::from_raw(small.1)), Some(Money::from_raw(wide as i64)));
            }

            #[test]
            fn fast_parse_agrees_with_the_careful_one(s in "-?[0-9]{0,21}(\\.[0-9]{0,12})?[0-9a.]?") {
                for decimals in [8u32, 9] {
                    prop_assert_eq!(parse_scaled_bytes(s.as_bytes(), decimals), parse_scaled_careful(s.as_bytes(), decimals), "{:?}", s);
                }
            }

            #[test]
            fn parse_never_panics(s in "\\PC{0,24}") {
                let _ = Price::parse(&s);
            }
        }
    }
}
