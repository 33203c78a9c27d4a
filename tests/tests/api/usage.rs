//! Usage ingestion: records checked one by one, counted once per id, priced at their own
//! time, and read back with their cost.

use integration_tests::harness::{expect_problem, expect_status, metric, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Registers `openai/gpt-4o-mini` with a price from January (input 0.15, output 0.60 per
/// million) and another from June (input 0.30, output 1.20, cached input 0.10).
async fn priced_model(app: &TestApp) {
    let key = &app.admin_key;
    app.register_openai().await;
    app.register_model("gpt-4o-mini", json!({})).await;
    for (from, input, output, cached) in [
        ("2026-01-01T00:00:00Z", "0.15", "0.60", None),
        ("2026-06-01T00:00:00Z", "0.30", "1.20", Some("0.10")),
    ] {
        expect_status(
            app.post(
                "/v1/models/openai%2Fgpt-4o-mini/prices",
                key,
                json!({"effective_from": from, "input_per_mtok": input, "output_per_mtok": output,
                       "cached_input_per_mtok": cached, "currency": "USD"}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
}

fn record(id: &str, timestamp: &str) -> Value {
    json!({"id": id, "timestamp": timestamp, "model": "openai/gpt-4o-mini", "feature": "support-chat",
           "input_tokens": 1_000_000, "output_tokens": 500_000, "cached_input_tokens": 200_000,
           "latency_ms": 840, "metrics": {"rating": 4}})
}

async fn ingest(app: &TestApp, key: &str, records: Value) -> Value {
    expect_status(app.post("/v1/usage", key, records).await, StatusCode::OK).await
}

async fn usage(app: &TestApp, query: &str) -> Value {
    expect_status(
        app.get(&format!("/v1/usage{query}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_checked_one_by_one_counted_once_and_priced_at_their_own_time() {
    let app = TestApp::spawn().await;
    priced_model(&app).await;
    let ingest_key = app.key("acme", "ingest").await;
    let outcome = ingest(
        &app,
        &ingest_key,
        json!([
            record("march", "2026-03-10T10:00:00Z"),
            record("july", "2026-07-10T10:00:00Z"),
            {"id": "bad", "timestamp": "yesterday", "model": "gpt", "input_tokens": -3},
            record("before-any-price", "2025-12-31T23:00:00Z"),
            {"id": "unknown-model", "timestamp": "2026-07-10T10:00:00Z", "model": "acme/home-grown",
             "input_tokens": 10, "output_tokens": 10},
            record("march", "2026-03-10T10:00:00Z"),
            "not a record",
        ]),
    )
    .await;
    assert_eq!(outcome["accepted"], 4, "{outcome}");
    assert_eq!(
        outcome["duplicates"], 1,
        "the same id twice in one batch counts once"
    );
    assert_eq!(outcome["uncosted"], 2, "{outcome}");
    let rejected = outcome["rejected"].as_array().expect("rejected");
    assert_eq!(rejected.len(), 2, "{outcome}");
    assert_eq!(rejected[0]["index"], 2);
    assert_eq!(rejected[0]["id"], "bad");
    let fields: Vec<&str> = rejected[0]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["timestamp", "model", "input_tokens"]);
    assert_eq!(rejected[1]["index"], 6);

    // Sent again (and from another process): counted once.
    let peer = app.spawn_peer().await;
    let again = app
        .client
        .post(format!("{}/v1/usage", peer.address))
        .bearer_auth(&ingest_key)
        .json(&json!([
            record("march", "2026-03-10T10:00:00Z"),
            record("august", "2026-08-01T00:00:00Z")
        ]))
        .send()
        .await
        .expect("ingest");
    let again = expect_status(again, StatusCode::OK).await;
    assert_eq!(
        (again["accepted"].as_i64(), again["duplicates"].as_i64()),
        (Some(1), Some(1))
    );

    // Priced with the period in force at each record's own time, exactly.
    let listed = usage(&app, "?limit=10").await;
    let cost_of = |id: &str| {
        listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| (r["cost"].clone(), r["uncosted"].clone()))
            .expect("record")
    };
    // March: 1,000,000 input × 0.15 + 500,000 output × 0.60 (no cached price: input price).
    assert_eq!(cost_of("march"), (json!("0.45"), json!(false)));
    // July: 800,000 × 0.30 + 200,000 × 0.10 + 500,000 × 1.20.
    assert_eq!(cost_of("july"), (json!("0.86"), json!(false)));
    assert_eq!(cost_of("before-any-price"), (Value::Null, json!(true)));
    assert_eq!(cost_of("unknown-model"), (Value::Null, json!(true)));
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        ["august", "unknown-model", "july", "march", "before-any-price"],
        "newest first, then by id"
    );

    let page = usage(&app, "?limit=2").await;
    let cursor = page["next_cursor"].as_str().expect("a next page").to_string();
    let next = usage(&app, &format!("?limit=2&cursor={}", urlencode(&cursor))).await;
    assert_eq!(next["items"][0]["id"], "july");
    let summer = usage(
        &app,
        "?from=2026-06-01T00:00:00Z&to=2026-08-01T00:00:00Z&model=openai/gpt-4o-mini",
    )
    .await;
    assert_eq!(summer["items"].as_array().map(Vec::len), Some(1));
    let by_feature = usage(&app, "?feature=support-chat").await;
    assert_eq!(by_feature["items"].as_array().map(Vec::len), Some(4));
}

async fn spend(app: &TestApp, query: &str) -> Value {
    expect_status(
        app.get(&format!("/v1/spend{query}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_labels_and_limits() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let prompt = app.create_prompt("Support reply").await;
    app.publish(&prompt, "Answer {{customer}}.").await;
    app.publish(&prompt, "Answer {{customer}} kindly.").await;
    expect_status(
        app.put(
            &format!("/v1/prompts/{prompt}/labels/production"),
            key,
            json!({"version": 2}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let lines = [
        json!({"id": "a", "timestamp": "2026-03-01T00:00:00Z", "model": "openai/gpt-4o-mini",
               "prompt_id": prompt, "prompt_label": "production"}),
        json!({"id": "b", "timestamp": "2026-03-01T00:00:00Z", "model": "openai/gpt-4o-mini",
               "prompt_id": prompt, "prompt_label": "staging"}),
    ];
    let body = format!("{}\n{}\n{{not json\n", lines[0], lines[1]);
    let outcome = app
        .request(Method::POST, "/v1/usage", key)
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("ingest");
    let outcome = expect_status(outcome, StatusCode::OK).await;
    assert_eq!(outcome["accepted"], 1, "{outcome}");
    assert_eq!(outcome["rejected"][0]["errors"][0]["field"], "prompt_label");
    assert_eq!(outcome["rejected"][1]["index"], 2);
    let listed = usage(&app, "").await;
    assert_eq!(
        listed["items"][0]["prompt_version"], 2,
        "the label was resolved at ingestion"
    );
    assert_eq!(listed["items"][0]["prompt_label"], "production");

    let too_many: Vec<Value> = (0..10_001).map(|n| json!({"id": format!("r{n}")})).collect();
    expect_problem(
        app.post("/v1/usage", key, json!(too_many)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-many-records",
    )
    .await;
    expect_problem(
        app.post("/v1/usage", key, json!({"id": "x"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    let garbled = app
        .request(Method::POST, "/v1/usage", key)
        .header("Content-Type", "application/json")
        .body("[{")
        .send()
        .await
        .expect("ingest");
    expect_problem(garbled, StatusCode::BAD_REQUEST, "malformed-request").await;
    let viewer = app.key("acme", "viewer").await;
    expect_problem(
        app.post("/v1/usage", &viewer, json!([])).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let bad_cursor = app.get("/v1/usage?cursor=nonsense", key).await;
    expect_problem(bad_cursor, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_neither_sees_usage_nor_shares_its_ids() {
    let app = TestApp::spawn().await;
    let record =
        json!([{"id": "shared-id", "timestamp": "2026-03-01T00:00:00Z", "model": "openai/gpt-4o-mini"}]);
    assert_eq!(ingest(&app, &app.admin_key, record.clone()).await["accepted"], 1);
    let other = app.key("globex", "admin").await;
    assert_eq!(
        ingest(&app, &other, record).await["accepted"],
        1,
        "ids are per tenant"
    );
    let theirs = expect_status(app.get("/v1/usage", &other).await, StatusCode::OK).await;
    assert_eq!(theirs["items"].as_array().map(Vec::len), Some(1));
    let ours = usage(&app, "").await;
    assert_eq!(ours["items"].as_array().map(Vec::len), Some(1));
    assert_ne!(theirs["items"][0]["key_id"], ours["items"][0]["key_id"]);
}

/// A small deterministic generator, so that a failing case can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_roll_ups_equal_sums_over_the_raw_records() {
    let app = TestApp::spawn().await;
    priced_model(&app).await;
    let ingest_key = app.key("acme", "ingest").await;
    let prompts = [app.create_prompt("One").await, app.create_prompt("Two").await];
    let mut random = Lcg(20261202);
    let batches: Vec<Vec<Value>> = (0..4)
        .map(|batch| {
            (0..250)
                .map(|n| {
                    let model = ["openai/gpt-4o-mini", "openai/gpt-4o-mini", "acme/home-grown"][random.next(3) as usize];
                    let day = 1 + random.next(60);
                    let timestamp = (chrono::DateTime::parse_from_rfc3339("2026-10-01T00:00:00Z").unwrap()
                        + chrono::Duration::hours(day as i64 * 24 - 24 + random.next(24) as i64))
                    .to_rfc3339();
                    let input = random.next(50_000);
                    let mut record = json!({"id": format!("b{batch}-{n}"), "timestamp": timestamp, "model": model,
                                            "input_tokens": input, "output_tokens": random.next(20_000),
                                            "cached_input_tokens": random.next(input + 1)});
                    if let Some(feature) = [None, Some("search"), Some("support-chat")][random.next(3) as usize] {
                        record["feature"] = json!(feature);
                    }
                    if random.next(2) == 0 {
                        record["prompt_id"] = json!(prompts[random.next(2) as usize]);
                    }
                    record
                })
                .collect()
        })
        .collect();
    // Two keys ingest concurrently, and one batch is sent twice: duplicates add nothing.
    let sends = batches.iter().enumerate().map(|(n, batch)| {
        let key = if n % 2 == 0 {
            app.admin_key.clone()
        } else {
            ingest_key.clone()
        };
        let body = json!(batch);
        let app = &app;
        async move { ingest(app, &key, body).await }
    });
    for outcome in futures::future::join_all(sends).await {
        assert_eq!(outcome["accepted"], 250, "{outcome}");
    }
    assert_eq!(
        ingest(&app, &ingest_key, json!(batches[1])).await["duplicates"],
        250
    );

    let dimensions = [
        ("", vec![]),
        ("model", vec!["model"]),
        ("day", vec!["(ts at time zone 'UTC')::date::text as day"]),
        ("feature", vec!["feature"]),
        ("prompt", vec!["prompt_id::text as prompt_id"]),
        ("key", vec!["key_id::text as key_id"]),
        (
            "model,day",
            vec!["model", "(ts at time zone 'UTC')::date::text as day"],
        ),
        (
            "feature,key,prompt",
            vec![
                "feature",
                "key_id::text as key_id",
                "prompt_id::text as prompt_id",
            ],
        ),
    ];
    for (group_by, columns) in dimensions {
        let grouping = if group_by.is_empty() {
            String::new()
        } else {
            format!("&group_by={group_by}")
        };
        let report = spend(&app, &format!("?from=2026-10-01&to=2026-12-01{grouping}")).await;
        let names: Vec<String> = columns
            .iter()
            .map(|c| c.rsplit(" as ").next().expect("name").to_string())
            .collect();
        let select = columns.iter().map(|c| format!("{c}, ")).collect::<String>();
        let grouping = names.iter().map(|n| format!("{n}, ")).collect::<String>();
        let sql = format!(
            "select coalesce(jsonb_agg(g order by g::text), '[]') from (
                 select {select} currency, trim_scale(coalesce(sum(cost), 0))::text as cost,
                        sum(input_tokens)::bigint as input_tokens, sum(output_tokens)::bigint as output_tokens,
                        count(*) as calls, count(*) filter (where cost is null) as uncosted,
                        trim_scale(coalesce(sum(case when recosted then original_cost else cost end), 0))::text
                            as original_cost,
                        count(*) filter (where recosted) as recosted
                 from usage_record where tenant_id = 'acme' and ts >= '2026-10-01' and ts < '2026-12-01'
                 group by {grouping} currency) g"
        );
        let direct: Value = sqlx::query_scalar(&sql)
            .fetch_one(app.pool())
            .await
            .expect("direct sums");
        let mut rolled: Vec<Value> = report["groups"].as_array().expect("groups").clone();
        rolled.sort_by_key(|g| serde_json::to_string(g).unwrap_or_default());
        let mut direct: Vec<Value> = direct.as_array().expect("rows").clone();
        direct.sort_by_key(|g| serde_json::to_string(g).unwrap_or_default());
        assert_eq!(rolled, direct, "group_by={group_by}");
    }
    let total = spend(&app, "").await;
    let direct_total: String =
        sqlx::query_scalar("select trim_scale(sum(cost))::text from usage_record where tenant_id = 'acme'")
            .fetch_one(app.pool())
            .await
            .expect("total");
    assert_eq!(total["total"], direct_total.as_str());
    assert_eq!(total["currency"], "USD");
    assert_eq!(total["calls"], 1000);
    assert!(total["uncosted_records"].as_i64().unwrap_or(0) > 0);
    for refused in [
        "group_by=model,colour",
        "group_by=",
        "from=2026-12-01&to=2026-11-01",
        "from=yesterday",
    ] {
        let refused = app.get(&format!("/v1/spend?{refused}"), &app.admin_key).await;
        expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    }
    let twice = spend(&app, "?group_by=model,model").await;
    assert_eq!(twice["groups"], spend(&app, "?group_by=model").await["groups"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_status_counts_the_spend_of_its_scope_in_its_current_period() {
    let app = TestApp::spawn().await;
    priced_model(&app).await;
    let key = &app.admin_key;
    let define = |scope: Value| {
        let body = json!({"name": format!("budget {scope}"), "scope": scope, "period": "monthly", "amount": "1.00",
                          "currency": "USD", "thresholds": [50, 80, 100], "enforcement": "hard"});
        let app = &app;
        async move {
            expect_status(app.post("/v1/budgets", key, body).await, StatusCode::CREATED).await["id"]
                .as_str()
                .expect("id")
                .to_string()
        }
    };
    let on_model = define(json!({"kind": "model", "id": "openai/gpt-4o-mini"})).await;
    let on_search = define(json!({"kind": "feature", "id": "search"})).await;
    let status = |id: &str| {
        let path = format!("/v1/budgets/{id}/status");
        let app = &app;
        async move { expect_status(app.get(&path, key).await, StatusCode::OK).await }
    };
    let fresh = status(&on_model).await;
    assert_eq!(
        (fresh["spent"].as_str(), fresh["remaining"].as_str()),
        (Some("0"), Some("1"))
    );
    assert_eq!(fresh["thresholds_crossed"], json!([]));

    // Each record costs 0.86 at the June price (see `record`); a month ago is another period.
    let now = chrono::Utc::now();
    let month_ago = (now - chrono::Duration::days(40)).to_rfc3339();
    let at = now.to_rfc3339();
    ingest(
        &app,
        key,
        json!([record("now-1", &at), record("long-ago", &month_ago)]),
    )
    .await;
    let once = status(&on_model).await;
    assert_eq!(once["spent"], "0.86", "{once}");
    assert_eq!(once["percent_used"], "86");
    assert_eq!(once["thresholds_crossed"], json!([50, 80]));
    assert_eq!(once["exhausted"], false);
    assert_eq!(status(&on_search).await["spent"], "0", "another feature's spend");

    ingest(&app, key, json!([record("now-2", &at)])).await;
    let twice = status(&on_model).await;
    assert_eq!(
        (twice["spent"].as_str(), twice["remaining"].as_str()),
        (Some("1.72"), Some("-0.72"))
    );
    assert_eq!(twice["thresholds_crossed"], json!([50, 80, 100]));
    assert_eq!(twice["exhausted"], true);

    let other = app.key("globex", "admin").await;
    let theirs = app.get(&format!("/v1/budgets/{on_model}/status"), &other).await;
    expect_problem(theirs, StatusCode::NOT_FOUND, "not-found").await;
}

/// Defines a budget of the tenant `acme` and returns its id.
async fn define_budget(app: &TestApp, body: Value) -> String {
    expect_status(
        app.post("/v1/budgets", &app.admin_key, body).await,
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_string()
}

async fn check(app: &TestApp, key: &str, query: &str) -> Value {
    expect_status(
        app.get(&format!("/v1/budgets/check{query}"), key).await,
        StatusCode::OK,
    )
    .await
}

/// The thresholds a budget's history records as crossed, in order.
async fn thresholds_recorded(app: &TestApp, budget: &str) -> Vec<(Value, Value)> {
    let history = expect_status(
        app.get(&format!("/v1/budgets/{budget}/history"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    history["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|item| item["event_type"] == "BudgetThresholdCrossed")
        .map(|item| {
            (
                item["data"]["threshold"].clone(),
                item["data"]["period_start"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_is_recorded_once_under_concurrent_ingestion_in_two_processes_and_after_a_restart() {
    let app = TestApp::spawn().await;
    priced_model(&app).await;
    let budget = define_budget(
        &app,
        json!({"name": "all LLM spend", "scope": {"kind": "tenant"}, "period": "monthly", "amount": "10",
               "currency": "USD", "thresholds": [10, 50, 100], "enforcement": "hard"}),
    )
    .await;
    let ingest_key = app.key("acme", "ingest").await;
    let peer = app.spawn_peer().await;

    // Sixteen records of 0.86 each (13.76, 137.6 %), sent at once, half through each process.
    let at = chrono::Utc::now().to_rfc3339();
    let sends = (0..16).map(|n| {
        let address = if n % 2 == 0 { &app.address } else { &peer.address };
        app.client
            .post(format!("{address}/v1/usage"))
            .bearer_auth(&ingest_key)
            .json(&json!([record(&format!("call-{n}"), &at)]))
            .send()
    });
    for response in futures::future::join_all(sends).await {
        expect_status(response.expect("ingest"), StatusCode::OK).await;
    }
    let period_start = json!(chrono::Utc::now().format("%Y-%m-01").to_string());
    let once = vec![
        (json!(10), period_start.clone()),
        (json!(50), period_start.clone()),
        (json!(100), period_start.clone()),
    ];
    assert_eq!(thresholds_recorded(&app, &budget).await, once);
    let history = expect_status(
        app.get(&format!("/v1/budgets/{budget}/history"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    let started: Vec<&Value> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|item| item["event_type"] == "BudgetPeriodStarted")
        .collect();
    assert_eq!(
        started.len(),
        1,
        "the period starts once, with its first crossing: {history}"
    );
    assert_eq!(started[0]["data"]["period_start"], period_start);

    // A process started afterwards reads the same spend and records nothing again, however
    // much more is spent.
    drop(peer);
    let restarted = app.spawn_peer().await;
    let more = app
        .client
        .post(format!("{}/v1/usage", restarted.address))
        .bearer_auth(&ingest_key)
        .json(&json!([record("after-restart", &at)]))
        .send()
        .await
        .expect("ingest");
    expect_status(more, StatusCode::OK).await;
    assert_eq!(thresholds_recorded(&app, &budget).await, once);

    // The crossings are in the audit log, by the watcher, with their figures.
    let auditor = app.key("acme", "auditor").await;
    let audit = expect_status(
        app.get("/v1/audit?event_type=BudgetThresholdCrossed&limit=100", &auditor)
            .await,
        StatusCode::OK,
    )
    .await;
    let entries = audit["items"].as_array().expect("items");
    assert_eq!(entries.len(), 3, "{audit}");
    assert!(
        entries.iter().all(|entry| entry["actor_name"] == "budget-watch"),
        "{audit}"
    );
    assert_eq!(
        entries[0]["payload"]["BudgetThresholdCrossed"]["amount"], "10",
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_check_refuses_a_call_once_a_hard_budget_covering_it_is_exhausted() {
    let app = TestApp::spawn().await;
    priced_model(&app).await;
    let on_search = define_budget(
        &app,
        json!({"name": "search", "scope": {"kind": "feature", "id": "search"}, "period": "daily",
               "amount": "1.5", "currency": "USD", "enforcement": "hard"}),
    )
    .await;
    let on_model = define_budget(
        &app,
        json!({"name": "mini", "scope": {"kind": "model", "id": "openai/gpt-4o-mini"}, "period": "weekly",
               "amount": "1", "currency": "USD", "enforcement": "soft"}),
    )
    .await;
    let ingest_key = app.key("acme", "ingest").await;
    let search_call = "?model=openai%2Fgpt-4o-mini&feature=search";
    let fresh = check(&app, &ingest_key, search_call).await;
    assert_eq!(fresh["allowed"], true, "{fresh}");
    let covering: Vec<&Value> = fresh["budgets"]
        .as_array()
        .expect("budgets")
        .iter()
        .map(|b| &b["id"])
        .collect();
    assert_eq!(covering.len(), 2, "{fresh}");
    assert!(covering.contains(&&json!(on_search)) && covering.contains(&&json!(on_model)));
    let elsewhere = check(&app, &ingest_key, "?feature=chat").await;
    assert_eq!(
        elsewhere["budgets"],
        json!([]),
        "no budget covers another feature on no model"
    );

    // Two calls for search at 0.86 each: 1.72 of 1.5.
    let at = chrono::Utc::now().to_rfc3339();
    let search = |id: &str| {
        let mut record = record(id, &at);
        record["feature"] = json!("search");
        record
    };
    ingest(&app, &ingest_key, json!([search("s-1")])).await;
    assert_eq!(check(&app, &ingest_key, search_call).await["allowed"], true);
    ingest(&app, &ingest_key, json!([search("s-2")])).await;
    let refused = check(&app, &ingest_key, search_call).await;
    assert_eq!(refused["allowed"], false, "{refused}");
    assert_eq!(refused["budgets"][0]["id"], json!(on_search), "exhausted first");
    assert_eq!(refused["budgets"][0]["spent"], "1.72");
    assert_eq!(refused["budgets"][0]["exhausted"], true);
    // The soft budget over the model is over too, and only warns.
    assert_eq!(refused["budgets"][1]["percent_used"], "172");
    assert_eq!(refused["budgets"][1]["exhausted"], false);
    let other_feature = check(&app, &ingest_key, "?model=openai%2Fgpt-4o-mini&feature=chat").await;
    assert_eq!(other_feature["allowed"], true, "{other_feature}");

    // Raising the amount lets calls through again at once.
    expect_status(
        app.patch(
            &format!("/v1/budgets/{on_search}"),
            &app.admin_key,
            json!({"amount": "5"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(check(&app, &ingest_key, search_call).await["allowed"], true);

    // Another tenant sees none of these budgets; a role that may not check is refused.
    let globex = app.key("globex", "ingest").await;
    assert_eq!(check(&app, &globex, search_call).await["budgets"], json!([]));
    let auditor = app.key("acme", "auditor").await;
    expect_problem(
        app.get(&format!("/v1/budgets/check{search_call}"), &auditor)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let bad = app.get("/v1/budgets/check?prompt=not-a-uuid", &ingest_key).await;
    expect_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
}

/// Sums over the raw records against the roll-ups of `acme`: (cost, original cost, calls).
async fn raw_and_rolled_up(app: &TestApp) -> ((String, String, i64), (String, String, i64)) {
    let raw: (String, String, i64) = sqlx::query_as(
        "select trim_scale(coalesce(sum(cost), 0))::text,
                trim_scale(coalesce(sum(case when recosted then original_cost else cost end), 0))::text, count(*)
         from usage_record where tenant_id = 'acme'",
    )
    .fetch_one(app.pool())
    .await
    .expect("raw sums");
    let rolled: (String, String, i64) = sqlx::query_as(
        "select trim_scale(coalesce(sum(cost), 0))::text, trim_scale(coalesce(sum(original_cost), 0))::text,
                coalesce(sum(calls), 0)::bigint
         from usage_rollup where tenant_id = 'acme'",
    )
    .fetch_one(app.pool())
    .await
    .expect("roll-up sums");
    (raw, rolled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_correction_recosts_its_period_and_reports_show_both_figures() {
    let app = TestApp::spawn().await;
    priced_model(&app).await;
    let key = &app.admin_key;
    // March at the January price (0.45), July at the June price (0.86 each).
    ingest(
        &app,
        key,
        json!([
            record("march", "2026-03-10T10:00:00Z"),
            record("july-1", "2026-07-10T10:00:00Z"),
            record("july-2", "2026-07-11T10:00:00Z")
        ]),
    )
    .await;
    let before = spend(&app, "?group_by=model").await;
    assert_eq!(before["total"], "2.17", "{before}");
    assert_eq!(before["original_total"], "2.17");
    assert_eq!(before["recosted_records"], 0);

    // The June price was mistyped: output is 0.90, not 1.20.
    expect_status(
        app.post(
            "/v1/models/openai%2Fgpt-4o-mini/prices/corrections",
            key,
            json!({"effective_from": "2026-06-01T00:00:00Z", "input_per_mtok": "0.30", "output_per_mtok": "0.90",
                   "cached_input_per_mtok": "0.10", "currency": "USD", "reason": "mistyped output price"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    // Each July record: 0.80 × 0.30 + 0.20 × 0.10 + 0.5 × 0.90 = 0.71.
    let after = spend(&app, "?group_by=day").await;
    assert_eq!(after["total"], "1.87", "{after}");
    assert_eq!(after["original_total"], "2.17");
    assert_eq!(after["recosted_records"], 2);
    let july = after["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|group| group["day"] == "2026-07-10")
        .expect("the 10th of July");
    assert_eq!(
        (
            july["cost"].as_str(),
            july["original_cost"].as_str(),
            july["recosted"].as_i64()
        ),
        (Some("0.71"), Some("0.86"), Some(1))
    );
    let records = usage(&app, "?model=openai%2Fgpt-4o-mini").await;
    let first = &records["items"][0];
    assert_eq!(first["id"], "july-2");
    assert_eq!(
        (
            first["cost"].as_str(),
            first["original_cost"].as_str(),
            first["recosted"].as_bool()
        ),
        (Some("0.71"), Some("0.86"), Some(true))
    );
    assert_eq!(records["items"][2]["recosted"], false, "March kept its price");
    let (raw, rolled) = raw_and_rolled_up(&app).await;
    assert_eq!(raw, rolled);

    // Withdrawing the June period prices July at January's price; a second change keeps
    // the first figures as the original.
    let withdrawn = app
        .request(
            Method::DELETE,
            "/v1/models/openai%2Fgpt-4o-mini/prices/2026-06-01T00:00:00Z",
            key,
        )
        .header("X-Reason", "the June price never applied")
        .send()
        .await
        .expect("withdraw");
    assert!(withdrawn.status().is_success(), "{}", withdrawn.status());
    let withdrawn_spend = spend(&app, "").await;
    assert_eq!(withdrawn_spend["total"], "1.35", "{withdrawn_spend}");
    assert_eq!(withdrawn_spend["original_total"], "2.17");
    let (raw, rolled) = raw_and_rolled_up(&app).await;
    assert_eq!(raw, rolled);
    assert_eq!(raw.0, "1.35");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_give_each_version_label_and_feature_its_figures_and_percentiles() {
    let app = TestApp::spawn().await;
    priced_model(&app).await;
    let key = &app.admin_key;
    let prompt = app.create_prompt("support-answer").await;
    app.publish(&prompt, "v1 {{question}}").await;
    app.publish(&prompt, "v2 {{question}}").await;
    let label = |version: i64| {
        let path = format!("/v1/prompts/{prompt}/labels/production");
        let app = &app;
        async move {
            expect_status(
                app.put(&path, key, json!({"version": version})).await,
                StatusCode::OK,
            )
            .await;
        }
    };
    let today = chrono::Utc::now();
    let yesterday = today - chrono::Duration::days(1);
    // Yesterday production served v1: 100 calls of 1..=100 ms, every tenth failing.
    label(1).await;
    let calls = |prefix: &str, at: chrono::DateTime<chrono::Utc>, feature: &str, rating: f64| {
        (1..=100)
            .map(|n| {
                let mut record = record(&format!("{prefix}-{n}"), &at.to_rfc3339());
                record["prompt_id"] = json!(prompt);
                record["prompt_label"] = json!("production");
                record["feature"] = json!(feature);
                record["latency_ms"] = json!(n * 10);
                record["status"] = json!(if n % 10 == 0 { "timeout" } else { "ok" });
                record["metrics"] = json!({"rating": rating});
                record
            })
            .collect::<Vec<Value>>()
    };
    ingest(&app, key, json!(calls("old", yesterday, "search", 3.0))).await;
    // Today it serves v2, for two features.
    label(2).await;
    ingest(&app, key, json!(calls("new", today, "search", 5.0))).await;
    ingest(&app, key, json!(calls("chat", today, "chat", 4.0))).await;

    let analytics = expect_status(
        app.get(&format!("/v1/analytics/prompts/{prompt}"), key).await,
        StatusCode::OK,
    )
    .await;
    let versions = analytics["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 2, "{analytics}");
    let (v2, v1) = (&versions[0], &versions[1]);
    assert_eq!(
        (v2["version"].as_i64(), v2["calls"].as_i64()),
        (Some(2), Some(200))
    );
    assert_eq!(
        (v1["version"].as_i64(), v1["calls"].as_i64()),
        (Some(1), Some(100))
    );
    assert_eq!(v1["error_rate"], 0.1);
    // 100 calls at 0.86 (the June price applies to any recent day).
    assert_eq!(
        v1["cost"],
        json!([{"currency": "USD", "cost": "86", "original_cost": "86"}])
    );
    // Latencies 10..=1000 ms: the sketch is within 1 % of the exact percentile.
    for (name, exact) in [("p50", 500.0), ("p95", 950.0), ("p99", 990.0)] {
        let estimate = v1["latency_ms"][name].as_f64().expect("percentile");
        assert!((estimate - exact).abs() / exact <= 0.0101, "{name} {estimate}");
    }
    assert_eq!(v2["metrics"]["rating"], 4.5);
    assert!(v2["last_used"].as_str().is_some());
    let labels = analytics["labels"].as_array().expect("labels");
    assert_eq!(labels.len(), 2, "{analytics}");
    assert_eq!(labels[0]["versions"], json!([1]));
    assert_eq!(labels[1]["versions"], json!([2]));
    assert_eq!(labels[1]["calls"], 200);

    // Features today against yesterday: search kept its calls and its rating rose.
    let from = today.date_naive();
    let to = from + chrono::Days::new(1);
    let features = expect_status(
        app.get(&format!("/v1/analytics/features?from={from}&to={to}"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    let by_name = |name: &str| {
        features["features"]
            .as_array()
            .expect("features")
            .iter()
            .find(|f| f["feature"] == name)
            .cloned()
            .expect("feature")
    };
    let search = by_name("search");
    assert_eq!(search["calls"], 100);
    assert_eq!(search["previous"]["calls"], 100);
    assert_eq!(search["change"]["calls"], 0.0);
    assert_eq!(search["change"]["error_rate"], 0.0);
    assert_eq!(search["metrics"]["rating"], 5.0);
    assert_eq!(search["previous"]["metrics"]["rating"], 3.0);
    let chat = by_name("chat");
    assert_eq!(chat["previous"], Value::Null);
    assert_eq!(chat["change"]["calls"], Value::Null);

    // Bad ranges and another tenant's prompt are refused.
    for bad in [
        "?from=2026-12-01&to=2026-11-01",
        "?from=2020-01-01&to=2026-01-01",
        "?to=soon",
    ] {
        let refused = app.get(&format!("/v1/analytics/features{bad}"), key).await;
        expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    }
    let globex = app.key("globex", "viewer").await;
    let hidden = app.get(&format!("/v1/analytics/prompts/{prompt}"), &globex).await;
    expect_problem(hidden, StatusCode::NOT_FOUND, "not-found").await;
    let theirs = expect_status(
        app.get(&format!("/v1/analytics/features?from={from}&to={to}"), &globex)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        theirs["features"],
        json!([]),
        "another tenant's features are its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_commands_events_and_usage_and_show_spend_budgets_and_lag() {
    // A free port for the keyless metrics listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let mut settings = integration_tests::harness::test_settings();
    settings.metrics_listen = Some(format!("127.0.0.1:{port}"));
    let app = TestApp::spawn_with(settings).await;
    priced_model(&app).await;
    let key = &app.admin_key;
    let budget = define_budget(
        &app,
        json!({"name": "all", "scope": {"kind": "tenant"}, "period": "monthly", "amount": "10",
               "currency": "USD"}),
    )
    .await;
    let at = chrono::Utc::now().to_rfc3339();
    ingest(
        &app,
        key,
        json!([record("one", &at), record("one", &at), {"id": "bad"}]),
    )
    .await;

    let response = app.get("/metrics", key).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .is_ok_and(|v| v.starts_with("text/plain")));
    let text = response.text().await.expect("text");
    let value = |series: &str| metric(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        value(r#"aipm_http_requests_total{method="POST",route="/v1/usage",status="200"}"#),
        1.0
    );
    assert_eq!(
        value(r#"aipm_http_requests_total{method="POST",route="/v1/models/{model}/prices",status="201"}"#),
        2.0,
        "requests count by route pattern, not by path"
    );
    assert_eq!(
        value(r#"aipm_http_request_duration_seconds_count{method="POST",route="/v1/usage"}"#),
        1.0
    );
    assert_eq!(
        value(r#"aipm_commands_total{aggregate_type="budget",outcome="committed"}"#),
        1.0
    );
    assert_eq!(
        value(r#"aipm_events_appended_total{aggregate_type="model",event_type="ModelPriceSet"}"#),
        2.0
    );
    for (outcome, count) in [("accepted", 1.0), ("duplicate", 1.0), ("rejected", 1.0)] {
        let series = format!(r#"aipm_usage_records_total{{outcome="{outcome}",tenant="acme"}}"#);
        assert_eq!(value(&series), count, "{outcome}");
    }
    assert_eq!(
        value(r#"aipm_spend_month_to_date{currency="USD",model="openai/gpt-4o-mini",tenant="acme"}"#),
        0.86
    );
    let budget_series =
        format!(r#"aipm_budget_used_ratio{{budget="{budget}",enforcement="soft",name="all",tenant="acme"}}"#);
    assert_eq!(value(&budget_series), 0.086);
    assert!(metric(&text, r#"aipm_projection_lag_events{projection="audit"}"#).is_some());
    // Never probed yet: its state is unknown.
    assert_eq!(
        value(r#"aipm_provider_health_state{provider="openai",state="unknown",tenant="acme"}"#),
        1.0
    );
    assert_eq!(
        value(r#"aipm_provider_health_state{provider="openai",state="healthy",tenant="acme"}"#),
        0.0
    );

    // Operators only on the API; anyone who can reach the metrics listener.
    let viewer = app.key("acme", "viewer").await;
    expect_problem(
        app.get("/metrics", &viewer).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let anonymous = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let scraped = app
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(scraped.status(), StatusCode::OK);
    let scraped = scraped.text().await.expect("text");
    assert_eq!(
        metric(
            &scraped,
            r#"aipm_usage_records_total{outcome="accepted",tenant="acme"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_from_an_earlier_period_records_the_new_one_starting_once() {
    let app = TestApp::spawn().await;
    priced_model(&app).await;
    let budget = define_budget(
        &app,
        json!({"name": "daily", "scope": {"kind": "tenant"}, "period": "daily", "amount": "100",
               "currency": "USD"}),
    )
    .await;
    let path = format!("/v1/budgets/{budget}/history");
    let events = || {
        let (app, path) = (&app, &path);
        async move {
            let history = expect_status(app.get(path, &app.admin_key).await, StatusCode::OK).await;
            history["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|item| item["event_type"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        }
    };
    // Its first period is implied by its definition: nothing recorded, its version unchanged.
    assert_eq!(events().await, ["BudgetDefined"]);
    // As if it had been defined two days ago: today's period begins for the record, once,
    // however often the watcher looks (each change makes it look at once).
    sqlx::query("update budget set created_at = now() - interval '2 days' where budget_id = $1::uuid")
        .bind(&budget)
        .execute(app.pool())
        .await
        .expect("backdate");
    for amount in ["200", "300"] {
        expect_status(
            app.patch(
                &format!("/v1/budgets/{budget}"),
                &app.admin_key,
                json!({"amount": amount}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    }
    // (The watcher's own round may come before either change.)
    let recorded = events().await;
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    assert_eq!(
        recorded.iter().filter(|e| *e == "BudgetPeriodStarted").count(),
        1,
        "{recorded:?}"
    );
    assert_eq!(recorded.iter().filter(|e| *e == "BudgetChanged").count(), 2);
}
