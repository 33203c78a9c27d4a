//! XLSX: a workbook as an analyst would hand it over — a cover sheet stating what the report
//! is, then a worksheet per section with typed, formatted cells, a frozen and filtered header
//! row, and native charts.
//!
//! Section sheets are written in rust_xlsxwriter's constant-memory mode: each row goes to a
//! temp file as it arrives, so a section of a million rows costs no more memory than one of
//! ten. Sections with charts, which are short, are the exception (see `section`). Everything
//! that needs the whole section (the autofilter's extent, the charts' ranges) is set when the
//! section ends; the cover, which states the data hash, when the report ends.

use std::collections::HashMap;
use std::io::{BufWriter, Write};

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_xlsxwriter::{
    Chart as XlsxChart, ChartFormat, ChartLine, ChartLineDashType, ChartMarker, ChartMarkerType, ChartType,
    ColNum, DocProperties, ExcelDateTime, Format as CellFormat, FormatBorder, RowNum, Url, Workbook,
    Worksheet,
};

use crate::model::{Cell, ChartKind, ColumnKind, Meta, Section};
use crate::text::{check_row, DataHash};
use crate::{ReportError, ReportWriter, Written};

const COVER: &str = "Cover";
/// Excel's rows per worksheet; the header takes one.
const MAX_DATA_ROWS: u32 = 1_048_575;
/// Excel's longest text in a cell, in UTF-16 units.
const MAX_TEXT: usize = 32_767;
/// Integers beyond ±2^53 would change when held as Excel's doubles; they are written as text.
const MAX_EXACT_INTEGER: i64 = 1 << 53;
/// The chart's height in rows (rust_xlsxwriter's default chart is 288 px, rows are 20 px) and
/// a row of space between charts.
const CHART_ROWS: u32 = 16;

const DATE: &str = "yyyy-mm-dd";
const DATE_TIME: &str = "yyyy-mm-dd hh:mm:ss";
/// At least the cents, and up to the eight decimals a rate or a unit price can have.
const MONEY: &str = "#,##0.00######";

/// How a number is shown: the number formats of the columns' kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    General,
    Date,
    DateTime,
    Percent,
    Money,
}

impl Shown {
    fn of(kind: ColumnKind) -> Shown {
        match kind {
            ColumnKind::Text | ColumnKind::Integer | ColumnKind::Number | ColumnKind::Boolean => {
                Shown::General
            }
            ColumnKind::Money { .. } => Shown::Money,
            ColumnKind::Percent => Shown::Percent,
            ColumnKind::Date => Shown::Date,
            ColumnKind::Timestamp => Shown::DateTime,
        }
    }
}

/// The formats every sheet uses, made once.
struct Formats {
    general: CellFormat,
    header: CellFormat,
    date: CellFormat,
    date_time: CellFormat,
    percent: CellFormat,
    money: CellFormat,
    /// `[$USD] #,##0.00######` and the like, one per ISO code met.
    currencies: HashMap<String, CellFormat>,
    title: CellFormat,
    label: CellFormat,
    wrapped: CellFormat,
}

impl Formats {
    fn new() -> Self {
        Self {
            // Not the default format: rust_xlsxwriter takes a cell in that one (index 0) for
            // an unformatted cell and gives it the column's format.
            general: CellFormat::new().set_num_format("General"),
            header: CellFormat::new().set_bold().set_border_bottom(FormatBorder::Thin),
            date: CellFormat::new().set_num_format(DATE),
            date_time: CellFormat::new().set_num_format(DATE_TIME),
            percent: CellFormat::new().set_num_format("0.00%"),
            money: CellFormat::new().set_num_format(MONEY),
            currencies: HashMap::new(),
            title: CellFormat::new().set_bold().set_font_size(14),
            label: CellFormat::new().set_bold(),
            wrapped: CellFormat::new().set_text_wrap(),
        }
    }

    fn of(&self, shown: Shown) -> &CellFormat {
        match shown {
            Shown::General => &self.general,
            Shown::Date => &self.date,
            Shown::DateTime => &self.date_time,
            Shown::Percent => &self.percent,
            Shown::Money => &self.money,
        }
    }

    /// The money format of `currency` when it is an ISO 4217 code (three capital letters;
    /// anything else would be read as format syntax).
    fn currency(&mut self, currency: Option<&Cell>) -> Option<&CellFormat> {
        let code = match currency {
            Some(Cell::Text(code)) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) => code,
            _ => return None,
        };
        Some(
            self.currencies
                .entry(code.clone())
                .or_insert_with(|| CellFormat::new().set_num_format(format!("[${code}] {MONEY}"))),
        )
    }
}

/// The section whose sheet is being written.
struct OpenSheet {
    /// Its worksheet's index in the workbook (the cover is 0).
    index: usize,
    rows: u32,
    /// Each column's number format, set on the column (see `write_number`).
    shown: Vec<Shown>,
    /// Helper columns right of the table holding a bar chart's budget, one per chart with a
    /// line: Excel draws a horizontal line as a line series, which needs a cell per category.
    budgets: Vec<f64>,
}

/// A section as the cover lists it.
struct CoverEntry {
    name: String,
    title: String,
    rows: u64,
}

/// XLSX: a cover sheet, then a worksheet per section (see the module's documentation).
pub struct XlsxWriter {
    out: std::fs::File,
    meta: Meta,
    workbook: Workbook,
    formats: Formats,
    section: Option<Section>,
    sheet: Option<OpenSheet>,
    written: Vec<CoverEntry>,
    hash: DataHash,
}

impl XlsxWriter {
    pub fn new(out: std::fs::File, meta: Meta) -> Self {
        Self {
            out,
            meta,
            workbook: Workbook::new(),
            formats: Formats::new(),
            section: None,
            sheet: None,
            written: Vec::new(),
            hash: DataHash::default(),
        }
    }

    /// Adds the cover as the first sheet; it is filled in at `finish`, when the hash is known.
    fn ensure_cover(&mut self) -> Result<(), ReportError> {
        if self.workbook.worksheets().is_empty() {
            self.workbook.add_worksheet().set_name(COVER)?;
        }
        Ok(())
    }

    /// Ends the open section's sheet: the autofilter and the charts need its row count.
    fn close_section(&mut self) -> Result<(), ReportError> {
        let (Some(section), Some(sheet)) = (self.section.take(), self.sheet.take()) else {
            return Ok(());
        };
        let worksheet = self.workbook.worksheet_from_index(sheet.index)?;
        if let Some(last_col) = last_column(section.columns.len()) {
            worksheet.autofilter(0, 0, sheet.rows, last_col)?;
        }
        if sheet.rows > 0 {
            let first_free = column(section.columns.len() + sheet.budgets.len() + 1)?;
            let mut budget = 0;
            for (i, chart) in section.charts.iter().enumerate() {
                let budget_column = match &chart.kind {
                    ChartKind::Bars {
                        line: Some((_, value)),
                        ..
                    } if value.is_finite() => {
                        budget += 1;
                        Some(column(section.columns.len() + budget - 1)?)
                    }
                    _ => None,
                };
                let chart = build_chart(&section, chart, sheet.rows, budget_column)?;
                let row = u32::try_from(i)
                    .map_or(RowNum::MAX, |i| i.saturating_mul(CHART_ROWS))
                    .saturating_add(1);
                worksheet.insert_chart_with_offset(row, first_free, &chart, 8, 0)?;
            }
        }
        self.written.push(CoverEntry {
            name: section.name,
            title: section.title,
            rows: u64::from(sheet.rows),
        });
        Ok(())
    }

    fn write_cover(&mut self, data_sha256: &str) -> Result<(), ReportError> {
        let meta = &self.meta;
        let formats = &self.formats;
        let cover = self.workbook.worksheet_from_index(0)?;
        cover.set_column_width(0, 18)?;
        cover.set_column_width(1, 70)?;
        cover.set_column_width(2, 10)?;
        cover.write_string_with_format(0, 0, excel_text(&meta.title), &formats.title)?;

        let mut row: RowNum = 2;
        let mut label = |cover: &mut Worksheet, text: &str| -> Result<RowNum, ReportError> {
            cover.write_string_with_format(row, 0, text, &formats.label)?;
            row += 1;
            Ok(row - 1)
        };
        let at = label(cover, "Report")?;
        cover.write_string(at, 1, excel_text(&meta.report))?;
        let at = label(cover, "Tenant")?;
        cover.write_string(at, 1, excel_text(&meta.tenant))?;
        if let Some((from, to)) = meta.period {
            let at = label(cover, "Period from")?;
            write_date(cover, at, 1, from, Shown::General, formats)?;
            let at = label(cover, "Period to")?;
            write_date(cover, at, 1, to, Shown::General, formats)?;
        }
        let at = label(cover, "As of (UTC)")?;
        match excel_instant(meta.as_of) {
            Some(serial) => cover.write_number_with_format(at, 1, serial, &formats.date_time)?,
            None => cover.write_string(at, 1, crate::model::format_instant(meta.as_of))?,
        };
        let at = label(cover, "Data cursor")?;
        cover.write_string(at, 1, excel_text(&meta.cursor))?;
        let at = label(cover, "Parameters")?;
        let params =
            serde_json::to_string(&meta.params).map_err(|error| ReportError::Invalid(error.to_string()))?;
        cover.write_string_with_format(at, 1, excel_text(&params), &formats.wrapped)?;
        let at = label(cover, "Data SHA-256")?;
        cover.write_string(at, 1, data_sha256)?;

        row += 1;
        let at = row;
        cover.write_string_with_format(at, 0, "Section", &formats.header)?;
        cover.write_string_with_format(at, 1, "Title", &formats.header)?;
        cover.write_string_with_format(at, 2, "Rows", &formats.header)?;
        for (i, section) in self.written.iter().enumerate() {
            let at = at + 1 + RowNum::try_from(i).map_err(|_| too_many("sections"))?;
            // A link to the section's sheet; the name is quoted so any sheet name works.
            let link = Url::new(format!("internal:'{}'!A1", section.name)).set_text(&section.name);
            cover.write_url(at, 0, link)?;
            cover.write_string(at, 1, excel_text(&section.title))?;
            cover.write_number(at, 2, section.rows as f64)?;
        }
        Ok(())
    }
}

impl ReportWriter for XlsxWriter {
    fn section(&mut self, section: &Section) -> Result<(), ReportError> {
        self.ensure_cover()?;
        self.close_section()?;
        check_section(section, &self.written)?;
        let columns = section.columns.len();

        let index = self.workbook.worksheets().len();
        // A section with charts is short: its sheet is kept in memory so that the charts are
        // saved with a copy of their data (the chart's cache), which readers show without
        // recalculating; in constant-memory mode the rows are gone by then.
        let worksheet = if section.charts.is_empty() {
            self.workbook.add_worksheet_with_constant_memory()?
        } else {
            self.workbook.add_worksheet()
        };
        worksheet.set_name(&section.name)?;
        worksheet.set_freeze_panes(1, 0)?;
        let mut shown = Vec::with_capacity(columns);
        for (i, column_def) in section.columns.iter().enumerate() {
            let col = column(i)?;
            worksheet.set_column_width(col, column_width(&column_def.name, column_def.kind))?;
            let column_shown = Shown::of(column_def.kind);
            if column_shown != Shown::General {
                worksheet.set_column_format(col, self.formats.of(column_shown))?;
            }
            shown.push(column_shown);
            worksheet.write_string_with_format(0, col, excel_text(&column_def.name), &self.formats.header)?;
        }
        let mut budgets = Vec::new();
        for chart in &section.charts {
            if let ChartKind::Bars {
                line: Some((label, value)),
                ..
            } = &chart.kind
            {
                if value.is_finite() {
                    let col = column(columns + budgets.len())?;
                    worksheet.set_column_width(col, column_width(label, ColumnKind::Number))?;
                    worksheet.write_string_with_format(0, col, excel_text(label), &self.formats.header)?;
                    budgets.push(*value);
                }
            }
        }
        self.sheet = Some(OpenSheet {
            index,
            rows: 0,
            shown,
            budgets,
        });
        self.section = Some(section.clone());
        Ok(())
    }

    fn row(&mut self, cells: &[Cell]) -> Result<(), ReportError> {
        let section = check_row(&self.section, cells)?;
        let Some(sheet) = self.sheet.as_mut() else {
            return Err(ReportError::Invalid("a row came before any section".to_owned()));
        };
        if sheet.rows >= MAX_DATA_ROWS {
            return Err(ReportError::Invalid(format!(
                "section {} has more rows than an Excel worksheet holds ({MAX_DATA_ROWS})",
                section.name
            )));
        }
        self.hash.add(section, cells);
        sheet.rows += 1;
        let row = sheet.rows;
        let worksheet = self.workbook.worksheet_from_index(sheet.index)?;
        for (i, ((cell, column_def), &shown)) in
            cells.iter().zip(&section.columns).zip(&sheet.shown).enumerate()
        {
            let currency = match column_def.kind {
                ColumnKind::Money {
                    currency_column: Some(currency),
                } => cells.get(currency),
                _ => None,
            };
            write_cell(
                worksheet,
                &mut self.formats,
                (row, column(i)?),
                cell,
                shown,
                currency,
            )?;
        }
        // The budgets' helper columns, right of the table (see `OpenSheet::budgets`).
        for (i, budget) in sheet.budgets.iter().enumerate() {
            worksheet.write_number(row, column(cells.len() + i)?, *budget)?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Written, ReportError> {
        self.ensure_cover()?;
        self.close_section()?;
        let rows = self.hash.rows();
        let hash = std::mem::take(&mut self.hash);
        let data_sha256 = hash.finish();
        self.write_cover(&data_sha256)?;

        // The creation date is the report's own instant, not the clock's, so the same report
        // gives the same file (rust_xlsxwriter's zip entries carry a fixed date already).
        let created = ExcelDateTime::from_timestamp(self.meta.as_of.timestamp())?;
        let properties = DocProperties::new()
            .set_title(&self.meta.title)
            .set_subject(&self.meta.report)
            .set_creation_datetime(&created);
        self.workbook.set_properties(&properties);
        // Deflate dominates the time of a long report; level 3 (Excel's own) takes about a
        // third less time than the default 6 for a file about a tenth larger.
        self.workbook.set_zip_compression_level(3);

        let mut out = BufWriter::with_capacity(1 << 16, &self.out);
        self.workbook.save_to_writer(&mut out)?;
        out.flush()?;
        drop(out);
        self.out.sync_all()?;
        Ok(Written { rows, data_sha256 })
    }
}

/// Refuses, before its sheet is added, a section whose name Excel refuses for a sheet or
/// whose charts read columns it does not have.
fn check_section(section: &Section, written: &[CoverEntry]) -> Result<(), ReportError> {
    let name = &section.name;
    let refused = if name.is_empty() || name.encode_utf16().count() > 31 {
        Some("is not 1 to 31 characters long")
    } else if name.contains(['*', '?', ':', '[', ']', '\\', '/'])
        || name.starts_with('\'')
        || name.ends_with('\'')
    {
        Some("has a character Excel refuses in a sheet's name")
    } else if name.eq_ignore_ascii_case("History") {
        Some("is a name Excel keeps for itself")
    } else if name.eq_ignore_ascii_case(COVER)
        || written.iter().any(|other| other.name.eq_ignore_ascii_case(name))
    {
        Some("repeats a sheet's name")
    } else {
        None
    };
    if let Some(refused) = refused {
        return Err(ReportError::Invalid(format!("section {name:?} {refused}")));
    }
    let columns = section.columns.len();
    for chart in &section.charts {
        let used: &[usize] = match &chart.kind {
            ChartKind::Bars { category, value, .. } => &[*category, *value],
            ChartKind::Intervals {
                label,
                mean,
                low,
                high,
            } => &[*label, *mean, *low, *high],
            ChartKind::Line { at, value } => &[*at, *value],
        };
        if let Some(missing) = used.iter().find(|&&index| index >= columns) {
            return Err(ReportError::Invalid(format!(
                "chart {:?} of section {name} reads column {missing} of {columns}",
                chart.title
            )));
        }
    }
    Ok(())
}

/// Writes `cell` at `at` of a column whose numbers are `column` (see `write_number`).
fn write_cell(
    worksheet: &mut Worksheet,
    formats: &mut Formats,
    at: (RowNum, ColNum),
    cell: &Cell,
    column: Shown,
    currency: Option<&Cell>,
) -> Result<(), ReportError> {
    let (row, col) = at;
    match cell {
        Cell::Empty => {}
        Cell::Text(text) => {
            worksheet.write_string(row, col, excel_text(text))?;
        }
        Cell::Integer(value) if value.unsigned_abs() <= MAX_EXACT_INTEGER.unsigned_abs() => {
            write_number(worksheet, at, *value as f64, Shown::General, column, formats)?;
        }
        Cell::Integer(value) => {
            worksheet.write_string(row, col, value.to_string())?;
        }
        // Excel has no NaN or infinity; such a value is written empty, as in JSON.
        Cell::Number(value) if value.is_finite() => {
            write_number(worksheet, at, *value, Shown::General, column, formats)?;
        }
        Cell::Percent(value) if value.is_finite() => {
            write_number(worksheet, at, *value, Shown::Percent, column, formats)?;
        }
        Cell::Number(_) | Cell::Percent(_) => {}
        // Excel holds doubles: a decimal is shown to the cent, the exact value is in the CSV
        // and JSON exports.
        Cell::Money(value) => match (value.to_f64(), formats.currency(currency)) {
            (Some(number), Some(format)) => {
                worksheet.write_number_with_format(row, col, number, format)?;
            }
            (Some(number), None) => write_number(worksheet, at, number, Shown::Money, column, formats)?,
            (None, _) => {
                worksheet.write_string(row, col, value.normalize().to_string())?;
            }
        },
        Cell::Date(date) => write_date(worksheet, row, col, *date, column, formats)?,
        Cell::Timestamp(instant) => match excel_instant(*instant) {
            Some(serial) => write_number(worksheet, at, serial, Shown::DateTime, column, formats)?,
            None => {
                worksheet.write_string(row, col, crate::model::format_instant(*instant))?;
            }
        },
        Cell::Boolean(value) => {
            worksheet.write_boolean(row, col, *value)?;
        }
    }
    Ok(())
}

/// Writes a number to be shown as `shown` in a column whose numbers are shown as `column`.
/// When the two agree the cell is written without a format and Excel shows it in the
/// column's: rust_xlsxwriter looks a cell's format up by hashing the whole format, which took
/// a tenth of the time of a long report.
fn write_number(
    worksheet: &mut Worksheet,
    (row, col): (RowNum, ColNum),
    number: f64,
    shown: Shown,
    column: Shown,
    formats: &Formats,
) -> Result<(), ReportError> {
    if shown == column {
        worksheet.write_number(row, col, number)?;
    } else {
        worksheet.write_number_with_format(row, col, number, formats.of(shown))?;
    }
    Ok(())
}

/// A date is an Excel date (its serial number in a date format) when Excel can show it, its
/// ISO text otherwise.
fn write_date(
    worksheet: &mut Worksheet,
    row: RowNum,
    col: ColNum,
    date: NaiveDate,
    column: Shown,
    formats: &Formats,
) -> Result<(), ReportError> {
    match excel_date(date) {
        Some(serial) => write_number(worksheet, (row, col), serial, Shown::Date, column, formats)?,
        None => {
            worksheet.write_string(row, col, date.format("%Y-%m-%d").to_string())?;
        }
    }
    Ok(())
}

/// Days since 1899-12-30 (Excel's day 0, as its 1900 date system counts them). Excel counts a
/// 29 February 1900 that never was, so the count is right from 1900-03-01 (61) on; earlier
/// dates, and those after 9999, are not Excel dates.
fn excel_date(date: NaiveDate) -> Option<f64> {
    /// `num_days_from_ce` of 1899-12-30.
    const DAY_ZERO: i32 = 693_594;
    let serial = date.num_days_from_ce() - DAY_ZERO;
    (61..=2_958_465).contains(&serial).then_some(f64::from(serial))
}

/// An instant as an Excel date-time in UTC, to the millisecond.
fn excel_instant(at: DateTime<Utc>) -> Option<f64> {
    let day = excel_date(at.date_naive())?;
    // A leap second's milliseconds (1000 and on) are held as the second's last millisecond.
    let millis =
        f64::from(at.num_seconds_from_midnight()) * 1000.0 + f64::from(at.timestamp_subsec_millis().min(999));
    Some(day + millis / 86_400_000.0)
}

/// Text Excel can hold: a longer text keeps its first 32,767 UTF-16 units (the exports have
/// it whole).
fn excel_text(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut units = 0;
    for (at, char) in text.char_indices() {
        units += char.len_utf16();
        if units > MAX_TEXT {
            return &text[..at];
        }
    }
    text
}

/// A width (in characters) from the header and what the column holds, not from the rows: a
/// section can have a million of them. The header gets room for the filter's button.
fn column_width(header: &str, kind: ColumnKind) -> f64 {
    let least = match kind {
        ColumnKind::Text => 12,
        ColumnKind::Integer => 10,
        ColumnKind::Number => 12,
        ColumnKind::Money { .. } => 16,
        ColumnKind::Percent => 10,
        ColumnKind::Date => 12,
        ColumnKind::Timestamp => 20,
        ColumnKind::Boolean => 8,
    };
    let header = header.chars().count() + 4;
    header.clamp(least, 48) as f64
}

fn column(index: usize) -> Result<ColNum, ReportError> {
    // Excel's 16,384 columns; rust_xlsxwriter refuses beyond.
    ColNum::try_from(index).map_err(|_| too_many("columns"))
}

fn last_column(columns: usize) -> Option<ColNum> {
    columns
        .checked_sub(1)
        .and_then(|last| ColNum::try_from(last).ok())
}

fn too_many(what: &str) -> ReportError {
    ReportError::Invalid(format!("the report has more {what} than an Excel workbook holds"))
}

/// A chart of a section's rows 1..=`rows` (0 is the header), referring to the sheet's cells
/// so that Excel draws what the sheet holds.
fn build_chart(
    section: &Section,
    chart: &crate::model::Chart,
    rows: RowNum,
    budget_column: Option<ColNum>,
) -> Result<XlsxChart, ReportError> {
    let sheet = section.name.as_str();
    let range = |col: usize| -> Result<(&str, RowNum, ColNum, RowNum, ColNum), ReportError> {
        let col = column(col)?;
        Ok((sheet, 1, col, rows, col))
    };
    let header = |col: usize| -> Result<(&str, RowNum, ColNum), ReportError> { Ok((sheet, 0, column(col)?)) };

    let mut xlsx_chart;
    match &chart.kind {
        ChartKind::Bars { category, value, .. } => {
            xlsx_chart = XlsxChart::new(ChartType::Column);
            xlsx_chart
                .add_series()
                .set_name(header(*value)?)
                .set_categories(range(*category)?)
                .set_values(range(*value)?);
            match budget_column {
                Some(budget) => {
                    let mut line = XlsxChart::new(ChartType::Line);
                    line.add_series()
                        .set_name((sheet, 0, budget))
                        .set_categories(range(*category)?)
                        .set_values((sheet, 1, budget, rows, budget))
                        .set_marker(ChartMarker::new().set_none())
                        .set_format(
                            ChartLine::new()
                                .set_color("#C00000")
                                .set_width(1.5)
                                .set_dash_type(ChartLineDashType::Dash),
                        );
                    xlsx_chart.combine(&line);
                    xlsx_chart
                        .legend()
                        .set_position(rust_xlsxwriter::ChartLegendPosition::Bottom);
                }
                None => {
                    xlsx_chart.legend().set_hidden();
                }
            }
        }
        // The means as points and each interval as Excel's high-low line from low to high:
        // no helper columns, and the interval is read straight from the sheet.
        ChartKind::Intervals {
            label,
            mean,
            low,
            high,
        } => {
            xlsx_chart = XlsxChart::new(ChartType::Line);
            xlsx_chart
                .add_series()
                .set_name(header(*mean)?)
                .set_categories(range(*label)?)
                .set_values(range(*mean)?)
                .set_marker(ChartMarker::new().set_type(ChartMarkerType::Circle).set_size(7))
                .set_format(ChartFormat::new().set_no_line());
            for bound in [*low, *high] {
                xlsx_chart
                    .add_series()
                    .set_name(header(bound)?)
                    .set_categories(range(*label)?)
                    .set_values(range(bound)?)
                    .set_marker(ChartMarker::new().set_type(ChartMarkerType::LongDash).set_size(9))
                    .set_format(ChartFormat::new().set_no_line());
            }
            xlsx_chart.set_high_low_lines(true);
            xlsx_chart
                .legend()
                .set_position(rust_xlsxwriter::ChartLegendPosition::Bottom);
        }
        ChartKind::Line { at, value } => {
            let at_kind = section.columns.get(*at).map(|column| column.kind);
            // A date axis spaces days by time but has a day's resolution; instants (and
            // numbers) go on a scatter chart's value axis, drawn as a line.
            if at_kind == Some(ColumnKind::Date) {
                xlsx_chart = XlsxChart::new(ChartType::Line);
                xlsx_chart.x_axis().set_date_axis(true).set_num_format(DATE);
            } else {
                xlsx_chart = XlsxChart::new(ChartType::ScatterStraight);
                if at_kind == Some(ColumnKind::Timestamp) {
                    xlsx_chart.x_axis().set_num_format("yyyy-mm-dd hh:mm");
                }
            }
            xlsx_chart
                .add_series()
                .set_name(header(*value)?)
                .set_categories(range(*at)?)
                .set_values(range(*value)?);
            xlsx_chart.legend().set_hidden();
        }
    }
    xlsx_chart.title().set_name(chart.title.as_str());
    Ok(xlsx_chart)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    use calamine::{open_workbook, Data, Reader, Xlsx};
    use chrono::{NaiveDateTime, TimeZone};
    use rust_decimal::Decimal;

    use super::*;
    use crate::model::{Chart, Column};
    use crate::text::NdjsonWriter;

    /// A file in the temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let unique = format!(
                "reports-{}-{}-{name}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            Self(std::env::temp_dir().join(unique))
        }

        fn create(&self) -> std::fs::File {
            std::fs::File::create(&self.0).unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn meta() -> Meta {
        Meta {
            report: "spend".to_owned(),
            title: "Spend report".to_owned(),
            tenant: "acme".to_owned(),
            period: Some((date(2024, 1, 1), date(2024, 1, 31))),
            as_of: Utc.with_ymd_and_hms(2024, 2, 1, 6, 30, 0).unwrap(),
            cursor: "1234-5".to_owned(),
            params: serde_json::json!({"from": "2024-01-01", "to": "2024-01-31", "team": null}),
        }
    }

    fn date(year: i32, month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(year, month, day).unwrap()
    }

    fn instant(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn money(text: &str) -> Cell {
        Cell::Money(text.parse::<Decimal>().unwrap())
    }

    fn section(name: &str, columns: &[(&str, ColumnKind)], charts: Vec<Chart>) -> Section {
        Section {
            name: name.to_owned(),
            title: format!("The {name}"),
            columns: columns
                .iter()
                .map(|(name, kind)| Column::new(name, *kind))
                .collect(),
            charts,
        }
    }

    fn report() -> Vec<(Section, Vec<Vec<Cell>>)> {
        let by_team = section(
            "spend_by_team",
            &[
                ("team", ColumnKind::Text),
                (
                    "spend",
                    ColumnKind::Money {
                        currency_column: None,
                    },
                ),
            ],
            vec![Chart {
                title: "Spend by team".to_owned(),
                kind: ChartKind::Bars {
                    category: 0,
                    value: 1,
                    line: Some(("budget".to_owned(), 1000.0)),
                },
            }],
        );
        let by_team_rows = vec![
            vec![Cell::text("core"), money("812.5")],
            vec![Cell::text("growth"), money("1200")],
            vec![Cell::text("research"), money("99.99")],
        ];
        let kinds = section(
            "every_kind",
            &[
                ("name", ColumnKind::Text),
                ("count", ColumnKind::Integer),
                ("mean", ColumnKind::Number),
                (
                    "amount",
                    ColumnKind::Money {
                        currency_column: Some(4),
                    },
                ),
                ("currency", ColumnKind::Text),
                ("share", ColumnKind::Percent),
                ("day", ColumnKind::Date),
                ("at", ColumnKind::Timestamp),
                ("billable", ColumnKind::Boolean),
                ("note", ColumnKind::Text),
            ],
            Vec::new(),
        );
        let kinds_rows = vec![
            vec![
                Cell::text("first"),
                Cell::Integer(42),
                Cell::Number(1.5),
                money("1234.56"),
                Cell::text("USD"),
                Cell::Percent(0.25),
                Cell::Date(date(2024, 1, 15)),
                Cell::Timestamp(instant("2024-01-15T13:45:30.250Z")),
                Cell::Boolean(true),
                Cell::Empty,
            ],
            vec![
                Cell::text("second"),
                Cell::Integer(-7),
                Cell::Number(f64::NAN),
                money("0.12345678"),
                Cell::text("EUR"),
                Cell::Percent(1.0),
                Cell::Date(date(2023, 12, 31)),
                Cell::Timestamp(instant("2023-12-31T23:59:59Z")),
                Cell::Boolean(false),
                Cell::text("a note"),
            ],
        ];
        vec![(by_team, by_team_rows), (kinds, kinds_rows)]
    }

    fn write(mut writer: Box<dyn ReportWriter>, report: &[(Section, Vec<Vec<Cell>>)]) -> Written {
        for (section, rows) in report {
            writer.section(section).unwrap();
            for row in rows {
                writer.row(row).unwrap();
            }
        }
        writer.finish().unwrap()
    }

    fn zip_entry(path: &Path, name: &str) -> String {
        let mut archive = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
        let mut text = String::new();
        archive.by_name(name).unwrap().read_to_string(&mut text).unwrap();
        text
    }

    /// The value of `attribute` in the first element of `text` starting with `start`.
    fn attribute<'a>(text: &'a str, start: &str, attribute: &str) -> &'a str {
        let element = &text[text.find(start).unwrap_or_else(|| panic!("no {start}"))..];
        let element = &element[..element.find('>').unwrap()];
        let value = &element[element.find(&format!(" {attribute}=\"")).unwrap() + attribute.len() + 3..];
        &value[..value.find('"').unwrap()]
    }

    /// The number format of a cell, read from the sheet's XML and the styles ("General" for
    /// a cell without a style or with Excel's built-in 0).
    fn number_format(path: &Path, sheet: &str, cell: &str) -> String {
        let sheet = zip_entry(path, &format!("xl/worksheets/{sheet}.xml"));
        let start = format!("<c r=\"{cell}\"");
        let element = &sheet[sheet.find(&start).unwrap()..];
        if !element[..element.find('>').unwrap()].contains(" s=\"") {
            return "General".to_owned();
        }
        let style: usize = attribute(&sheet, &start, "s").parse().unwrap();
        let styles = zip_entry(path, "xl/styles.xml");
        let xfs = &styles[styles.find("<cellXfs").unwrap()..];
        let xf = xfs.match_indices("<xf ").nth(style).unwrap().0;
        match attribute(&xfs[xf..], "<xf ", "numFmtId") {
            "0" => "General".to_owned(),
            id => attribute(&styles, &format!("<numFmt numFmtId=\"{id}\""), "formatCode").to_owned(),
        }
    }

    fn datetime(cell: Option<&Data>) -> NaiveDateTime {
        match cell {
            Some(Data::DateTime(value)) => value.as_datetime().unwrap(),
            other => panic!("not a date-time: {other:?}"),
        }
    }

    #[test]
    fn a_report_reads_back_as_typed_cells_with_a_cover_and_charts() {
        let file = TempFile::new("report.xlsx");
        let report = report();
        let written = write(Box::new(XlsxWriter::new(file.create(), meta())), &report);
        assert_eq!(written.rows, 5);

        let ndjson = TempFile::new("report.ndjson");
        let from_ndjson = write(Box::new(NdjsonWriter::new(ndjson.create())), &report);
        assert_eq!(written.data_sha256, from_ndjson.data_sha256);

        let mut book: Xlsx<_> = open_workbook(&file.0).unwrap();
        assert_eq!(book.sheet_names(), ["Cover", "spend_by_team", "every_kind"]);

        // The cover: a label in A, its value in B.
        let cover = book.worksheet_range("Cover").unwrap();
        let value_of = |label: &str| {
            let row = (0..cover.height() as u32)
                .find(|&row| cover.get_value((row, 0)) == Some(&Data::String(label.to_owned())))
                .unwrap_or_else(|| panic!("no {label} on the cover"));
            cover.get_value((row, 1)).cloned()
        };
        assert_eq!(
            cover.get_value((0, 0)),
            Some(&Data::String("Spend report".to_owned()))
        );
        assert_eq!(value_of("Report"), Some(Data::String("spend".to_owned())));
        assert_eq!(value_of("Tenant"), Some(Data::String("acme".to_owned())));
        assert_eq!(
            datetime(value_of("Period from").as_ref()),
            date(2024, 1, 1).and_hms_opt(0, 0, 0).unwrap()
        );
        assert_eq!(
            datetime(value_of("Period to").as_ref()),
            date(2024, 1, 31).and_hms_opt(0, 0, 0).unwrap()
        );
        assert_eq!(
            datetime(value_of("As of (UTC)").as_ref()),
            meta().as_of.naive_utc()
        );
        assert_eq!(value_of("Data cursor"), Some(Data::String("1234-5".to_owned())));
        assert_eq!(
            value_of("Parameters"),
            Some(Data::String(
                r#"{"from":"2024-01-01","team":null,"to":"2024-01-31"}"#.to_owned()
            ))
        );
        assert_eq!(
            value_of("Data SHA-256"),
            Some(Data::String(written.data_sha256.clone()))
        );
        // The sections and their row counts.
        assert_eq!(value_of("Section"), Some(Data::String("Title".to_owned())));
        assert_eq!(
            value_of("spend_by_team"),
            Some(Data::String("The spend_by_team".to_owned()))
        );
        let rows_of = |name: &str| {
            let row = (0..cover.height() as u32)
                .find(|&row| cover.get_value((row, 0)) == Some(&Data::String(name.to_owned())))
                .unwrap();
            cover.get_value((row, 2)).cloned()
        };
        assert_eq!(rows_of("spend_by_team"), Some(Data::Float(3.0)));
        assert_eq!(rows_of("every_kind"), Some(Data::Float(2.0)));

        // The bars' sheet: the table, and the budget in a helper column right of it.
        let bars = book.worksheet_range("spend_by_team").unwrap();
        assert_eq!(bars.height(), 4);
        let header: Vec<_> = (0..3).map(|col| bars.get_value((0, col)).cloned()).collect();
        assert_eq!(
            header,
            ["team", "spend", "budget"].map(|text| Some(Data::String(text.to_owned())))
        );
        assert_eq!(bars.get_value((2, 1)), Some(&Data::Float(1200.0)));
        assert_eq!(bars.get_value((3, 2)), Some(&Data::Float(1000.0)));

        let kinds = book.worksheet_range("every_kind").unwrap();
        assert_eq!(kinds.height(), 3);
        let header: Vec<_> = (0..10)
            .map(|col| kinds.get_value((0, col)).cloned().unwrap())
            .collect();
        assert_eq!(
            header,
            ["name", "count", "mean", "amount", "currency", "share", "day", "at", "billable", "note"]
                .map(|text| Data::String(text.to_owned()))
        );
        let cell = |row: u32, col: u32| kinds.get_value((row, col)).cloned().unwrap_or(Data::Empty);
        assert_eq!(cell(1, 0), Data::String("first".to_owned()));
        assert_eq!(cell(1, 1), Data::Float(42.0));
        assert_eq!(cell(1, 2), Data::Float(1.5));
        assert_eq!(cell(1, 3), Data::Float(1234.56));
        assert_eq!(cell(1, 4), Data::String("USD".to_owned()));
        assert_eq!(cell(1, 5), Data::Float(0.25));
        assert_eq!(
            datetime(Some(&cell(1, 6))),
            date(2024, 1, 15).and_hms_opt(0, 0, 0).unwrap()
        );
        assert_eq!(
            datetime(Some(&cell(1, 7))),
            date(2024, 1, 15).and_hms_milli_opt(13, 45, 30, 250).unwrap()
        );
        assert_eq!(cell(1, 8), Data::Bool(true));
        assert_eq!(cell(1, 9), Data::Empty);
        assert_eq!(cell(2, 1), Data::Float(-7.0));
        assert_eq!(cell(2, 2), Data::Empty, "NaN is written empty");
        assert_eq!(cell(2, 3), Data::Float(0.12345678));
        assert_eq!(
            datetime(Some(&cell(2, 6))),
            date(2023, 12, 31).and_hms_opt(0, 0, 0).unwrap()
        );
        assert_eq!(
            datetime(Some(&cell(2, 7))),
            date(2023, 12, 31).and_hms_opt(23, 59, 59).unwrap()
        );
        assert_eq!(cell(2, 8), Data::Bool(false));
        assert_eq!(cell(2, 9), Data::String("a note".to_owned()));

        // Money is formatted in its row's currency; without a currency column, plainly.
        assert_eq!(number_format(&file.0, "sheet3", "D2"), "[$USD] #,##0.00######");
        assert_eq!(number_format(&file.0, "sheet3", "D3"), "[$EUR] #,##0.00######");
        assert_eq!(number_format(&file.0, "sheet2", "B2"), "#,##0.00######");
        assert_eq!(number_format(&file.0, "sheet3", "F2"), "0.00%");

        // The header is frozen and filtered over every row.
        let sheet = zip_entry(&file.0, "xl/worksheets/sheet3.xml");
        assert!(
            sheet.contains(r#"<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>"#)
        );
        assert!(sheet.contains(r#"<autoFilter ref="A1:J3"/>"#), "{sheet}");

        // A column chart of the sheet's cells with the budget as a line.
        let chart = zip_entry(&file.0, "xl/charts/chart1.xml");
        assert!(chart.contains("<c:barChart>"));
        assert!(chart.contains("<c:lineChart>"));
        assert!(chart.contains("<c:f>spend_by_team!$B$2:$B$4</c:f>"), "{chart}");
        assert!(chart.contains("<c:f>spend_by_team!$C$2:$C$4</c:f>"), "{chart}");
        // Saved with its data, for readers that do not recalculate charts.
        assert!(
            chart.contains("<c:v>growth</c:v>") && chart.contains("<c:v>1200</c:v>"),
            "{chart}"
        );
    }

    #[test]
    fn a_cell_unlike_its_column_is_shown_as_what_it_is() {
        let mixed = section(
            "mixed",
            &[
                ("day", ColumnKind::Date),
                ("note", ColumnKind::Text),
                ("share", ColumnKind::Percent),
            ],
            Vec::new(),
        );
        let rows = vec![
            vec![Cell::Date(date(2024, 1, 2)), Cell::text("a"), Cell::Percent(0.5)],
            vec![Cell::Integer(5), Cell::Date(date(2024, 1, 3)), Cell::Number(0.5)],
        ];
        let file = TempFile::new("mixed.xlsx");
        write(Box::new(XlsxWriter::new(file.create(), meta())), &[(mixed, rows)]);
        assert_eq!(number_format(&file.0, "sheet2", "A2"), DATE);
        assert_eq!(number_format(&file.0, "sheet2", "A3"), "General");
        assert_eq!(number_format(&file.0, "sheet2", "B3"), DATE);
        assert_eq!(number_format(&file.0, "sheet2", "C2"), "0.00%");
        assert_eq!(number_format(&file.0, "sheet2", "C3"), "General");
    }

    #[test]
    fn the_same_report_gives_the_same_bytes() {
        let (first, second) = (TempFile::new("first.xlsx"), TempFile::new("second.xlsx"));
        write(Box::new(XlsxWriter::new(first.create(), meta())), &report());
        write(Box::new(XlsxWriter::new(second.create(), meta())), &report());
        assert!(std::fs::read(&first.0).unwrap() == std::fs::read(&second.0).unwrap());
        let core = zip_entry(&first.0, "docProps/core.xml");
        assert!(core.contains("2024-02-01T06:30:00Z"), "{core}");
    }

    #[test]
    fn intervals_and_lines_are_charted() {
        let variants = section(
            "variants",
            &[
                ("variant", ColumnKind::Text),
                ("mean", ColumnKind::Number),
                ("low", ColumnKind::Number),
                ("high", ColumnKind::Number),
            ],
            vec![Chart {
                title: "Means and 95% intervals".to_owned(),
                kind: ChartKind::Intervals {
                    label: 0,
                    mean: 1,
                    low: 2,
                    high: 3,
                },
            }],
        );
        let daily = section(
            "daily",
            &[
                ("day", ColumnKind::Date),
                ("at", ColumnKind::Timestamp),
                ("spend", ColumnKind::Number),
            ],
            vec![
                Chart {
                    title: "By day".to_owned(),
                    kind: ChartKind::Line { at: 0, value: 2 },
                },
                Chart {
                    title: "By instant".to_owned(),
                    kind: ChartKind::Line { at: 1, value: 2 },
                },
            ],
        );
        let report = vec![
            (
                variants,
                vec![
                    vec![
                        Cell::text("a"),
                        Cell::Number(1.0),
                        Cell::Number(0.5),
                        Cell::Number(1.5),
                    ],
                    vec![
                        Cell::text("b"),
                        Cell::Number(2.0),
                        Cell::Number(1.2),
                        Cell::Number(2.5),
                    ],
                ],
            ),
            (
                daily,
                (1..=3)
                    .map(|day| {
                        vec![
                            Cell::Date(date(2024, 1, day)),
                            Cell::Timestamp(Utc.with_ymd_and_hms(2024, 1, day, 12, 0, 0).unwrap()),
                            Cell::Number(f64::from(day) * 10.0),
                        ]
                    })
                    .collect(),
            ),
        ];
        let file = TempFile::new("charts.xlsx");
        write(Box::new(XlsxWriter::new(file.create(), meta())), &report);

        let intervals = zip_entry(&file.0, "xl/charts/chart1.xml");
        assert!(intervals.contains("<c:hiLowLines/>"), "{intervals}");
        assert!(intervals.contains("<c:f>variants!$D$2:$D$3</c:f>"));
        let by_day = zip_entry(&file.0, "xl/charts/chart2.xml");
        assert!(
            by_day.contains("<c:lineChart>") && by_day.contains("<c:dateAx>"),
            "{by_day}"
        );
        let by_instant = zip_entry(&file.0, "xl/charts/chart3.xml");
        assert!(by_instant.contains("<c:scatterChart>"), "{by_instant}");
        assert!(by_instant.contains("<c:f>daily!$B$2:$B$4</c:f>"));
    }

    #[test]
    fn a_protocol_or_name_error_is_refused() {
        let file = TempFile::new("refused.xlsx");
        let mut writer = XlsxWriter::new(file.create(), meta());
        let one = section("cover", &[("a", ColumnKind::Text)], Vec::new());
        assert!(matches!(writer.row(&[Cell::Empty]), Err(ReportError::Invalid(_))));
        assert!(matches!(writer.section(&one), Err(ReportError::Invalid(_))));
        let bad_chart = section(
            "bad_chart",
            &[("a", ColumnKind::Text)],
            vec![Chart {
                title: "Off the table".to_owned(),
                kind: ChartKind::Line { at: 0, value: 3 },
            }],
        );
        assert!(matches!(writer.section(&bad_chart), Err(ReportError::Invalid(_))));
        for name in ["x".repeat(32), "a/b".to_owned(), "history".to_owned()] {
            let refused = section(&name, &[("a", ColumnKind::Text)], Vec::new());
            assert!(
                matches!(writer.section(&refused), Err(ReportError::Invalid(_))),
                "{name}"
            );
        }
        // Refused sections added no sheet: the report is still whole.
        let fine = section("fine", &[("a", ColumnKind::Text)], Vec::new());
        writer.section(&fine).unwrap();
        writer.row(&[Cell::text("x")]).unwrap();
        assert!(matches!(writer.row(&[]), Err(ReportError::Invalid(_))));
        Box::new(writer).finish().unwrap();
        let book: Xlsx<_> = open_workbook(&file.0).unwrap();
        assert_eq!(book.sheet_names(), ["Cover", "fine"]);
    }

    #[test]
    fn excel_dates_count_from_day_zero() {
        assert_eq!(excel_date(date(1900, 3, 1)), Some(61.0));
        assert_eq!(excel_date(date(2024, 1, 1)), Some(45292.0));
        assert_eq!(excel_date(date(9999, 12, 31)), Some(2_958_465.0));
        assert_eq!(excel_date(date(1900, 2, 28)), None);
        assert_eq!(excel_date(date(10000, 1, 1)), None);
        assert_eq!(excel_instant(instant("2024-01-01T12:00:00Z")), Some(45292.5));
        let long = "é".repeat(MAX_TEXT + 5);
        assert_eq!(excel_text(&long).chars().count(), MAX_TEXT);
    }

    /// Writes a section of `rows` rows of the first `columns` (8 or 12) of a dozen columns.
    fn write_long(file: &TempFile, rows: u32, columns: usize) -> (Written, std::time::Duration) {
        let currency_column = (columns > 8).then_some(8);
        let kinds = [
            ("id", ColumnKind::Integer),
            ("name", ColumnKind::Text),
            ("value", ColumnKind::Number),
            ("cost", ColumnKind::Money { currency_column }),
            ("share", ColumnKind::Percent),
            ("day", ColumnKind::Date),
            ("at", ColumnKind::Timestamp),
            ("ok", ColumnKind::Boolean),
            ("currency", ColumnKind::Text),
            ("count", ColumnKind::Integer),
            ("latency_ms", ColumnKind::Number),
            ("note", ColumnKind::Text),
        ];
        let long = section("long", &kinds[..columns], Vec::new());
        let start = instant("2024-01-01T00:00:00Z");
        let started = std::time::Instant::now();
        let mut writer: Box<dyn ReportWriter> = Box::new(XlsxWriter::new(file.create(), meta()));
        writer.section(&long).unwrap();
        for i in 0..rows {
            let row = [
                Cell::Integer(i64::from(i)),
                Cell::text(format!("row {i}")),
                Cell::Number(f64::from(i) / 7.0),
                Cell::Money(Decimal::new(i64::from(i) * 101, 2)),
                Cell::Percent(f64::from(i % 100) / 100.0),
                Cell::Date(date(2024, 1, 1) + chrono::Days::new(u64::from(i % 365))),
                Cell::Timestamp(start + chrono::Duration::seconds(i64::from(i))),
                Cell::Boolean(i.is_multiple_of(2)),
                Cell::text(["USD", "EUR", "GBP"][i as usize % 3]),
                Cell::Integer(i64::from(i % 1000)),
                Cell::Number(f64::from(i % 977) * 0.731),
                if i.is_multiple_of(10) {
                    Cell::text("checked by finance")
                } else {
                    Cell::Empty
                },
            ];
            writer.row(&row[..columns]).unwrap();
        }
        let written = writer.finish().unwrap();
        (written, started.elapsed())
    }

    #[test]
    fn a_long_section_is_streamed() {
        // 50,000 rows keep the test to a few seconds in a debug build (the written file is
        // read back whole); the writer's memory does not depend on the count.
        const ROWS: u32 = 50_000;
        let file = TempFile::new("long.xlsx");
        let (written, wrote) = write_long(&file, ROWS, 8);
        assert_eq!(written.rows, u64::from(ROWS));

        let started = std::time::Instant::now();
        let mut book: Xlsx<_> = open_workbook(&file.0).unwrap();
        let sheet = book.worksheet_range("long").unwrap();
        assert_eq!(sheet.height(), ROWS as usize + 1);
        let last = ROWS - 1;
        assert_eq!(sheet.get_value((ROWS, 0)), Some(&Data::Float(f64::from(last))));
        assert_eq!(
            sheet.get_value((ROWS, 1)),
            Some(&Data::String(format!("row {last}")))
        );
        assert_eq!(
            sheet.get_value((ROWS, 3)),
            Some(&Data::Float(f64::from(last) * 1.01))
        );
        assert_eq!(
            datetime(sheet.get_value((ROWS, 6))),
            (instant("2024-01-01T00:00:00Z") + chrono::Duration::seconds(i64::from(last))).naive_utc()
        );
        assert_eq!(
            sheet.get_value((ROWS, 7)),
            Some(&Data::Bool(last.is_multiple_of(2)))
        );
        eprintln!(
            "{ROWS} rows × 8 columns: written in {wrote:?}, {} bytes, read back in {:?}",
            std::fs::metadata(&file.0).unwrap().len(),
            started.elapsed()
        );
    }
}
