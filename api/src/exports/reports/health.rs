//! `health`: the providers' health over a period at the report's point: each provider's
//! state then, its probes' uptime per day (probes made by the point's instant), the state
//! changes and the incidents from the log, and the changes each incident recorded as
//! related when it opened. Parameters: `from` and `to` (days, inclusive; by default the 7
//! days ending on the point's day).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Days, NaiveDate, Utc};
use cqrs_es::Aggregate;
use domain::health::{HealthState, ProviderHealth, ProviderHealthEvent};
use domain::incident::{Affected, Incident, IncidentEvent};
use domain::provider::Provider;
use projections::export::sources;
use reports::{Cell, Chart, ChartKind, Column, ColumnKind, Section};

use super::{day_param, start_of, ReportInput, RowSink, Stop};

pub const SECTIONS: &[&str] = &[
    "providers",
    "uptime",
    "state_changes",
    "incidents",
    "related_changes",
];

/// The days covered, inclusive.
pub fn period(input: &ReportInput<'_>) -> (NaiveDate, NaiveDate) {
    let day = |name: &str| {
        input
            .params
            .get(name)
            .and_then(|value| day_param(name, value).ok())
    };
    let to = day("to").unwrap_or(input.point.instant.date_naive());
    let from = day("from").unwrap_or_else(|| to.checked_sub_days(Days::new(6)).unwrap_or(to));
    (from, to)
}

fn text(name: &str) -> Column {
    Column::new(name, ColumnKind::Text)
}

fn timestamp(name: &str) -> Column {
    Column::new(name, ColumnKind::Timestamp)
}

fn integer(name: &str) -> Column {
    Column::new(name, ColumnKind::Integer)
}

fn section(name: &str, title: &str, columns: Vec<Column>, charts: Vec<Chart>) -> Section {
    Section {
        name: name.into(),
        title: title.into(),
        columns,
        charts,
    }
}

/// An incident as the log tells it at the point.
struct IncidentAt {
    id: String,
    incident: Incident,
    opened: Option<DateTime<Utc>>,
    resolved: Option<DateTime<Utc>>,
}

fn affected_text(affected: &Affected) -> String {
    let mut parts = Vec::new();
    for (kind, names) in [
        ("providers", &affected.providers),
        ("models", &affected.models),
        ("features", &affected.features),
    ] {
        if !names.is_empty() {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            parts.push(format!("{kind}: {}", names.join(" ")));
        }
    }
    parts.join("; ")
}

fn uptime(probes: i64, ok: i64) -> Cell {
    if probes > 0 {
        Cell::Percent(ok as f64 / probes as f64)
    } else {
        Cell::Empty
    }
}

pub async fn produce(input: &ReportInput<'_>, sink: &mut RowSink) -> Result<(), Stop> {
    let (from, to) = period(input);
    let (start, end) = (start_of(from), start_of(to + Days::new(1)));
    let in_period = |at: DateTime<Utc>| at >= start && at < end;

    let providers = sources::fold_all::<Provider>(input.pool, input.tenant, input.point).await?;
    let names: HashMap<String, String> = providers
        .iter()
        .map(|(id, provider)| (id.clone(), provider.name.clone()))
        .collect();
    let name_of = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_owned());

    // Each provider's state and since when, and the changes in the period.
    let changes = sources::events_of::<ProviderHealth>(input.pool, input.tenant, input.point, None).await?;
    let mut states: HashMap<&str, (HealthState, DateTime<Utc>)> = HashMap::new();
    for change in &changes {
        let ProviderHealthEvent::ProviderHealthChanged { to, .. } = &change.event;
        states.insert(change.aggregate_id.as_str(), (*to, change.recorded_at));
    }
    let mut changed: Vec<_> = changes
        .iter()
        .filter(|change| in_period(change.recorded_at))
        .collect();
    changed.sort_by(|a, b| (a.recorded_at, &a.aggregate_id).cmp(&(b.recorded_at, &b.aggregate_id)));

    let probe_days = sources::probe_days(input.pool, input.tenant, (start, end), input.point.instant).await?;
    let mut totals: HashMap<String, (i64, i64)> = HashMap::new();
    for day in &probe_days {
        let total = totals.entry(day.provider_id.to_string()).or_default();
        total.0 += day.probes;
        total.1 += day.ok;
    }
    // The chart follows the provider with the lowest uptime over the period (ties by name):
    // one line per chart, and the worst is the one a reader looks for.
    let worst = totals
        .iter()
        .filter(|(_, (probes, _))| *probes > 0)
        .map(|(id, (probes, ok))| (*ok as f64 / *probes as f64, name_of(id), id.clone()))
        .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));

    let mut ordered: Vec<&(String, Provider)> = providers.iter().collect();
    ordered.sort_by(|a, b| (&a.1.name, &a.0).cmp(&(&b.1.name, &b.0)));
    sink.section(section(
        "providers",
        "Providers",
        vec![
            text("provider_id"),
            text("provider"),
            Column::new("enabled", ColumnKind::Boolean),
            text("state"),
            timestamp("since"),
            integer("probes"),
            integer("ok"),
            Column::new("uptime", ColumnKind::Percent),
        ],
        Vec::new(),
    ))
    .await?;
    for (id, provider) in ordered {
        let (state, since) = states
            .get(id.as_str())
            .map_or((HealthState::Unknown, None), |(state, since)| {
                (*state, Some(*since))
            });
        let (probes, ok) = totals.get(id).copied().unwrap_or_default();
        sink.row(vec![
            Cell::Text(id.clone()),
            Cell::Text(provider.name.clone()),
            Cell::Boolean(provider.enabled),
            Cell::text(state.as_str()),
            since.map_or(Cell::Empty, Cell::Timestamp),
            Cell::Integer(probes),
            Cell::Integer(ok),
            uptime(probes, ok),
        ])
        .await?;
    }

    let chart_title = match &worst {
        Some((_, name, _)) => format!("Daily uptime of {name} (the lowest over the period)"),
        None => "Daily uptime".to_owned(),
    };
    sink.section(section(
        "uptime",
        "Uptime by day",
        vec![
            Column::new("day", ColumnKind::Date),
            text("provider_id"),
            text("provider"),
            integer("probes"),
            integer("ok"),
            Column::new("uptime", ColumnKind::Percent),
            Column::new("charted_uptime", ColumnKind::Percent),
        ],
        vec![Chart {
            title: chart_title,
            kind: ChartKind::Line { at: 0, value: 6 },
        }],
    ))
    .await?;
    let mut days: Vec<_> = probe_days
        .iter()
        .map(|day| (day.day, name_of(&day.provider_id.to_string()), day))
        .collect();
    days.sort_by(|a, b| (a.0, &a.1, a.2.provider_id).cmp(&(b.0, &b.1, b.2.provider_id)));
    for (day, name, probes) in days {
        let id = probes.provider_id.to_string();
        let charted = worst.as_ref().is_some_and(|(_, _, worst)| *worst == id);
        sink.row(vec![
            Cell::Date(day),
            Cell::Text(id),
            Cell::Text(name),
            Cell::Integer(probes.probes),
            Cell::Integer(probes.ok),
            uptime(probes.probes, probes.ok),
            if charted {
                uptime(probes.probes, probes.ok)
            } else {
                Cell::Empty
            },
        ])
        .await?;
    }

    sink.section(section(
        "state_changes",
        "State changes",
        vec![
            timestamp("at"),
            text("provider_id"),
            text("provider"),
            text("from"),
            text("to"),
            integer("latency_ms"),
            text("detail"),
        ],
        Vec::new(),
    ))
    .await?;
    for change in changed {
        let ProviderHealthEvent::ProviderHealthChanged {
            provider,
            from,
            to,
            latency_ms,
            detail,
            ..
        } = &change.event;
        sink.row(vec![
            Cell::Timestamp(change.recorded_at),
            Cell::Text(change.aggregate_id.clone()),
            Cell::Text(provider.clone()),
            Cell::text(from.as_str()),
            Cell::text(to.as_str()),
            latency_ms.map_or(Cell::Empty, |ms| Cell::Integer(i64::from(ms))),
            Cell::optional_text(detail.clone()),
        ])
        .await?;
    }

    let incidents = incidents_in(input, start, end).await?;
    sink.section(section(
        "incidents",
        "Incidents",
        vec![
            text("incident_id"),
            text("severity"),
            text("title"),
            text("status"),
            text("opened_by"),
            timestamp("opened"),
            timestamp("resolved"),
            text("affected"),
            integer("related_changes"),
        ],
        Vec::new(),
    ))
    .await?;
    for at in &incidents {
        let incident = &at.incident;
        sink.row(vec![
            Cell::Text(at.id.clone()),
            Cell::optional_text(incident.severity.map(|severity| severity.as_str())),
            Cell::Text(incident.title.clone()),
            Cell::text(incident.status.as_str()),
            Cell::optional_text(incident.opened_by.map(|by| by.as_str())),
            at.opened.map_or(Cell::Empty, Cell::Timestamp),
            at.resolved.map_or(Cell::Empty, Cell::Timestamp),
            Cell::Text(affected_text(&incident.affected)),
            Cell::Integer(i64::try_from(incident.related_changes.len()).unwrap_or(i64::MAX)),
        ])
        .await?;
    }

    sink.section(section(
        "related_changes",
        "Changes recorded with each incident",
        vec![
            text("incident_id"),
            timestamp("at"),
            text("aggregate_type"),
            text("aggregate_id"),
            integer("sequence"),
            text("event_type"),
            text("actor"),
            text("reason"),
            text("why"),
        ],
        Vec::new(),
    ))
    .await?;
    for at in &incidents {
        for change in &at.incident.related_changes {
            sink.row(vec![
                Cell::Text(at.id.clone()),
                Cell::Timestamp(change.recorded_at),
                Cell::Text(change.aggregate_type.clone()),
                Cell::Text(change.aggregate_id.clone()),
                Cell::Integer(change.sequence),
                Cell::Text(change.event_type.clone()),
                Cell::optional_text(change.actor.clone()),
                Cell::optional_text(change.reason.clone()),
                Cell::Text(change.why.clone()),
            ])
            .await?;
        }
    }
    sink.flush().await
}

/// The incidents open at some moment of `start`..`end` as the log tells them at the point,
/// by when they opened (ties by id).
async fn incidents_in(
    input: &ReportInput<'_>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<IncidentAt>, Stop> {
    let events = sources::events_of::<Incident>(input.pool, input.tenant, input.point, None).await?;
    let mut folded: BTreeMap<String, IncidentAt> = BTreeMap::new();
    for logged in events {
        let at = folded
            .entry(logged.aggregate_id.clone())
            .or_insert_with(|| IncidentAt {
                id: logged.aggregate_id.clone(),
                incident: Incident::default(),
                opened: None,
                resolved: None,
            });
        match &logged.event {
            IncidentEvent::IncidentOpened { .. } => at.opened = Some(logged.recorded_at),
            IncidentEvent::IncidentResolved { .. } => at.resolved = Some(logged.recorded_at),
            IncidentEvent::IncidentUpdated { .. } => {}
        }
        at.incident.apply(logged.event);
    }
    let mut incidents: Vec<IncidentAt> = folded
        .into_values()
        .filter(|at| {
            at.opened.is_some_and(|opened| opened < end)
                && at.resolved.is_none_or(|resolved| resolved >= start)
        })
        .collect();
    incidents.sort_by(|a, b| (a.opened, &a.id).cmp(&(b.opened, &b.id)));
    Ok(incidents)
}
