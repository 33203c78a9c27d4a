//! Bulk operations: a job over many targets, tracked item by item, cancellable, undone as a
//! whole when atomic, resumed after its process is killed, and traceable in the audit log.

use std::time::{Duration, Instant};

use integration_tests::harness::{
    expect_each_not_found, expect_problem, expect_status, keys_and_values, TestApp,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::process::ServerProcess;

const DEADLINE: Duration = Duration::from_secs(60);

async fn submit(app: &TestApp, key: &str, body: Value) -> Value {
    expect_status(app.post("/v1/bulk", key, body).await, StatusCode::ACCEPTED).await
}

/// Polls the job until `done(job)` holds, and returns it.
async fn wait_for(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let job = expect_status(
            app.get(&format!("/v1/bulk/{id}?limit=1000"), &app.admin_key)
                .await,
            StatusCode::OK,
        )
        .await;
        if done(&job) {
            return job;
        }
        assert!(started.elapsed() < DEADLINE, "the job never got there: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn finished(job: &Value) -> bool {
    ["done", "failed", "cancelled", "compensated"].contains(&job["status"].as_str().unwrap_or_default())
}

async fn wait_finished(app: &TestApp, id: &str) -> Value {
    wait_for(app, id, finished).await
}

fn item_statuses(job: &Value) -> Vec<String> {
    job["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["status"].as_str().expect("status").to_string())
        .collect()
}

async fn prompt(app: &TestApp, id: &str) -> Value {
    expect_status(
        app.get(&format!("/v1/prompts/{id}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await
}

/// A prompt's view without what every change moves (its version and time).
fn state_of(mut prompt: Value) -> Value {
    for moving in ["version", "updated_at"] {
        prompt.as_object_mut().expect("prompt").remove(moving);
    }
    prompt
}

/// The keys under `prefix` with a value, and their values.
async fn config_values(app: &TestApp, prefix: &str) -> Vec<(String, Value)> {
    let listing = expect_status(
        app.get(&format!("/v1/config?prefix={prefix}"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    keys_and_values(&listing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_lists_every_operation_with_its_schema_and_says_which_cannot_be_undone() {
    let app = TestApp::spawn().await;
    let viewer = app.key("acme", "viewer").await;
    let catalogue = expect_status(app.get("/v1/bulk/operations", &viewer).await, StatusCode::OK).await;
    let items = catalogue["items"].as_array().expect("items");
    assert!(items.len() >= 20, "{catalogue}");
    for kind in ["prompt", "model", "config", "budget", "key"] {
        assert!(items.iter().any(|op| op["target"] == kind), "no {kind} operation");
    }
    for op in items {
        assert_eq!(op["params"]["type"], "object", "{op}");
    }
    let revoke = items
        .iter()
        .find(|op| op["operation"] == "key.revoke")
        .expect("key.revoke");
    assert_eq!(revoke["reversible"], false);
    assert_eq!(revoke["permission"], "manage_keys");
    let tag = items
        .iter()
        .find(|op| op["operation"] == "prompt.tag")
        .expect("prompt.tag");
    assert_eq!(tag["reversible"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_best_effort_job_reports_failing_items_and_its_changes_are_traced_to_it() {
    let app = TestApp::spawn().await;
    let mut prompts = Vec::new();
    for n in 0..5 {
        prompts.push(app.create_prompt(&format!("Prompt {n}")).await);
    }
    // Already tagged: skipped.
    expect_status(
        app.post(
            &format!("/v1/prompts/{}/tags", prompts[4]),
            &app.admin_key,
            json!({"tags": ["reviewed"]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let other_key = app.key("globex", "admin").await;
    let foreign = expect_status(
        app.post("/v1/prompts", &other_key, json!({"name": "Theirs"}))
            .await,
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut targets = prompts.clone();
    targets.insert(2, uuid::Uuid::now_v7().to_string()); // no such prompt
    targets.push(foreign.clone()); // another tenant's

    let accepted = submit(
        &app,
        &app.admin_key,
        json!({"operation": "prompt.tag", "params": {"tags": ["reviewed"]}, "targets": targets,
               "reason": "quarterly review"}),
    )
    .await;
    assert_eq!(accepted["total"], 7);
    let id = accepted["id"].as_str().expect("id").to_string();
    let job = wait_finished(&app, &id).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(
        (
            job["done"].as_i64(),
            job["failed"].as_i64(),
            job["skipped"].as_i64()
        ),
        (Some(4), Some(2), Some(1))
    );
    assert_eq!(
        item_statuses(&job),
        ["applied", "applied", "failed", "applied", "applied", "skipped", "failed"]
    );
    assert_eq!(job["items"][2]["error"], "not found");
    assert_eq!(
        job["items"][6]["error"], "not found",
        "another tenant's prompt is not found"
    );
    for id in &prompts {
        assert_eq!(prompt(&app, id).await["tags"], json!(["reviewed"]));
    }
    let theirs = expect_status(
        app.get(&format!("/v1/prompts/{foreign}"), &other_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(theirs["tags"], json!([]));

    // Every change names the job as its cause, and says why.
    let traced = expect_status(
        app.get(
            &format!("/v1/audit?causation={id}&event_type=PromptTagged"),
            &app.admin_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let entries = traced["items"].as_array().expect("entries");
    assert_eq!(entries.len(), 4, "{traced}");
    for entry in entries {
        assert_eq!(entry["metadata"]["causation_id"], id.as_str());
        assert_eq!(entry["reason"], format!("bulk job {id}: quarterly review"));
    }
    let unrelated = expect_status(
        app.get(
            &format!("/v1/audit?causation={}", uuid::Uuid::now_v7()),
            &app.admin_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(unrelated["items"], json!([]));
    let history = expect_status(
        app.get(&format!("/v1/prompts/{}/history", prompts[0]), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    let last = history["items"]
        .as_array()
        .expect("history")
        .last()
        .cloned()
        .expect("an event");
    assert_eq!(last["causation"], id.as_str(), "{last}");

    // The job's own progress is in its history and on the live feed.
    let job_history = expect_status(
        app.get(&format!("/v1/bulk/{id}/history"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    let types: Vec<&str> = job_history["items"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    assert_eq!(types.first(), Some(&"BulkJobSubmitted"));
    assert!(types.contains(&"BulkItemsProcessed"));
    assert_eq!(types.last(), Some(&"BulkJobFinished"));

    let listed = expect_status(app.get("/v1/bulk", &app.admin_key).await, StatusCode::OK).await;
    assert_eq!(listed["items"][0]["id"], id.as_str());
    let failed_only = expect_status(
        app.get(&format!("/v1/bulk/{id}?status=failed"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(failed_only["items"].as_array().map(Vec::len), Some(2));
    let paged = expect_status(
        app.get(&format!("/v1/bulk/{id}?limit=3"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(paged["next_cursor"], 2);
    let rest = expect_status(
        app.get(&format!("/v1/bulk/{id}?limit=10&cursor=2"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rest["items"][0]["index"], 3);

    // Another tenant sees none of it.
    expect_each_not_found(
        &app,
        &other_key,
        vec![
            (Method::GET, format!("/v1/bulk/{id}"), None),
            (Method::GET, format!("/v1/bulk/{id}/history"), None),
            (Method::POST, format!("/v1/bulk/{id}/cancel"), None),
        ],
        "quarterly",
    )
    .await;
    let theirs = expect_status(app.get("/v1/bulk", &other_key).await, StatusCode::OK).await;
    assert_eq!(theirs["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_job_that_fails_midway_puts_every_target_back_as_it_was() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    // Three keys with values, one without, and one whose schema refuses the new value.
    for (name, value) in [
        ("limits.a", json!(1)),
        ("limits.b", json!({"deep": [1, 2]})),
        ("limits.d", json!("x")),
    ] {
        expect_status(
            app.put(
                &format!("/v1/config/{name}"),
                key,
                json!({"value": value, "reason": "launch"}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    }
    expect_status(
        app.put(
            "/v1/config-schemas/limits.e",
            key,
            json!({"schema": {"type": "string"}, "reason": "names only"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let before = config_values(&app, "limits.").await;
    let targets = [
        "limits.a", "limits.b", "limits.c", "limits.d", "limits.e", "limits.f",
    ];
    let accepted = submit(
        &app,
        key,
        json!({"operation": "config.set", "params": {"value": 100}, "targets": targets, "mode": "atomic",
               "reason": "raise every limit together"}),
    )
    .await;
    let id = accepted["id"].as_str().expect("id").to_string();
    let job = wait_finished(&app, &id).await;
    assert_eq!(job["status"], "compensated", "{job}");
    assert_eq!(
        job["compensation_cause"],
        json!({"kind": "item_failed", "index": 4})
    );
    assert_eq!(
        item_statuses(&job),
        [
            "compensated",
            "compensated",
            "compensated",
            "compensated",
            "failed",
            "skipped"
        ]
    );
    assert_eq!(job["compensated"], 4);
    assert_eq!(config_values(&app, "limits.").await, before);

    // The undo is in the log too, last applied first, each caused by the job.
    let undone = expect_status(
        app.get(&format!("/v1/audit?causation={id}&aggregate_type=config"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    let order: Vec<(String, String)> = undone["items"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["aggregate_id"].as_str().expect("id").to_string(),
                e["event_type"].as_str().expect("type").to_string(),
            )
        })
        .collect();
    let undo_order: Vec<&str> = order[4..].iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        undo_order,
        ["acme:limits.d", "acme:limits.c", "acme:limits.b", "acme:limits.a"],
        "{order:?}"
    );

    // A failure found while planning stops an atomic job the same way.
    let labelled = app.create_prompt("Labelled").await;
    app.publish(&labelled, "v1 {{x}}").await;
    app.publish(&labelled, "v2 {{x}}").await;
    expect_status(
        app.put(
            &format!("/v1/prompts/{labelled}/labels/production"),
            key,
            json!({"version": 1}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let unlabelled = app.create_prompt("Unlabelled").await;
    app.publish(&unlabelled, "only {{x}}").await;
    let empty = app.create_prompt("No versions").await;
    let targets = [labelled.clone(), unlabelled.clone(), empty.clone()];
    let mut before = Vec::new();
    for target in &targets {
        before.push(state_of(prompt(&app, target).await));
    }
    let accepted = submit(
        &app,
        key,
        json!({"operation": "prompt.move_label", "params": {"label": "production", "version": "latest"},
               "targets": targets, "mode": "atomic"}),
    )
    .await;
    let job = wait_finished(&app, accepted["id"].as_str().expect("id")).await;
    assert_eq!(job["status"], "compensated", "{job}");
    assert_eq!(item_statuses(&job), ["compensated", "compensated", "failed"]);
    for (target, before) in targets.iter().zip(before) {
        assert_eq!(state_of(prompt(&app, target).await), before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_stops_between_items_keeping_or_undoing_what_it_applied() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let targets: Vec<String> = (0..3000).map(|n| format!("cancel.best.k{n:04}")).collect();
    let accepted = submit(
        &app,
        key,
        json!({"operation": "config.set", "params": {"value": true}, "targets": targets, "reason": "enable"}),
    )
    .await;
    let id = accepted["id"].as_str().expect("id").to_string();
    wait_for(&app, &id, |job| job["done"].as_i64() > Some(0)).await;
    let cancelled = expect_status(
        app.post(&format!("/v1/bulk/{id}/cancel"), key, json!({})).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(cancelled["cancel_requested"], true);
    let job = wait_finished(&app, &id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let done = job["done"].as_i64().expect("done");
    assert!(done > 0 && done < 3000, "{job}");
    assert_eq!(done + job["skipped"].as_i64().expect("skipped"), 3000);
    let kept = config_values(&app, "cancel.best.").await;
    assert_eq!(kept.len() as i64, done, "what was applied stays applied");
    expect_problem(
        app.post(&format!("/v1/bulk/{id}/cancel"), key, json!({})).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;

    let targets: Vec<String> = (0..3000).map(|n| format!("cancel.atomic.k{n:04}")).collect();
    let accepted = submit(
        &app,
        key,
        json!({"operation": "config.set", "params": {"value": true}, "targets": targets, "mode": "atomic",
               "reason": "enable"}),
    )
    .await;
    let id = accepted["id"].as_str().expect("id").to_string();
    wait_for(&app, &id, |job| job["done"].as_i64() > Some(0)).await;
    expect_status(
        app.post(&format!("/v1/bulk/{id}/cancel"), key, json!({})).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let job = wait_finished(&app, &id).await;
    assert_eq!(job["status"], "compensated", "{job}");
    assert_eq!(job["compensation_cause"], json!({"kind": "cancelled"}));
    assert_eq!(job["compensated"], job["done"]);
    assert_eq!(
        config_values(&app, "cancel.atomic.").await,
        Vec::<(String, Value)>::new(),
        "an atomic job undoes what it applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_refused_up_front_writes_nothing() {
    let app = TestApp::spawn().await;
    let editor = app.key("acme", "editor").await;
    let viewer = app.key("acme", "viewer").await;
    let some_id = uuid::Uuid::now_v7().to_string();
    let events_before = app.event_count().await;
    for (key, operation) in [
        (&editor, "key.revoke"),
        (&editor, "model.activate"),
        (&editor, "budget.change_amount"),
        (&viewer, "prompt.archive"),
    ] {
        let params = if operation == "budget.change_amount" {
            json!({"amount": "5"})
        } else {
            json!({})
        };
        expect_problem(
            app.post(
                "/v1/bulk",
                key,
                json!({"operation": operation, "params": params, "targets": [some_id]}),
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    let refusals = [
        (
            json!({"operation": "key.revoke", "targets": [some_id], "mode": "atomic"}),
            "mode",
        ),
        (
            json!({"operation": "prompt.explode", "targets": [some_id]}),
            "operation",
        ),
        (
            json!({"operation": "prompt.tag", "params": {"tags": ["Not A Tag"]}, "targets": [some_id]}),
            "params.tags",
        ),
        (
            json!({"operation": "prompt.tag", "params": {"tags": ["ok"], "colour": 1}, "targets": [some_id]}),
            "params",
        ),
        (
            json!({"operation": "prompt.archive", "targets": [some_id], "filter": {}}),
            "targets",
        ),
        (json!({"operation": "prompt.archive"}), "targets"),
        (json!({"operation": "prompt.archive", "targets": []}), "targets"),
        (
            json!({"operation": "prompt.archive", "targets": [some_id, some_id]}),
            "targets",
        ),
        (
            json!({"operation": "prompt.archive", "filter": {"provider": "openai"}}),
            "filter",
        ),
        (
            json!({"operation": "prompt.archive", "targets": [some_id], "mode": "eventually"}),
            "mode",
        ),
        (
            json!({"operation": "model.deprecate", "params": {"replacement": "nobody/none"}, "targets": [some_id]}),
            "params.replacement",
        ),
    ];
    for (body, field) in refusals {
        let problem = expect_problem(
            app.post("/v1/bulk", &app.admin_key, body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        )
        .await;
        assert!(problem.to_string().contains(field), "{body} → {problem}");
    }
    assert_eq!(app.event_count().await, events_before);
    let listed = expect_status(app.get("/v1/bulk", &app.admin_key).await, StatusCode::OK).await;
    assert_eq!(listed["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_sent_twice_with_one_idempotency_key_is_one_job() {
    let app = TestApp::spawn().await;
    let prompt = app.create_prompt("Once").await;
    let body = json!({"operation": "prompt.tag", "params": {"tags": ["once"]}, "targets": [prompt]});
    let send = || {
        app.request(Method::POST, "/v1/bulk", &app.admin_key)
            .header("Idempotency-Key", "tag-once")
            .json(&body)
            .send()
    };
    let first = expect_status(send().await.expect("first"), StatusCode::ACCEPTED).await;
    let again = send().await.expect("again");
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let again = expect_status(again, StatusCode::ACCEPTED).await;
    assert_eq!(first["id"], again["id"]);
    wait_finished(&app, first["id"].as_str().expect("id")).await;
    let listed = expect_status(app.get("/v1/bulk", &app.admin_key).await, StatusCode::OK).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_is_resolved_once_when_the_job_is_accepted() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let mut tagged = Vec::new();
    for n in 0..3 {
        let id = app.create_prompt(&format!("Old {n}")).await;
        expect_status(
            app.post(
                &format!("/v1/prompts/{id}/tags"),
                key,
                json!({"tags": ["legacy"]}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        tagged.push(id);
    }
    app.create_prompt("Current").await;
    let accepted = submit(
        &app,
        key,
        json!({"operation": "prompt.archive", "filter": {"tag": "legacy"}}),
    )
    .await;
    assert_eq!(accepted["total"], 3);
    assert_eq!(accepted["filter"], json!({"tag": "legacy"}));
    let job = wait_finished(&app, accepted["id"].as_str().expect("id")).await;
    assert_eq!(job["status"], "done");
    let mut targets: Vec<String> = job["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["target"].as_str().expect("target").to_string())
        .collect();
    targets.sort();
    tagged.sort();
    assert_eq!(targets, tagged);
    for id in &tagged {
        assert_eq!(prompt(&app, id).await["archived"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_price_change_that_fails_on_one_model_withdraws_the_periods_it_set() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    app.register_openai().await;
    let mut models = Vec::new();
    for name in ["gpt-4o-mini", "gpt-4o"] {
        models.push(app.register_model(name, json!({})).await);
    }
    // The second model already has a later period: a new one must start after it.
    expect_status(
        app.post(
            &format!("/v1/models/{}/prices", models[1]),
            key,
            json!({"effective_from": "2031-01-01T00:00:00Z", "input_per_mtok": "2.5",
                   "output_per_mtok": "10", "currency": "USD"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let prices = |model: &str| {
        let path = format!("/v1/models/{model}/prices");
        let app = &app;
        async move { expect_status(app.get(&path, key).await, StatusCode::OK).await }
    };
    let before = (prices(&models[0]).await, prices(&models[1]).await);
    let accepted = submit(
        &app,
        key,
        json!({"operation": "model.set_price", "mode": "atomic", "targets": models,
               "params": {"effective_from": "2030-01-01T00:00:00Z", "input_per_mtok": "0.1",
                          "output_per_mtok": "0.4", "currency": "USD"}}),
    )
    .await;
    let job = wait_finished(&app, accepted["id"].as_str().expect("id")).await;
    assert_eq!(job["status"], "compensated", "{job}");
    assert_eq!(item_statuses(&job), ["compensated", "failed"]);
    assert_eq!((prices(&models[0]).await, prices(&models[1]).await), before);
    let history = expect_status(
        app.get(&format!("/v1/models/{}/history", models[0]), key).await,
        StatusCode::OK,
    )
    .await;
    let kinds: Vec<&str> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    assert_eq!(kinds, ["ModelRegistered", "ModelPriceSet", "ModelPriceWithdrawn"]);
}

/// Starts a config.set job of `total` keys on an `aipm` process, kills it (-9) once the job
/// has applied something, checks the job was left unfinished, and starts another process.
/// Returns the job's id and the second process.
async fn kill_mid_job(app: &TestApp, total: usize, mode: &str) -> (String, ServerProcess) {
    // Only the processes started here run the job.
    app.stop();
    let mut first = ServerProcess::start(app).await;
    let targets: Vec<String> = (0..total).map(|n| format!("resume.k{n:04}")).collect();
    let response = app
        .client
        .post(format!("{}/v1/bulk", first.address))
        .bearer_auth(&app.admin_key)
        .json(
            &json!({"operation": "config.set", "params": {"value": 1}, "targets": targets,
                      "mode": mode, "reason": "roll out"}),
        )
        .send()
        .await
        .expect("submit");
    let id = expect_status(response, StatusCode::ACCEPTED).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let started = Instant::now();
    while job_progress(app, &id).await.1 == 0 {
        assert!(started.elapsed() < DEADLINE, "the job never made progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill();
    let (status, done_at_kill) = job_progress(app, &id).await;
    assert_eq!(status, "running");
    assert!(
        (done_at_kill as usize) < total,
        "the job finished before the kill"
    );
    (id, ServerProcess::start(app).await)
}

/// The job's status and applied count, from its read model.
async fn job_progress(app: &TestApp, id: &str) -> (String, i32) {
    sqlx::query_as("select status, done from bulk_job where job_id = $1::uuid")
        .bind(id)
        .fetch_one(app.pool())
        .await
        .expect("job")
}

async fn wait_for_status(app: &TestApp, id: &str, status: &str) {
    let started = Instant::now();
    while job_progress(app, id).await.0 != status {
        assert!(started.elapsed() < DEADLINE, "the job never became {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many events the job caused on each configuration key it touched.
async fn events_per_key(app: &TestApp, id: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select aggregate_id, count(*) from events
         where metadata ->> 'causation_id' = $1 and aggregate_type = 'config'
         group by aggregate_id",
    )
    .bind(id)
    .fetch_all(app.pool())
    .await
    .expect("events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_process_is_killed_resumes_at_the_next_start_applying_each_item_once() {
    let app = TestApp::spawn().await;
    let total = 3000;
    let (id, _second) = kill_mid_job(&app, total, "best_effort").await;
    wait_for_status(&app, &id, "done").await;
    assert_eq!(job_progress(&app, &id).await.1 as usize, total);
    // Each key was set once, by the job, and none forgotten.
    let per_key = events_per_key(&app, &id).await;
    assert_eq!(per_key.len(), total);
    assert!(per_key.iter().all(|(_, n)| *n == 1), "an item was applied twice");

    // Its progress reached the feeds as a few events a second, not one per item.
    let (job_events, seconds): (i64, f64) = sqlx::query_as(
        "select count(*), extract(epoch from max(recorded_at) - min(recorded_at))::float8
         from events where aggregate_type = 'bulk_job' and aggregate_id = $1",
    )
    .bind(&id)
    .fetch_one(app.pool())
    .await
    .expect("job events");
    assert!(
        job_events < (total / 10) as i64,
        "{job_events} events for {total} items"
    );
    assert!(
        job_events as f64 <= 4.0 + 10.0 * seconds,
        "{job_events} events in {seconds:.1} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_job_whose_process_is_killed_is_undone_at_the_next_start() {
    let app = TestApp::spawn().await;
    let (id, second) = kill_mid_job(&app, 3000, "atomic").await;
    wait_for_status(&app, &id, "compensated").await;
    let cause: serde_json::Value =
        sqlx::query_scalar("select compensation_cause from bulk_job where job_id = $1::uuid")
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .expect("cause");
    assert_eq!(cause, json!({"kind": "interrupted"}));
    let listing = app
        .client
        .get(format!("{}/v1/config?prefix=resume.", second.address))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("config");
    assert_eq!(expect_status(listing, StatusCode::OK).await["items"], json!([]));
    // Every key the job set was set once and undone once; the others were never touched.
    let per_key = events_per_key(&app, &id).await;
    assert!(!per_key.is_empty());
    assert!(per_key.iter().all(|(_, n)| *n == 2), "{per_key:?}");
}
