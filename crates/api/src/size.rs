//! Sizes as people write them.

/// Parses a memory size as given by a person: a number with an optional unit
/// (`K`, `M`, `G`, `T`, optionally followed by `i`/`iB`/`B`; binary multiples).
/// A bare number means MiB, as with QEMU's `-m`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "'{text}' is not a size: expected a number with an optional unit, like 512M or 2G"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is too large a number"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mi" | "mib" | "mb" => 20,
        "b" => 0,
        "k" | "ki" | "kib" | "kb" => 10,
        "g" | "gi" | "gib" | "gb" => 30,
        "t" | "ti" | "tib" | "tb" => 40,
        other => {
            return Err(format!(
                "'{text}': unknown unit '{other}' (use K, M, G or T; a bare number means MiB)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn sizes_parse_like_people_write_them() {
        assert_eq!(parse_size("512"), Ok(512 * MIB));
        assert_eq!(parse_size("512M"), Ok(512 * MIB));
        assert_eq!(parse_size("2G"), Ok(2 * GIB));
        assert_eq!(parse_size("2GiB"), Ok(2 * GIB));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("12X")
            .expect_err("bad unit")
            .contains("unknown unit"));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999T")
            .expect_err("overflow")
            .contains("too large"));
    }
}
