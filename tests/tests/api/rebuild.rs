//! Rebuilding read models from the event log (`replay::rebuild`): the rebuilt tables equal
//! the ones the live runners built, whatever was in them before, and the server keeps
//! serving and projecting afterwards.

use std::collections::HashMap;

use domain::position::GlobalCursor;
use integration_tests::harness::{expect_status, last_event_cursor, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};
use sqlx::PgPool;

/// The read-model tables and the order their rows are dumped in.
const TABLES: [(&str, &str); 16] = [
    ("tenant", "tenant_id"),
    ("api_key", "key_id"),
    ("prompt_category", "category_id"),
    ("prompt", "prompt_id"),
    ("prompt_version", "prompt_id, version"),
    ("provider", "provider_id"),
    ("model", "model_id"),
    ("model_price", "model_id, effective_from"),
    ("config_entry", "tenant_id, key"),
    ("flag", "tenant_id, key"),
    ("config_schedule", "schedule_id"),
    ("protection", "tenant_id, scope"),
    ("change_request", "request_id"),
    ("budget", "budget_id"),
    ("bulk_job", "job_id"),
    ("bulk_item", "job_id, item_index"),
];

/// Every read-model table as JSON, rows in a fixed order.
async fn dump(pool: &PgPool) -> Value {
    let mut tables = Map::new();
    for (table, order) in TABLES {
        let sql = format!("select coalesce(jsonb_agg(t order by {order}), '[]'::jsonb) from {table} t");
        let rows: Value = sqlx::query_scalar(&sql)
            .fetch_one(pool)
            .await
            .expect("dump table");
        tables.insert(table.to_string(), rows);
    }
    Value::Object(tables)
}

/// Brings every projection with a runner up to the end of the log (the server's runners may
/// still be on their way) so that a dump reflects every committed event; inline projections
/// are never behind.
pub(crate) async fn settle(pool: &PgPool) {
    for projection in projections::all().into_iter().filter(|p| !p.inline()) {
        projections::runner::catch_up(pool, projection.as_ref())
            .await
            .expect("catch up");
    }
}

async fn checkpoints(pool: &PgPool) -> HashMap<String, GlobalCursor> {
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("select projection_name, transaction_id, position from projection_checkpoint")
            .fetch_all(pool)
            .await
            .expect("checkpoints");
    rows.into_iter()
        .map(|(name, t, p)| (name, GlobalCursor::new(t, p)))
        .collect()
}

fn id(body: &Value) -> String {
    body["id"].as_str().expect("id").to_string()
}

/// The ids a history leaves behind.
pub(crate) struct History {
    support: String,
    sales: String,
    legacy: String,
    greeting: String,
    farewell: String,
    plain: String,
}

/// Drives the API through every kind of change the catalogue and access projections know.
pub(crate) async fn write_history(app: &TestApp) -> History {
    let key = app.admin_key.as_str();
    let category = |name: &'static str| async move {
        id(&expect_status(
            app.post("/v1/categories", key, json!({ "name": name })).await,
            StatusCode::CREATED,
        )
        .await)
    };
    let support = category("Support").await;
    let sales = category("Sales").await;
    let legacy = category("Legacy").await;

    let greeting = id(&expect_status(
        app.post(
            "/v1/prompts",
            key,
            json!({ "name": "greeting", "category": support, "tags": ["onboarding", "support"], "description": "hi" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await);
    let farewell = id(&expect_status(
        app.post(
            "/v1/prompts",
            key,
            json!({ "name": "farewell", "category": legacy, "tags": ["x"] }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await);
    let straggler = id(&expect_status(
        app.post(
            "/v1/prompts",
            key,
            json!({ "name": "straggler", "category": legacy }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await);
    let plain = app.create_prompt("plain").await;

    for template in ["Hello {{name}}", "Hi {{name}}", "Hey {{name}}, {{topic}}"] {
        app.publish(&greeting, template).await;
    }
    app.publish(&farewell, "Bye").await;
    app.publish(&plain, "one").await;
    app.publish(&plain, "two").await;
    let published = app
        .post(
            &format!("/v1/prompts/{plain}/versions"),
            key,
            json!({ "template": "three {{x}}", "model": "openai/gpt-4o", "params": { "temperature": 0.3 }, "message": "m" }),
        )
        .await;
    expect_status(published, StatusCode::CREATED).await;

    let ok = |response| expect_status(response, StatusCode::OK);
    let labels = format!("/v1/prompts/{greeting}/labels");
    ok(app
        .put(&format!("{labels}/production"), key, json!({ "version": 2 }))
        .await)
    .await;
    ok(app
        .put(&format!("{labels}/staging"), key, json!({ "version": 3 }))
        .await)
    .await;
    ok(app
        .put(&format!("{labels}/canary"), key, json!({ "version": 3 }))
        .await)
    .await;
    ok(app
        .put(&format!("{labels}/production"), key, json!({ "version": 1 }))
        .await)
    .await;
    ok(app.delete(&format!("{labels}/canary"), key).await).await;
    ok(app
        .put(
            &format!("/v1/prompts/{plain}/labels/production"),
            key,
            json!({ "version": 3 }),
        )
        .await)
    .await;

    ok(app
        .delete(&format!("/v1/prompts/{greeting}/tags/onboarding"), key)
        .await)
    .await;
    ok(app
        .post(
            &format!("/v1/prompts/{plain}/tags"),
            key,
            json!({ "tags": ["zeta", "alpha"] }),
        )
        .await)
    .await;
    ok(app
        .patch(
            &format!("/v1/prompts/{greeting}"),
            key,
            json!({ "description": "the greeting" }),
        )
        .await)
    .await;
    ok(app
        .patch(
            &format!("/v1/prompts/{plain}"),
            key,
            json!({ "name": "plain-renamed" }),
        )
        .await)
    .await;

    // Empty the legacy category, then delete it.
    ok(app
        .put(
            &format!("/v1/prompts/{farewell}/category"),
            key,
            json!({ "category": sales }),
        )
        .await)
    .await;
    ok(app
        .put(
            &format!("/v1/prompts/{straggler}/category"),
            key,
            json!({ "category": null }),
        )
        .await)
    .await;
    ok(app
        .put(
            &format!("/v1/prompts/{plain}/category"),
            key,
            json!({ "category": legacy }),
        )
        .await)
    .await;
    ok(app
        .put(
            &format!("/v1/prompts/{plain}/category"),
            key,
            json!({ "category": support }),
        )
        .await)
    .await;
    expect_status(
        app.delete(&format!("/v1/categories/{legacy}"), key).await,
        StatusCode::NO_CONTENT,
    )
    .await;
    ok(app
        .patch(
            &format!("/v1/categories/{sales}"),
            key,
            json!({ "name": "Revenue" }),
        )
        .await)
    .await;

    ok(app
        .post(&format!("/v1/prompts/{farewell}/archive"), key, json!({}))
        .await)
    .await;
    ok(app
        .post(&format!("/v1/prompts/{straggler}/archive"), key, json!({}))
        .await)
    .await;
    ok(app
        .post(&format!("/v1/prompts/{straggler}/restore"), key, json!({}))
        .await)
    .await;

    // Access: a key issued and revoked over the API, and a second tenant.
    let issued = expect_status(
        app.post("/v1/keys", key, json!({ "name": "ci", "role": "viewer" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let key_id = issued["api_key"]["id"].as_str().expect("key id").to_string();
    expect_status(
        app.delete(&format!("/v1/keys/{key_id}"), key).await,
        StatusCode::NO_CONTENT,
    )
    .await;
    app.key("globex", "editor").await;

    // The registry: a provider changed, models with a fallback, prices corrected, a model
    // deprecated (with what still names it), another deactivated and activated again.
    let provider = id(&expect_status(
        app.post(
            "/v1/providers",
            key,
            json!({ "name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1",
                    "credential_ref": "env:OPENAI_API_KEY" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await);
    ok(app
        .patch(
            &format!("/v1/providers/{provider}"),
            key,
            json!({ "enabled": false }),
        )
        .await)
    .await;
    let mini = id(&expect_status(
        app.post(
            "/v1/models",
            key,
            json!({ "provider": "openai", "model_id": "gpt-4o-mini", "capabilities": ["chat"] }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await);
    let large = id(&expect_status(
        app.post(
            "/v1/models",
            key,
            json!({ "provider": provider, "model_id": "gpt-4o", "fallback": mini }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await);
    for (from, input) in [("2026-01-01T00:00:00Z", "0.15"), ("2026-03-01T00:00:00Z", "0.1")] {
        let price = json!({ "effective_from": from, "input_per_mtok": input, "output_per_mtok": "0.6",
                            "cached_input_per_mtok": "0.075", "currency": "USD" });
        expect_status(
            app.post(&format!("/v1/models/{mini}/prices"), key, price).await,
            StatusCode::CREATED,
        )
        .await;
    }
    let correction = json!({ "effective_from": "2026-01-01T00:00:00Z", "input_per_mtok": "0.125",
                             "output_per_mtok": "0.6", "currency": "USD", "reason": "invoice" });
    ok(app
        .post(&format!("/v1/models/{mini}/prices/corrections"), key, correction)
        .await)
    .await;
    ok(app
        .post(
            &format!("/v1/models/{large}/deprecate"),
            key,
            json!({ "replacement": mini }),
        )
        .await)
    .await;
    ok(app
        .post(&format!("/v1/models/{mini}/deactivate"), key, json!({}))
        .await)
    .await;
    ok(app
        .post(&format!("/v1/models/{mini}/activate"), key, json!({}))
        .await)
    .await;

    // Configuration: a schema, values set, changed and cleared; a flag rolled out further.
    let limits = json!({ "schema": { "type": "integer", "minimum": 1 }, "reason": "bound it" });
    ok(app
        .put("/v1/config-schemas/limits.max_output_tokens", key, limits)
        .await)
    .await;
    for (config_key, value) in [
        ("limits.max_output_tokens", json!(4000)),
        ("limits.max_output_tokens", json!(2000)),
        ("routing.default_model", json!("openai/gpt-4o-mini")),
        ("features.streaming", json!({ "enabled": true })),
    ] {
        let body = json!({ "value": value, "reason": "set" });
        ok(app.put(&format!("/v1/config/{config_key}"), key, body).await).await;
    }
    let clear = app
        .request(reqwest::Method::DELETE, "/v1/config/routing.default_model", key)
        .header("X-Reason", "per prompt")
        .send()
        .await
        .expect("clear");
    expect_status(clear, StatusCode::NO_CONTENT).await;
    for rollout in [10, 50] {
        let flag = json!({ "enabled": true, "rollout_percent": rollout, "reason": "roll out",
                           "variants": [{ "name": "a", "weight": 1 }] });
        ok(app.put("/v1/flags/checkout.new_flow", key, flag).await).await;
    }

    // A protected prefix with one approved and one pending change; budgets defined,
    // changed and deleted.
    ok(app.put("/v1/protections/config:routing.", key, json!({})).await).await;
    let second = app.key("acme", "admin").await;
    for model in ["openai/gpt-4o", "openai/gpt-5"] {
        let proposal = json!({ "value": model, "reason": "switch" });
        let request = expect_status(
            app.put("/v1/config/routing.default_model", key, proposal).await,
            StatusCode::ACCEPTED,
        )
        .await;
        if model == "openai/gpt-4o" {
            let approve = format!(
                "/v1/change-requests/{}/approve",
                request["id"].as_str().expect("id")
            );
            ok(app.post(&approve, &second, json!({})).await).await;
        }
    }
    for (name, scope) in [
        ("Tenant", json!({ "kind": "tenant" })),
        ("Mini", json!({ "kind": "model", "id": "openai/gpt-4o-mini" })),
        ("Search", json!({ "kind": "feature", "id": "search" })),
    ] {
        let budget =
            json!({ "name": name, "scope": scope, "period": "monthly", "amount": "100", "currency": "USD" });
        let created = expect_status(app.post("/v1/budgets", key, budget).await, StatusCode::CREATED).await;
        let path = format!("/v1/budgets/{}", created["id"].as_str().expect("id"));
        if name == "Mini" {
            ok(app
                .patch(&path, key, json!({ "amount": "250.5", "thresholds": [90] }))
                .await)
            .await;
        } else if name == "Search" {
            expect_status(app.delete(&path, key).await, StatusCode::NO_CONTENT).await;
        }
    }

    History {
        support,
        sales,
        legacy,
        greeting,
        farewell,
        plain,
    }
}

fn rows<'a>(dump: &'a Value, table: &str) -> &'a Vec<Value> {
    dump[table].as_array().expect("table rows")
}

fn row<'a>(dump: &'a Value, table: &str, column: &str, id: &str) -> &'a Value {
    rows(dump, table)
        .iter()
        .find(|r| r[column] == id)
        .unwrap_or_else(|| panic!("no {table} row {id}"))
}

/// The dump reflects the history, so that comparing dumps is not comparing empty tables.
fn assert_reflects(dump: &Value, history: &History) {
    assert_eq!(rows(dump, "tenant").len(), 2);
    // The admin, the one issued over the API, globex's editor and a second admin.
    assert_eq!(rows(dump, "api_key").len(), 4);
    assert_eq!(
        rows(dump, "api_key")
            .iter()
            .filter(|k| !k["revoked_at"].is_null())
            .count(),
        1
    );
    assert_eq!(rows(dump, "prompt_category").len(), 2);
    assert!(rows(dump, "prompt_category")
        .iter()
        .all(|c| c["category_id"] != history.legacy.as_str()));
    let support = row(dump, "prompt_category", "category_id", &history.support);
    assert_eq!(support["prompt_count"], 2);
    let sales = row(dump, "prompt_category", "category_id", &history.sales);
    assert_eq!(
        (&sales["name"], &sales["prompt_count"]),
        (&json!("Revenue"), &json!(1))
    );

    let greeting = row(dump, "prompt", "prompt_id", &history.greeting);
    assert_eq!(greeting["labels"], json!({ "production": 1, "staging": 3 }));
    assert_eq!(greeting["tags"], json!(["support"]));
    assert_eq!(greeting["description"], "the greeting");
    assert_eq!(greeting["latest_version"], 3);
    let farewell = row(dump, "prompt", "prompt_id", &history.farewell);
    assert_eq!(farewell["archived"], true);
    assert_eq!(farewell["category_id"], history.sales.as_str());
    let plain = row(dump, "prompt", "prompt_id", &history.plain);
    assert_eq!(plain["name"], "plain-renamed");
    assert_eq!(plain["tags"], json!(["alpha", "zeta"]));
    assert_eq!(plain["category_id"], history.support.as_str());
    assert_eq!(rows(dump, "prompt").len(), 4);
    assert_eq!(rows(dump, "prompt_version").len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilding_every_projection_reproduces_the_read_models_the_runners_built() {
    // Read models only: the NATS feed's checkpoint is not one of them.
    let app = TestApp::spawn_with(api::Settings::default()).await;
    let history = write_history(&app).await;
    settle(app.pool()).await;
    let before = dump(app.pool()).await;
    assert_reflects(&before, &history);
    let head = last_event_cursor(app.pool()).await;
    assert!(checkpoints(app.pool()).await.values().all(|c| *c == head));

    // Damage every read model, so that only a real rebuild can restore them.
    for sql in [
        "update prompt set name = 'tampered', labels = '{}', archived = not archived",
        "delete from prompt_version where version = 1",
        "insert into prompt_category (category_id, tenant_id, name, prompt_count, version, created_at, updated_at)
         values (gen_random_uuid(), 'acme', 'ghost', 7, 1, now(), now())",
        "update prompt_category set prompt_count = prompt_count + 10",
        "delete from tenant where tenant_id = 'globex'",
        "update api_key set revoked_at = null",
        "update provider set enabled = true",
        "update model set status = 'deprecated', fallback = null",
        "update model_price set input_per_mtok = 99, original = null",
        "update config_entry set value = '0', schema = null",
        "update flag set rollout = 0, salt = 'x'",
        "update config_schedule set state = 'applied'",
        "update change_request set state = 'rejected'",
        "delete from protection",
        "update budget set amount = 1, thresholds = '{}'",
    ] {
        sqlx::query(sql).execute(app.pool()).await.expect("tamper");
    }
    assert_ne!(dump(app.pool()).await, before);

    let events = app.event_count().await;
    for projection in projections::all() {
        let report = replay::rebuild(app.pool(), projection.as_ref(), false)
            .await
            .expect("rebuild");
        assert_eq!(
            report.events as i64,
            events,
            "{} did not replay the whole log",
            projection.name()
        );
    }
    let after = dump(app.pool()).await;
    assert_eq!(after, before, "the rebuilt read models differ from the live ones");
    // Swapped in with their statistics: the planner knows the rebuilt tables at once.
    for projection in projections::all() {
        for table in projection.tables() {
            let (rows, with_statistics): (i64, bool) = sqlx::query_as(&format!(
                "select (select count(*) from public.{table}),
                        exists (select from pg_stats where schemaname = 'public' and tablename = '{table}')"
            ))
            .fetch_one(app.pool())
            .await
            .expect("statistics");
            assert!(
                rows == 0 || with_statistics,
                "{table} was swapped in without statistics"
            );
        }
    }
    let checkpoints = checkpoints(app.pool()).await;
    let runners = projections::all().into_iter().filter(|p| !p.inline()).count();
    assert_eq!(
        checkpoints.len(),
        runners,
        "inline projections have no checkpoint"
    );
    assert!(checkpoints.values().all(|c| *c == head), "{checkpoints:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_rebuild_the_server_still_serves_and_new_commands_still_project() {
    let app = TestApp::spawn().await;
    let history = write_history(&app).await;
    for projection in projections::all() {
        replay::rebuild(app.pool(), projection.as_ref(), false)
            .await
            .expect("rebuild");
    }
    let key = &app.admin_key;

    // Old data is served.
    let greeting = expect_status(
        app.get(&format!("/v1/prompts/{}", history.greeting), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(greeting["labels"], json!({ "production": 1, "staging": 3 }));

    // New commands project: the create answers from the read model, and reads see it.
    let created = expect_status(
        app.post(
            "/v1/prompts",
            key,
            json!({ "name": "after-rebuild", "category": history.sales, "tags": ["fresh"] }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let new_id = id(&created);
    assert_eq!(app.publish(&new_id, "Hello again {{who}}").await, 1);
    let labelled = app
        .put(
            &format!("/v1/prompts/{new_id}/labels/production"),
            key,
            json!({ "version": 1 }),
        )
        .await;
    expect_status(labelled, StatusCode::OK).await;
    let fetched = expect_status(
        app.get(&format!("/v1/prompts/{new_id}"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(fetched["name"], "after-rebuild");
    assert_eq!(fetched["tags"], json!(["fresh"]));
    assert_eq!(fetched["latest_version"], 1);
    let resolved = expect_status(
        app.get(&format!("/v1/prompts/{new_id}/resolve?label=production"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(resolved["template"], "Hello again {{who}}");
    let sales = expect_status(
        app.get(&format!("/v1/categories/{}", history.sales), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(sales["prompt_count"], 2);

    // A key issued after the rebuild works at once.
    let issued = expect_status(
        app.post("/v1/keys", key, json!({ "name": "late", "role": "viewer" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let viewer = issued["key"].as_str().expect("secret");
    expect_status(
        app.get(&format!("/v1/prompts/{new_id}"), viewer).await,
        StatusCode::OK,
    )
    .await;

    // Every projection applies the whole log. Only those that read an event are awaited by
    // its command (the catalog does not read the key's), so the others may take a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lag = expect_status(app.get("/v1/system/projections", key).await, StatusCode::OK).await;
        let lag = lag["projections"].as_array().expect("projections").clone();
        let behind: Vec<_> = projections::all()
            .iter()
            .filter(|projection| {
                let listed = lag.iter().find(|p| p["name"] == projection.name());
                listed.map(|p| &p["events_behind"]) != Some(&json!(0))
            })
            .map(|projection| projection.name())
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{behind:?} never caught up: {lag:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Runs the `aipm` binary on `app`'s database; returns its exit code, stdout and stderr.
async fn aipm(app: &TestApp, args: &[&str]) -> (Option<i32>, String, String) {
    let url = app.db.url.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_aipm-process"))
            .args(&args)
            .env("DATABASE_URL", url)
            .env("NATS_URL", "")
            .output()
            .expect("run aipm")
    })
    .await
    .expect("aipm task");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn verify_all(pool: &PgPool) -> Vec<replay::VerifyReport> {
    let mut reports = Vec::new();
    for projection in projections::all() {
        let report = replay::verify(pool, projection.as_ref(), 20, &replay::ProgressBar::hidden())
            .await
            .expect("verify");
        reports.push(report);
    }
    reports
}

async fn scratch_schemas(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from pg_namespace where nspname like 'aipm\\_%'")
        .fetch_one(pool)
        .await
        .expect("schemas")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_finds_nothing_on_a_healthy_database_and_lists_a_row_corrupted_by_hand() {
    let app = TestApp::spawn_with(api::Settings::default()).await;
    let history = write_history(&app).await;
    settle(app.pool()).await;
    let before = dump(app.pool()).await;

    for report in verify_all(app.pool()).await {
        assert!(report.is_clean(), "{report}");
        if report.projection == "catalog" || report.projection == "audit" {
            assert!(report.events > 50, "{report}");
        }
    }
    let (code, stdout, stderr) = aipm(&app, &["replay", "verify"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("catalog: the read models equal a rebuild"),
        "{stdout}"
    );
    assert_eq!(
        scratch_schemas(app.pool()).await,
        0,
        "scratch schemas are dropped"
    );
    assert_eq!(
        dump(app.pool()).await,
        before,
        "verify changed the live read models"
    );

    sqlx::query("update prompt set description = 'tampered' where prompt_id = $1::uuid")
        .bind(&history.greeting)
        .execute(app.pool())
        .await
        .expect("tamper");
    sqlx::query("delete from prompt_version where prompt_id = $1::uuid and version = 2")
        .bind(&history.plain)
        .execute(app.pool())
        .await
        .expect("tamper");

    let (code, stdout, stderr) = aipm(&app, &["replay", "verify", "--projection", "catalog"]).await;
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("catalog: 2 rows differ"), "{stdout}");
    assert!(stdout.contains(&history.greeting), "{stdout}");
    assert!(
        stdout.contains(r#"live:    {"description":"tampered"}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"rebuilt: {"description":"the greeting"}"#),
        "{stdout}"
    );
    assert!(
        stderr.contains("read models differ from the log: catalog"),
        "{stderr}"
    );

    let catalog = projections::all()
        .into_iter()
        .find(|p| p.name() == "catalog")
        .expect("catalog");
    let report = replay::verify(app.pool(), catalog.as_ref(), 20, &replay::ProgressBar::hidden())
        .await
        .expect("verify");
    let mut differences = report.differences.clone();
    differences.sort_by(|a, b| a.table.cmp(&b.table));
    assert_eq!(differences.len(), 2, "{report}");
    assert_eq!(differences[0].table, "prompt");
    assert_eq!(differences[0].key, json!({ "prompt_id": history.greeting }));
    assert_eq!(differences[0].live, Some(json!({ "description": "tampered" })));
    assert_eq!(
        differences[0].rebuilt,
        Some(json!({ "description": "the greeting" }))
    );
    assert_eq!(differences[1].table, "prompt_version");
    assert_eq!(
        differences[1].key,
        json!({ "prompt_id": history.plain, "version": 2 })
    );
    assert_eq!(differences[1].live, None, "the live table lost the row");
    assert_eq!(
        differences[1].rebuilt.as_ref().map(|r| &r["template"]),
        Some(&json!("two"))
    );
    assert_eq!(scratch_schemas(app.pool()).await, 0);

    // A listing is bounded: one row per table asked for, the rest counted as more.
    sqlx::query("update prompt set description = 'x'")
        .execute(app.pool())
        .await
        .expect("tamper");
    let report = replay::verify(app.pool(), catalog.as_ref(), 1, &replay::ProgressBar::hidden())
        .await
        .expect("verify");
    assert_eq!(report.differences.len(), 2, "{report}");
    assert_eq!(report.truncated, ["prompt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilding_to_a_past_point_shows_the_earlier_state_in_its_schema_and_leaves_public_alone() {
    let app = TestApp::spawn_with(api::Settings::default()).await;
    let key = app.admin_key.clone();
    let prompt = app.create_prompt("greeting").await;
    app.publish(&prompt, "Hello").await;
    let labels = format!("/v1/prompts/{prompt}/labels/production");
    expect_status(
        app.put(&labels, &key, json!({ "version": 1 })).await,
        StatusCode::OK,
    )
    .await;
    let earlier = last_event_cursor(app.pool()).await;
    let earlier_time: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "select recorded_at from events where transaction_id = $1::text::xid8 and position = $2",
    )
    .bind(earlier.transaction_id)
    .bind(earlier.position)
    .fetch_one(app.pool())
    .await
    .expect("time of the earlier change");
    app.publish(&prompt, "Hello again").await;
    expect_status(
        app.put(&labels, &key, json!({ "version": 2 })).await,
        StatusCode::OK,
    )
    .await;
    expect_status(
        app.patch(
            &format!("/v1/prompts/{prompt}"),
            &key,
            json!({ "name": "renamed" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let live = dump(app.pool()).await;

    let state = |schema: &'static str| {
        let pool = app.pool().clone();
        let prompt = prompt.clone();
        async move {
            let row: (String, Value, i64) = sqlx::query_as(&format!(
                "select p.name, p.labels, (select count(*) from {schema}.prompt_version v where v.prompt_id = p.prompt_id)
                 from {schema}.prompt p where p.prompt_id = $1::uuid"
            ))
            .bind(&prompt)
            .fetch_one(&pool)
            .await
            .expect("prompt in schema");
            row
        }
    };
    let (code, stdout, stderr) = aipm(
        &app,
        &[
            "replay",
            "rebuild",
            "--to",
            &earlier.to_string(),
            "--schema",
            "as_of_cursor",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("schema as_of_cursor"), "{stdout}");
    assert_eq!(
        state("as_of_cursor").await,
        ("greeting".to_string(), json!({ "production": 1 }), 1)
    );
    assert_eq!(
        state("public").await,
        ("renamed".to_string(), json!({ "production": 2 }), 2)
    );
    // Only the read models' own tables, not the copies written instead of live telemetry.
    let usage_copy: Option<String> =
        sqlx::query_scalar("select to_regclass('as_of_cursor.usage_record')::text")
            .fetch_one(app.pool())
            .await
            .expect("regclass");
    assert_eq!(usage_copy, None);

    let all = projections::all();
    let at_instant = replay::Point {
        cursor: None,
        instant: Some(earlier_time),
    };
    let schema = replay::SchemaName::parse("as_of_instant").expect("name");
    replay::rebuild_at(app.pool(), &all, at_instant, &schema, false, false)
        .await
        .expect("rebuild at an instant");
    assert_eq!(
        state("as_of_instant").await,
        ("greeting".to_string(), json!({ "production": 1 }), 1)
    );

    // A schema holding tables is refused unless replaced; `public` never.
    let refused = replay::rebuild_at(app.pool(), &all, at_instant, &schema, false, false)
        .await
        .expect_err("a non-empty schema is refused");
    assert!(refused.to_string().contains("--replace"), "{refused}");
    let latest = replay::Point {
        cursor: Some(last_event_cursor(app.pool()).await),
        instant: None,
    };
    replay::rebuild_at(app.pool(), &all, latest, &schema, true, false)
        .await
        .expect("replaced");
    assert_eq!(
        state("as_of_instant").await,
        ("renamed".to_string(), json!({ "production": 2 }), 2)
    );
    let (code, _, stderr) = aipm(&app, &["replay", "rebuild", "--to", "1-1", "--schema", "public"]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not for rebuilt read models"), "{stderr}");
    let (code, _, stderr) = aipm(&app, &["replay", "rebuild", "--to", "yesterday", "--schema", "x"]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("RFC 3339"), "{stderr}");
    assert_eq!(dump(app.pool()).await, live, "the live read models were touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_while_commands_and_reads_run_loses_nothing_and_fails_no_request() {
    let app = TestApp::spawn_with(api::Settings::default()).await;
    write_history(&app).await;
    let key = app.admin_key.clone();
    let rebuilt = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let (mut requests, mut during, mut created) = (0u64, 0u64, Vec::new());
        let mut failures = Vec::new();
        let mut check = |what: String, status: StatusCode, during_rebuild: bool| {
            requests += 1;
            if during_rebuild {
                during += 1;
            }
            if !status.is_success() {
                failures.push(format!("{what}: {status}"));
            }
        };
        // Until the rebuild is done, and at least a few rounds whatever its speed.
        let mut round = 0;
        while round < 20 || !rebuilt.load(std::sync::atomic::Ordering::SeqCst) {
            round += 1;
            let during_rebuild = !rebuilt.load(std::sync::atomic::Ordering::SeqCst);
            let response = app
                .post(
                    "/v1/prompts",
                    &key,
                    json!({ "name": format!("load-{round}"), "tags": ["load"] }),
                )
                .await;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            check("create".into(), status, during_rebuild);
            let Some(id) = body["id"].as_str().map(str::to_string) else {
                continue;
            };
            let published = app
                .post(
                    &format!("/v1/prompts/{id}/versions"),
                    &key,
                    json!({ "template": "v {{x}}", "model": "openai/gpt-4o" }),
                )
                .await;
            check("publish".into(), published.status(), during_rebuild);
            let read = app.get(&format!("/v1/prompts/{id}"), &key).await;
            check("read".into(), read.status(), during_rebuild);
            let listed = app.get("/v1/prompts?limit=5", &key).await;
            check("list".into(), listed.status(), during_rebuild);
            // Reads of the audit log wait for its runner: a stalled one fails them.
            let audit = app.get("/v1/audit?limit=1", &key).await;
            check("audit".into(), audit.status(), during_rebuild);
            created.push(id);
        }
        (requests, during, created, failures)
    };
    let rebuild = async {
        let results = replay::rebuild_all(app.pool(), projections::all(), false).await;
        rebuilt.store(true, std::sync::atomic::Ordering::SeqCst);
        results
    };
    let ((requests, during, created, failures), results) = tokio::join!(load, rebuild);
    for (name, result) in &results {
        let report = result.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.locked_seconds < report.seconds, "{name}: {report:?}");
    }
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {failures:?}",
        failures.len()
    );
    assert!(during > 0, "no request ran during the rebuild");

    // Every command's effect is in the swapped-in tables, and they equal a fresh rebuild.
    let versions: i64 = sqlx::query_scalar(
        "select count(*) from prompt_version v join prompt p using (prompt_id) where 'load' = any(p.tags)",
    )
    .fetch_one(app.pool())
    .await
    .expect("count");
    assert_eq!(versions, created.len() as i64);
    settle(app.pool()).await;
    for report in verify_all(app.pool()).await {
        assert!(report.is_clean(), "{report}");
    }
    assert_eq!(scratch_schemas(app.pool()).await, 0);
    // The swapped-in tables kept the live ones' names for their indexes and triggers.
    let names: Vec<String> = sqlx::query_scalar(
        "select relname::text from pg_class where relname in ('audit_entry_by_cursor', 'prompt_pkey') order by 1",
    )
    .fetch_all(app.pool())
    .await
    .expect("index names");
    assert_eq!(names, ["audit_entry_by_cursor", "prompt_pkey"]);
    let refused = sqlx::query("delete from audit_entry")
        .execute(app.pool())
        .await
        .expect_err("the append-only trigger came along");
    assert!(refused.to_string().contains("append-only"), "{refused}");
}
