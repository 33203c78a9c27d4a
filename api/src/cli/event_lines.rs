//! A backup's lines, written by aipm from PostgreSQL's binary COPY of the event log.
//!
//! PostgreSQL could write each line itself (`json_build_object` in the COPY), but building
//! a JSON document per row costs the server twice what reading the row does, and the server
//! is what bounds a backup. So it sends the columns as they are stored (binary COPY) and
//! aipm writes the same line PostgreSQL would, byte for byte: the keys in the same order,
//! with the same spacing, strings escaped as `json_build_object` escapes them, the time as
//! it writes a `timestamptz` in UTC, and `metadata` and `payload` as the text of their
//! `jsonb` (what `jsonb_send` sends after its version byte).

use std::io::Write as _;

/// The columns a backup line holds, in its order, for the COPY's select list.
pub(super) const COLUMNS: &str = "transaction_id, position, aggregate_type, aggregate_id, sequence, \
     event_type, event_version, tenant_id, recorded_at, metadata, payload";

/// The line's keys, each with what comes before it.
const KEYS: [&[u8]; 11] = [
    b"{\"transaction_id\" : ",
    b", \"position\" : ",
    b", \"aggregate_type\" : ",
    b", \"aggregate_id\" : ",
    b", \"sequence\" : ",
    b", \"event_type\" : ",
    b", \"event_version\" : ",
    b", \"tenant_id\" : ",
    b", \"recorded_at\" : ",
    b", \"metadata\" : ",
    b", \"payload\" : ",
];

/// How a column of [`COLUMNS`] is sent and written.
#[derive(Clone, Copy)]
enum Column {
    /// `xid8`: an unsigned 64-bit integer.
    Unsigned,
    /// `bigint`.
    Signed,
    Text,
    /// `timestamptz`: microseconds since 2000-01-01 UTC.
    Time,
    /// `jsonb`: a version byte, then the document's text.
    Jsonb,
}

const SHAPE: [Column; 11] = [
    Column::Unsigned,
    Column::Signed,
    Column::Text,
    Column::Text,
    Column::Signed,
    Column::Text,
    Column::Text,
    Column::Text,
    Column::Time,
    Column::Jsonb,
    Column::Jsonb,
];

/// What starts every binary COPY.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01).
const POSTGRES_EPOCH: i64 = 946_684_800;

/// Turns the chunks of a binary COPY of [`COLUMNS`] into lines, whatever their boundaries.
#[derive(Default)]
pub(super) struct EventLines {
    /// The start of a row the last chunk cut.
    pending: Vec<u8>,
    started: bool,
    ended: bool,
}

impl EventLines {
    /// Appends to `out` a line for each whole row in `chunk` and what earlier chunks left;
    /// returns how many.
    pub(super) fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<u64, String> {
        if self.pending.is_empty() {
            let (used, lines) = rows(chunk, &mut self.started, &mut self.ended, out)?;
            self.pending.extend_from_slice(&chunk[used..]);
            Ok(lines)
        } else {
            self.pending.extend_from_slice(chunk);
            let (used, lines) = rows(&self.pending, &mut self.started, &mut self.ended, out)?;
            self.pending.drain(..used);
            Ok(lines)
        }
    }

    /// Checks that the COPY ended as one does: its trailer read, nothing left over.
    pub(super) fn finish(&self) -> Result<(), String> {
        if self.ended && self.pending.is_empty() {
            Ok(())
        } else {
            Err("the event log's copy ended in the middle of a row".into())
        }
    }
}

/// Writes the whole rows at the start of `input`; returns the bytes used and the lines.
fn rows(
    input: &[u8],
    started: &mut bool,
    ended: &mut bool,
    out: &mut Vec<u8>,
) -> Result<(usize, u64), String> {
    let mut at = 0;
    if !*started {
        let Some(header) = header_length(input)? else {
            return Ok((0, 0));
        };
        at = header;
        *started = true;
    }
    let mut lines = 0;
    while at < input.len() {
        if *ended {
            return Err("the event log's copy went on after its end".into());
        }
        let Some(used) = row(&input[at..], ended, out)? else {
            break;
        };
        at += used;
        lines += u64::from(!*ended);
    }
    Ok((at, lines))
}

/// The length of the COPY's header, once `input` holds all of it.
fn header_length(input: &[u8]) -> Result<Option<usize>, String> {
    if input.len() < SIGNATURE.len() + 8 {
        return Ok(None);
    }
    if &input[..SIGNATURE.len()] != SIGNATURE {
        return Err("the event log's copy is not a binary COPY".into());
    }
    let extension = u32::from_be_bytes(fixed(&input[15..19])?) as usize;
    let length = 19 + extension;
    Ok((input.len() >= length).then_some(length))
}

/// Writes the row at the start of `input` as a line (or notes the trailer); returns the
/// bytes it took, or `None` when `input` does not hold all of it yet.
fn row(input: &[u8], ended: &mut bool, out: &mut Vec<u8>) -> Result<Option<usize>, String> {
    let Some(count) = input.get(..2) else {
        return Ok(None);
    };
    let count = i16::from_be_bytes(fixed(count)?);
    if count == -1 {
        *ended = true;
        return Ok(Some(2));
    }
    if count as usize != SHAPE.len() {
        return Err(format!(
            "the event log's copy sent {count} columns, not {}",
            SHAPE.len()
        ));
    }
    let mut fields: [Option<&[u8]>; 11] = [None; 11];
    let mut at = 2;
    for field in &mut fields {
        let Some(length) = input.get(at..at + 4) else {
            return Ok(None);
        };
        let length = i32::from_be_bytes(fixed(length)?);
        at += 4;
        if length >= 0 {
            let Some(value) = input.get(at..at + length as usize) else {
                return Ok(None);
            };
            *field = Some(value);
            at += length as usize;
        }
    }
    let start = out.len();
    if let Err(error) = line(&fields, out) {
        out.truncate(start);
        return Err(error);
    }
    Ok(Some(at))
}

fn line(fields: &[Option<&[u8]>; 11], out: &mut Vec<u8>) -> Result<(), String> {
    for ((key, column), field) in KEYS.iter().zip(SHAPE).zip(fields) {
        out.extend_from_slice(key);
        let Some(value) = field else {
            out.extend_from_slice(b"null");
            continue;
        };
        match column {
            Column::Unsigned => {
                let _ = write!(out, "{}", u64::from_be_bytes(fixed(value)?));
            }
            Column::Signed => {
                let _ = write!(out, "{}", i64::from_be_bytes(fixed(value)?));
            }
            Column::Text => json_string(value, out),
            Column::Time => {
                out.push(b'"');
                write_time(i64::from_be_bytes(fixed(value)?), out)?;
                out.push(b'"');
            }
            Column::Jsonb => match value.split_first() {
                Some((1, text)) => out.extend_from_slice(text),
                _ => return Err("the event log's copy sent a jsonb of an unknown version".into()),
            },
        }
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], String> {
    bytes.try_into().map_err(|_| {
        format!(
            "the event log's copy sent {} bytes for a {N}-byte value",
            bytes.len()
        )
    })
}

/// `text` as a JSON string, escaped as PostgreSQL's `escape_json` does: the quote, the
/// backslash and control characters; the rest (UTF-8 included) as it is.
fn json_string(text: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut from = 0;
    for (at, &byte) in text.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..0x20 => b"",
            _ => continue,
        };
        out.extend_from_slice(&text[from..at]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.extend_from_slice(escaped);
        }
        from = at + 1;
    }
    out.extend_from_slice(&text[from..]);
    out.push(b'"');
}

/// A `timestamptz` (microseconds since 2000-01-01 UTC) as PostgreSQL writes it in JSON with
/// the session in UTC: `2026-12-03T06:56:46.21435+00:00`, the fraction without its
/// trailing zeros, and none when it is zero.
fn write_time(postgres_micros: i64, out: &mut Vec<u8>) -> Result<(), String> {
    use chrono::{Datelike as _, Timelike as _};
    let time = postgres_micros
        .checked_add(POSTGRES_EPOCH * 1_000_000)
        .and_then(chrono::DateTime::from_timestamp_micros)
        .filter(|time| (1..=9999).contains(&time.year()))
        .ok_or_else(|| format!("the event log holds a time aipm cannot write ({postgres_micros} µs)"))?;
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    );
    let micros = postgres_micros.rem_euclid(1_000_000);
    if micros != 0 {
        let mut digits = [0u8; 6];
        let mut rest = micros;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let kept = 6 - digits.iter().rev().take_while(|&&d| d == b'0').count();
        out.push(b'.');
        out.extend_from_slice(&digits[..kept]);
    }
    out.extend_from_slice(b"+00:00");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(micros: i64) -> String {
        let mut out = Vec::new();
        write_time(micros, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn times_are_written_as_postgresql_writes_them_in_json() {
        assert_eq!(time(0), "2000-01-01T00:00:00+00:00");
        assert_eq!(time(1), "2000-01-01T00:00:00.000001+00:00");
        assert_eq!(time(120_000), "2000-01-01T00:00:00.12+00:00");
        assert_eq!(time(-1), "1999-12-31T23:59:59.999999+00:00");
        // 2026-12-03T06:56:46.214355Z
        assert_eq!(time(849_596_206_214_355), "2026-12-03T06:56:46.214355+00:00");
        let mut out = Vec::new();
        assert!(write_time(i64::MAX, &mut out).is_err());
    }

    #[test]
    fn strings_are_escaped_as_json_build_object_escapes_them() {
        let mut out = Vec::new();
        json_string("a\"b\\c\nd\te\u{1}f\u{7f}é\u{8}\u{c}\r".as_bytes(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\nd\\te\\u0001f\u{7f}é\\b\\f\\r\""
        );
    }

    /// A binary COPY of one row of [`COLUMNS`], then its trailer.
    fn copy_of_one_row() -> Vec<u8> {
        let mut copy = SIGNATURE.to_vec();
        copy.extend_from_slice(&0u32.to_be_bytes());
        copy.extend_from_slice(&0u32.to_be_bytes());
        copy.extend_from_slice(&11i16.to_be_bytes());
        let mut field = |value: &[u8]| {
            copy.extend_from_slice(&(value.len() as i32).to_be_bytes());
            copy.extend_from_slice(value);
        };
        field(&812u64.to_be_bytes());
        field(&40i64.to_be_bytes());
        field(b"prompt");
        field(b"p-1");
        field(&3i64.to_be_bytes());
        field(b"PromptArchived");
        field(b"1.0.0");
        field(b"acme");
        field(&0i64.to_be_bytes());
        field(b"\x01{\"a\": 1}");
        field(b"\x01\"PromptArchived\"");
        copy.extend_from_slice(&(-1i16).to_be_bytes());
        copy
    }

    #[test]
    fn a_copy_cut_anywhere_gives_the_same_line() {
        let copy = copy_of_one_row();
        let expected = "{\"transaction_id\" : 812, \"position\" : 40, \"aggregate_type\" : \"prompt\", \
             \"aggregate_id\" : \"p-1\", \"sequence\" : 3, \"event_type\" : \"PromptArchived\", \
             \"event_version\" : \"1.0.0\", \"tenant_id\" : \"acme\", \
             \"recorded_at\" : \"2000-01-01T00:00:00+00:00\", \"metadata\" : {\"a\": 1}, \
             \"payload\" : \"PromptArchived\"}\n";
        for cut in 0..=copy.len() {
            let (mut lines, mut out) = (EventLines::default(), Vec::new());
            let mut count = lines.feed(&copy[..cut], &mut out).unwrap();
            assert!(lines.finish().is_err() || cut == copy.len());
            count += lines.feed(&copy[cut..], &mut out).unwrap();
            lines.finish().unwrap();
            assert_eq!(count, 1);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "cut at {cut}");
        }
    }

    #[test]
    fn what_is_not_a_copy_of_the_columns_is_refused() {
        let mut out = Vec::new();
        assert!(EventLines::default()
            .feed(b"not a binary copy at all", &mut out)
            .is_err());
        let mut wrong_width = copy_of_one_row();
        wrong_width[19..21].copy_from_slice(&3i16.to_be_bytes());
        assert!(EventLines::default().feed(&wrong_width, &mut out).is_err());
        let mut trailing = copy_of_one_row();
        trailing.extend_from_slice(b"more");
        assert!(EventLines::default().feed(&trailing, &mut out).is_err());
    }
}
