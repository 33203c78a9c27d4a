//! PDF: an A4 document for reading — a title block, then each section's charts and table.
//!
//! A section keeps at most [`ROW_CAP`] rows; the rest are counted (and hashed, like every
//! row) but not kept, and the table says so. The document is laid out and written at
//! `finish`, when the page count ("Page n of N") and the data hash are known.
//!
//! Text is set in DejaVu Sans, embedded and subset to the characters used: the PDF
//! built-in fonts cover Latin-1 only, and an embedded font with a Unicode map is what makes
//! "Zürich café – São Paulo" both render and extract. Text is measured with the font's own
//! advance widths (no kerning, which is also how it is drawn). Charts are vector drawings.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::OnceLock;

use printpdf::{
    Color, FontId, Line, LineDashPattern, LinePoint, Mm, Op, PaintMode, ParsedFont, PdfDocument, PdfFont,
    PdfFontHandle, PdfPage, PdfParseErrorSeverity, PdfSaveOptions, Point, Pt, Rect, Rgb, TextItem,
};
use sha2::{Digest, Sha256};

use crate::model::{format_float, format_instant, Cell, Chart, ChartKind, ColumnKind, Meta, Section};
use crate::text::{check_row, DataHash};
use crate::{ReportError, ReportWriter, Written};

/// The most rows of one section the PDF shows; the exports in other formats hold them all.
pub const ROW_CAP: usize = 2_000;

/// Intervals drawn in one chart: a band each, and the chart must fit on one page.
const MAX_INTERVALS: usize = 36;

const REGULAR_TTF: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
const BOLD_TTF: &[u8] = include_bytes!("../fonts/DejaVuSans-Bold.ttf");

// A4 portrait, in points (1/72 in); PDF's origin is the bottom-left corner.
const PAGE_W: f32 = 595.276;
const PAGE_H: f32 = 841.89;
const LEFT: f32 = 48.0;
const RIGHT: f32 = PAGE_W - 48.0;
const CONTENT_W: f32 = RIGHT - LEFT;
const TOP: f32 = PAGE_H - 48.0;
/// Lowest point content may reach; the footer sits below it.
const BOTTOM: f32 = 60.0;
const FOOTER_BASELINE: f32 = 34.0;

const ROW_H: f32 = 11.5;
const HEADER_H: f32 = 15.0;
const CELL_PAD: f32 = 4.0;
/// At most this much is added to a column when the table is narrower than the page: a wide
/// table of two columns reads worse than a narrow one.
const MAX_EXTRA_PER_COLUMN: f32 = 48.0;
const CHART_H: f32 = 190.0;
const LABEL_W: f32 = 92.0;

type Colour = (f32, f32, f32);
const INK: Colour = (0.10, 0.10, 0.12);
const MUTED: Colour = (0.42, 0.42, 0.46);
const RULE: Colour = (0.55, 0.55, 0.58);
const GRID: Colour = (0.86, 0.86, 0.88);
const ZEBRA: Colour = (0.955, 0.958, 0.965);
const BAR: Colour = (0.24, 0.43, 0.68);
const MARK: Colour = (0.80, 0.18, 0.16);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Face {
    Regular,
    Bold,
}

#[derive(Clone, Copy)]
struct Style {
    face: Face,
    size: f32,
    colour: Colour,
}

const fn style(face: Face, size: f32, colour: Colour) -> Style {
    Style { face, size, colour }
}

const TITLE: Style = style(Face::Bold, 18.0, INK);
const LABEL: Style = style(Face::Bold, 8.5, INK);
const VALUE: Style = style(Face::Regular, 8.5, INK);
const NOTE: Style = style(Face::Regular, 7.5, MUTED);
const HEADING: Style = style(Face::Bold, 13.0, INK);
const CHART_TITLE: Style = style(Face::Bold, 9.0, INK);
const AXIS: Style = style(Face::Regular, 6.5, MUTED);
const CELL: Style = style(Face::Regular, 7.5, INK);
const HEAD_CELL: Style = style(Face::Bold, 7.5, INK);
const FOOTER: Style = style(Face::Regular, 7.0, MUTED);

fn pdf_error(message: impl std::fmt::Display) -> ReportError {
    ReportError::Pdf(message.to_string())
}

/// One embedded face: its parsed tables measure text; its program is subset at the end.
struct Font {
    parsed: ParsedFont,
    program: &'static [u8],
    /// The PostScript name, after the subset tag.
    name: &'static str,
    /// The page resource name text refers to it by.
    resource: &'static str,
}

impl Font {
    fn load(program: &'static [u8], name: &'static str, resource: &'static str) -> Result<Font, String> {
        let parsed = ParsedFont::from_bytes(program, 0, &mut Vec::new())
            .ok_or_else(|| format!("the font {name} cannot be read"))?;
        Ok(Font {
            parsed,
            program,
            name,
            resource,
        })
    }

    fn has_glyph(&self, c: char) -> bool {
        self.parsed
            .lookup_glyph_index(c as u32)
            .is_some_and(|gid| gid != 0)
    }

    /// What is drawn for `text`: line breaks and tabs as spaces, characters the font lacks
    /// as `?` (rather than an empty box that extracts as nothing).
    fn clean(&self, text: &str) -> String {
        text.chars()
            .map(|c| match c {
                c if c.is_control() => ' ',
                c if self.has_glyph(c) => c,
                _ => '?',
            })
            .collect()
    }

    /// Advance of `c` in ems.
    fn advance(&self, c: char) -> f32 {
        let units_per_em = f32::from(self.parsed.units_per_em.max(1));
        let c = if c.is_control() {
            ' '
        } else if self.has_glyph(c) {
            c
        } else {
            '?'
        };
        let width = self
            .parsed
            .lookup_glyph_index(c as u32)
            .and_then(|gid| self.parsed.get_glyph_width(gid))
            .map_or(units_per_em / 2.0, f32::from);
        width / units_per_em
    }

    fn width(&self, text: &str, size: f32) -> f32 {
        text.chars().map(|c| self.advance(c)).sum::<f32>() * size
    }

    /// The font program reduced to the glyphs of `chars` (and `.notdef`), renamed with a
    /// subset tag derived from its content, so equal documents embed equal bytes.
    fn subset(&self, chars: &BTreeSet<char>) -> Result<ParsedFont, ReportError> {
        use allsorts::binary::read::ReadScope;
        use allsorts::font_data::FontData;
        use allsorts::subset::{subset, CmapTarget, SubsetProfile};

        let glyphs: BTreeSet<u16> = chars
            .iter()
            .filter_map(|c| self.parsed.lookup_glyph_index(*c as u32))
            .filter(|gid| *gid != 0)
            .collect();
        // The subsetter requires .notdef first and no duplicates.
        let ids: Vec<u16> = std::iter::once(0).chain(glyphs).collect();
        let file = ReadScope::new(self.program)
            .read::<FontData<'_>>()
            .map_err(|error| pdf_error(format!("the font {}: {error}", self.name)))?;
        let provider = file
            .table_provider(0)
            .map_err(|error| pdf_error(format!("the font {}: {error}", self.name)))?;
        let program = subset(&provider, &ids, &SubsetProfile::Pdf, CmapTarget::Unicode)
            .map_err(|error| pdf_error(format!("subsetting the font {}: {error}", self.name)))?;
        let mut parsed = ParsedFont::from_bytes(&program, 0, &mut Vec::new())
            .ok_or_else(|| pdf_error(format!("the subset of the font {} cannot be read", self.name)))?;
        let digest = Sha256::digest(&program);
        let tag: String = digest
            .iter()
            .take(6)
            .map(|byte| char::from(b'A' + byte % 26))
            .collect();
        parsed.font_name = Some(format!("{tag}+{}", self.name));
        Ok(parsed)
    }
}

struct Fonts {
    regular: Font,
    bold: Font,
}

impl Fonts {
    fn get(&self, face: Face) -> &Font {
        match face {
            Face::Regular => &self.regular,
            Face::Bold => &self.bold,
        }
    }
}

/// The fonts, parsed once per process: their tables are the same for every report.
fn fonts() -> Result<&'static Fonts, ReportError> {
    static FONTS: OnceLock<Result<Fonts, String>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            Ok(Fonts {
                regular: Font::load(REGULAR_TTF, "DejaVuSans", "DejaVuSans")?,
                bold: Font::load(BOLD_TTF, "DejaVuSans-Bold", "DejaVuSansBold")?,
            })
        })
        .as_ref()
        .map_err(pdf_error)
}

/// A section as the PDF keeps it: its first [`ROW_CAP`] rows and how many it had.
struct Kept {
    section: Section,
    rows: Vec<Vec<Cell>>,
    total: u64,
}

/// The PDF writer: keeps the rows it will show, hashes every row, lays out at `finish`.
pub struct PdfWriter {
    out: std::fs::File,
    meta: Meta,
    hash: DataHash,
    current: Option<Section>,
    sections: Vec<Kept>,
}

impl PdfWriter {
    pub fn new(out: std::fs::File, meta: Meta) -> Self {
        Self {
            out,
            meta,
            hash: DataHash::default(),
            current: None,
            sections: Vec::new(),
        }
    }
}

impl ReportWriter for PdfWriter {
    fn section(&mut self, section: &Section) -> Result<(), ReportError> {
        self.current = Some(section.clone());
        self.sections.push(Kept {
            section: section.clone(),
            rows: Vec::new(),
            total: 0,
        });
        Ok(())
    }

    fn row(&mut self, cells: &[Cell]) -> Result<(), ReportError> {
        let section = check_row(&self.current, cells)?;
        self.hash.add(section, cells);
        if let Some(kept) = self.sections.last_mut() {
            kept.total += 1;
            if kept.rows.len() < ROW_CAP {
                kept.rows.push(cells.to_vec());
            }
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Written, ReportError> {
        let PdfWriter {
            mut out,
            meta,
            hash,
            sections,
            ..
        } = *self;
        let rows = hash.rows();
        let data_sha256 = hash.finish();
        let fonts = fonts()?;

        let mut layout = Layout::new(fonts);
        layout.title_block(&meta, &data_sha256, rows, sections.len());
        if sections.is_empty() {
            layout.y -= 12.0;
            layout.text(NOTE, LEFT, layout.y, "This report has no sections.");
        }
        for kept in &sections {
            layout.section(kept);
        }
        let (pages, used) = layout.finish(&meta);
        let bytes = assemble(&meta, &data_sha256, pages, &used, fonts)?;

        out.write_all(&bytes)?;
        out.flush()?;
        out.sync_all()?;
        Ok(Written { rows, data_sha256 })
    }
}

/// The PDF file of laid-out pages: fonts subset to what the pages use, dates and document
/// id taken from the report rather than the clock or a random source, so the same report
/// gives the same bytes.
fn assemble(
    meta: &Meta,
    data_sha256: &str,
    pages: Vec<Vec<Op>>,
    used: &[BTreeSet<char>; 2],
    fonts: &Fonts,
) -> Result<Vec<u8>, ReportError> {
    let mut doc = PdfDocument::new(&meta.title);
    let as_of = printpdf::OffsetDateTime::from_unix_timestamp(meta.as_of.timestamp()).map_err(pdf_error)?;
    let info = &mut doc.metadata.info;
    info.creation_date = as_of;
    info.modification_date = as_of;
    info.metadata_date = as_of;
    info.creator = "aipm".to_owned();
    info.producer = "aipm reports".to_owned();
    info.subject = format!("{} report for {}", meta.report, meta.tenant);
    info.identifier = data_sha256.to_owned();
    info.keywords = vec![meta.report.clone()];

    for (font, chars) in [&fonts.regular, &fonts.bold].into_iter().zip(used) {
        if !chars.is_empty() {
            let subset = font.subset(chars)?;
            doc.resources
                .fonts
                .map
                .insert(FontId(font.resource.to_owned()), PdfFont::new(subset));
        }
    }
    doc.pages = pages
        .into_iter()
        .map(|ops| PdfPage::new(Mm(210.0), Mm(297.0), ops))
        .collect();

    let options = PdfSaveOptions {
        optimize: true,
        // Already subset above; printpdf's own subsetter needs its layout feature.
        subset_fonts: false,
        secure: true,
        image_optimization: None,
    };
    let mut warnings = Vec::new();
    let mut document = doc.to_lopdf_document(&options, &mut warnings);
    if let Some(warning) = warnings
        .iter()
        .find(|warning| warning.severity == PdfParseErrorSeverity::Error)
    {
        return Err(pdf_error(&warning.msg));
    }

    // printpdf draws the trailer's /ID from a counter; the report's identity is better.
    let mut id = Sha256::new();
    for part in [
        data_sha256,
        &format_instant(meta.as_of),
        &meta.cursor,
        &meta.tenant,
        &meta.report,
        &meta.title,
        &meta.params.to_string(),
    ] {
        id.update(part.as_bytes());
        id.update([0]);
    }
    let id = id.finalize()[..16].to_vec();
    document.trailer.set(
        "ID",
        lopdf::Object::Array(vec![
            lopdf::Object::String(id.clone(), lopdf::StringFormat::Hexadecimal),
            lopdf::Object::String(id, lopdf::StringFormat::Hexadecimal),
        ]),
    );
    // printpdf names a PDF/X version (empty) in the document information, which readers
    // take as a claim of PDF/X conformance this document does not make.
    if let Ok(info) = document
        .trailer
        .get(b"Info")
        .and_then(lopdf::Object::as_reference)
    {
        if let Ok(lopdf::Object::Dictionary(info)) = document.get_object_mut(info) {
            info.remove(b"GTS_PDFXVersion");
        }
    }
    document.compress();
    let mut bytes = Vec::new();
    document.save_to(&mut bytes).map_err(pdf_error)?;
    Ok(bytes)
}

/// Places text and drawings on pages, top to bottom, starting a page when one is full.
struct Layout<'f> {
    fonts: &'f Fonts,
    pages: Vec<Vec<Op>>,
    ops: Vec<Op>,
    /// The top of the free space on the current page.
    y: f32,
    /// Characters drawn in each face, for the subsets.
    used: [BTreeSet<char>; 2],
}

impl<'f> Layout<'f> {
    fn new(fonts: &'f Fonts) -> Self {
        Self {
            fonts,
            pages: Vec::new(),
            ops: Vec::new(),
            y: TOP,
            used: [BTreeSet::new(), BTreeSet::new()],
        }
    }

    fn new_page(&mut self) {
        self.pages.push(std::mem::take(&mut self.ops));
        self.y = TOP;
    }

    /// Starts a page unless `height` fits below the cursor (or the page is still empty).
    fn ensure(&mut self, height: f32) {
        if self.y - height < BOTTOM && self.y < TOP {
            self.new_page();
        }
    }

    fn width(&self, style: Style, text: &str) -> f32 {
        self.fonts.get(style.face).width(text, style.size)
    }

    /// `text` cut to `width` with an ellipsis when it is longer.
    fn fit(&self, style: Style, text: &str, width: f32) -> String {
        fit(self.fonts.get(style.face), style.size, text, width)
    }

    fn wrap(&self, style: Style, text: &str, width: f32) -> Vec<String> {
        wrap(self.fonts.get(style.face), style.size, text, width)
    }

    fn text(&mut self, style: Style, x: f32, baseline: f32, text: &str) {
        let font = self.fonts.get(style.face);
        let text = font.clean(text);
        if text.trim().is_empty() {
            return;
        }
        let used = match style.face {
            Face::Regular => &mut self.used[0],
            Face::Bold => &mut self.used[1],
        };
        used.extend(text.chars());
        self.ops.extend([
            Op::SetFillColor {
                col: colour(style.colour),
            },
            // Each run in its own text object: `Td` is then an absolute position.
            Op::StartTextSection,
            Op::SetFont {
                font: PdfFontHandle::External(FontId(font.resource.to_owned())),
                size: Pt(style.size),
            },
            Op::SetTextCursor {
                pos: Point {
                    x: Pt(x),
                    y: Pt(baseline),
                },
            },
            Op::ShowText {
                items: vec![TextItem::Text(text)],
            },
            Op::EndTextSection,
        ]);
    }

    fn text_right(&mut self, style: Style, right: f32, baseline: f32, text: &str) {
        let width = self.width(style, text);
        self.text(style, right - width, baseline, text);
    }

    fn text_centre(&mut self, style: Style, centre: f32, baseline: f32, text: &str) {
        let width = self.width(style, text);
        self.text(style, centre - width / 2.0, baseline, text);
    }

    fn rect(&mut self, x: f32, y: f32, width: f32, height: f32, fill: Colour) {
        self.ops.push(Op::SetFillColor { col: colour(fill) });
        self.ops.push(Op::DrawRectangle {
            rectangle: Rect {
                x: Pt(x),
                y: Pt(y),
                width: Pt(width),
                height: Pt(height),
                // `from_xywh` leaves the mode unset, which paints nothing.
                mode: Some(PaintMode::Fill),
                winding_order: None,
            },
        });
    }

    fn line(&mut self, points: &[(f32, f32)], thickness: f32, stroke: Colour) {
        if points.len() < 2 {
            return;
        }
        self.ops.push(Op::SetOutlineColor { col: colour(stroke) });
        self.ops.push(Op::SetOutlineThickness { pt: Pt(thickness) });
        self.ops.push(Op::DrawLine {
            line: Line {
                points: points
                    .iter()
                    .map(|&(x, y)| LinePoint {
                        p: Point { x: Pt(x), y: Pt(y) },
                        bezier: false,
                    })
                    .collect(),
                is_closed: false,
            },
        });
    }

    fn dashed(&mut self, from: (f32, f32), to: (f32, f32), thickness: f32, stroke: Colour) {
        self.ops.push(Op::SetLineDashPattern {
            dash: LineDashPattern::new(0.0, &[4.0, 2.5]),
        });
        self.line(&[from, to], thickness, stroke);
        self.ops.push(Op::SetLineDashPattern {
            dash: LineDashPattern::solid(),
        });
    }

    fn rule(&mut self, y: f32, thickness: f32, stroke: Colour) {
        self.line(&[(LEFT, y), (RIGHT, y)], thickness, stroke);
    }

    fn title_block(&mut self, meta: &Meta, data_sha256: &str, rows: u64, sections: usize) {
        for line in self.wrap(TITLE, &meta.title, CONTENT_W) {
            self.y -= 22.0;
            self.text(TITLE, LEFT, self.y, &line);
        }
        self.y -= 10.0;

        let mut entries: Vec<(&str, Vec<String>)> = vec![("Tenant", vec![meta.tenant.clone()])];
        if let Some((from, to)) = meta.period {
            entries.push((
                "Period",
                vec![format!(
                    "{} to {} (inclusive)",
                    from.format("%Y-%m-%d"),
                    to.format("%Y-%m-%d")
                )],
            ));
        }
        entries.push(("As of (UTC)", vec![format_instant(meta.as_of)]));
        entries.push(("Data cursor", vec![meta.cursor.clone()]));
        entries.push(("Data SHA-256", vec![data_sha256.to_owned()]));
        entries.push((
            "Rows",
            vec![format!(
                "{} in {} section{}",
                group_digits(&rows.to_string()),
                sections,
                if sections == 1 { "" } else { "s" }
            )],
        ));
        entries.push(("Parameters", parameter_lines(&meta.params)));

        let value_w = CONTENT_W - LABEL_W;
        for (label, values) in entries {
            let lines: Vec<String> = values
                .iter()
                .flat_map(|value| self.wrap(VALUE, value, value_w))
                .collect();
            // An entry of a few lines stays together; a longer one flows on to the next page.
            self.ensure(12.0 + 11.0 * (lines.len().clamp(1, 6) - 1) as f32);
            self.y -= 12.0;
            self.text(LABEL, LEFT, self.y, label);
            for (i, line) in lines.iter().enumerate() {
                if i > 0 {
                    self.ensure(11.0);
                    self.y -= 11.0;
                }
                self.text(VALUE, LEFT + LABEL_W, self.y, line);
            }
            if label == "Data SHA-256" {
                self.y -= 10.0;
                self.text(
                    NOTE,
                    LEFT + LABEL_W,
                    self.y,
                    "The SHA-256 of this report's NDJSON export: the same for every format of it.",
                );
            }
        }
        self.y -= 10.0;
        self.rule(self.y, 0.75, RULE);
        self.y -= 12.0;
    }

    fn section(&mut self, kept: &Kept) {
        let section = &kept.section;
        let first_block = match section.charts.first() {
            Some(chart) => chart_height(chart, &kept.rows),
            None => HEADER_H + 3.0 * ROW_H,
        };
        // Keep the heading with what follows it.
        self.ensure(30.0 + first_block);
        self.y -= 16.0;
        self.text(HEADING, LEFT, self.y, &section.title);
        let shown = kept.rows.len() as u64;
        let count = if kept.total > shown {
            format!(
                "{} rows, the first {} shown",
                group_digits(&kept.total.to_string()),
                group_digits(&shown.to_string())
            )
        } else {
            format!(
                "{} row{}",
                group_digits(&kept.total.to_string()),
                if kept.total == 1 { "" } else { "s" }
            )
        };
        self.text_right(NOTE, RIGHT, self.y, &count);
        self.y -= 12.0;

        for chart in &section.charts {
            self.chart(kept, chart);
        }
        self.table(kept);
        self.y -= 16.0;
    }

    fn chart(&mut self, kept: &Kept, chart: &Chart) {
        let height = chart_height(chart, &kept.rows);
        self.ensure(height + 8.0);
        let top = self.y;
        let mut title = chart.title.clone();
        if let ChartKind::Intervals { mean, .. } = chart.kind {
            let count = kept.rows.iter().filter(|row| plotted(row, mean)).count();
            if count > MAX_INTERVALS {
                title.push_str(&format!(" (the first {MAX_INTERVALS} of {count})"));
            }
        }
        if kept.total > kept.rows.len() as u64 {
            title.push_str(&format!(
                " (first {} rows)",
                group_digits(&kept.rows.len().to_string())
            ));
        }
        let title = self.fit(CHART_TITLE, &title, CONTENT_W);
        self.text(CHART_TITLE, LEFT, top - 10.0, &title);
        let frame = Frame {
            left: LEFT,
            right: RIGHT,
            top: top - 22.0,
            bottom: top - height + 16.0,
        };
        match &chart.kind {
            ChartKind::Bars {
                category,
                value,
                line,
            } => self.bars(&kept.rows, frame, *category, *value, line),
            ChartKind::Intervals {
                label,
                mean,
                low,
                high,
            } => self.intervals(&kept.rows, frame, [*label, *mean, *low, *high]),
            ChartKind::Line { at, value } => self.line_chart(&kept.rows, frame, *at, *value),
        }
        self.y = top - height - 10.0;
    }

    fn no_data(&mut self, frame: Frame) {
        let (l, r, t, b) = (frame.left, frame.right, frame.top, frame.bottom);
        self.line(&[(l, b), (r, b), (r, t), (l, t), (l, b)], 0.5, GRID);
        self.text_centre(VALUE, (l + r) / 2.0, (t + b) / 2.0 - 3.0, "No data");
    }

    /// Horizontal gridlines with their values to the left; returns the plot's left edge.
    fn value_axis(&mut self, frame: Frame, ticks: &Ticks) -> f32 {
        let labels: Vec<(f64, String)> = ticks.values().into_iter().map(|v| (v, ticks.label(v))).collect();
        let widest = labels
            .iter()
            .map(|(_, label)| self.width(AXIS, label))
            .fold(0.0, f32::max)
            .min(CONTENT_W / 4.0);
        let x0 = frame.left + widest + 5.0;
        for (value, label) in &labels {
            let y = frame.y(ticks, *value);
            let stroke = if *value == 0.0 { RULE } else { GRID };
            self.line(&[(x0, y), (frame.right, y)], 0.5, stroke);
            let label = self.fit(AXIS, label, widest);
            self.text_right(AXIS, x0 - 3.0, y - 2.3, &label);
        }
        x0
    }

    fn bars(
        &mut self,
        rows: &[Vec<Cell>],
        frame: Frame,
        category: usize,
        value: usize,
        line: &Option<(String, f64)>,
    ) {
        let data: Vec<(String, f64)> = rows
            .iter()
            .filter_map(|row| {
                let v = row.get(value).and_then(Cell::as_f64).filter(|v| v.is_finite())?;
                Some((row.get(category).map(cell_text).unwrap_or_default(), v))
            })
            .collect();
        if data.is_empty() {
            self.no_data(frame);
            return;
        }
        let line = line.as_ref().filter(|(_, v)| v.is_finite());
        let (mut lo, mut hi) = (0.0f64, 0.0f64);
        for v in data.iter().map(|(_, v)| *v).chain(line.map(|(_, v)| *v)) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let ticks = Ticks::new(lo, hi);
        let x0 = self.value_axis(frame, &ticks);
        let slot = (frame.right - x0) / data.len() as f32;
        let bar = (slot * 0.72).min(36.0);
        let zero = frame.y(&ticks, 0.0);
        for (i, (_, v)) in data.iter().enumerate() {
            let x = x0 + slot * i as f32 + (slot - bar) / 2.0;
            let y = frame.y(&ticks, *v);
            self.rect(x, zero.min(y), bar, (y - zero).abs(), BAR);
        }
        // Category labels, thinned so they don't overlap (a month of days shows every few).
        let widest = data
            .iter()
            .map(|(label, _)| self.width(AXIS, label))
            .fold(0.0, f32::max);
        let step = ((widest + 6.0) / slot).ceil().max(1.0) as usize;
        let mut taken = f32::NEG_INFINITY;
        for (i, (label, _)) in data.iter().enumerate().step_by(step) {
            let label = self.fit(AXIS, label, slot * step as f32 - 2.0);
            taken = self.axis_label(
                frame,
                x0 + slot * (i as f32 + 0.5),
                frame.bottom - 9.0,
                &label,
                taken,
            );
        }
        if let Some((label, v)) = line {
            let y = frame.y(&ticks, *v);
            self.dashed((x0, y), (frame.right, y), 1.0, MARK);
            let text = format!("{label}: {}", format_value(*v));
            let text = self.fit(style(Face::Bold, 7.0, MARK), &text, frame.right - x0);
            self.text_right(style(Face::Bold, 7.0, MARK), frame.right, y + 2.5, &text);
        }
    }

    fn intervals(&mut self, rows: &[Vec<Cell>], frame: Frame, [label, mean, low, high]: [usize; 4]) {
        let value = |row: &Vec<Cell>, i: usize| row.get(i).and_then(Cell::as_f64).filter(|v| v.is_finite());
        let data: Vec<(String, f64, Option<f64>, Option<f64>)> = rows
            .iter()
            .filter_map(|row| {
                let m = value(row, mean)?;
                let name = row.get(label).map(cell_text).unwrap_or_default();
                Some((name, m, value(row, low), value(row, high)))
            })
            .take(MAX_INTERVALS)
            .collect();
        if data.is_empty() {
            self.no_data(frame);
            return;
        }
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (_, m, l, h) in &data {
            for v in [Some(*m), *l, *h].into_iter().flatten() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        let ticks = Ticks::new(lo, hi);
        let widest = data
            .iter()
            .map(|(name, ..)| self.width(VALUE, name))
            .fold(0.0, f32::max);
        let label_w = (widest + 10.0).min(CONTENT_W * 0.3);
        let x0 = frame.left + label_w;
        let x1 = frame.right - 10.0;
        let x = |v: f64| {
            finite_or(
                x0 + ((v - ticks.min) / (ticks.max - ticks.min)) as f32 * (x1 - x0),
                x0,
            )
        };
        for tick in ticks.values() {
            let stroke = if tick == 0.0 { RULE } else { GRID };
            self.line(&[(x(tick), frame.bottom), (x(tick), frame.top)], 0.5, stroke);
            self.text_centre(AXIS, x(tick), frame.bottom - 9.0, &ticks.label(tick));
        }
        self.line(&[(x0, frame.bottom), (x1, frame.bottom)], 0.5, RULE);
        let band = (frame.top - frame.bottom) / data.len() as f32;
        for (i, (name, m, l, h)) in data.iter().enumerate() {
            let y = frame.top - band * (i as f32 + 0.5);
            let name = self.fit(VALUE, name, label_w - 10.0);
            self.text(VALUE, frame.left, y - 3.0, &name);
            let (from, to) = (l.unwrap_or(*m), h.unwrap_or(*m));
            self.line(&[(x(from), y), (x(to), y)], 1.2, BAR);
            for end in [l, h].into_iter().flatten() {
                self.line(&[(x(*end), y - 3.5), (x(*end), y + 3.5)], 1.2, BAR);
            }
            self.rect(x(*m) - 2.75, y - 2.75, 5.5, 5.5, INK);
        }
    }

    fn line_chart(&mut self, rows: &[Vec<Cell>], frame: Frame, at: usize, value: usize) {
        let mut data: Vec<(Option<f64>, String, f64)> = rows
            .iter()
            .filter_map(|row| {
                let v = row.get(value).and_then(Cell::as_f64).filter(|v| v.is_finite())?;
                let cell = row.get(at).unwrap_or(&Cell::Empty);
                let (key, label) = match cell {
                    Cell::Date(day) => (
                        Some(f64::from(chrono::Datelike::num_days_from_ce(day))),
                        cell_text(cell),
                    ),
                    Cell::Timestamp(instant) => (
                        Some(instant.timestamp_millis() as f64 / 86_400_000.0),
                        instant.format("%Y-%m-%d %H:%M").to_string(),
                    ),
                    other => (None, cell_text(other)),
                };
                Some((key, label, v))
            })
            .collect();
        if data.is_empty() {
            self.no_data(frame);
            return;
        }
        // By time when every point has one, else by row order.
        let by_time = data.iter().all(|(key, ..)| key.is_some());
        if by_time {
            data.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        }
        let keys: Vec<f64> = data
            .iter()
            .enumerate()
            .map(|(i, (key, ..))| if by_time { key.unwrap_or(0.0) } else { i as f64 })
            .collect();
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (.., v) in &data {
            lo = lo.min(*v);
            hi = hi.max(*v);
        }
        // Zero is shown when it is near the data, so the slope isn't exaggerated.
        if lo > 0.0 && lo < hi - lo {
            lo = 0.0;
        } else if hi < 0.0 && -hi < hi - lo {
            hi = 0.0;
        }
        let ticks = Ticks::new(lo, hi);
        let x0 = self.value_axis(frame, &ticks) + 4.0;
        let x1 = frame.right - 4.0;
        let (first, last) = (keys[0], keys[keys.len() - 1]);
        let x = |key: f64| {
            if last > first {
                finite_or(x0 + ((key - first) / (last - first)) as f32 * (x1 - x0), x0)
            } else {
                (x0 + x1) / 2.0
            }
        };
        let points: Vec<(f32, f32)> = keys
            .iter()
            .zip(&data)
            .map(|(key, (.., v))| (x(*key), frame.y(&ticks, *v)))
            .collect();
        self.line(&points, 1.3, BAR);
        if points.len() <= 62 {
            for &(px, py) in &points {
                self.rect(px - 1.6, py - 1.6, 3.2, 3.2, BAR);
            }
        }
        // Labels on every few points (every fifth day of a month), kept inside the frame.
        let widest = data
            .iter()
            .map(|(_, label, _)| self.width(AXIS, label))
            .fold(0.0, f32::max);
        let room = (((x1 - x0) / (widest + 12.0)).floor() as usize).clamp(1, 8);
        let step = data.len().div_ceil(room).max(1);
        let mut taken = f32::NEG_INFINITY;
        for i in (0..data.len()).step_by(step) {
            let before = taken;
            taken = self.axis_label(frame, points[i].0, frame.bottom - 10.0, &data[i].1, taken);
            if taken > before {
                self.line(
                    &[(points[i].0, frame.bottom), (points[i].0, frame.bottom - 2.5)],
                    0.5,
                    RULE,
                );
            }
        }
    }

    /// A label centred under `x` but kept inside the frame, unless it would run into the
    /// label before it (which ends at `taken`); returns where the labels now end.
    fn axis_label(&mut self, frame: Frame, x: f32, baseline: f32, label: &str, taken: f32) -> f32 {
        let half = self.width(AXIS, label) / 2.0;
        let centre = x.clamp(frame.left + half, (frame.right - half).max(frame.left + half));
        if centre - half < taken + 4.0 {
            return taken;
        }
        self.text_centre(AXIS, centre, baseline, label);
        centre + half
    }

    fn table(&mut self, kept: &Kept) {
        let section = &kept.section;
        if section.columns.is_empty() {
            self.ensure(12.0);
            self.y -= 11.0;
            self.text(NOTE, LEFT, self.y, "This section has no columns.");
            return;
        }
        let texts: Vec<Vec<String>> = kept
            .rows
            .iter()
            .map(|row| row.iter().map(cell_text).collect())
            .collect();
        let numeric: Vec<bool> = section
            .columns
            .iter()
            .map(|column| {
                matches!(
                    column.kind,
                    ColumnKind::Integer | ColumnKind::Number | ColumnKind::Money { .. } | ColumnKind::Percent
                )
            })
            .collect();
        let natural: Vec<f32> = section
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let widest = texts
                    .iter()
                    .filter_map(|row| row.get(i))
                    .map(|text| self.width(CELL, text))
                    .fold(self.width(HEAD_CELL, &column.name), f32::max);
                widest + 2.0 * CELL_PAD
            })
            .collect();
        let widths = column_widths(&natural, CONTENT_W);
        let table_w: f32 = widths.iter().sum();
        let header: Vec<&str> = section
            .columns
            .iter()
            .map(|column| column.name.as_str())
            .collect();

        self.ensure(HEADER_H + ROW_H * 3.0);
        self.table_header(&header, &widths, &numeric, table_w);
        for (k, row) in texts.iter().enumerate() {
            if self.y - ROW_H < BOTTOM {
                self.new_page();
                self.y -= 10.0;
                let continued = format!("{} (continued)", section.title);
                self.text(NOTE, LEFT, self.y, &continued);
                self.y -= 6.0;
                self.table_header(&header, &widths, &numeric, table_w);
            }
            if k % 2 == 1 {
                self.rect(LEFT, self.y - ROW_H, table_w, ROW_H, ZEBRA);
            }
            self.table_row(row, &widths, &numeric, CELL);
            self.y -= ROW_H;
        }
        self.line(&[(LEFT, self.y), (LEFT + table_w, self.y)], 0.5, RULE);

        if kept.rows.is_empty() {
            self.ensure(12.0);
            self.y -= 11.0;
            self.text(NOTE, LEFT, self.y, "No rows.");
        }
        let shown = kept.rows.len() as u64;
        if kept.total > shown {
            let message = format!(
                "… {} rows in all; the first {} are shown. The CSV, JSON and XLSX exports hold every row.",
                group_digits(&kept.total.to_string()),
                group_digits(&shown.to_string())
            );
            for line in self.wrap(NOTE, &message, CONTENT_W) {
                self.ensure(11.0);
                self.y -= 11.0;
                self.text(NOTE, LEFT, self.y, &line);
            }
        }
    }

    fn table_header(&mut self, header: &[&str], widths: &[f32], numeric: &[bool], table_w: f32) {
        let cells: Vec<String> = header.iter().map(|name| (*name).to_owned()).collect();
        self.y -= HEADER_H - ROW_H;
        self.table_row(&cells, widths, numeric, HEAD_CELL);
        self.y -= ROW_H;
        self.line(&[(LEFT, self.y), (LEFT + table_w, self.y)], 0.75, INK);
    }

    fn table_row(&mut self, cells: &[String], widths: &[f32], numeric: &[bool], style: Style) {
        let baseline = self.y - ROW_H + 3.3;
        let mut x = LEFT;
        for ((text, width), numeric) in cells.iter().zip(widths).zip(numeric) {
            let text = self.fit(style, text, width - 2.0 * CELL_PAD);
            if *numeric {
                self.text_right(style, x + width - CELL_PAD, baseline, &text);
            } else {
                self.text(style, x + CELL_PAD, baseline, &text);
            }
            x += width;
        }
    }

    /// Ends the last page and puts a footer on every page, now that their number is known.
    fn finish(mut self, meta: &Meta) -> (Vec<Vec<Op>>, [BTreeSet<char>; 2]) {
        self.pages.push(std::mem::take(&mut self.ops));
        let count = self.pages.len();
        let pages = std::mem::take(&mut self.pages);
        let left = format!("{} · {}", meta.title, meta.tenant);
        let mut finished = Vec::with_capacity(count);
        for (i, ops) in pages.into_iter().enumerate() {
            self.ops = ops;
            self.rule(BOTTOM - 14.0, 0.5, GRID);
            let number = format!("Page {} of {}", i + 1, count);
            let number_w = self.width(FOOTER, &number);
            let left = self.fit(FOOTER, &left, CONTENT_W - number_w - 24.0);
            self.text(FOOTER, LEFT, FOOTER_BASELINE, &left);
            self.text_right(FOOTER, RIGHT, FOOTER_BASELINE, &number);
            finished.push(std::mem::take(&mut self.ops));
        }
        (finished, self.used)
    }
}

/// The plot area of a chart.
#[derive(Clone, Copy)]
struct Frame {
    left: f32,
    right: f32,
    top: f32,
    bottom: f32,
}

impl Frame {
    /// The height of `value` on an axis of `ticks`.
    fn y(&self, ticks: &Ticks, value: f64) -> f32 {
        let y =
            self.bottom + ((value - ticks.min) / (ticks.max - ticks.min)) as f32 * (self.top - self.bottom);
        finite_or(y, self.bottom)
    }
}

/// `value`, or `fallback` when an axis too wide for `f64` made it infinite or NaN: either
/// would corrupt the content stream.
fn finite_or(value: f32, fallback: f32) -> f32 {
    if value.is_finite() {
        value
    } else {
        fallback
    }
}

/// How tall a chart is drawn: intervals take a band per row, the others a fixed box.
fn chart_height(chart: &Chart, rows: &[Vec<Cell>]) -> f32 {
    match chart.kind {
        ChartKind::Intervals { mean, .. } => {
            let count = rows
                .iter()
                .filter(|row| plotted(row, mean))
                .take(MAX_INTERVALS)
                .count();
            22.0 + 18.0 * count.max(3) as f32 + 16.0
        }
        _ => CHART_H,
    }
}

/// Whether a chart has a point for `row`: a finite number in column `value`.
fn plotted(row: &[Cell], value: usize) -> bool {
    row.get(value).and_then(Cell::as_f64).is_some_and(f64::is_finite)
}

/// An axis from `min` to `max` in steps of 1, 2, 2.5 or 5 times a power of ten.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ticks {
    min: f64,
    max: f64,
    step: f64,
    decimals: usize,
}

impl Ticks {
    fn new(lo: f64, hi: f64) -> Ticks {
        let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() {
            (lo.min(hi), lo.max(hi))
        } else {
            (0.0, 1.0)
        };
        if hi - lo <= f64::EPSILON * hi.abs().max(lo.abs()).max(1.0) {
            // One value: an axis around it (from zero when it is zero).
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            if lo >= 0.0 && lo - pad < 0.0 {
                lo = 0.0;
                hi += pad;
            } else {
                lo -= pad;
                hi += pad;
            }
        }
        let raw = (hi - lo) / 5.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .into_iter()
            .map(|nice| nice * magnitude)
            .find(|step| *step >= raw)
            .unwrap_or(10.0 * magnitude);
        if !(step.is_finite() && step > 0.0) {
            return Ticks {
                min: lo,
                max: hi,
                step: hi - lo,
                decimals: 2,
            };
        }
        let decimals = (0..=12)
            .find(|d| {
                let scaled = step * 10f64.powi(*d);
                (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
            })
            .unwrap_or(12) as usize;
        Ticks {
            min: (lo / step).floor() * step,
            max: (hi / step).ceil() * step,
            step,
            decimals,
        }
    }

    fn values(&self) -> Vec<f64> {
        let count = ((self.max - self.min) / self.step).round();
        if !(count.is_finite() && (1.0..=50.0).contains(&count)) {
            return vec![self.min, self.max];
        }
        (0..=count as i64)
            .map(|k| self.min + self.step * k as f64)
            .collect()
    }

    fn label(&self, value: f64) -> String {
        // No "-0" from a rounding error around zero.
        let value = if value.abs() < self.step * 1e-9 {
            0.0
        } else {
            value
        };
        group_digits(&format!("{value:.*}", self.decimals))
    }
}

/// A number's text with its integer digits grouped by thousands: `1234567.5` → `1,234,567.5`.
fn group_digits(number: &str) -> String {
    let (sign, unsigned) = match number.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", number),
    };
    let (integer, fraction) = match unsigned.find('.') {
        Some(dot) => unsigned.split_at(dot),
        None => (unsigned, ""),
    };
    if !integer.bytes().all(|b| b.is_ascii_digit()) {
        return number.to_owned();
    }
    let mut grouped = String::with_capacity(number.len() + integer.len() / 3);
    grouped.push_str(sign);
    for (i, digit) in integer.chars().enumerate() {
        if i > 0 && (integer.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped.push_str(fraction);
    grouped
}

/// A chart's value as a label: its shortest exact text, grouped.
fn format_value(value: f64) -> String {
    format_float(value).map_or_else(String::new, |text| group_digits(&text))
}

/// A cell as the table shows it: [`Cell::display`], except that a percentage is shown as
/// one (0.25 as "25 %", to two decimals). Non-finite numbers are empty.
fn cell_text(cell: &Cell) -> String {
    match cell {
        Cell::Percent(value) => {
            let percent = (value * 10_000.0).round() / 100.0;
            // `+ 0.0` turns a rounded -0 into 0.
            format_float(percent + 0.0).map_or_else(String::new, |text| format!("{text} %"))
        }
        other => other.display().unwrap_or_default(),
    }
}

/// The parameters as lines `name: value`, one per member of an object.
fn parameter_lines(params: &serde_json::Value) -> Vec<String> {
    match params {
        serde_json::Value::Null => vec!["none".to_owned()],
        serde_json::Value::Object(members) if members.is_empty() => vec!["none".to_owned()],
        serde_json::Value::Object(members) => members
            .iter()
            .map(|(name, value)| match value {
                serde_json::Value::String(text) => format!("{name}: {text}"),
                other => format!("{name}: {other}"),
            })
            .collect(),
        other => vec![other.to_string()],
    }
}

/// Column widths that fit `available`: the natural widths plus a little when they fit;
/// otherwise narrow columns keep theirs and the wide ones share the rest equally.
fn column_widths(natural: &[f32], available: f32) -> Vec<f32> {
    let total: f32 = natural.iter().sum();
    if natural.is_empty() {
        return Vec::new();
    }
    if total <= available {
        let extra = ((available - total) / natural.len() as f32).min(MAX_EXTRA_PER_COLUMN);
        return natural.iter().map(|width| width + extra).collect();
    }
    let mut widths = vec![0.0; natural.len()];
    let mut open: Vec<usize> = (0..natural.len()).collect();
    let mut remaining = available;
    while !open.is_empty() {
        let share = remaining / open.len() as f32;
        let (narrow, wide): (Vec<usize>, Vec<usize>) = open.iter().partition(|&&i| natural[i] <= share);
        if narrow.is_empty() {
            for i in wide {
                widths[i] = share;
            }
            break;
        }
        for i in narrow {
            widths[i] = natural[i];
            remaining -= natural[i];
        }
        open = wide;
    }
    widths
}

/// `text` cut to `width` with an ellipsis when it is longer.
fn fit(font: &Font, size: f32, text: &str, width: f32) -> String {
    if font.width(text, size) <= width {
        return text.to_owned();
    }
    let ellipsis = font.advance('…') * size;
    let mut used = 0.0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        let advance = font.advance(c) * size;
        if used + advance + ellipsis > width {
            break;
        }
        used += advance;
        end = i + c.len_utf8();
    }
    format!("{}…", text[..end].trim_end())
}

/// `text` broken into lines no wider than `width`: at spaces, and inside a word only when
/// the word alone is wider (a hash, a long identifier).
fn wrap(font: &Font, size: f32, text: &str, width: f32) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_owned()
            } else {
                format!("{line} {word}")
            };
            if font.width(&candidate, size) <= width {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            let mut rest = word;
            while font.width(rest, size) > width {
                let mut used = 0.0;
                let mut end = 0;
                for (i, c) in rest.char_indices() {
                    used += font.advance(c) * size;
                    if used > width && end > 0 {
                        break;
                    }
                    end = i + c.len_utf8();
                }
                lines.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
            line = rest.to_owned();
        }
        lines.push(line);
    }
    lines
}

fn colour((r, g, b): Colour) -> Color {
    Color::Rgb(Rgb::new(r, g, b, None))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::{Duration, NaiveDate, TimeZone, Utc};
    use rust_decimal::Decimal;

    use super::*;
    use crate::model::Column;
    use crate::text::NdjsonWriter;

    /// A file in the temporary directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(extension: &str) -> TempFile {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            TempFile(
                std::env::temp_dir().join(format!("aipm-reports-pdf-{}-{n}.{extension}", std::process::id())),
            )
        }

        fn create(&self) -> std::fs::File {
            std::fs::File::create(&self.0).unwrap()
        }

        fn read(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
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
            title: "Spend report — Zürich".to_owned(),
            tenant: "acme-zürich".to_owned(),
            period: Some((
                NaiveDate::from_ymd_opt(2024, 5, 1).unwrap(),
                NaiveDate::from_ymd_opt(2024, 5, 31).unwrap(),
            )),
            as_of: Utc.with_ymd_and_hms(2024, 6, 1, 6, 30, 0).unwrap(),
            cursor: "48213-7".to_owned(),
            params: serde_json::json!({"currency": "EUR", "group_by": "day"}),
        }
    }

    fn daily() -> Section {
        Section {
            name: "daily".to_owned(),
            title: "Daily spend".to_owned(),
            columns: vec![
                Column::new("day", ColumnKind::Date),
                Column::new(
                    "amount",
                    ColumnKind::Money {
                        currency_column: Some(2),
                    },
                ),
                Column::new("currency", ColumnKind::Text),
            ],
            charts: vec![
                Chart {
                    title: "Spend per day against the daily budget".to_owned(),
                    kind: ChartKind::Bars {
                        category: 0,
                        value: 1,
                        line: Some(("Budget".to_owned(), 400.0)),
                    },
                },
                Chart {
                    title: "Spend over May".to_owned(),
                    kind: ChartKind::Line { at: 0, value: 1 },
                },
            ],
        }
    }

    fn variants() -> Section {
        Section {
            name: "variants".to_owned(),
            title: "Variant means".to_owned(),
            columns: vec![
                Column::new("variant", ColumnKind::Text),
                Column::new("mean", ColumnKind::Number),
                Column::new("low", ColumnKind::Number),
                Column::new("high", ColumnKind::Number),
            ],
            charts: vec![Chart {
                title: "Mean latency with its 95 % interval".to_owned(),
                kind: ChartKind::Intervals {
                    label: 0,
                    mean: 1,
                    low: 2,
                    high: 3,
                },
            }],
        }
    }

    fn events() -> Section {
        Section {
            name: "events".to_owned(),
            title: "Usage events".to_owned(),
            columns: vec![
                Column::new("id", ColumnKind::Integer),
                Column::new("event_name", ColumnKind::Text),
                Column::new("at", ColumnKind::Timestamp),
                Column::new("value", ColumnKind::Number),
                Column::new("share", ColumnKind::Percent),
                Column::new("billable", ColumnKind::Boolean),
            ],
            charts: Vec::new(),
        }
    }

    const EVENTS: i64 = 5_000;

    /// The report of the tests: 31 days of spend, three variants and 5,000 events.
    fn write_sample(writer: &mut dyn ReportWriter) {
        writer.section(&daily()).unwrap();
        for day in 0..31 {
            writer
                .row(&[
                    Cell::Date(NaiveDate::from_ymd_opt(2024, 5, 1).unwrap() + Duration::days(day)),
                    Cell::Money(Decimal::new(10_000 + day * 725, 2)),
                    Cell::text("EUR"),
                ])
                .unwrap();
        }
        writer.section(&variants()).unwrap();
        for (name, mean, low, high) in [
            ("control – Zürich", 0.1234, 0.11, 0.137),
            ("café variant", 0.141, 0.128, 0.155),
            ("São Paulo", 0.119, 0.1, 0.138),
        ] {
            writer
                .row(&[
                    Cell::text(name),
                    Cell::Number(mean),
                    Cell::Number(low),
                    Cell::Number(high),
                ])
                .unwrap();
        }
        // A mean that could not be computed: an empty cell, and no point in the chart.
        writer
            .row(&[
                Cell::text("no data yet"),
                Cell::Number(f64::NAN),
                Cell::Empty,
                Cell::Empty,
            ])
            .unwrap();
        writer.section(&events()).unwrap();
        let start = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
        for i in 0..EVENTS {
            writer
                .row(&[
                    Cell::Integer(i),
                    Cell::text(format!("event {i:05} in Zürich")),
                    Cell::Timestamp(start + Duration::minutes(i)),
                    Cell::Number(i as f64 * 0.5),
                    Cell::Percent((i % 100) as f64 / 100.0),
                    Cell::Boolean(i % 3 == 0),
                ])
                .unwrap();
        }
    }

    fn write_pdf(file: &TempFile, fill: impl FnOnce(&mut dyn ReportWriter)) -> Written {
        let mut writer: Box<dyn ReportWriter> = Box::new(PdfWriter::new(file.create(), meta()));
        fill(writer.as_mut());
        writer.finish().unwrap()
    }

    /// Each page's text, as a reader extracting it gets it.
    fn page_texts(document: &lopdf::Document) -> Vec<String> {
        let pages: Vec<u32> = document.get_pages().keys().copied().collect();
        pages
            .iter()
            .map(|page| document.extract_text(&[*page]).unwrap())
            .collect()
    }

    fn operator_count(document: &lopdf::Document, page: u32, operator: &str) -> usize {
        let id = document.get_pages()[&page];
        let content = lopdf::content::Content::decode(&document.get_page_content(id)).unwrap();
        content
            .operations
            .iter()
            .filter(|operation| operation.operator == operator)
            .count()
    }

    #[test]
    fn writes_a_report_that_reads_back() {
        let file = TempFile::new("pdf");
        let written = write_pdf(&file, write_sample);
        assert_eq!(written.rows, 31 + 4 + EVENTS as u64);

        let ndjson = TempFile::new("ndjson");
        let mut writer: Box<dyn ReportWriter> = Box::new(NdjsonWriter::new(ndjson.create()));
        write_sample(writer.as_mut());
        assert_eq!(writer.finish().unwrap().data_sha256, written.data_sha256);

        let bytes = file.read();
        assert!(bytes.starts_with(b"%PDF-"));
        let document = lopdf::Document::load_mem(&bytes).unwrap();
        let pages = page_texts(&document);
        let count = pages.len();
        assert!(count > 20, "{count} pages");
        let all = pages.concat();

        let first = &pages[0];
        for expected in [
            "Spend report — Zürich",
            "acme-zürich",
            "2024-05-01 to 2024-05-31",
            "2024-06-01T06:30:00.000Z",
            "48213-7",
            written.data_sha256.as_str(),
            "currency: EUR",
            "Daily spend",
            &format!("Page 1 of {count}"),
        ] {
            assert!(first.contains(expected), "page 1 lacks {expected:?}:\n{first}");
        }
        for (i, page) in pages.iter().enumerate() {
            assert!(page.contains(&format!("Page {} of {count}", i + 1)));
        }

        // Money as its exact decimal, dates ISO, a mean, an accented label, the budget line.
        for expected in [
            "107.25",
            "2024-05-02",
            "0.1234",
            "café variant",
            "control – Zürich",
            "Budget: 400",
            "25 %",
        ] {
            assert!(all.contains(expected), "the report lacks {expected:?}");
        }
        assert!(all.contains("event 01999 in Zürich"));
        assert!(!all.contains("event 02000"), "rows past the cap are not shown");
        assert!(all.contains("… 5,000 rows in all; the first 2,000 are shown."));

        // The long table flows over pages, its header on each.
        let table_pages: Vec<&String> = pages.iter().filter(|page| page.contains("event 0")).collect();
        assert!(table_pages.len() > 10);
        for page in &table_pages {
            assert!(
                page.contains("event_name"),
                "a table page without its header:\n{page}"
            );
        }
        assert!(table_pages[1].contains("Usage events (continued)"));

        // The charts are drawn: a rectangle per bar, lines for axes and the polyline.
        let chart_page = pages
            .iter()
            .position(|page| page.contains("Spend per day against the daily budget"))
            .unwrap() as u32
            + 1;
        assert!(operator_count(&document, chart_page, "re") >= 31);
        assert!(operator_count(&document, chart_page, "l") >= 31);
        let intervals_page = pages
            .iter()
            .position(|page| page.contains("Mean latency with its 95 % interval"))
            .unwrap() as u32
            + 1;
        assert!(operator_count(&document, intervals_page, "re") >= 3);
    }

    fn small(writer: &mut dyn ReportWriter) {
        writer.section(&variants()).unwrap();
        writer
            .row(&[
                Cell::text("Zürich café – São Paulo"),
                Cell::Number(1.5),
                Cell::Number(1.0),
                Cell::Number(2.0),
            ])
            .unwrap();
    }

    #[test]
    fn the_same_report_gives_the_same_bytes() {
        let (a, b) = (TempFile::new("pdf"), TempFile::new("pdf"));
        write_pdf(&a, small);
        write_pdf(&b, small);
        assert_eq!(a.read(), b.read());
        let document = lopdf::Document::load_mem(&a.read()).unwrap();
        assert!(page_texts(&document)[0].contains("Zürich café – São Paulo"));
    }

    #[test]
    fn a_chart_without_values_says_so() {
        let file = TempFile::new("pdf");
        write_pdf(&file, |writer| {
            let mut section = daily();
            section.title = "Nothing spent".to_owned();
            writer.section(&section).unwrap();
            writer
                .row(&[
                    Cell::Date(NaiveDate::from_ymd_opt(2024, 5, 1).unwrap()),
                    Cell::Empty,
                    Cell::Empty,
                ])
                .unwrap();
            writer.section(&events()).unwrap();
        });
        let document = lopdf::Document::load_mem(&file.read()).unwrap();
        let text = page_texts(&document).concat();
        assert_eq!(text.matches("No data").count(), 2, "{text}");
        assert!(text.contains("No rows."));
    }

    #[test]
    fn awkward_input_still_lays_out() {
        let file = TempFile::new("pdf");
        let mut meta = meta();
        // Parameters longer than a page, and a title longer than a line.
        meta.params = serde_json::Value::Object(
            (0..120)
                .map(|i| {
                    (
                        format!("option_{i:03}"),
                        serde_json::json!("a value of some length"),
                    )
                })
                .collect(),
        );
        meta.title = "A very long title ".repeat(8);
        let mut writer: Box<dyn ReportWriter> = Box::new(PdfWriter::new(file.create(), meta));
        writer.section(&variants()).unwrap();
        for i in 0..50 {
            let mean = f64::from(i) - 25.0;
            writer
                .row(&[
                    Cell::text(format!(
                        "variant {i} with a name too long for its column of the chart"
                    )),
                    Cell::Number(mean),
                    Cell::Number(mean - 3.0),
                    Cell::Number(mean + 3.0),
                ])
                .unwrap();
        }
        let mut bars = daily();
        bars.charts[0].kind = ChartKind::Bars {
            category: 0,
            value: 1,
            line: Some(("Budget".to_owned(), f64::NAN)),
        };
        writer.section(&bars).unwrap();
        for (day, amount) in [(1, -250), (2, 1_000), (3, i64::MAX)] {
            writer
                .row(&[
                    Cell::Date(NaiveDate::from_ymd_opt(2024, 5, day).unwrap()),
                    Cell::Money(Decimal::new(amount, 2)),
                    Cell::text("EUR"),
                ])
                .unwrap();
        }
        writer.finish().unwrap();
        let document = lopdf::Document::load_mem(&file.read()).unwrap();
        let text = page_texts(&document).concat();
        assert!(text.contains("(the first 36 of 50)"));
        assert!(text.contains("option_119: a value of some length"));
        assert!(text.contains("-2.5"));
    }

    #[test]
    fn protocol_errors_are_refused() {
        let file = TempFile::new("pdf");
        let mut writer = PdfWriter::new(file.create(), meta());
        assert!(matches!(writer.row(&[Cell::Empty]), Err(ReportError::Invalid(_))));
        writer.section(&variants()).unwrap();
        assert!(matches!(writer.row(&[Cell::Empty]), Err(ReportError::Invalid(_))));
    }

    #[test]
    fn an_empty_report_is_still_a_document() {
        let file = TempFile::new("pdf");
        let written = write_pdf(&file, |_| {});
        assert_eq!(written.rows, 0);
        let document = lopdf::Document::load_mem(&file.read()).unwrap();
        let text = page_texts(&document).concat();
        assert!(text.contains("This report has no sections."));
        assert!(text.contains("Page 1 of 1"));
    }

    #[test]
    fn ticks_are_round() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let ticks = Ticks::new(0.0, 317.5);
        assert!(close(ticks.min, 0.0) && close(ticks.max, 400.0) && close(ticks.step, 100.0));
        assert_eq!(ticks.values().len(), 5);
        assert_eq!(ticks.label(300.0), "300");
        let ticks = Ticks::new(0.1, 0.155);
        assert!(close(ticks.min, 0.1) && close(ticks.max, 0.16) && close(ticks.step, 0.02));
        assert_eq!(ticks.label(0.12), "0.12");
        assert_eq!(Ticks::new(0.0, 12.0).label(2.5), "2.5");
        let ticks = Ticks::new(-1200.0, 5300.0);
        assert!(close(ticks.min, -2000.0) && close(ticks.max, 6000.0) && close(ticks.step, 2000.0));
        assert_eq!(ticks.label(-2000.0), "-2,000");
        // One value, and none: still an axis.
        assert!(Ticks::new(7.0, 7.0).values().len() >= 2);
        assert_eq!(Ticks::new(0.0, 0.0).min, 0.0);
        assert!(Ticks::new(f64::NAN, f64::INFINITY).values().len() >= 2);
    }

    #[test]
    fn cells_show_as_the_exports_do() {
        assert_eq!(cell_text(&Cell::Money(Decimal::new(123_450, 3))), "123.45");
        assert_eq!(cell_text(&Cell::Number(f64::NAN)), "");
        assert_eq!(cell_text(&Cell::Number(f64::INFINITY)), "");
        assert_eq!(cell_text(&Cell::Percent(0.25)), "25 %");
        assert_eq!(cell_text(&Cell::Percent(0.123456)), "12.35 %");
        assert_eq!(cell_text(&Cell::Percent(f64::NAN)), "");
        assert_eq!(group_digits("1234567.25"), "1,234,567.25");
        assert_eq!(group_digits("-999"), "-999");
    }

    #[test]
    fn text_is_cut_and_wrapped_to_its_width() {
        let fonts = fonts().unwrap();
        let font = &fonts.regular;
        let long = "a rather long name of a variant that does not fit";
        let cut = fit(font, 8.0, long, 60.0);
        assert!(cut.ends_with('…') && font.width(&cut, 8.0) <= 60.0, "{cut}");
        assert_eq!(fit(font, 8.0, "short", 60.0), "short");
        let lines = wrap(font, 8.0, long, 60.0);
        assert!(lines.len() > 2 && lines.iter().all(|line| font.width(line, 8.0) <= 60.0));
        let hash = "0123456789abcdef".repeat(4);
        assert_eq!(wrap(font, 8.0, &hash, 100.0).concat(), hash);
        assert_eq!(font.clean("a\tb\u{4e00}"), "a b?");
    }

    #[test]
    fn columns_fit_the_page() {
        assert_eq!(column_widths(&[50.0, 60.0], 500.0), vec![98.0, 108.0]);
        let widths = column_widths(&[40.0, 900.0, 300.0, 30.0], 500.0);
        assert_eq!(widths[0], 40.0);
        assert_eq!(widths[3], 30.0);
        assert!((widths.iter().sum::<f32>() - 500.0).abs() < 0.01);
        assert_eq!(widths[1], widths[2]);
    }
}
