//! The text formats: CSV (RFC 4180), JSON and NDJSON, each streamed as rows arrive.

use std::io::{BufWriter, Write};

use sha2::{Digest, Sha256};

use crate::model::{format_instant, Cell, Meta, Section};
use crate::{ReportError, ReportWriter, Written};

/// A row as the JSON formats write it: an object of the section's column names.
fn push_json_row(out: &mut Vec<u8>, section: &Section, cells: &[Cell]) {
    out.push(b'{');
    for (i, (column, cell)) in section.columns.iter().zip(cells).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_string(out, &column.name);
        out.push(b':');
        push_json_value(out, cell);
    }
    out.push(b'}');
}

fn push_json_value(out: &mut Vec<u8>, cell: &Cell) {
    match cell {
        Cell::Empty => out.extend_from_slice(b"null"),
        Cell::Text(value) => push_json_string(out, value),
        Cell::Integer(_) | Cell::Number(_) | Cell::Percent(_) | Cell::Boolean(_) => {
            if !cell.push_plain(out) {
                out.extend_from_slice(b"null");
            }
        }
        // Money is a string, as everywhere in the API: a JSON number would lose its exactness.
        // None of these texts needs escaping.
        Cell::Money(_) | Cell::Date(_) | Cell::Timestamp(_) => {
            out.push(b'"');
            cell.push_plain(out);
            out.push(b'"');
        }
    }
}

fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // serde_json's escaping, written straight into the buffer.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// The report as NDJSON, line by line, and the SHA-256 of those lines: the data hash every
/// writer reports (see the crate's documentation).
#[derive(Default)]
pub(crate) struct DataHash {
    hasher: Sha256,
    line: Vec<u8>,
    rows: u64,
}

impl DataHash {
    /// Encodes the row as its NDJSON line (in `self.line`) and adds it to the hash.
    pub(crate) fn add(&mut self, section: &Section, cells: &[Cell]) -> &[u8] {
        self.line.clear();
        self.line.extend_from_slice(b"{\"section\":");
        push_json_string(&mut self.line, &section.name);
        self.line.push(b',');
        let start = self.line.len();
        push_json_row(&mut self.line, section, cells);
        // The row's own object, opened by the section member: drop its `{`.
        self.line.remove(start);
        self.line.push(b'\n');
        self.hasher.update(&self.line);
        self.rows += 1;
        &self.line
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    pub(crate) fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

/// The section rows are checked against: set by `section`, required by `row`.
pub(crate) fn check_row<'a>(
    section: &'a Option<Section>,
    cells: &[Cell],
) -> Result<&'a Section, ReportError> {
    let section = section
        .as_ref()
        .ok_or_else(|| ReportError::Invalid("a row came before any section".to_owned()))?;
    if cells.len() != section.columns.len() {
        return Err(ReportError::Invalid(format!(
            "a row of section {} has {} cells for {} columns",
            section.name,
            cells.len(),
            section.columns.len()
        )));
    }
    Ok(section)
}

/// NDJSON: one line per row, `{"section": …, <column>: <value>, …}`, nothing else.
pub struct NdjsonWriter {
    out: BufWriter<std::fs::File>,
    section: Option<Section>,
    hash: DataHash,
}

impl NdjsonWriter {
    pub fn new(out: std::fs::File) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, out),
            section: None,
            hash: DataHash::default(),
        }
    }
}

impl ReportWriter for NdjsonWriter {
    fn section(&mut self, section: &Section) -> Result<(), ReportError> {
        self.section = Some(section.clone());
        Ok(())
    }

    fn row(&mut self, cells: &[Cell]) -> Result<(), ReportError> {
        let section = check_row(&self.section, cells)?;
        let line = self.hash.add(section, cells);
        self.out.write_all(line)?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Written, ReportError> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        let rows = self.hash.rows;
        Ok(Written {
            rows,
            data_sha256: self.hash.finish(),
        })
    }
}

/// JSON: one document, `{"report", "title", "tenant", "period", "as_of", "cursor",
/// "params", "sections": {<name>: {"title", "rows": [{<column>: <value>}, …]}, …}}`.
pub struct JsonWriter {
    out: BufWriter<std::fs::File>,
    meta: Option<Meta>,
    section: Option<Section>,
    rows_in_section: u64,
    hash: DataHash,
    buffer: Vec<u8>,
}

impl JsonWriter {
    pub fn new(out: std::fs::File, meta: Meta) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, out),
            meta: Some(meta),
            section: None,
            rows_in_section: 0,
            hash: DataHash::default(),
            buffer: Vec::new(),
        }
    }

    fn write_head(&mut self) -> Result<(), ReportError> {
        let Some(meta) = self.meta.take() else {
            return Ok(());
        };
        let period = meta.period.map(|(from, to)| {
            serde_json::json!({"from": from.format("%Y-%m-%d").to_string(), "to": to.format("%Y-%m-%d").to_string()})
        });
        let head = serde_json::json!({
            "report": meta.report,
            "title": meta.title,
            "tenant": meta.tenant,
            "period": period,
            "as_of": format_instant(meta.as_of),
            "cursor": meta.cursor,
            "params": meta.params,
        });
        let head = serde_json::to_string(&head).map_err(|error| ReportError::Invalid(error.to_string()))?;
        // The head without its closing brace; the sections follow in the same object.
        self.out.write_all(&head.as_bytes()[..head.len() - 1])?;
        self.out.write_all(b",\"sections\":{")?;
        Ok(())
    }

    fn close_section(&mut self) -> Result<(), ReportError> {
        if self.section.is_some() {
            self.out.write_all(b"]}")?;
        }
        Ok(())
    }
}

impl ReportWriter for JsonWriter {
    fn section(&mut self, section: &Section) -> Result<(), ReportError> {
        self.write_head()?;
        let first = self.section.is_none();
        self.close_section()?;
        self.buffer.clear();
        if !first {
            self.buffer.push(b',');
        }
        push_json_string(&mut self.buffer, &section.name);
        self.buffer.extend_from_slice(b":{\"title\":");
        push_json_string(&mut self.buffer, &section.title);
        self.buffer.extend_from_slice(b",\"rows\":[");
        self.out.write_all(&self.buffer)?;
        self.section = Some(section.clone());
        self.rows_in_section = 0;
        Ok(())
    }

    fn row(&mut self, cells: &[Cell]) -> Result<(), ReportError> {
        let section = check_row(&self.section, cells)?;
        self.hash.add(section, cells);
        self.buffer.clear();
        if self.rows_in_section > 0 {
            self.buffer.push(b',');
        }
        push_json_row(&mut self.buffer, section, cells);
        self.out.write_all(&self.buffer)?;
        self.rows_in_section += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Written, ReportError> {
        self.write_head()?;
        self.close_section()?;
        self.out.write_all(b"}}\n")?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        let rows = self.hash.rows;
        Ok(Written {
            rows,
            data_sha256: self.hash.finish(),
        })
    }
}

/// CSV (RFC 4180): one section — the first, or the one named — as a header row and a
/// record per row, CRLF line breaks, UTF-8 without a byte-order mark. Fields are quoted
/// only when they need it, so numbers read as numbers.
pub struct CsvWriter {
    out: BufWriter<std::fs::File>,
    wanted: Option<String>,
    /// The section being written, or `None` while skipping one.
    section: Option<Section>,
    current: Option<Section>,
    written_any: bool,
    rows: u64,
    hash: DataHash,
    buffer: Vec<u8>,
}

impl CsvWriter {
    pub fn new(out: std::fs::File, wanted: Option<String>) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, out),
            wanted,
            section: None,
            current: None,
            written_any: false,
            rows: 0,
            hash: DataHash::default(),
            buffer: Vec::new(),
        }
    }
}

/// Appends one CSV field, quoted when it holds a quote, a comma, a line break or edge spaces.
fn push_csv_field(buffer: &mut Vec<u8>, value: &str) {
    let needs_quotes = value
        .bytes()
        .any(|byte| matches!(byte, b'"' | b',' | b'\r' | b'\n'))
        || value.starts_with(' ')
        || value.ends_with(' ');
    if needs_quotes {
        buffer.push(b'"');
        for byte in value.bytes() {
            if byte == b'"' {
                buffer.push(b'"');
            }
            buffer.push(byte);
        }
        buffer.push(b'"');
    } else {
        buffer.extend_from_slice(value.as_bytes());
    }
}

impl ReportWriter for CsvWriter {
    fn section(&mut self, section: &Section) -> Result<(), ReportError> {
        self.current = Some(section.clone());
        let take = !self.written_any && self.wanted.as_deref().is_none_or(|wanted| wanted == section.name);
        self.section = None;
        if take {
            self.written_any = true;
            self.buffer.clear();
            for (i, column) in section.columns.iter().enumerate() {
                if i > 0 {
                    self.buffer.push(b',');
                }
                push_csv_field(&mut self.buffer, &column.name);
            }
            self.buffer.extend_from_slice(b"\r\n");
            self.out.write_all(&self.buffer)?;
            self.section = Some(section.clone());
        }
        Ok(())
    }

    fn row(&mut self, cells: &[Cell]) -> Result<(), ReportError> {
        let current = check_row(&self.current, cells)?;
        self.hash.add(current, cells);
        if self.section.is_none() {
            return Ok(());
        }
        self.buffer.clear();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                self.buffer.push(b',');
            }
            match cell {
                Cell::Text(value) => push_csv_field(&mut self.buffer, value),
                // Numbers, money, days, instants and booleans never need quotes.
                other => {
                    other.push_plain(&mut self.buffer);
                }
            }
        }
        self.buffer.extend_from_slice(b"\r\n");
        self.out.write_all(&self.buffer)?;
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Written, ReportError> {
        if !self.written_any {
            return Err(ReportError::Invalid(match &self.wanted {
                Some(wanted) => format!("the report has no section {wanted:?}"),
                None => "the report has no section".to_owned(),
            }));
        }
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(Written {
            rows: self.rows,
            data_sha256: self.hash.finish(),
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use rust_decimal::Decimal;

    use super::*;
    use crate::model::{Column, ColumnKind};

    fn section(name: &str) -> Section {
        Section {
            name: name.into(),
            title: "A table".into(),
            columns: vec![
                Column::new("note", ColumnKind::Text),
                Column::new(
                    "cost",
                    ColumnKind::Money {
                        currency_column: None,
                    },
                ),
                Column::new("calls", ColumnKind::Integer),
            ],
            charts: Vec::new(),
        }
    }

    fn meta() -> Meta {
        Meta {
            report: "test".into(),
            title: "Test".into(),
            tenant: "acme".into(),
            period: None,
            as_of: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            cursor: "1-1".into(),
            params: serde_json::json!({}),
        }
    }

    fn write(mut writer: Box<dyn ReportWriter>, path: &std::path::Path) -> (Written, String) {
        writer.section(&section("first")).expect("section");
        writer
            .row(&[
                Cell::text("say \"hi\", then\nbye"),
                Cell::Money(Decimal::new(150, 2)),
                Cell::Integer(3),
            ])
            .expect("row");
        writer.section(&section("second")).expect("section");
        writer
            .row(&[Cell::Empty, Cell::Empty, Cell::Integer(-1)])
            .expect("row");
        let written = writer.finish().expect("finish");
        let text = std::fs::read_to_string(path).expect("read");
        (written, text)
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("aipm-text-{name}-{}", std::process::id()))
    }

    #[test]
    fn each_text_format_writes_its_form_and_states_one_data_hash() {
        let paths = [temp("csv"), temp("json"), temp("ndjson")];
        let open = |path: &std::path::Path| std::fs::File::create(path).expect("create");
        let (csv, csv_text) = write(Box::new(CsvWriter::new(open(&paths[0]), None)), &paths[0]);
        assert_eq!(
            csv_text,
            "note,cost,calls\r\n\"say \"\"hi\"\", then\nbye\",1.5,3\r\n"
        );
        assert_eq!(csv.rows, 1, "one section");
        let (json, json_text) = write(Box::new(JsonWriter::new(open(&paths[1]), meta())), &paths[1]);
        let document: serde_json::Value = serde_json::from_str(&json_text).expect("JSON");
        assert_eq!(document["sections"]["first"]["rows"][0]["cost"], "1.5");
        assert_eq!(
            document["sections"]["second"]["rows"][0],
            serde_json::json!({"note": null, "cost": null, "calls": -1})
        );
        let (ndjson, ndjson_text) = write(Box::new(NdjsonWriter::new(open(&paths[2]))), &paths[2]);
        assert_eq!(ndjson_text.lines().count(), 2);
        assert_eq!(
            hex::encode(Sha256::digest(ndjson_text.as_bytes())),
            ndjson.data_sha256
        );
        assert_eq!(
            (csv.data_sha256.as_str(), json.data_sha256.as_str()),
            (ndjson.data_sha256.as_str(), ndjson.data_sha256.as_str())
        );
        for path in paths {
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn a_csv_of_a_section_the_report_lacks_is_refused() {
        let path = temp("missing");
        let writer = CsvWriter::new(
            std::fs::File::create(&path).expect("create"),
            Some("third".into()),
        );
        let mut writer: Box<dyn ReportWriter> = Box::new(writer);
        writer.section(&section("first")).expect("section");
        assert!(matches!(writer.finish(), Err(ReportError::Invalid(_))));
        let _ = std::fs::remove_file(path);
    }
}
