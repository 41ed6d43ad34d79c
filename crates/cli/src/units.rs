//! Durations and sizes as options take them: `30s`, `5m`, `2h`, `1d`;
//! `64KiB`, `1MiB`, `1GiB`; and the plain integers (seconds, bytes) the
//! options took before.

/// Seconds, from `N`, `Ns`, `Nm`, `Nh` or `Nd`.
pub(crate) fn secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 30, 30s, 5m, 2h, 1d)"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{text:?} is too long"))
}

/// Seconds as a signed count: [`secs`], or a plain negative integer (which
/// the option then refuses by name).
pub(crate) fn signed_secs(text: &str) -> Result<i64, String> {
    if let Ok(n) = text.trim().parse::<i64>() {
        return Ok(n);
    }
    i64::try_from(secs(text)?).map_err(|_| format!("{text:?} is too long"))
}

/// Bytes, from `N`, `NB`, `NKiB`, `NMiB` or `NGiB`.
pub(crate) fn bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{text:?}: the unit is B, KiB, MiB or GiB")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"))
}

/// [`bytes`] as a `usize`.
pub(crate) fn size(text: &str) -> Result<usize, String> {
    usize::try_from(bytes(text)?).map_err(|_| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_integers_and_new_units_both_parse() {
        assert_eq!(secs("30"), Ok(30));
        assert_eq!(secs("30s"), Ok(30));
        assert_eq!(secs("5m"), Ok(300));
        assert_eq!(secs("2h"), Ok(7200));
        assert_eq!(secs("1d"), Ok(86_400));
        assert!(secs("1w").is_err() && secs("").is_err() && secs("-1").is_err() && secs("s").is_err());
        assert!(secs("99999999999999999999d").is_err());
        assert_eq!(signed_secs("-1"), Ok(-1));
        assert_eq!(signed_secs("10m"), Ok(600));
        assert_eq!(bytes("65536"), Ok(65_536));
        assert_eq!(bytes("64KiB"), Ok(65_536));
        assert_eq!(size("1MiB"), Ok(1 << 20));
        assert!(bytes("64kb").is_err() && bytes("1.5MiB").is_err());
    }
}
