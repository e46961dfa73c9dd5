//! Sizes as qemu-img reads and prints them: `1.5G`, `512b`, `0x1000`;
//! `1.5 GiB`, `977 KiB`.

use std::fmt;

/// The largest size accepted (2^63 - 1, what the block layer can address).
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// Why a size did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Not a size at all.
    Invalid(String),
    /// A size above [`MAX_SIZE`].
    TooLarge(String),
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(s) => write!(
                f,
                "invalid size '{s}': give a number of bytes with an optional suffix k, M, G, T, P or E (powers of 1024), for example 512M or 1.5G"
            ),
            Self::TooLarge(s) => write!(f, "size '{s}' is too large: the most is {MAX_SIZE} bytes"),
        }
    }
}

impl std::error::Error for SizeError {}

fn multiplier(c: char) -> Option<u64> {
    Some(match c {
        'b' | 'B' => 1,
        'k' | 'K' => 1 << 10,
        'm' | 'M' => 1 << 20,
        'g' | 'G' => 1 << 30,
        't' | 'T' => 1 << 40,
        'p' | 'P' => 1 << 50,
        'e' | 'E' => 1 << 60,
        _ => return None,
    })
}

/// Parses a size: a decimal (with an optional fraction) or `0x` number and
/// an optional binary suffix (`b`, `k`, `M`, `G`, `T`, `P`, `E`, either
/// case). Fractions of a byte are refused; fractional multiples round to
/// the nearest byte.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let invalid = || SizeError::Invalid(input.to_owned());
    let s = input.trim_start();
    let s = s.strip_prefix('+').unwrap_or(s);
    let (body, mult) = match s.chars().last().and_then(multiplier) {
        Some(m) => (&s[..s.len() - 1], m),
        None => (s, 1),
    };
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let v = u64::from_str_radix(hex, 16).map_err(|_| SizeError::TooLarge(input.to_owned()))?;
        return v
            .checked_mul(mult)
            .filter(|&v| v <= MAX_SIZE)
            .ok_or_else(|| SizeError::TooLarge(input.to_owned()));
    }
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.is_none_or(|f| f.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid());
    }
    let frac_zero = frac.is_none_or(|f| f.bytes().all(|b| b == b'0'));
    if frac_zero {
        let int = int.trim_start_matches('0');
        let v: u64 = if int.is_empty() {
            0
        } else {
            int.parse()
                .map_err(|_| SizeError::TooLarge(input.to_owned()))?
        };
        return v
            .checked_mul(mult)
            .filter(|&v| v <= MAX_SIZE)
            .ok_or_else(|| SizeError::TooLarge(input.to_owned()));
    }
    if mult == 1 {
        return Err(invalid());
    }
    let number: f64 = body.parse().map_err(|_| invalid())?;
    let v = (number * mult as f64).round();
    // MAX_SIZE as f64 rounds up to 2^63, which is already too large.
    if !(0.0..MAX_SIZE as f64).contains(&v) {
        return Err(SizeError::TooLarge(input.to_owned()));
    }
    Ok(v as u64)
}

/// C's `%.3g`: three significant digits, trailing zeros dropped, exponent
/// form (`1e+03`) when the rounded value needs it.
fn g3(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{v:.2e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s.to_owned()
        }
    };
    if !(-4..3).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim(mantissa), exp.abs());
    }
    let decimals = (2 - exp) as usize;
    trim(&format!("{v:.decimals$}"))
}

/// A byte count as qemu-img prints it: `0 B`, `512 B`, `0.977 KiB`,
/// `1.5 GiB` (units of 1024, switching at 1000 of the smaller unit).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut i = 0;
    while i + 1 < UNITS.len() && bytes as f64 >= 1000.0 * (1u64 << (10 * i)) as f64 {
        i += 1;
    }
    let v = bytes as f64 / (1u64 << (10 * i)) as f64;
    format!("{} {}", g3(v), UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_qemu_img() {
        let ok = [
            ("0", 0),
            ("1", 1),
            ("512b", 512),
            ("1B", 1),
            ("2.00b", 2),
            ("4096.0", 4096),
            ("1k", 1024),
            ("1.5k", 1536),
            ("1.1k", 1126),
            ("1.9999k", 2048),
            ("1.00048828125k", 1025),
            ("1.00048828124k", 1024),
            ("1.k", 1024),
            ("0.5k", 512),
            ("012", 12),
            ("010k", 10240),
            ("+5", 5),
            (" 1k", 1024),
            ("0x100", 256),
            ("0X10", 16),
            ("0x10k", 16384),
            ("1m", 1 << 20),
            ("1G", 1 << 30),
            ("2T", 2 << 40),
            ("1.5E", 1_729_382_256_910_270_464),
            ("9223372036854775807", MAX_SIZE),
            ("0x7fffffffffffffff", MAX_SIZE),
        ];
        for (s, v) in ok {
            assert_eq!(parse_size(s), Ok(v), "{s}");
        }
        for s in [
            "1kb", "1KiB", "abc", "1x", "", "1.5", "0.5", "1.5b", "1e3", ".5k", "1k5", "1 k",
            "1k ", "1,5k", "1_000", "0x", "0xk", "0x1.8k", "-1",
        ] {
            assert!(matches!(parse_size(s), Err(SizeError::Invalid(_))), "{s}");
        }
        for s in ["8E", "9223372036854775808", "16E", "0xffffffffffffffff"] {
            assert!(matches!(parse_size(s), Err(SizeError::TooLarge(_))), "{s}");
        }
    }

    #[test]
    fn human_sizes_match_qemu_img() {
        let cases = [
            (0, "0 B"),
            (1, "1 B"),
            (999, "999 B"),
            (1000, "0.977 KiB"),
            (1023, "0.999 KiB"),
            (1024, "1 KiB"),
            (1535, "1.5 KiB"),
            (5000, "4.88 KiB"),
            (10239, "10 KiB"),
            (10752, "10.5 KiB"),
            (999_999, "977 KiB"),
            (1_023_487, "999 KiB"),
            (1_023_488, "1e+03 KiB"),
            (1_024_000, "0.977 MiB"),
            (1_048_575, "1 MiB"),
            (12_345_678, "11.8 MiB"),
            (1_048_576_000, "0.977 GiB"),
            (1_073_217_536, "1 GiB"),
            (1_664_300_032, "1.55 GiB"),
            (107_911_053_312, "100 GiB"),
            (1_073_204_953_088, "1e+03 GiB"),
            (17_042_430_230_528, "15.5 TiB"),
            (1 << 60, "1 EiB"),
            (u64::MAX, "16 EiB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(human(bytes), text, "{bytes}");
        }
    }
}
