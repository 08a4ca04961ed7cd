//! Quantities as people write them: memory sizes, CPU and GPU counts and durations. Parsing takes what people type
//! (the command line, configuration files) and every error says what was wrong and shows a value that would be
//! accepted; formatting writes amounts back the same way.
//!
//! A crate of its own because the scheduler core (whose reasons are sentences with amounts in them), the server, the
//! agent and the command line all need one definition of these forms, while the core must know nothing of the wire
//! and the wire crate nothing of the core. It must stay free of every other Ferry crate and of I/O.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct UnitError(pub String);

/// Parses a memory size such as `8GiB`, `512MiB`, `1.5G`, `800M` or a plain byte count. Decimal (`GB`) and binary
/// (`GiB`) units are both accepted; `G`, `M`, `K` alone are taken as binary, as Slurm and Kubernetes users expect.
pub fn parse_memory(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || {
        UnitError(format!("`{text}` is not a memory size; write a number and a unit, such as 8GiB, 512MiB or 1.5GB"))
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "ki" => 1 << 10,
        "m" | "mib" | "mi" => 1 << 20,
        "g" | "gib" | "gi" => 1 << 30,
        "t" | "tib" | "ti" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(UnitError(format!("`{text}` is larger than any machine's memory")));
    }
    if bytes < 1.0 {
        return Err(UnitError(format!("`{text}` is zero; ask for a positive amount of memory, such as 512MiB")));
    }
    Ok(bytes as u64)
}

/// Parses a CPU count such as `2`, `0.5` or `250m` (thousandths, as Kubernetes writes them) into thousandths.
pub fn parse_cpus(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let bad = || UnitError(format!("`{text}` is not a CPU count; write a positive number such as 2, 0.5 or 250m"));
    let millis = if let Some(m) = t.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let v: f64 = t.parse().map_err(|_| bad())?;
        if !v.is_finite() || !(0.0..=1e9).contains(&v) {
            return Err(bad());
        }
        (v * 1000.0).round() as u64
    };
    if millis == 0 {
        return Err(UnitError(format!("`{text}` is zero CPUs; every job needs some CPU, such as 0.1 or 1")));
    }
    Ok(millis)
}

/// Parses a GPU request: a whole number of GPUs (`2`), or a share of one GPU below 1 (`0.5`, `0.25`), returned as
/// (whole GPUs, share in thousandths).
pub fn parse_gpus(text: &str) -> Result<(u32, u32), UnitError> {
    let t = text.trim();
    let bad = || {
        UnitError(format!(
            "`{text}` is not a GPU count; write a whole number such as 2, or a share of one GPU such as 0.5"
        ))
    };
    if let Ok(whole) = t.parse::<u32>() {
        return Ok((whole, 0));
    }
    let share: f64 = t.parse().map_err(|_| bad())?;
    if !(share > 0.0 && share < 1.0) {
        return Err(UnitError(format!(
            "`{text}` GPUs: ask for whole GPUs (1, 2, ...) or a share of one GPU between 0 and 1, such as 0.5"
        )));
    }
    let milli = (share * 1000.0).round() as u32;
    if milli == 0 || milli >= 1000 {
        return Err(bad());
    }
    Ok((0, milli))
}

/// Parses a duration such as `90s`, `30m`, `2h`, `1h30m` or `1d`.
pub fn parse_duration_s(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let bad =
        || UnitError(format!("`{text}` is not a duration; write a number and a unit, such as 90s, 30m, 2h or 1h30m"));
    if t.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = value.checked_mul(scale).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
    }
    if total == 0 {
        return Err(UnitError(format!("`{text}` is zero; give a positive duration such as 30m")));
    }
    Ok(total)
}

/// Formats a byte count with a binary unit, as people write memory sizes: `512MiB`, `8GiB`, `1.5TiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 || unit == 0 {
        format!("{}{}", value as u64, UNITS[unit])
    } else {
        format!("{:.1}{}", value, UNITS[unit])
    }
}

/// Formats thousandths of a CPU as a decimal core count: `2`, `0.5`, `1.25`.
pub fn format_cpus(cpu_millis: u64) -> String {
    let whole = cpu_millis / 1000;
    let frac = cpu_millis % 1000;
    if frac == 0 {
        whole.to_string()
    } else {
        let digits = format!("{frac:03}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_people_write() {
        assert_eq!(parse_memory("8GiB"), Ok(8 << 30));
        assert_eq!(parse_memory("512M"), Ok(512 << 20));
        assert_eq!(parse_memory("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_memory("1024"), Ok(1024));
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert_eq!(parse_cpus("250m"), Ok(250));
        assert_eq!(parse_duration_s("1h30m"), Ok(5400));
        assert_eq!(parse_duration_s("2h"), Ok(7200));
        assert_eq!(parse_gpus("2"), Ok((2, 0)));
        assert_eq!(parse_gpus("0.25"), Ok((0, 250)));
        assert!(parse_gpus("1.5").unwrap_err().to_string().contains("share of one GPU between 0 and 1"));
        assert!(parse_gpus("two").is_err());
    }

    #[test]
    fn formats_units_as_people_write_them() {
        assert_eq!(format_bytes(0), "0B");
        assert_eq!(format_bytes(512 * 1024 * 1024), "512MiB");
        assert_eq!(format_bytes(8 << 30), "8GiB");
        assert_eq!(format_bytes(3 << 29), "1.5GiB");
        assert_eq!(format_cpus(2000), "2");
        assert_eq!(format_cpus(500), "0.5");
        assert_eq!(format_cpus(1250), "1.25");
    }

    #[test]
    fn rejects_bad_units_with_a_hint() {
        let e = parse_memory("8XB").unwrap_err().to_string();
        assert_eq!(e, "`8XB` is not a memory size; write a number and a unit, such as 8GiB, 512MiB or 1.5GB");
        assert!(parse_memory("0GiB").unwrap_err().to_string().contains("is zero"));
        assert!(parse_memory("-1G").is_err());
        assert!(parse_cpus("-2").is_err());
        assert!(parse_cpus("0").unwrap_err().to_string().contains("zero CPUs"));
        assert!(parse_cpus("two").is_err());
        assert!(parse_duration_s("2 hours").is_err());
        assert!(parse_duration_s("h").is_err());
    }
}
