//! Report documents and the files they are written as.
//!
//! A report is a [`Meta`] and a sequence of [`Section`]s, each a table of typed [`Cell`]s
//! with the charts that read it. Producers push sections and rows into a [`ReportWriter`]
//! one row at a time, so a report of any length is written in bounded memory; each format
//! is one writer: [`text::CsvWriter`], [`text::JsonWriter`], [`text::NdjsonWriter`],
//! [`xlsx::XlsxWriter`], [`pdf::PdfWriter`].
//!
//! Every writer also computes the report's **data hash**: the SHA-256 of the report as
//! NDJSON ([`text::NdjsonWriter`]), the same whatever format is written, so a reader of an
//! XLSX or PDF file can check it against the NDJSON export of the same cursor.

pub mod model;
pub mod pdf;
pub mod text;
pub mod xlsx;

pub use model::{Cell, Chart, ChartKind, Column, ColumnKind, Format, Meta, Section};

/// What a writer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Rows written over all sections (for a CSV of one section, that section's).
    pub rows: u64,
    /// SHA-256 (hex) of the report's NDJSON form: see the crate's documentation.
    pub data_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A producer broke the writer's protocol (a row before a section, a row of the wrong
    /// width) or asked for something the format cannot hold.
    #[error("{0}")]
    Invalid(String),
    /// The XLSX library refused a value or could not write the file.
    #[error("writing XLSX: {0}")]
    Xlsx(#[from] rust_xlsxwriter::XlsxError),
    /// The PDF could not be assembled: a font could not be read or subset, or the document
    /// could not be serialized.
    #[error("PDF: {0}")]
    Pdf(String),
}

/// Receives a report section by section and row by row, writing it as it comes.
pub trait ReportWriter: Send {
    /// Starts a section; the rows that follow belong to it.
    fn section(&mut self, section: &Section) -> Result<(), ReportError>;
    /// One row of the current section, a cell per column.
    fn row(&mut self, cells: &[Cell]) -> Result<(), ReportError>;
    /// Ends the report and flushes the file.
    fn finish(self: Box<Self>) -> Result<Written, ReportError>;
}

/// Creates the writer of `format` into `out` (`csv_section`: which section a CSV holds, the
/// first when `None`).
pub fn writer_for(
    format: Format,
    meta: Meta,
    out: std::fs::File,
    csv_section: Option<String>,
) -> Box<dyn ReportWriter> {
    match format {
        Format::Csv => Box::new(text::CsvWriter::new(out, csv_section)),
        Format::Json => Box::new(text::JsonWriter::new(out, meta)),
        Format::Ndjson => Box::new(text::NdjsonWriter::new(out)),
        Format::Xlsx => Box::new(xlsx::XlsxWriter::new(out, meta)),
        Format::Pdf => Box::new(pdf::PdfWriter::new(out, meta)),
    }
}
