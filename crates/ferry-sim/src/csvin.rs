//! Reading a CSV file with a header into rows whose fields are looked up by column name, every error located by
//! file, line and column. Parsing values is the caller's business; this module only finds them.

use std::collections::HashMap;

use crate::error::InputError;

/// The most data rows one file may hold, so that a runaway file fails with a message instead of exhausting memory.
pub const ROWS_MAX: usize = 10_000_000;

/// What a file's header must, may and may not contain.
pub struct Columns<'a> {
    pub required: &'a [&'a str],
    pub optional: &'a [&'a str],
    /// Whether columns outside both lists are ignored (trace files) or an error (hand-written files, where an unknown
    /// column is most likely a typo).
    pub allow_unknown: bool,
}

/// One data row: its line and its fields, trimmed, by column name.
pub struct Row<'a> {
    pub file: &'a str,
    pub line: u64,
    record: csv::StringRecord,
    index: &'a HashMap<String, usize>,
}

impl Row<'_> {
    /// The field of a column the header names, or `None` for an optional column it does not.
    pub fn get(&self, column: &str) -> Option<&str> {
        self.index.get(column).and_then(|&i| self.record.get(i))
    }

    /// The field of a required column.
    pub fn req(&self, column: &str) -> &str {
        self.get(column).unwrap_or("")
    }

    /// An error about one column of this row.
    pub fn error(&self, column: &str, message: impl Into<String>) -> InputError {
        InputError::new(self.file, self.line, Some(format!("column {column}")), message)
    }

    /// Parses the field of `column` with `parse`, which says what is wrong with a bad value.
    pub fn parse<T>(&self, column: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, InputError> {
        parse(self.req(column)).map_err(|m| self.error(column, m))
    }
}

/// Reads every row of `text` and hands it to `each`, which turns it into a value or an error.
pub fn read_rows<T>(
    file: &str,
    text: &str,
    columns: &Columns<'_>,
    mut each: impl FnMut(&Row<'_>) -> Result<T, InputError>,
) -> Result<Vec<T>, InputError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .flexible(false)
        .from_reader(text.as_bytes());
    let index = header_index(file, &mut reader, columns)?;
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(file, &e, index.len()))?;
        let line = record.position().map_or(0, |p| p.line());
        if out.len() == ROWS_MAX {
            return Err(InputError::new(file, line, None, format!("more than {ROWS_MAX} rows; split the file")));
        }
        out.push(each(&Row { file, line, record, index: &index })?);
    }
    Ok(out)
}

fn header_index(
    file: &str,
    reader: &mut csv::Reader<&[u8]>,
    columns: &Columns<'_>,
) -> Result<HashMap<String, usize>, InputError> {
    let expected = || columns.required.iter().chain(columns.optional).copied().collect::<Vec<_>>().join(",");
    let header = reader.headers().map_err(|e| csv_error(file, &e, 0))?;
    let line = header.position().map_or(1, |p| p.line());
    if header.iter().all(str::is_empty) {
        let message = format!("no header; the first line must name the columns: {}", expected());
        return Err(InputError::new(file, line, None, message));
    }
    let mut index = HashMap::new();
    for (i, name) in header.iter().enumerate() {
        let known = columns.required.contains(&name) || columns.optional.contains(&name);
        if !known && !columns.allow_unknown {
            let message = format!("unknown column \"{name}\"; the columns are {}", expected());
            return Err(InputError::new(file, line, None, message));
        }
        if index.insert(name.to_string(), i).is_some() {
            return Err(InputError::new(file, line, None, format!("column \"{name}\" appears twice")));
        }
    }
    if let Some(missing) = columns.required.iter().find(|c| !index.contains_key(**c)) {
        let message = format!("missing column {missing}; the header must name {}", columns.required.join(","));
        return Err(InputError::new(file, line, None, message));
    }
    Ok(index)
}

fn csv_error(file: &str, e: &csv::Error, header_len: usize) -> InputError {
    let line = e.position().map_or(0, |p| p.line());
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths { len, .. } => {
            format!("{len} fields, but the header names {header_len} columns")
        }
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8 text".to_string(),
        _ => e.to_string(),
    };
    InputError::new(file, line, None, message)
}

/// Parses a whole number in `0..=max`, naming what it counts in the error.
pub fn whole(text: &str, max: u64, what: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err("empty; write a whole number".to_string());
    }
    let value: u64 = text.parse().map_err(|_| format!("\"{text}\" is not a whole number"))?;
    if value > max {
        return Err(format!("{value} is more {what} than allowed (at most {max})"));
    }
    Ok(value)
}

/// The longest virtual time the simulator accepts, about 100 years: beyond it, times are surely in the wrong unit.
pub const TIME_S_MAX: f64 = 3.2e9;

/// Parses seconds, whole or decimal, into milliseconds.
pub fn seconds_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("\"{text}\" is not a number of seconds; write a decimal such as 90 or 1.5");
    if text.is_empty() {
        return Err("empty; write a number of seconds such as 90 or 1.5".to_string());
    }
    let value: f64 = text.parse().map_err(|_| bad())?;
    if !value.is_finite() {
        return Err(bad());
    }
    if value < 0.0 {
        return Err(format!("{text} is negative; times and durations are seconds from 0 upwards"));
    }
    if value > TIME_S_MAX {
        return Err(format!("{text} seconds is over 100 years; is the unit right?"));
    }
    Ok((value * 1000.0).round() as u64)
}
