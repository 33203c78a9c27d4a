//! Exports: reports written to files in the background, read back in every format; a past
//! instant's report differs from now's exactly as the log says; cancellation, resumption
//! after a restart, expiry, and another tenant's exports answering 404.

use std::time::Duration;

use integration_tests::exports::{column, csv_rows, download, download_response, export, finished};
use integration_tests::harness::{
    expect_each_not_found, expect_problem, expect_status, test_settings, TestApp,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// `openai/gpt-4o-mini` priced from January (0.15 in, 0.60 out) and from June (0.30 in,
/// 1.20 out, 0.10 cached in), per million tokens, in USD.
async fn priced_model(app: &TestApp) {
    app.register_openai().await;
    app.register_model("gpt-4o-mini", json!({})).await;
    for (from, input, output, cached) in [
        ("2026-01-01T00:00:00Z", "0.15", "0.60", None),
        ("2026-06-01T00:00:00Z", "0.30", "1.20", Some("0.10")),
    ] {
        expect_status(
            app.post(
                "/v1/models/openai%2Fgpt-4o-mini/prices",
                &app.admin_key,
                json!({"effective_from": from, "input_per_mtok": input, "output_per_mtok": output,
                       "cached_input_per_mtok": cached, "currency": "USD"}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
}

/// Two July calls on the priced model (0.86 each at the June price) from two features, and
/// one on a model with no price.
async fn july_usage(app: &TestApp) {
    let call = |id: &str, day: &str, model: &str, feature: &str| {
        json!({"id": id, "timestamp": format!("2026-07-{day}T10:00:00Z"), "model": model, "feature": feature,
               "input_tokens": 1_000_000, "output_tokens": 500_000, "cached_input_tokens": 200_000,
               "latency_ms": 840})
    };
    let body = json!([
        call("july-1", "10", "openai/gpt-4o-mini", "support-chat"),
        call("july-2", "11", "openai/gpt-4o-mini", "search"),
        call("july-3", "11", "acme/unpriced", "support-chat"),
    ]);
    let ingested = expect_status(app.post("/v1/usage", &app.admin_key, body).await, StatusCode::OK).await;
    assert_eq!(ingested["accepted"], 3, "{ingested}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_and_usage_in_every_format_read_back_with_one_data_hash() {
    let app = TestApp::spawn().await;
    priced_model(&app).await;
    july_usage(&app).await;
    expect_status(
        app.post(
            "/v1/budgets",
            &app.admin_key,
            json!({"name": "Café budget", "scope": {"kind": "tenant"}, "period": "monthly", "amount": "31.00",
                   "currency": "USD", "thresholds": [80], "enforcement": "soft"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let spend = |format: &str, section: Option<&str>| {
        let mut params = json!({"month": "2026-07"});
        if let Some(section) = section {
            params["section"] = json!(section);
        }
        json!({"report": "spend", "format": format, "params": params})
    };

    // CSV: one section per file.
    let by_model = export(&app, spend("csv", Some("by_model"))).await;
    let (headers, bytes) = download_response(&app, &by_model).await;
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8; header=present");
    let disposition = headers["content-disposition"].to_str().expect("disposition");
    assert!(
        disposition.starts_with("attachment; filename=\"spend-acme-2026-07-01-to-2026-07-31-at-"),
        "{disposition}"
    );
    assert_eq!(
        headers["aipm-data-cursor"],
        by_model["cursor"].as_str().expect("cursor")
    );
    let rows = csv_rows(&bytes);
    assert_eq!(
        rows[0],
        [
            "model",
            "currency",
            "calls",
            "input_tokens",
            "output_tokens",
            "cost",
            "share_of_cost"
        ]
    );
    assert_eq!(rows.len(), 2, "only the priced model costs: {rows:?}");
    assert_eq!(
        (column(&rows, 1, "model"), column(&rows, 1, "cost")),
        ("openai/gpt-4o-mini", "1.72")
    );
    assert_eq!(column(&rows, 1, "share_of_cost"), "1");
    let uncosted = csv_rows(&download(&app, &export(&app, spend("csv", Some("uncosted"))).await).await);
    assert_eq!(uncosted[1][..2], ["acme/unpriced".to_string(), "1".to_string()]);
    let budgets = csv_rows(&download(&app, &export(&app, spend("csv", Some("budgets"))).await).await);
    assert_eq!(
        (
            column(&budgets, 1, "name"),
            column(&budgets, 1, "spent"),
            column(&budgets, 1, "period_start")
        ),
        ("Café budget", "1.72", "2026-07-01")
    );
    // A month that is over is forecast at what was spent.
    assert_eq!(
        (column(&budgets, 1, "forecast"), column(&budgets, 1, "status")),
        ("1.72", "within")
    );

    // JSON: every section, with the report's point.
    let json_job = export(&app, spend("json", None)).await;
    let document: Value = serde_json::from_slice(&download(&app, &json_job).await).expect("JSON");
    assert_eq!(document["report"], "spend");
    assert_eq!(document["tenant"], "acme");
    assert_eq!(
        document["period"],
        json!({"from": "2026-07-01", "to": "2026-07-31"})
    );
    assert_eq!(document["cursor"], json_job["cursor"]);
    let daily = &document["sections"]["daily"]["rows"];
    assert_eq!(
        daily,
        &json!([{"day": "2026-07-10", "currency": "USD", "calls": 1, "cost": "0.86"},
                {"day": "2026-07-11", "currency": "USD", "calls": 1, "cost": "0.86"}])
    );
    let features: Vec<&str> = document["sections"]["by_feature"]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|row| row["feature"].as_str())
        .collect();
    assert_eq!(features, ["search", "support-chat"], "equal costs in name order");

    // NDJSON: the data hash is its own hash, and every format states the same.
    let ndjson_job = export(&app, spend("ndjson", None)).await;
    let ndjson = download(&app, &ndjson_job).await;
    assert_eq!(ndjson_job["content_sha256"], ndjson_job["data_sha256"]);
    let lines: Vec<Value> = ndjson
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines[0]["section"], "summary");
    assert_eq!(
        (lines[0]["cost"].as_str(), lines[0]["uncosted_calls"].as_i64()),
        (Some("1.72"), Some(1))
    );
    for job in [&by_model, &json_job] {
        assert_eq!(job["data_sha256"], ndjson_job["data_sha256"], "{job}");
    }

    // XLSX: a cover with the point and the hash, typed cells, a sheet per section.
    let xlsx_job = export(&app, spend("xlsx", None)).await;
    let (headers, bytes) = download_response(&app, &xlsx_job).await;
    assert_eq!(
        headers["content-type"],
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    );
    assert_eq!(xlsx_job["data_sha256"], ndjson_job["data_sha256"]);
    {
        use calamine::{Data, Reader};
        let mut workbook = calamine::Xlsx::new(std::io::Cursor::new(bytes)).expect("an XLSX file");
        let names = workbook.sheet_names();
        assert_eq!(names[0], "Cover");
        assert!(
            names.contains(&"by_model".to_string()) && names.contains(&"daily".to_string()),
            "{names:?}"
        );
        let cover = workbook.worksheet_range("Cover").expect("cover");
        let hash = xlsx_job["data_sha256"].as_str().expect("hash");
        assert!(
            cover
                .cells()
                .any(|(_, _, cell)| matches!(cell, Data::String(text) if text == hash)),
            "the cover states the data hash"
        );
        let sheet = workbook.worksheet_range("by_model").expect("by_model");
        assert_eq!(sheet.get_value((0, 5)), Some(&Data::String("cost".into())));
        assert_eq!(
            sheet.get_value((1, 5)),
            Some(&Data::Float(1.72)),
            "money is a number"
        );
        assert_eq!(
            sheet.get_value((1, 2)),
            Some(&Data::Float(2.0)),
            "calls are numbers"
        );
        let daily = workbook.worksheet_range("daily").expect("daily");
        match daily.get_value((1, 0)) {
            Some(Data::DateTime(day)) => {
                assert_eq!(
                    day.as_datetime().map(|at| at.date().to_string()),
                    Some("2026-07-10".into())
                )
            }
            other => panic!("a day is a date: {other:?}"),
        }
    }

    // PDF: the title block with the point and hash, the figures, a chart drawn.
    let pdf_job = export(&app, spend("pdf", None)).await;
    let (headers, bytes) = download_response(&app, &pdf_job).await;
    assert_eq!(headers["content-type"], "application/pdf");
    let document = lopdf::Document::load_mem(&bytes).expect("a PDF file");
    let pages: Vec<u32> = document.get_pages().keys().copied().collect();
    let text = document.extract_text(&pages).expect("text");
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "Spend report",
        "acme",
        pdf_job["cursor"].as_str().expect("cursor"),
        pdf_job["data_sha256"].as_str().expect("hash"),
        "1.72",
        "search",
        "Café budget",
    ] {
        assert!(flat.contains(expected), "the PDF shows {expected:?}: {flat}");
    }
    let drawn: usize = document
        .get_pages()
        .values()
        .map(|page| {
            String::from_utf8_lossy(&document.get_page_content(*page))
                .matches(" re")
                .count()
        })
        .sum();
    assert!(drawn >= 2, "daily spend is drawn as bars");

    // Usage: a row per record, priced at the point.
    let usage = export(
        &app,
        json!({"report": "usage", "format": "csv", "params": {"from": "2026-07-01", "to": "2026-07-31"}}),
    )
    .await;
    assert_eq!(
        (
            usage["progress"]["rows"].as_i64(),
            usage["progress"]["percent"].as_i64()
        ),
        (Some(3), Some(100))
    );
    let rows = csv_rows(&download(&app, &usage).await);
    assert_eq!(rows.len(), 4);
    assert_eq!(
        (
            column(&rows, 1, "record_id"),
            column(&rows, 1, "timestamp"),
            column(&rows, 1, "cost"),
            column(&rows, 1, "currency")
        ),
        ("july-1", "2026-07-10T10:00:00.000Z", "0.86", "USD")
    );
    assert_eq!(
        (column(&rows, 3, "record_id"), column(&rows, 3, "cost")),
        ("july-3", ""),
        "no price, no cost"
    );

    // The lifecycle is in the log, the audit log and the listing.
    let history = expect_status(
        app.get(
            &format!("/v1/exports/{}/history", usage["id"].as_str().expect("id")),
            &app.admin_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let types: Vec<&str> = history["items"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|event| event["event_type"].as_str())
        .filter(|kind| *kind != "ExportProgressed")
        .collect();
    assert_eq!(types, ["ExportRequested", "ExportStarted", "ExportCompleted"]);
    let listed = expect_status(
        app.get("/v1/exports?limit=2", &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["items"][0]["id"], usage["id"], "newest first");
    assert!(listed["next_cursor"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_instant_reports_the_spend_and_budgets_known_then_and_is_reproducible() {
    let app = TestApp::spawn().await;
    priced_model(&app).await;
    july_usage(&app).await;
    let before = chrono::Utc::now();
    // Afterwards: the June output price was mistyped (0.90, not 1.20), and a budget is set.
    expect_status(
        app.post(
            "/v1/models/openai%2Fgpt-4o-mini/prices/corrections",
            &app.admin_key,
            json!({"effective_from": "2026-06-01T00:00:00Z", "input_per_mtok": "0.30", "output_per_mtok": "0.90",
                   "cached_input_per_mtok": "0.10", "currency": "USD", "reason": "mistyped output price"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    expect_status(
        app.post(
            "/v1/budgets",
            &app.admin_key,
            json!({"name": "July cap", "scope": {"kind": "tenant"}, "period": "monthly", "amount": "2.00",
                   "currency": "USD", "thresholds": [80], "enforcement": "hard"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let as_of = before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let body = |section: &str, as_of: Option<&str>| json!({"report": "spend", "format": "csv", "params": {"month": "2026-07", "section": section}, "as_of": as_of});
    let now = csv_rows(&download(&app, &export(&app, body("summary", None)).await).await);
    let then_job = export(&app, body("summary", Some(&as_of))).await;
    let then = csv_rows(&download(&app, &then_job).await);
    // Each July call: 0.8 × 0.30 + 0.2 × 0.10 + 0.5 × 1.20 = 0.86 then, with 0.90 out 0.71 now.
    assert_eq!(column(&then, 1, "cost"), "1.72");
    assert_eq!(column(&now, 1, "cost"), "1.42");
    assert_eq!(
        then_job["as_of"].as_str().map(|at| at.starts_with(&as_of[..19])),
        Some(true)
    );

    let budgets_now = csv_rows(&download(&app, &export(&app, body("budgets", None)).await).await);
    let budgets_then = csv_rows(&download(&app, &export(&app, body("budgets", Some(&as_of))).await).await);
    assert_eq!(budgets_then.len(), 1, "no budget yet then: {budgets_then:?}");
    assert_eq!(
        (
            column(&budgets_now, 1, "name"),
            column(&budgets_now, 1, "spent"),
            column(&budgets_now, 1, "used")
        ),
        ("July cap", "1.42", "0.71")
    );

    // The same report of the same point is the same file, byte for byte.
    let again = export(&app, body("summary", Some(&as_of))).await;
    assert_eq!(again["cursor"], then_job["cursor"]);
    assert_eq!(again["content_sha256"], then_job["content_sha256"]);
    assert_ne!(then_job["cursor"], json!(null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_export_is_cancelled_and_an_interrupted_one_resumes_from_its_point() {
    // This process accepts exports but does not write them.
    let mut settings = test_settings();
    settings.exports.runner = false;
    let app = TestApp::spawn_with(settings).await;
    priced_model(&app).await;
    july_usage(&app).await;
    let request = |format: &str| json!({"report": "usage", "format": format, "params": {"from": "2026-07-01", "to": "2026-07-31"}});
    let queued = expect_status(
        app.post("/v1/exports", &app.admin_key, request("csv")).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(
        (queued["status"].as_str(), queued["download_url"].as_str()),
        (Some("queued"), None)
    );
    let id = queued["id"].as_str().expect("id").to_string();
    expect_problem(
        app.get(&format!("/v1/exports/{id}/download"), &app.admin_key)
            .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    let cancelled = expect_status(
        app.post(&format!("/v1/exports/{id}/cancel"), &app.admin_key, json!({}))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(cancelled["status"], "cancelled");
    // Cancelling again changes nothing.
    expect_status(
        app.post(&format!("/v1/exports/{id}/cancel"), &app.admin_key, json!({}))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;

    // A job whose process stopped after starting it: its first attempt fixed its point.
    let interrupted = expect_status(
        app.post("/v1/exports", &app.admin_key, request("ndjson")).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let interrupted_id = interrupted["id"].as_str().expect("id").to_string();
    let fixed_cursor = integration_tests::harness::last_event_cursor(app.pool())
        .await
        .to_string();
    let store = commands::EventStore::new(app.pool().clone(), projections::inline());
    let jobs = store.aggregates::<domain::export::ExportJob>(());
    let metadata = commands::CommandMetadata {
        tenant: "acme".into(),
        actor_key_id: "export-runner".into(),
        actor_name: "export-runner".into(),
        request_id: "a-runner-that-died".into(),
        ..commands::CommandMetadata::default()
    };
    jobs.execute(
        &interrupted_id,
        domain::export::ExportCommand::Start {
            snapshot: domain::export::Snapshot {
                cursor: fixed_cursor.clone(),
                instant: chrono::Utc::now(),
            },
        },
        None,
        &metadata,
    )
    .await
    .expect("started");
    // Usage after the point is not in the file the resumed job writes.
    let late = json!([{"id": "july-late", "timestamp": "2026-07-20T10:00:00Z", "model": "openai/gpt-4o-mini",
                       "input_tokens": 10, "output_tokens": 10}]);
    expect_status(app.post("/v1/usage", &app.admin_key, late).await, StatusCode::OK).await;

    let mut writer_settings = app.settings.clone();
    writer_settings.exports.runner = true;
    let writer = app.spawn_peer_with(writer_settings).await;
    let resumed = finished(&app, &interrupted_id).await;
    drop(writer);
    assert_eq!(resumed["status"], "done", "{resumed}");
    assert_eq!(
        (resumed["attempts"].as_i64(), resumed["cursor"].as_str()),
        (Some(2), Some(fixed_cursor.as_str()))
    );
    let ndjson = download(&app, &resumed).await;
    assert_eq!(
        ndjson.iter().filter(|byte| **byte == b'\n').count(),
        3,
        "the three records before the point"
    );
    // The cancelled one was never written.
    assert_eq!(finished(&app, &id).await["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_expires_when_its_time_is_up_and_expiry_is_recorded() {
    let mut settings = test_settings();
    settings.exports.ttl = Duration::from_secs(1);
    let app = TestApp::spawn_with(settings).await;
    let done = export(&app, json!({"report": "spend", "format": "json"})).await;
    assert_eq!(done["status"], "done", "{done}");
    let id = done["id"].as_str().expect("id").to_string();
    let file = app.settings.exports.dir.join(format!("{id}.json"));
    assert!(file.exists());
    let mut expired = done;
    for _ in 0..100 {
        expired = expect_status(
            app.get(&format!("/v1/exports/{id}"), &app.admin_key).await,
            StatusCode::OK,
        )
        .await;
        if expired["status"] == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (expired["status"].as_str(), expired["download_url"].as_str()),
        (Some("expired"), None)
    );
    assert!(!file.exists(), "the file is deleted");
    expect_problem(
        app.get(&format!("/v1/exports/{id}/download"), &app.admin_key)
            .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_field_by_field_and_other_tenants_see_nothing() {
    let app = TestApp::spawn().await;
    let refused = expect_problem(
        app.post(
            "/v1/exports",
            &app.admin_key,
            json!({"report": "spend", "format": "docx", "params": {"month": "2026-13", "colour": "red"},
                   "as_of": "2999-01-01T00:00:00Z"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    let fields: Vec<&str> = refused["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|error| error["field"].as_str())
        .collect();
    assert_eq!(fields, ["format", "params", "params.month", "as_of"], "{refused}");
    expect_problem(
        app.post(
            "/v1/exports",
            &app.admin_key,
            json!({"report": "usage", "format": "csv",
                  "params": {"from": "2026-07-02", "to": "2026-07-01", "section": "nope"}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    expect_problem(
        app.post(
            "/v1/exports",
            &app.admin_key,
            json!({"report": "gossip", "format": "csv"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;

    let done = export(&app, json!({"report": "usage", "format": "csv"})).await;
    let id = done["id"].as_str().expect("id");
    let other = app.key("globex", "admin").await;
    expect_each_not_found(
        &app,
        &other,
        vec![
            (Method::GET, format!("/v1/exports/{id}"), None),
            (Method::GET, format!("/v1/exports/{id}/download"), None),
            (Method::GET, format!("/v1/exports/{id}/history"), None),
            (Method::POST, format!("/v1/exports/{id}/cancel"), Some(json!({}))),
        ],
        "acme",
    )
    .await;
    let theirs = expect_status(app.get("/v1/exports", &other).await, StatusCode::OK).await;
    assert_eq!(theirs["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_report_in_every_format_is_written_and_reads_back() {
    let app = TestApp::spawn().await;
    priced_model(&app).await;
    july_usage(&app).await;
    let prompt = app.create_prompt("summarise-ticket").await;
    app.publish(&prompt, "Summarise {{ticket}} for a café owner.")
        .await;
    let reports = [
        ("spend", json!({"month": "2026-07"})),
        ("usage", json!({"from": "2026-07-01", "to": "2026-07-31"})),
        ("catalog", json!({})),
        ("audit", json!({})),
        ("health", json!({})),
        ("prompt_usage", json!({"prompt_id": prompt})),
    ];
    for (report, params) in reports {
        let mut hashes = Vec::new();
        for format in ["csv", "json", "ndjson", "xlsx", "pdf"] {
            let job = export(
                &app,
                json!({"report": report, "format": format, "params": params}),
            )
            .await;
            let (headers, bytes) = download_response(&app, &job).await;
            let data_hash = job["data_sha256"].as_str().expect("data hash").to_string();
            match format {
                "csv" => {
                    let text = std::str::from_utf8(&bytes).expect("UTF-8");
                    assert!(text.contains("\r\n"), "{report}: a header row at least");
                }
                "json" => {
                    let document: Value = serde_json::from_slice(&bytes).expect("JSON");
                    assert_eq!(document["report"], report);
                    assert!(document["sections"]
                        .as_object()
                        .is_some_and(|sections| !sections.is_empty()));
                }
                "ndjson" => {
                    for line in bytes.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()) {
                        let row: Value = serde_json::from_slice(line).expect("a JSON line");
                        assert!(row["section"].is_string(), "{report}: {row}");
                    }
                    assert_eq!(job["content_sha256"], job["data_sha256"], "{report}");
                }
                "xlsx" => {
                    use calamine::Reader;
                    let workbook = calamine::Xlsx::new(std::io::Cursor::new(bytes)).expect("an XLSX file");
                    assert_eq!(workbook.sheet_names()[0], "Cover", "{report}");
                }
                _ => {
                    let document = lopdf::Document::load_mem(&bytes).expect("a PDF file");
                    let pages: Vec<u32> = document.get_pages().keys().copied().collect();
                    let text = document.extract_text(&pages).expect("text");
                    let flat: String = text.split_whitespace().collect();
                    assert!(
                        flat.contains(&data_hash),
                        "{report}: the PDF states its data hash"
                    );
                }
            }
            assert!(
                headers["content-disposition"]
                    .to_str()
                    .is_ok_and(|value| value.ends_with(&format!(".{format}\""))),
                "{report} {format}"
            );
            hashes.push(data_hash);
        }
        // The audit log holds the exports' own events, so each of its exports is of more.
        if report != "audit" {
            assert!(
                hashes.iter().all(|hash| *hash == hashes[0]),
                "{report}: one data hash in every format"
            );
        }
    }
}
