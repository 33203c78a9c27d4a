//! The experiment, health and prompt usage reports: each agrees with the API's own figures
//! at the same point, a past point shows what was known then, and what a report is of must
//! be named and exist.

use std::time::Duration;

use integration_tests::exports::{column, csv_rows, download, export, section_rows};
use integration_tests::harness::{expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::health::{register_local, run_checks, Behaviour, FakeProvider};

/// An export's JSON document.
async fn export_document(app: &TestApp, body: Value) -> (Value, Value) {
    let job = export(app, body).await;
    let document = serde_json::from_slice(&download(app, &job).await).expect("JSON");
    (job, document)
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        _ => a == b,
    }
}

/// The text and the count of drawn rectangles of a PDF.
fn pdf_text_and_rectangles(bytes: &[u8]) -> (String, usize) {
    let document = lopdf::Document::load_mem(bytes).expect("a PDF file");
    let pages: Vec<u32> = document.get_pages().keys().copied().collect();
    let text = document.extract_text(&pages).expect("text");
    let drawn = document
        .get_pages()
        .values()
        .map(|page| {
            String::from_utf8_lossy(&document.get_page_content(*page))
                .matches(" re")
                .count()
        })
        .sum();
    (text.split_whitespace().collect::<Vec<_>>().join(" "), drawn)
}

/// The sheet names of an XLSX file.
fn xlsx_sheets(bytes: Vec<u8>) -> Vec<String> {
    use calamine::Reader;
    let workbook = calamine::Xlsx::new(std::io::Cursor::new(bytes)).expect("an XLSX file");
    workbook.sheet_names()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_results_match_the_results_route_in_every_format() {
    let app = TestApp::spawn().await;
    let prompt = app.create_prompt("checkout-answer").await;
    app.publish(&prompt, "v1 {{q}}").await;
    app.publish(&prompt, "v2 {{q}}").await;
    let created = expect_status(
        app.post(
            "/v1/experiments",
            &app.admin_key,
            json!({
                "name": "Shorter answers", "hypothesis": "Shorter answers convert better",
                "prompt_id": prompt,
                "variants": [
                    {"name": "control", "weight": 50, "control": true, "prompt_version": 1},
                    {"name": "short", "weight": 50, "prompt_version": 2}
                ],
                "primary_metric": {"name": "converted", "kind": "binary"},
                "guardrail_metrics": [{"name": "latency", "kind": "continuous", "higher_is_better": false}],
                "min_units_per_variant": 100
            }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = created["id"].as_str().expect("id").to_string();
    let started = app
        .request(
            Method::POST,
            &format!("/v1/experiments/{id}/start"),
            &app.admin_key,
        )
        .header("X-Reason", "start for the test")
        .send()
        .await
        .expect("start");
    assert_eq!(started.status(), StatusCode::OK);
    // 10 % of the control's 400 subjects convert, 20 % of the treatment's; the treatment is
    // 50 ms slower.
    let traffic = |prefix: &str, variant: &str, converting: usize, latency: f64| {
        (0..400)
            .flat_map(|n| {
                let subject = format!("{prefix}-{n}");
                [
                    json!({"subject": subject, "variant": variant, "metric": "converted",
                           "value": if n < converting { 1 } else { 0 }}),
                    json!({"subject": subject, "variant": variant, "metric": "latency",
                           "value": latency + (n % 50) as f64}),
                ]
            })
            .collect::<Vec<_>>()
    };
    let mut observations = traffic("c", "control", 40, 100.0);
    observations.extend(traffic("s", "short", 80, 150.0));
    expect_status(
        app.post(
            &format!("/v1/experiments/{id}/observations"),
            &app.admin_key,
            json!(observations),
        )
        .await,
        StatusCode::OK,
    )
    .await;

    for method in ["fixed", "sequential", "bayesian"] {
        let body = json!({"report": "experiment", "format": "json",
                          "params": {"experiment_id": id, "method": method}});
        let (job, document) = export_document(&app, body).await;
        assert_eq!(document["title"], "Experiment results");
        assert_eq!(document["period"], Value::Null);
        let instant = job["instant"].as_str().expect("instant");
        let route = expect_status(
            app.get(
                &format!(
                    "/v1/experiments/{id}/results?method={method}&as_of={}",
                    instant.replace('+', "%2B")
                ),
                &app.admin_key,
            )
            .await,
            StatusCode::OK,
        )
        .await;
        let primary = &route["metrics"][0];
        assert_eq!(primary["name"], "converted");
        let variants = section_rows(&document, "variants");
        assert_eq!(variants.len(), 2);
        for (row, figures) in variants
            .iter()
            .zip(primary["variants"].as_array().expect("variants"))
        {
            assert_eq!(row["variant"], figures["variant"]);
            assert_eq!(row["units"], figures["units"]);
            for (mine, theirs) in [("mean", "mean"), ("ci_low", "ci_low"), ("ci_high", "ci_high")] {
                assert!(
                    close(&row[mine], &figures[theirs]),
                    "{method} {mine}: {row} vs {figures}"
                );
            }
        }
        let comparisons = section_rows(&document, "comparisons");
        let converted = comparisons
            .iter()
            .find(|row| row["metric"] == "converted")
            .expect("the primary comparison");
        let theirs = &primary["comparisons"][0];
        assert_eq!(converted["treatment"], "short");
        for (mine, name) in [
            ("lift_abs", "lift_abs"),
            ("lift_rel", "lift_rel"),
            ("ci_low", "lift_abs_ci_low"),
            ("ci_high", "lift_abs_ci_high"),
            ("p_value", "p_value"),
            ("chance_to_beat_control", "chance_to_beat_control"),
        ] {
            assert!(
                close(&converted[mine], &theirs[name]),
                "{method} {mine}: {converted} vs {theirs}"
            );
        }
        assert_eq!(converted["significant"], theirs["significant"], "{method}");
        assert!(close(&converted["control_mean"], &primary["variants"][0]["mean"]));
        let checks = section_rows(&document, "checks");
        assert_eq!(checks[0]["check"], "sample_ratio");
        assert!(close(&checks[0]["p_value"], &route["srm"]["p_value"]));
        assert_eq!(checks[0]["flagged"], route["srm"]["flagged"]);
        let breaches = checks.iter().filter(|row| row["check"] == "guardrail").count();
        assert_eq!(
            breaches,
            route["guardrails_breached"].as_array().expect("breaches").len()
        );
    }

    // The same point gives the same data, whatever order the subjects are read in.
    let as_of = chrono::Utc::now().to_rfc3339();
    let again = |format: &str| json!({"report": "experiment", "format": format, "params": {"experiment_id": id}, "as_of": as_of});
    let first = export(&app, again("ndjson")).await;
    let second = export(&app, again("json")).await;
    assert_eq!(first["data_sha256"], second["data_sha256"]);
    assert_eq!(first["content_sha256"], first["data_sha256"]);

    let pdf = export(
        &app,
        json!({"report": "experiment", "format": "pdf", "params": {"experiment_id": id}}),
    )
    .await;
    let (text, drawn) = pdf_text_and_rectangles(&download(&app, &pdf).await);
    for expected in ["Experiment results", "control", "short", "converted"] {
        assert!(text.contains(expected), "the PDF shows {expected:?}: {text}");
    }
    assert!(drawn >= 2, "each variant's mean is drawn");

    let xlsx = export(
        &app,
        json!({"report": "experiment", "format": "xlsx", "params": {"experiment_id": id}}),
    )
    .await;
    let sheets = xlsx_sheets(download(&app, &xlsx).await);
    for sheet in ["variants", "comparisons", "checks"] {
        assert!(sheets.contains(&sheet.to_string()), "{sheets:?}");
    }

    // What the report is of is named, and must exist.
    let missing = expect_problem(
        app.post(
            "/v1/exports",
            &app.admin_key,
            json!({"report": "experiment", "format": "csv", "params": {"method": "fixed"}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(missing["errors"][0]["field"], "params.experiment_id", "{missing}");
    let unknown = expect_problem(
        app.post(
            "/v1/exports",
            &app.admin_key,
            json!({"report": "experiment", "format": "csv",
                   "params": {"experiment_id": uuid::Uuid::new_v4(), "method": "frequentist"}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(unknown["errors"][0]["field"], "params.method", "{unknown}");
    let unknown = expect_problem(
        app.post(
            "/v1/exports",
            &app.admin_key,
            json!({"report": "experiment", "format": "csv",
                   "params": {"experiment_id": uuid::Uuid::new_v4()}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(unknown["errors"][0]["field"], "params.experiment_id", "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_state_changes_uptime_and_incidents_with_their_related_changes() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let fake = FakeProvider::start().await;
    let provider = register_local(&app, &fake).await;
    expect_status(
        app.put(
            &format!("/v1/providers/{provider}/health-check"),
            key,
            json!({ "open_incident_on_down": true, "reason": "page us" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(run_checks(&app, key, &provider).await["state"], "healthy");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let healthy_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    fake.set(Behaviour::Failing);
    for _ in 0..3 {
        run_checks(&app, key, &provider).await;
    }

    let (job, document) = export_document(&app, json!({"report": "health", "format": "json"})).await;
    assert_eq!(document["title"], "Provider health");
    let today = chrono::DateTime::parse_from_rfc3339(job["instant"].as_str().expect("instant"))
        .expect("instant")
        .date_naive();
    assert_eq!(
        document["period"],
        json!({"from": (today - chrono::Days::new(6)).to_string(), "to": today.to_string()})
    );
    let providers = section_rows(&document, "providers");
    assert_eq!(providers.len(), 1);
    assert_eq!(providers[0]["provider"], "local");
    assert_eq!(providers[0]["state"], "down");
    assert_eq!(
        (providers[0]["probes"].as_i64(), providers[0]["ok"].as_i64()),
        (Some(4), Some(1))
    );
    let uptime = section_rows(&document, "uptime");
    assert_eq!(uptime.len(), 1);
    assert_eq!(uptime[0]["day"], today.to_string());
    let fraction = uptime[0]["uptime"].as_f64().expect("uptime");
    assert!(fraction < 1.0 && (fraction - 0.25).abs() < 1e-12, "{fraction}");
    assert_eq!(uptime[0]["charted_uptime"], uptime[0]["uptime"]);
    let changes: Vec<String> = section_rows(&document, "state_changes")
        .iter()
        .map(|row| {
            format!(
                "{}→{}",
                row["from"].as_str().unwrap_or("?"),
                row["to"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(changes, ["unknown→healthy", "healthy→degraded", "degraded→down"]);
    let incidents = section_rows(&document, "incidents");
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["title"], "Provider local is down");
    assert_eq!(incidents[0]["status"], "investigating");
    assert_eq!(incidents[0]["resolved"], Value::Null);
    assert_eq!(incidents[0]["affected"], "providers: local");
    let related = section_rows(&document, "related_changes");
    let types: Vec<&str> = related
        .iter()
        .filter_map(|row| row["event_type"].as_str())
        .collect();
    assert_eq!(types, ["ProviderHealthCheckSet", "ProviderRegistered"]);
    assert_eq!(related[0]["reason"], "page us");
    assert_eq!(related[0]["incident_id"], incidents[0]["incident_id"]);

    // As it stood before the failures: healthy, every probe ok, no incident.
    let (_, before) = export_document(
        &app,
        json!({"report": "health", "format": "json", "as_of": healthy_at.to_rfc3339()}),
    )
    .await;
    assert_eq!(section_rows(&before, "providers")[0]["state"], "healthy");
    assert_eq!(section_rows(&before, "uptime")[0]["probes"], 1);
    assert_eq!(section_rows(&before, "uptime")[0]["uptime"], 1);
    assert_eq!(section_rows(&before, "state_changes").len(), 1);
    assert!(section_rows(&before, "incidents").is_empty());

    // CSV of one section; the PDF draws the uptime line.
    let csv = export(
        &app,
        json!({"report": "health", "format": "csv", "params": {"section": "state_changes"}}),
    )
    .await;
    let table = csv_rows(&download(&app, &csv).await);
    assert_eq!(table.len(), 4);
    assert_eq!(column(&table, 3, "to"), "down");
    let pdf = export(&app, json!({"report": "health", "format": "pdf"})).await;
    let (text, drawn) = pdf_text_and_rectangles(&download(&app, &pdf).await);
    assert!(
        text.contains("Provider health") && text.contains("local"),
        "{text}"
    );
    assert!(drawn >= 1, "the uptime line's points are drawn");

    let bad = expect_problem(
        app.post(
            "/v1/exports",
            key,
            json!({"report": "health", "format": "csv", "params": {"from": "2026-07-10", "to": "2026-07-01"}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(bad["errors"][0]["field"], "params.to", "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_usage_agrees_with_the_analytics_and_a_past_point_sees_fewer_calls() {
    let app = TestApp::spawn().await;
    let before_prompt = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.register_openai().await;
    app.register_model("gpt-4o-mini", json!({})).await;
    expect_status(
        app.post(
            "/v1/models/openai%2Fgpt-4o-mini/prices",
            &app.admin_key,
            json!({"effective_from": "2026-01-01T00:00:00Z", "input_per_mtok": "0.15",
                   "output_per_mtok": "0.60", "currency": "USD"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let prompt = app.create_prompt("support-answer").await;
    app.publish(&prompt, "v1 {{q}}").await;
    app.publish(&prompt, "v2 {{q}}").await;
    let call = |id: &str, day: &str, version: u32, latency: u32, status: &str| {
        json!({"id": id, "timestamp": format!("2026-07-{day}T10:00:00Z"), "model": "openai/gpt-4o-mini",
               "prompt_id": prompt, "prompt_version": version,
               "input_tokens": 1_000_000, "output_tokens": 500_000, "latency_ms": latency,
               "status": status, "metrics": {"rating": version * 2}})
    };
    let ingest = |body: Value| {
        let app = &app;
        async move {
            let ingested =
                expect_status(app.post("/v1/usage", &app.admin_key, body).await, StatusCode::OK).await;
            assert_eq!(ingested["rejected"], json!([]), "{ingested}");
        }
    };
    ingest(json!([
        call("a-1", "10", 1, 400, "ok"),
        call("a-2", "10", 2, 300, "ok"),
        call("a-3", "11", 2, 500, "timeout"),
    ]))
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let first_batch_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    ingest(json!([
        call("b-1", "12", 2, 200, "ok"),
        call("b-2", "12", 1, 600, "ok")
    ]))
    .await;

    let params = json!({"prompt_id": prompt, "from": "2026-07-01", "to": "2026-07-31"});
    let (_, document) = export_document(
        &app,
        json!({"report": "prompt_usage", "format": "json", "params": params}),
    )
    .await;
    assert_eq!(document["title"], "Prompt usage");
    assert_eq!(
        document["period"],
        json!({"from": "2026-07-01", "to": "2026-07-31"})
    );
    let analytics = expect_status(
        app.get(
            &format!("/v1/analytics/prompts/{prompt}?from=2026-07-01&to=2026-08-01"),
            &app.admin_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let versions = section_rows(&document, "versions");
    let theirs = analytics["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 2);
    assert_eq!(versions.len(), theirs.len());
    for (mine, theirs) in versions.iter().zip(theirs) {
        assert_eq!(mine["version"], theirs["version"], "newest first");
        assert_eq!(mine["calls"], theirs["calls"]);
        assert_eq!(mine["input_tokens"], theirs["input_tokens"]);
        assert_eq!(mine["cost"], theirs["cost"][0]["cost"], "{mine} vs {theirs}");
        assert_eq!(mine["currency"], theirs["cost"][0]["currency"]);
        assert!(close(&mine["error_rate"], &theirs["error_rate"]));
        assert!(close(&mine["latency_p50_ms"], &theirs["latency_ms"]["p50"]));
        assert!(close(&mine["latency_p99_ms"], &theirs["latency_ms"]["p99"]));
        assert!(close(&mine["mean_rating"], &theirs["metrics"]["rating"]));
        assert_eq!(mine["labels"], Value::Null, "no call named a label");
    }
    assert_eq!(versions[0]["version"], 2);
    assert_eq!(
        (versions[0]["calls"].as_i64(), versions[0]["errors"].as_i64()),
        (Some(3), Some(1))
    );
    let daily = section_rows(&document, "daily");
    assert_eq!(daily.len(), 5, "{daily:?}");
    assert_eq!(
        daily[0],
        json!({"day": "2026-07-10", "version": 2, "calls": 1, "cost": "0.45", "currency": "USD"})
    );

    // Before the second batch was received: fewer calls.
    let (_, past) = export_document(
        &app,
        json!({"report": "prompt_usage", "format": "json", "params": params,
               "as_of": first_batch_at.to_rfc3339()}),
    )
    .await;
    let calls = |document: &Value| -> i64 {
        section_rows(document, "versions")
            .iter()
            .filter_map(|row| row["calls"].as_i64())
            .sum()
    };
    assert_eq!((calls(&past), calls(&document)), (3, 5));

    // The prompt must be named and exist; before it existed the job fails, saying why.
    let missing = expect_problem(
        app.post(
            "/v1/exports",
            &app.admin_key,
            json!({"report": "prompt_usage", "format": "csv"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(missing["errors"][0]["field"], "params.prompt_id", "{missing}");
    let unknown = expect_problem(
        app.post(
            "/v1/exports",
            &app.admin_key,
            json!({"report": "prompt_usage", "format": "csv",
                   "params": {"prompt_id": uuid::Uuid::new_v4()}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(unknown["errors"][0]["field"], "params.prompt_id", "{unknown}");
    let too_early = export(
        &app,
        json!({"report": "prompt_usage", "format": "csv", "params": {"prompt_id": prompt},
               "as_of": before_prompt.to_rfc3339()}),
    )
    .await;
    assert_eq!(too_early["status"], "failed", "{too_early}");
    let failure = too_early["failure"].as_str().expect("failure");
    assert!(failure.contains("did not exist"), "{failure}");
}
