//! The `catalog` and `audit` reports: the catalogue as it stood at the point (a past instant
//! shows the names and labels then), with no key's secret in any file; the audit log's
//! entries in chain order for a filter, with the chain verified; only auditors and admins
//! may export or download the audit log.

use std::time::Duration;

use integration_tests::exports::{download, export, export_as, section_rows};
use integration_tests::harness::{expect_problem, expect_status, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A JSON export's document.
async fn document(app: &TestApp, body: Value) -> Value {
    let job = export(app, body).await;
    serde_json::from_slice(&download(app, &job).await).expect("JSON")
}

/// The rows of `section` whose `column` is `value`.
fn rows_where<'a>(document: &'a Value, section: &str, column: &str, value: &str) -> Vec<&'a Value> {
    section_rows(document, section)
        .iter()
        .filter(|row| row[column] == value)
        .collect()
}

const SECTIONS: [&str; 8] = [
    "prompts",
    "prompt_versions",
    "models",
    "prices",
    "configuration",
    "budgets",
    "keys",
    "providers",
];

/// A prompt `name` with two versions and `production` on the first; its id.
async fn prompt_with_label(app: &TestApp, name: &str) -> String {
    let prompt = app.create_prompt(name).await;
    app.publish(&prompt, "Answer {{question}}").await;
    app.publish(&prompt, "Answer briefly: {{question}}").await;
    expect_status(
        app.put(
            &format!("/v1/prompts/{prompt}/labels/production"),
            &app.admin_key,
            json!({"version": 1}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    prompt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_holds_every_section_and_no_secret_in_any_format() {
    let app = TestApp::spawn().await;
    let prompt = prompt_with_label(&app, "support-answer").await;
    app.register_openai().await;
    let model = app
        .register_model("gpt-4o-mini", json!({"context_window": 128000}))
        .await;
    expect_status(
        app.post(
            "/v1/models/openai%2Fgpt-4o-mini/prices",
            &app.admin_key,
            json!({"effective_from": "2026-01-01T00:00:00Z", "input_per_mtok": "0.15", "output_per_mtok": "0.60",
                   "currency": "USD"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    expect_status(
        app.put(
            "/v1/config/limits.max_output_tokens",
            &app.admin_key,
            json!({"value": {"default": 512}, "reason": "a sane default"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    expect_status(
        app.post(
            "/v1/budgets",
            &app.admin_key,
            json!({"name": "Monthly cap", "scope": {"kind": "tenant"}, "period": "monthly", "amount": "31.00",
                   "currency": "USD", "thresholds": [50, 80], "enforcement": "soft"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let issued = expect_status(
        app.post(
            "/v1/keys",
            &app.admin_key,
            json!({"name": "ci", "role": "editor"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let secret = issued["key"].as_str().expect("secret").to_string();
    let key_id = issued["api_key"]["id"].as_str().expect("key id").to_string();

    let catalog = |format: &str| json!({"report": "catalog", "format": format});
    let json_job = export(&app, catalog("json")).await;
    assert!(
        json_job["file_name"]
            .as_str()
            .is_some_and(|name| name.starts_with("catalog-acme-at-")),
        "no period in the name: {json_job}"
    );
    let bytes = download(&app, &json_job).await;
    let text = String::from_utf8(bytes.clone()).expect("UTF-8");
    assert!(!text.contains(&secret), "the key's secret is in no export");
    assert!(
        !text.contains("env:OPENAI_API_KEY"),
        "nor a provider's credential"
    );
    let document: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(document["report"], "catalog");
    assert_eq!(document["period"], Value::Null);
    for section in SECTIONS {
        assert!(document["sections"][section].is_object(), "{section}: {document}");
    }

    let prompts = rows_where(&document, "prompts", "id", &prompt);
    assert_eq!(prompts.len(), 1, "{document}");
    assert_eq!(
        (
            &prompts[0]["name"],
            &prompts[0]["latest_version"],
            &prompts[0]["labels"],
            &prompts[0]["archived"]
        ),
        (
            &json!("support-answer"),
            &json!(2),
            &json!("production=1"),
            &json!(false)
        )
    );
    let versions = rows_where(&document, "prompt_versions", "prompt_id", &prompt);
    let published: Vec<(&Value, &Value, &Value)> = versions
        .iter()
        .map(|row| (&row["version"], &row["template"], &row["prompt_name"]))
        .collect();
    assert_eq!(
        published,
        [
            (&json!(1), &json!("Answer {{question}}"), &json!("support-answer")),
            (
                &json!(2),
                &json!("Answer briefly: {{question}}"),
                &json!("support-answer")
            ),
        ]
    );
    assert!(versions.iter().all(|row| row["published_at"].is_string()));

    let models = rows_where(&document, "models", "id", &model);
    assert_eq!(
        (
            &models[0]["reference"],
            &models[0]["provider"],
            &models[0]["status"],
            &models[0]["context_window"]
        ),
        (
            &json!("openai/gpt-4o-mini"),
            &json!("openai"),
            &json!("active"),
            &json!(128000)
        )
    );
    assert_eq!(
        section_rows(&document, "prices"),
        &vec![
            json!({"model": "openai/gpt-4o-mini", "effective_from": "2026-01-01T00:00:00.000Z",
                     "currency": "USD", "input_per_mtok": "0.15", "output_per_mtok": "0.6",
                     "cached_input_per_mtok": null, "corrected": false})
        ]
    );
    let config = rows_where(&document, "configuration", "key", "limits.max_output_tokens");
    assert_eq!(config[0]["value"], r#"{"default":512}"#, "{document}");
    let budgets = rows_where(&document, "budgets", "name", "Monthly cap");
    assert_eq!(
        (
            &budgets[0]["scope"],
            &budgets[0]["amount"],
            &budgets[0]["currency"],
            &budgets[0]["thresholds"],
            &budgets[0]["enforcement"]
        ),
        (
            &json!("tenant"),
            &json!("31"),
            &json!("USD"),
            &json!("50, 80"),
            &json!("soft")
        )
    );
    assert_eq!(
        rows_where(&document, "keys", "id", &key_id),
        [&json!({"id": &key_id, "name": "ci", "role": "editor", "revoked": false})]
    );
    let providers = rows_where(&document, "providers", "name", "openai");
    assert_eq!(
        (&providers[0]["kind"], &providers[0]["enabled"]),
        (&json!("openai"), &json!(true))
    );

    // NDJSON and CSV hold no secret either.
    for format in ["ndjson", "csv"] {
        let file = download(&app, &export(&app, catalog(format)).await).await;
        assert!(!String::from_utf8_lossy(&file).contains(&secret), "{format}");
    }
    let keys_csv = export(
        &app,
        json!({"report": "catalog", "format": "csv", "params": {"section": "keys"}}),
    )
    .await;
    let keys_csv = String::from_utf8(download(&app, &keys_csv).await).expect("UTF-8");
    assert!(keys_csv.starts_with("id,name,role,revoked\r\n"), "{keys_csv}");
    assert!(keys_csv.contains(&format!("{key_id},ci,editor,false")));

    // XLSX: a sheet per section.
    let xlsx = download(&app, &export(&app, catalog("xlsx")).await).await;
    {
        use calamine::{Data, Reader};
        let mut workbook = calamine::Xlsx::new(std::io::Cursor::new(xlsx)).expect("an XLSX file");
        let names = workbook.sheet_names();
        for section in SECTIONS {
            assert!(names.contains(&section.to_string()), "{section}: {names:?}");
        }
        let prompts = workbook.worksheet_range("prompts").expect("prompts");
        assert_eq!(prompts.get_value((0, 1)), Some(&Data::String("name".into())));
        assert!(prompts
            .cells()
            .any(|(_, _, cell)| matches!(cell, Data::String(name) if name == "support-answer")));
    }

    // PDF: the title and the prompt's name.
    let pdf = download(&app, &export(&app, catalog("pdf")).await).await;
    let pdf = lopdf::Document::load_mem(&pdf).expect("a PDF file");
    let pages: Vec<u32> = pdf.get_pages().keys().copied().collect();
    let flat = pdf
        .extract_text(&pages)
        .expect("text")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for expected in ["Catalog", "support-answer"] {
        assert!(flat.contains(expected), "the PDF shows {expected:?}: {flat}");
    }
    assert!(!flat.contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_instant_shows_the_catalog_then_and_the_same_point_the_same_file() {
    let app = TestApp::spawn().await;
    let prompt = prompt_with_label(&app, "faq").await;
    let before = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Afterwards: renamed, the label moved to version 2, a staging label added.
    expect_status(
        app.patch(
            &format!("/v1/prompts/{prompt}"),
            &app.admin_key,
            json!({"name": "faq-answers"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    for (label, version) in [("production", 2), ("staging", 1)] {
        expect_status(
            app.put(
                &format!("/v1/prompts/{prompt}/labels/{label}"),
                &app.admin_key,
                json!({"version": version}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    }
    let as_of = before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let then = document(
        &app,
        json!({"report": "catalog", "format": "json", "as_of": as_of}),
    )
    .await;
    let now = document(&app, json!({"report": "catalog", "format": "json"})).await;
    let prompt_row = |document: &Value| {
        let row = rows_where(document, "prompts", "id", &prompt)[0].clone();
        (row["name"].clone(), row["labels"].clone())
    };
    assert_eq!(prompt_row(&then), (json!("faq"), json!("production=1")));
    assert_eq!(
        prompt_row(&now),
        (json!("faq-answers"), json!("production=2; staging=1"))
    );
    // The versions name the prompt as it was called at each point.
    assert_eq!(
        rows_where(&then, "prompt_versions", "prompt_id", &prompt)[0]["prompt_name"],
        "faq"
    );

    // The same point gives the same bytes.
    let ndjson = |as_of: &str| json!({"report": "catalog", "format": "ndjson", "as_of": as_of});
    let first = export(&app, ndjson(&as_of)).await;
    let again = export(&app, ndjson(&as_of)).await;
    assert_eq!(first["cursor"], again["cursor"]);
    assert_eq!(first["content_sha256"], again["content_sha256"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_export_lists_a_filtered_range_in_chain_order_and_verifies_the_chain() {
    let app = TestApp::spawn().await;
    let from = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let prompt = prompt_with_label(&app, "audited").await;
    let auditor = app.key("acme", "auditor").await;
    let viewer = app.key("acme", "viewer").await;

    // A viewer may not export the audit log; an auditor may.
    let audit = |params: Value| json!({"report": "audit", "format": "json", "params": params});
    expect_problem(
        app.post("/v1/exports", &viewer, audit(json!({}))).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let job = export_as(
        &app,
        &auditor,
        audit(json!({"from": from, "aggregate_type": "prompt"})),
    )
    .await;
    let url = job["download_url"].as_str().expect("download url");
    assert_eq!(
        app.get(url, &viewer).await.status(),
        StatusCode::FORBIDDEN,
        "nor download an auditor's"
    );
    let document: Value = serde_json::from_slice(&download(&app, &job).await).expect("JSON");
    assert_eq!(document["report"], "audit");
    assert_eq!(document["title"], "Audit log");
    let entries = section_rows(&document, "entries");
    let kinds: Vec<&str> = entries
        .iter()
        .filter_map(|entry| entry["event_type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "PromptCreated",
            "PromptVersionPublished",
            "PromptVersionPublished",
            "PromptLabelMoved"
        ],
        "{document}"
    );
    assert!(entries.iter().all(|entry| entry["aggregate_id"] == prompt));
    let sequences: Vec<i64> = entries
        .iter()
        .filter_map(|entry| entry["sequence"].as_i64())
        .collect();
    assert!(
        sequences.windows(2).all(|pair| pair[0] < pair[1]),
        "chain order: {sequences:?}"
    );
    for pair in entries.windows(2) {
        if pair[1]["sequence"].as_i64() == pair[0]["sequence"].as_i64().map(|at| at + 1) {
            assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "linked");
        }
    }
    let verification = section_rows(&document, "verification");
    assert_eq!(verification.len(), 1);
    assert_eq!(verification[0]["verified"], true, "{verification:?}");
    assert_eq!(verification[0]["first_broken_sequence"], Value::Null);
    assert!(
        verification[0]["entries_checked"].as_i64() >= sequences.last().copied(),
        "{verification:?}"
    );
    assert_eq!(
        verification[0]["covered_through"], job["cursor"],
        "verified up to the point"
    );

    // An event type filter, as CSV.
    let published = export(
        &app,
        json!({"report": "audit", "format": "csv",
               "params": {"event_type": "PromptVersionPublished", "section": "entries"}}),
    )
    .await;
    let csv = String::from_utf8(download(&app, &published).await).expect("UTF-8");
    let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert!(lines[0].starts_with("sequence,recorded_at,"), "{csv}");
    assert_eq!(lines.len(), 3, "two versions: {csv}");
    assert!(lines[1..]
        .iter()
        .all(|line| line.contains(",PromptVersionPublished,")));

    // Parameters are checked field by field.
    let refused = expect_problem(
        app.post(
            "/v1/exports",
            &app.admin_key,
            json!({"report": "audit", "format": "csv",
                   "params": {"from": "2026-07-02", "to": "2026-07-01T00:00:00Z", "actor": "", "month": "2026-07"}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    let mut fields: Vec<&str> = refused["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|error| error["field"].as_str())
        .collect();
    fields.sort();
    assert_eq!(fields, ["params", "params.actor", "params.from"], "{refused}");
    expect_problem(
        app.post(
            "/v1/exports",
            &app.admin_key,
            json!({"report": "catalog", "format": "csv", "params": {"month": "2026-07"}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
}
