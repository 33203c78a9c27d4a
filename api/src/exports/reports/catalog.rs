//! `catalog`: what the tenant has defined, as it stood at the report's point — prompts and
//! every published version, models and their price periods, configuration, budgets, API
//! keys and providers. No parameter but `section`.
//!
//! Everything is folded from the event log up to the point (`fold_all`, and the prompt
//! events themselves for when each version was published), so a past instant shows the
//! catalogue then. Keys are shown without their hash or prefix, providers without their
//! credential reference: the file may travel further than the API.

use domain::access::ApiKey;
use domain::budget::Budget;
use domain::config::ConfigEntry;
use domain::model::Model;
use domain::prompt::{Prompt, PromptEvent};
use domain::provider::Provider;
use projections::export::sources::{events_of, fold_all};
use reports::{Cell, Column, ColumnKind, Section};
use rust_decimal::Decimal;
use serde_json::Value;

use super::{ReportInput, RowSink, Stop};

pub const SECTIONS: &[&str] = &[
    "prompts",
    "prompt_versions",
    "models",
    "prices",
    "configuration",
    "budgets",
    "keys",
    "providers",
];

fn section(name: &str, title: &str, columns: Vec<Column>) -> Section {
    Section {
        name: name.into(),
        title: title.into(),
        columns,
        charts: Vec::new(),
    }
}

fn text(name: &str) -> Column {
    Column::new(name, ColumnKind::Text)
}

fn money(name: &str, currency_at: usize) -> Column {
    Column::new(
        name,
        ColumnKind::Money {
            currency_column: Some(currency_at),
        },
    )
}

/// JSON as one line of text, as it is stored.
fn compact(value: Option<&Value>) -> Cell {
    value.map_or(Cell::Empty, |value| Cell::Text(value.to_string()))
}

fn amount(value: Decimal) -> Cell {
    Cell::Money(value.normalize())
}

pub async fn produce(input: &ReportInput<'_>, sink: &mut RowSink) -> Result<(), Stop> {
    let (pool, tenant, point) = (input.pool, input.tenant, input.point);

    let prompts = fold_all::<Prompt>(pool, tenant, point).await?;
    sink.section(section(
        "prompts",
        "Prompts",
        vec![
            text("id"),
            text("name"),
            text("category_id"),
            text("description"),
            text("tags"),
            Column::new("archived", ColumnKind::Boolean),
            Column::new("latest_version", ColumnKind::Integer),
            text("labels"),
        ],
    ))
    .await?;
    for (id, prompt) in &prompts {
        let tags: Vec<&str> = prompt.tags.iter().map(String::as_str).collect();
        let labels: Vec<String> = prompt
            .labels
            .iter()
            .map(|(label, version)| format!("{label}={version}"))
            .collect();
        sink.row(vec![
            Cell::text(id),
            Cell::text(&prompt.name),
            Cell::optional_text(prompt.category.map(|id| id.to_string())),
            Cell::text(&prompt.description),
            Cell::Text(tags.join(", ")),
            Cell::Boolean(prompt.archived),
            Cell::Integer(i64::from(prompt.latest_version)),
            Cell::Text(labels.join("; ")),
        ])
        .await?;
    }

    // The fold keeps only the latest version's number; the versions are in the events.
    sink.section(section(
        "prompt_versions",
        "Prompt versions",
        vec![
            text("prompt_id"),
            text("prompt_name"),
            Column::new("version", ColumnKind::Integer),
            text("model"),
            text("template"),
            text("params"),
            text("message"),
            Column::new("published_at", ColumnKind::Timestamp),
        ],
    ))
    .await?;
    let names: std::collections::HashMap<&str, &str> = prompts
        .iter()
        .map(|(id, prompt)| (id.as_str(), prompt.name.as_str()))
        .collect();
    for published in events_of::<Prompt>(pool, tenant, point, None).await? {
        let PromptEvent::PromptVersionPublished {
            version,
            template,
            model,
            params,
            message,
            ..
        } = published.event
        else {
            continue;
        };
        sink.row(vec![
            Cell::text(&published.aggregate_id),
            Cell::optional_text(names.get(published.aggregate_id.as_str()).copied()),
            Cell::Integer(i64::from(version)),
            Cell::optional_text(model.map(|model| model.reference())),
            Cell::Text(template),
            compact(params.as_ref()),
            Cell::Text(message),
            Cell::Timestamp(published.recorded_at),
        ])
        .await?;
    }

    let models = fold_all::<Model>(pool, tenant, point).await?;
    sink.section(section(
        "models",
        "Models",
        vec![
            text("id"),
            text("reference"),
            text("name"),
            text("provider"),
            text("status"),
            Column::new("context_window", ColumnKind::Integer),
            text("capabilities"),
        ],
    ))
    .await?;
    for (id, model) in &models {
        sink.row(vec![
            Cell::text(id),
            Cell::text(&model.reference),
            Cell::text(&model.name),
            Cell::text(&model.provider_name),
            Cell::text(model.status.as_str()),
            model
                .context_window
                .map_or(Cell::Empty, |tokens| Cell::Integer(i64::from(tokens))),
            Cell::Text(model.capabilities.join(", ")),
        ])
        .await?;
    }

    sink.section(section(
        "prices",
        "Prices per million tokens",
        vec![
            text("model"),
            Column::new("effective_from", ColumnKind::Timestamp),
            text("currency"),
            money("input_per_mtok", 2),
            money("output_per_mtok", 2),
            money("cached_input_per_mtok", 2),
            Column::new("corrected", ColumnKind::Boolean),
        ],
    ))
    .await?;
    // By model reference, then in the order the periods start.
    let mut priced: Vec<&Model> = models.iter().map(|(_, model)| model).collect();
    priced.sort_by(|a, b| a.reference.cmp(&b.reference));
    for model in priced {
        for period in &model.prices {
            let price = &period.price;
            sink.row(vec![
                Cell::text(&model.reference),
                Cell::Timestamp(period.effective_from),
                Cell::text(price.currency.as_ref()),
                amount(price.input_per_mtok.value()),
                amount(price.output_per_mtok.value()),
                price
                    .cached_input_per_mtok
                    .map_or(Cell::Empty, |cached| amount(cached.value())),
                Cell::Boolean(period.original.is_some()),
            ])
            .await?;
        }
    }

    sink.section(section(
        "configuration",
        "Configuration",
        vec![
            text("key"),
            text("value"),
            Column::new("version", ColumnKind::Integer),
        ],
    ))
    .await?;
    let mut entries: Vec<ConfigEntry> = fold_all::<ConfigEntry>(pool, tenant, point)
        .await?
        .into_iter()
        .map(|(_, entry)| entry)
        .collect();
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    for entry in &entries {
        sink.row(vec![
            Cell::text(&entry.key),
            compact(entry.value.as_ref()),
            Cell::Integer(i64::try_from(entry.version).unwrap_or(i64::MAX)),
        ])
        .await?;
    }

    sink.section(section(
        "budgets",
        "Budgets",
        vec![
            text("id"),
            text("name"),
            text("scope"),
            text("period"),
            money("amount", 5),
            text("currency"),
            text("thresholds"),
            text("enforcement"),
        ],
    ))
    .await?;
    for (id, budget) in fold_all::<Budget>(pool, tenant, point).await? {
        if budget.deleted {
            continue;
        }
        let scope = budget.scope.as_ref().map(|scope| match &scope.id {
            Some(named) => format!("{} {named}", scope.kind.as_str()),
            None => scope.kind.as_str().to_owned(),
        });
        let terms = budget.terms.as_ref();
        let thresholds = terms.map(|terms| {
            terms
                .thresholds
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        });
        sink.row(vec![
            Cell::Text(id),
            Cell::Text(budget.name),
            Cell::optional_text(scope),
            Cell::optional_text(budget.period.map(|period| period.as_str())),
            terms.map_or(Cell::Empty, |terms| amount(terms.amount.value())),
            Cell::optional_text(terms.map(|terms| terms.currency.as_ref())),
            Cell::optional_text(thresholds),
            Cell::optional_text(terms.map(|terms| terms.enforcement.as_str())),
        ])
        .await?;
    }

    sink.section(section(
        "keys",
        "API keys",
        vec![
            text("id"),
            text("name"),
            text("role"),
            Column::new("revoked", ColumnKind::Boolean),
        ],
    ))
    .await?;
    for (id, key) in fold_all::<ApiKey>(pool, tenant, point).await? {
        sink.row(vec![
            Cell::Text(id),
            Cell::Text(key.name),
            Cell::optional_text(key.role.map(|role| role.as_str())),
            Cell::Boolean(key.revoked),
        ])
        .await?;
    }

    sink.section(section(
        "providers",
        "Providers",
        vec![
            text("id"),
            text("name"),
            text("kind"),
            text("base_url"),
            Column::new("enabled", ColumnKind::Boolean),
        ],
    ))
    .await?;
    for (id, provider) in fold_all::<Provider>(pool, tenant, point).await? {
        sink.row(vec![
            Cell::Text(id),
            Cell::Text(provider.name),
            Cell::optional_text(provider.kind.map(|kind| kind.as_str())),
            Cell::Text(provider.base_url),
            Cell::Boolean(provider.enabled),
        ])
        .await?;
    }
    sink.flush().await
}
