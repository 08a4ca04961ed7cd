//! Rendering for people: tables, ages and resource amounts.

use ferry_units::{format_bytes, format_cpus};

/// Prints rows as a table with left-aligned columns sized to their widest cell.
/// `1 node`, `3 nodes`: a count with its noun.
pub fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// "5s", "3m", "2h", "4d": how long ago or how long.
pub fn span(us: i64) -> String {
    let s = (us.max(0) / 1_000_000) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A precise duration for timelines: "12ms", "3.2s", "4m05s".
pub fn precise(us: i64) -> String {
    let us = us.max(0);
    if us < 1_000_000 {
        format!("{}ms", us / 1000)
    } else if us < 60_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else {
        span(us)
    }
}

/// A wall-clock time in UTC: "2026-11-29 17:39:08.123".
pub fn timestamp(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let millis = us.rem_euclid(1_000_000) / 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03}", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's well-known algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn cpus(millis: u64) -> String {
    format_cpus(millis)
}

/// A measured or sampled number for a table, the same way in every row: up to 6 significant digits, in scientific
/// notation (`3.27e-6`) when it is very small or very large, without trailing zeros.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".to_string()
        } else if v > 0.0 {
            "inf".to_string()
        } else {
            "-inf".to_string()
        };
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let magnitude = v.abs();
    if !(1e-3..1e6).contains(&magnitude) {
        let text = format!("{v:.5e}");
        let (mantissa, exponent) = text.split_once('e').expect("scientific notation has an exponent");
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exponent}");
    }
    let decimals = (5 - magnitude.log10().floor() as i32).clamp(0, 8) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

pub fn bytes(b: u64) -> String {
    format_bytes(b)
}

/// A command line as a shell would show it, shortened to `max` characters.
pub fn command(argv: &[String], max: usize) -> String {
    let joined = argv
        .iter()
        .map(|a| if a.is_empty() || a.contains(char::is_whitespace) { format!("'{a}'") } else { a.clone() })
        .collect::<Vec<_>>()
        .join(" ");
    if joined.chars().count() > max {
        let cut: String = joined.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_the_same_way_in_every_row() {
        let cases = [
            (3.27e-6, "3.27e-6"),
            (0.0000112563849988, "1.12564e-5"),
            (0.5, "0.5"),
            (0.123456789, "0.123457"),
            (12.5, "12.5"),
            (123456.0, "123456"),
            (2.5e7, "2.5e7"),
            (-0.00042, "-4.2e-4"),
            (0.0, "0"),
            (f64::NAN, "NaN"),
        ];
        for (value, expected) in cases {
            assert_eq!(number(value), expected, "{value}");
        }
    }

    #[test]
    fn renders_times_and_tables() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00.000");
        assert_eq!(timestamp(1_795_973_948_123_000), "2026-11-29 17:39:08.123");
        assert_eq!(span(3_725_000_000), "1h02m");
        assert_eq!(precise(12_345), "12ms");
        assert_eq!(table(&["ID", "STATE"], &[vec!["1".into(), "running".into()]]), "ID  STATE\n1   running\n");
        assert_eq!(command(&["python".into(), "a b".into()], 40), "python 'a b'");
    }
}
