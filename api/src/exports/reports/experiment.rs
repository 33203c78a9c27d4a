//! `experiment`: one experiment's results at the report's point: its definition folded from
//! the log, its units from the records and observations received by the point's instant,
//! and the statistics `GET /v1/experiments/{id}/results` computes from them. Parameters:
//! `experiment_id` (required), `method` (`fixed`, `sequential`, `bayesian`; default
//! `fixed`) and `correction` (`none`, `holm`, `bh`; default `none`).

use domain::experiment::{Experiment, MetricRole};
use domain::experiment_results::{self, Correction, ExperimentResults, Method, VariantFigures};
use projections::export::sources;
use reports::{Cell, Chart, ChartKind, Column, ColumnKind, Section};
use uuid::Uuid;

use super::{ReportInput, RowSink, Stop};

pub const SECTIONS: &[&str] = &["variants", "comparisons", "checks"];

/// The `experiment_id` parameter, once checked.
pub fn experiment_id(input: &ReportInput<'_>) -> Option<Uuid> {
    input
        .params
        .get("experiment_id")
        .and_then(|value| value.as_str())
        .and_then(|text| text.parse().ok())
}

fn method(input: &ReportInput<'_>) -> Method {
    input
        .params
        .get("method")
        .and_then(|value| value.as_str())
        .and_then(Method::parse)
        .unwrap_or(Method::Fixed)
}

fn correction(input: &ReportInput<'_>) -> Correction {
    input
        .params
        .get("correction")
        .and_then(|value| value.as_str())
        .and_then(Correction::parse)
        .unwrap_or(Correction::None)
}

fn role(role: MetricRole) -> &'static str {
    match role {
        MetricRole::Primary => "primary",
        MetricRole::Secondary => "secondary",
        MetricRole::Guardrail => "guardrail",
    }
}

/// `name`'s figures among a metric's variants.
fn figures_of(variants: &[VariantFigures], name: &str) -> Option<VariantFigures> {
    variants.iter().find(|figures| figures.variant == name).cloned()
}

fn number(value: Option<f64>) -> Cell {
    value.map_or(Cell::Empty, Cell::Number)
}

fn variants_section(metric: &str) -> Section {
    let number = |name: &str| Column::new(name, ColumnKind::Number);
    Section {
        name: "variants".into(),
        title: format!("Variants (primary metric: {metric})"),
        columns: vec![
            Column::new("variant", ColumnKind::Text),
            Column::new("control", ColumnKind::Boolean),
            Column::new("weight", ColumnKind::Integer),
            Column::new("units", ColumnKind::Integer),
            number("mean"),
            number("ci_low"),
            number("ci_high"),
            Column::new("below_min_units", ColumnKind::Boolean),
        ],
        charts: vec![Chart {
            title: format!("{metric}: mean and 95 % interval by variant"),
            kind: ChartKind::Intervals {
                label: 0,
                mean: 4,
                low: 5,
                high: 6,
            },
        }],
    }
}

fn comparisons_section() -> Section {
    let text = |name: &str| Column::new(name, ColumnKind::Text);
    let number = |name: &str| Column::new(name, ColumnKind::Number);
    let boolean = |name: &str| Column::new(name, ColumnKind::Boolean);
    Section {
        name: "comparisons".into(),
        title: "Each treatment against the control".into(),
        columns: vec![
            text("metric"),
            text("role"),
            text("treatment"),
            number("control_mean"),
            number("treatment_mean"),
            number("lift_abs"),
            number("lift_rel"),
            number("ci_low"),
            number("ci_high"),
            number("lift_rel_ci_low"),
            number("lift_rel_ci_high"),
            number("p_value"),
            number("p_value_adjusted"),
            Column::new("chance_to_beat_control", ColumnKind::Percent),
            boolean("significant"),
            boolean("better"),
            boolean("worse"),
            text("note"),
        ],
        charts: Vec::new(),
    }
}

fn checks_section() -> Section {
    let text = |name: &str| Column::new(name, ColumnKind::Text);
    let number = |name: &str| Column::new(name, ColumnKind::Number);
    Section {
        name: "checks".into(),
        title: "Checks".into(),
        columns: vec![
            text("check"),
            text("metric"),
            text("variant"),
            number("p_value"),
            number("value"),
            Column::new("flagged", ColumnKind::Boolean),
            text("verdict"),
        ],
        charts: Vec::new(),
    }
}

pub async fn produce(input: &ReportInput<'_>, sink: &mut RowSink) -> Result<(), Stop> {
    let Some(id) = experiment_id(input) else {
        return Err(Stop::Failed(
            "params.experiment_id must be an experiment's id".into(),
        ));
    };
    let folded =
        sources::fold_one::<Experiment>(input.pool, input.tenant, input.point, &id.to_string()).await?;
    let Some(spec) = folded.and_then(|experiment| experiment.spec) else {
        return Err(Stop::Failed(format!(
            "the experiment {id} did not exist at the report's point"
        )));
    };
    let units =
        projections::experiment::results::units(input.pool, input.tenant, id, &spec, input.point.instant)
            .await?;
    let results = experiment_results::results(
        &spec,
        &units.variants,
        units.subjects_in_several_variants,
        method(input),
        correction(input),
    );

    let primary = results
        .metrics
        .iter()
        .find(|metric| metric.role == MetricRole::Primary);
    sink.section(variants_section(&spec.primary_metric.name)).await?;
    for variant in &spec.variants {
        let figures = primary.and_then(|metric| figures_of(&metric.variants, &variant.name));
        let count = units.variants.get(&variant.name).map_or(0, |data| data.units);
        sink.row(vec![
            Cell::Text(variant.name.clone()),
            Cell::Boolean(variant.control),
            Cell::Integer(i64::from(variant.weight)),
            Cell::Integer(i64::try_from(count).unwrap_or(i64::MAX)),
            number(figures.as_ref().and_then(|figures| figures.mean)),
            number(figures.as_ref().and_then(|figures| figures.ci_low)),
            number(figures.as_ref().and_then(|figures| figures.ci_high)),
            Cell::Boolean(figures.is_some_and(|figures| figures.below_min_units)),
        ])
        .await?;
    }

    sink.section(comparisons_section()).await?;
    let control = spec
        .variants
        .iter()
        .find(|variant| variant.control)
        .map(|variant| variant.name.clone())
        .unwrap_or_default();
    for metric in &results.metrics {
        let control_mean = figures_of(&metric.variants, &control).and_then(|figures| figures.mean);
        for comparison in &metric.comparisons {
            let treatment_mean =
                figures_of(&metric.variants, &comparison.variant).and_then(|figures| figures.mean);
            sink.row(vec![
                Cell::Text(metric.name.clone()),
                Cell::text(role(metric.role)),
                Cell::Text(comparison.variant.clone()),
                number(control_mean),
                number(treatment_mean),
                number(comparison.lift_abs),
                number(comparison.lift_rel),
                number(comparison.lift_abs_ci_low),
                number(comparison.lift_abs_ci_high),
                number(comparison.lift_rel_ci_low),
                number(comparison.lift_rel_ci_high),
                number(comparison.p_value),
                number(comparison.p_value_adjusted),
                comparison
                    .chance_to_beat_control
                    .map_or(Cell::Empty, Cell::Percent),
                Cell::Boolean(comparison.significant),
                Cell::Boolean(comparison.better),
                Cell::Boolean(comparison.worse),
                Cell::optional_text(comparison.note.clone()),
            ])
            .await?;
        }
    }

    sink.section(checks_section()).await?;
    for row in checks(&results) {
        sink.row(row).await?;
    }
    sink.flush().await
}

/// The sample ratio check, the units' sufficiency, subjects seen in several variants and
/// every guardrail breach, a row each.
fn checks(results: &ExperimentResults) -> Vec<Vec<Cell>> {
    let srm = &results.srm;
    let mut rows = vec![
        vec![
            Cell::text("sample_ratio"),
            Cell::Empty,
            Cell::Empty,
            number(srm.p_value),
            number(srm.chi_square),
            Cell::Boolean(srm.flagged),
            Cell::text(if srm.flagged {
                "mismatch: assignment or logging is likely broken"
            } else {
                "ok"
            }),
        ],
        vec![
            Cell::text("min_units_per_variant"),
            Cell::Empty,
            Cell::Empty,
            Cell::Empty,
            Cell::Number(results.min_units_per_variant as f64),
            Cell::Boolean(!results.min_units_reached),
            Cell::text(if results.min_units_reached {
                "reached"
            } else {
                "not reached"
            }),
        ],
        vec![
            Cell::text("subjects_in_several_variants"),
            Cell::Empty,
            Cell::Empty,
            Cell::Empty,
            Cell::Number(results.subjects_in_several_variants as f64),
            Cell::Boolean(results.subjects_in_several_variants > 0),
            Cell::text("left out of every figure"),
        ],
    ];
    for breach in &results.guardrails_breached {
        rows.push(vec![
            Cell::text("guardrail"),
            Cell::Text(breach.metric.clone()),
            Cell::Text(breach.variant.clone()),
            number(breach.p_value),
            number(breach.lift_abs),
            Cell::Boolean(true),
            Cell::text("breached"),
        ]);
    }
    rows
}
