//! The audit log: one hash-chained entry per event, its filters and downloads, its
//! verification against the event log (over HTTP and the CLI) when either table has been
//! tampered with, recorded reads, and permission history.

use chrono::{DateTime, Utc};
use integration_tests::harness::{expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A page (or several) of the audit log, all items.
async fn entries(app: &TestApp, key: &str, filters: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let after = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
        let page = expect_status(
            app.get(&format!("/v1/audit?limit=1000&{filters}{after}"), key)
                .await,
            StatusCode::OK,
        )
        .await;
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = Some(next),
            None => return items,
        }
    }
}

async fn verify(app: &TestApp, key: &str) -> Value {
    expect_status(app.get("/v1/audit/verify", key).await, StatusCode::OK).await
}

/// The entry's hash as README.md defines it, recomputed here independently of the server:
/// serde_json writes objects with sorted keys and no whitespace, which is RFC 8785's form
/// for entries whose keys are ASCII and whose numbers are integers or short decimals.
fn recomputed_hash(item: &Value) -> String {
    let mut entry = item.as_object().expect("entry").clone();
    entry.remove("prev_hash");
    entry.remove("hash");
    let canonical = serde_json::to_string(&entry).expect("json");
    let prev = item["prev_hash"].as_str().expect("prev_hash");
    hex::encode(Sha256::digest(format!("{prev}{canonical}").as_bytes()))
}

/// Runs `sql` with triggers off, as someone with direct database access could.
async fn tamper(pool: &PgPool, statements: &[String]) {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("set local session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("bypass triggers");
    for sql in statements {
        sqlx::query(sql).execute(&mut *tx).await.expect("tamper");
    }
    tx.commit().await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_becomes_one_chained_entry_with_who_why_and_what_changed() {
    let app = TestApp::spawn().await;
    let auditor = app.key("acme", "auditor").await;
    let created = app
        .request(Method::POST, "/v1/prompts", &app.admin_key)
        .header("x-reason", "launch")
        .header("user-agent", "audit-test/1.0")
        .header("x-request-id", "req-create-1")
        .json(&json!({ "name": "greeting", "tags": ["support"] }))
        .send()
        .await
        .expect("request");
    let prompt = expect_status(created, StatusCode::CREATED).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let renamed = app
        .patch(
            &format!("/v1/prompts/{prompt}"),
            &app.admin_key,
            json!({ "name": "welcome" }),
        )
        .await;
    expect_status(renamed, StatusCode::OK).await;
    let published = app
        .post(
            &format!("/v1/prompts/{prompt}/versions"),
            &app.admin_key,
            json!({ "template": "Hi {{name}}", "params": { "temperature": 0.2, "top_p": 1e-7 } }),
        )
        .await;
    expect_status(published, StatusCode::CREATED).await;

    let history = entries(&app, &auditor, &format!("aggregate_id={prompt}")).await;
    assert_eq!(history.len(), 3, "{history:?}");
    let created = &history[0];
    assert_eq!(created["event_type"], "PromptCreated");
    assert_eq!(created["tenant"], "acme");
    assert_eq!(created["aggregate_type"], "prompt");
    assert_eq!(created["aggregate_version"], 1);
    assert_eq!(created["actor_name"], "test-admin");
    assert!(created["actor_key_id"].as_str().is_some_and(|id| id.len() == 36));
    assert_eq!(created["request_id"], "req-create-1");
    assert_eq!(created["reason"], "launch");
    assert_eq!(created["user_agent"], "audit-test/1.0");
    assert_eq!(created["client_addr"], "127.0.0.1");
    assert_eq!(created["payload"]["PromptCreated"]["name"], "greeting");
    assert_eq!(
        created["changes"]["name"],
        json!({ "before": "", "after": "greeting" })
    );
    assert_eq!(
        created["changes"]["tags"],
        json!({ "before": [], "after": ["support"] })
    );
    assert!(created["recorded_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(
        history[1]["changes"],
        json!({ "name": { "before": "greeting", "after": "welcome" } })
    );
    assert_eq!(history[1]["reason"], Value::Null);
    assert_eq!(
        history[2]["changes"],
        json!({ "latest_version": { "before": 0, "after": 1 } })
    );

    // The whole chain: sequences 1, 2, 3, … each linked to the one before by its hash.
    let chain = entries(&app, &auditor, "").await;
    assert!(
        chain.len() >= 6,
        "tenant, admin key, auditor key, three prompt events"
    );
    for (i, item) in chain.iter().enumerate() {
        assert_eq!(item["sequence"], i as i64 + 1);
        let prev = if i == 0 {
            GENESIS
        } else {
            chain[i - 1]["hash"].as_str().unwrap()
        };
        assert_eq!(item["prev_hash"], prev, "entry {}", i + 1);
        assert_eq!(item["hash"], recomputed_hash(item), "entry {}", i + 1);
    }
    assert_eq!(chain[0]["event_type"], "TenantCreated");
    let report = verify(&app, &auditor).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["first_mismatch"], Value::Null);
    assert_eq!(report["pending_events"], 0);
    let head = report["head"]["sequence"].as_i64().unwrap();
    assert!(head > chain.len() as i64, "the verify read is in the chain too");
    let after = entries(&app, &auditor, "").await;
    assert_eq!(after[head as usize - 1]["hash"], report["head"]["hash"]);
    assert_eq!(report["stored_head"]["sequence"], head);
    assert!(api::cli::audit::verify(app.pool(), Some("acme"), None)
        .await
        .is_ok_and(|out| out.contains("acme: ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_chain() {
    let app = TestApp::spawn().await;
    let acme_auditor = app.key("acme", "auditor").await;
    let beta_admin = app.key("beta", "admin").await;
    let beta_auditor = app.key("beta", "auditor").await;
    app.create_prompt("acme-only").await;
    let beta_prompt = expect_status(
        app.post("/v1/prompts", &beta_admin, json!({ "name": "beta-only" }))
            .await,
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let acme = entries(&app, &acme_auditor, "").await;
    assert!(acme.iter().all(|e| e["tenant"] == "acme"));
    assert!(!acme.iter().any(|e| e["aggregate_id"] == beta_prompt));
    let none = entries(&app, &acme_auditor, &format!("aggregate_id={beta_prompt}")).await;
    assert!(none.is_empty());
    let beta = entries(&app, &beta_auditor, "").await;
    assert!(beta.iter().all(|e| e["tenant"] == "beta"));
    assert!(beta.iter().any(|e| e["aggregate_id"] == beta_prompt));
    assert_eq!(beta[0]["sequence"], 1, "each tenant has its own chain");
    assert_eq!(beta[0]["prev_hash"], GENESIS);
    let report = verify(&app, &beta_auditor).await;
    assert_eq!(report["tenant"], "beta");
    assert_eq!(report["ok"], true);

    // Damage to one tenant's chain leaves the other's intact.
    tamper(
        app.pool(),
        &["update audit_entry set actor_name = 'nobody' where tenant_id = 'acme' and chain_seq = 2".into()],
    )
    .await;
    assert_eq!(verify(&app, &acme_auditor).await["ok"], false);
    assert_eq!(verify(&app, &beta_auditor).await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_auditors_and_admins_read_the_audit_log() {
    let app = TestApp::spawn().await;
    let paths = [
        "/v1/audit",
        "/v1/audit?format=ndjson",
        "/v1/audit/verify",
        "/v1/audit/permissions",
    ];
    for role in ["editor", "viewer", "ingest"] {
        let key = app.key("acme", role).await;
        for path in paths {
            expect_problem(app.get(path, &key).await, StatusCode::FORBIDDEN, "forbidden").await;
        }
    }
    let auditor = app.key("acme", "auditor").await;
    for key in [&auditor, &app.admin_key] {
        for path in paths {
            let response = app.get(path, key).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
        }
    }
    let anonymous = app
        .client
        .get(format!("{}/v1/audit", app.address))
        .send()
        .await
        .unwrap();
    expect_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Refused reads are not recorded; allowed ones are.
    let reads = entries(&app, &auditor, "event_type=ReadRecorded").await;
    assert!(reads
        .iter()
        .all(|r| r["actor_name"] == "acme-auditor" || r["actor_name"] == "test-admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_filter_by_actor_aggregate_event_request_and_time_and_page_by_cursor() {
    let app = TestApp::spawn().await;
    let auditor = app.key("acme", "auditor").await;
    let editor = app.key("acme", "editor").await;
    let first = app.create_prompt("first").await;
    let between = Utc::now();
    let second = expect_status(
        app.request(Method::POST, "/v1/prompts", &editor)
            .header("x-request-id", "editor-req-7")
            .json(&json!({ "name": "second" }))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let category = expect_status(
        app.post("/v1/categories", &editor, json!({ "name": "ops" }))
            .await,
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let by_editor = entries(&app, &auditor, "actor=acme-editor").await;
    assert_eq!(by_editor.len(), 2, "{by_editor:?}");
    let editor_key_id = by_editor[0]["actor_key_id"].as_str().unwrap().to_string();
    let by_key = entries(&app, &auditor, &format!("actor={editor_key_id}")).await;
    assert_eq!(by_key, by_editor);
    let prompts = entries(&app, &auditor, "aggregate_type=prompt").await;
    let ids: Vec<&Value> = prompts.iter().map(|e| &e["aggregate_id"]).collect();
    assert_eq!(ids, [&json!(first), &json!(second)]);
    let one = entries(
        &app,
        &auditor,
        &format!("aggregate_type=prompt_category&aggregate_id={category}"),
    )
    .await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["event_type"], "CategoryCreated");
    let created = entries(&app, &auditor, "event_type=PromptCreated").await;
    assert_eq!(created.len(), 2);
    let requested = entries(&app, &auditor, "request_id=editor-req-7").await;
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0]["aggregate_id"], json!(second));
    let since = urlencode(&between.to_rfc3339());
    let later = entries(&app, &auditor, &format!("aggregate_type=prompt&from={since}")).await;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0]["aggregate_id"], json!(second));
    let earlier = entries(&app, &auditor, &format!("aggregate_type=prompt&to={since}")).await;
    assert_eq!(earlier.len(), 1);
    assert_eq!(earlier[0]["aggregate_id"], json!(first));

    // Pages of two walk the same entries as one page, each exactly once.
    let all = entries(&app, &auditor, "event_type=PromptCreated&aggregate_type=prompt").await;
    let mut paged = Vec::new();
    let mut path = "/v1/audit?limit=1&aggregate_type=prompt".to_string();
    loop {
        let page = expect_status(app.get(&path, &auditor).await, StatusCode::OK).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 1);
        paged.extend(items.iter().cloned());
        let Some(next) = page["next_cursor"].as_i64() else {
            break;
        };
        path = format!("/v1/audit?limit=1&aggregate_type=prompt&cursor={next}");
    }
    assert_eq!(paged, all);
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_are_problems() {
    let app = TestApp::spawn().await;
    let auditor = app.key("acme", "auditor").await;
    for query in [
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "cursor=abc",
        "cursor=-4",
        "limit=0",
        "limit=100000",
        "format=xml",
        "actor=",
        "colour=blue",
    ] {
        let response = app.get(&format!("/v1/audit?{query}"), &auditor).await;
        expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    }
    let response = app.get("/v1/audit/permissions?as_of=now", &auditor).await;
    expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let reads = entries(&app, &auditor, "event_type=ReadRecorded").await;
    assert_eq!(reads.len(), 1, "only the valid read is recorded: {reads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_stream_the_filtered_range_as_ndjson_and_csv() {
    let app = TestApp::spawn().await;
    let auditor = app.key("acme", "auditor").await;
    // More events than one projection batch and one download chunk hold.
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tenant_id)
         select 'import', 'batch-' || n, 1, 'RowImported', '1.0.0',
                jsonb_build_object('RowImported', jsonb_build_object('row', n, 'text', repeat('x', 40))),
                '{\"tenant\":\"acme\",\"actor_name\":\"importer\"}', 'acme'
         from generate_series(1, 4500) n",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let page = entries(&app, &auditor, "actor=importer").await;
    assert_eq!(page.len(), 4500);

    let response = app.get("/v1/audit?format=ndjson&actor=importer", &auditor).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.starts_with("attachment; filename=\"audit-acme-") && disposition.ends_with(".ndjson\""),
        "{disposition}"
    );
    let body = response.text().await.unwrap();
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, page);
    assert!(body.len() > 256 * 1024, "spans several chunks");

    let csv = app
        .request(Method::GET, "/v1/audit?actor=importer&limit=10", &auditor)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(csv.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .ends_with(".csv\""));
    let text = csv.text().await.unwrap();
    let mut rows = text.lines();
    assert_eq!(
        rows.next().unwrap(),
        "\"tenant\",\"sequence\",\"cursor\",\"recorded_at\",\"actor_key_id\",\"actor_name\",\"request_id\",\
         \"client_addr\",\"user_agent\",\"reason\",\"aggregate_type\",\"aggregate_id\",\"aggregate_version\",\
         \"event_type\",\"event_version\",\"metadata\",\"payload\",\"changes\",\"prev_hash\",\"hash\""
    );
    let rows: Vec<&str> = rows.collect();
    assert_eq!(rows.len(), 10);
    let first_hash = page[0]["hash"].as_str().unwrap();
    assert!(rows[0].starts_with("\"acme\",\""), "{}", rows[0]);
    assert!(rows[0].ends_with(&format!(",\"{first_hash}\"")), "{}", rows[0]);
    assert!(
        rows[0].contains("\"{\"\"RowImported\"\":"),
        "JSON columns are quoted CSV: {}",
        rows[0]
    );

    let report = verify(&app, &auditor).await;
    assert_eq!(report["ok"], true, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_the_audit_log_and_of_key_listings_are_recorded() {
    let app = TestApp::spawn().await;
    let auditor = app.key("acme", "auditor").await;
    let response = app
        .request(
            Method::GET,
            "/v1/audit?event_type=PromptCreated&limit=5",
            &auditor,
        )
        .header("x-reason", "quarterly review")
        .send()
        .await
        .unwrap();
    expect_status(response, StatusCode::OK).await;
    expect_status(app.get("/v1/keys", &app.admin_key).await, StatusCode::OK).await;

    let reads = entries(&app, &auditor, "event_type=ReadRecorded").await;
    let audit_read = reads
        .iter()
        .find(|r| r["payload"]["ReadRecorded"]["resource"] == "audit_log")
        .expect("the audit read is recorded");
    assert_eq!(audit_read["actor_name"], "acme-auditor");
    assert_eq!(audit_read["reason"], "quarterly review");
    assert_eq!(
        audit_read["payload"]["ReadRecorded"]["filters"],
        json!({ "event_type": "PromptCreated", "limit": "5", "format": "json" })
    );
    let key_read = reads
        .iter()
        .find(|r| r["payload"]["ReadRecorded"]["resource"] == "api_keys")
        .expect("the key listing is recorded");
    assert_eq!(key_read["actor_name"], "test-admin");
    assert_eq!(key_read["aggregate_type"], "read_record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_history_tells_which_keys_held_which_role_at_an_instant() {
    let app = TestApp::spawn().await;
    let auditor = app.key("acme", "auditor").await;
    app.key("beta", "admin").await;
    let before_issue = Utc::now();
    let issued = expect_status(
        app.post(
            "/v1/keys",
            &app.admin_key,
            json!({ "name": "deployer", "role": "editor" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let key_id = issued["api_key"]["id"].as_str().unwrap().to_string();
    let while_active = Utc::now();
    expect_status(
        app.delete(&format!("/v1/keys/{key_id}"), &app.admin_key).await,
        StatusCode::NO_CONTENT,
    )
    .await;
    let after_revoke = Utc::now();

    let at = |instant: DateTime<Utc>| {
        let path = format!("/v1/audit/permissions?as_of={}", urlencode(&instant.to_rfc3339()));
        let app = &app;
        let auditor = &auditor;
        async move { expect_status(app.get(&path, auditor).await, StatusCode::OK).await }
    };
    let deployer = |report: &Value| {
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == json!(key_id))
            .cloned()
    };
    let before = at(before_issue).await;
    assert!(deployer(&before).is_none(), "{before}");
    assert!(before["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["name"] == "test-admin" && k["role"] == "admin" && k["active"] == true));
    let active = deployer(&at(while_active).await).expect("issued by then");
    assert_eq!(active["role"], "editor");
    assert_eq!(active["active"], true);
    assert_eq!(active["revoked_at"], Value::Null);
    let revoked = deployer(&at(after_revoke).await).expect("still listed");
    assert_eq!(revoked["active"], false);
    assert!(revoked["revoked_at"].is_string());
    let now = expect_status(app.get("/v1/audit/permissions", &auditor).await, StatusCode::OK).await;
    let names: Vec<&str> = now["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"beta-admin"),
        "another tenant's keys never appear: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_reproduces_every_entry_and_hash() {
    let app = TestApp::spawn().await;
    let auditor = app.key("acme", "auditor").await;
    let prompt = app.create_prompt("p").await;
    app.publish(&prompt, "Hello {{x}}").await;
    let before = entries(&app, &auditor, "").await;
    let audit = projections::audit::AuditProjection;
    projections::runner::catch_up(app.pool(), &audit).await.unwrap();
    let dump = |pool: PgPool| async move {
        let rows: Value = sqlx::query_scalar(
            "select jsonb_agg(to_jsonb(a) order by tenant_id, chain_seq) from audit_entry a",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        rows
    };
    let live = dump(app.pool().clone()).await;
    replay::rebuild(app.pool(), &audit, false).await.unwrap();
    assert_eq!(dump(app.pool().clone()).await, live);
    let after = entries(&app, &auditor, "").await;
    assert_eq!(after[..before.len()], before[..]);
    assert_eq!(verify(&app, &auditor).await["ok"], true);
}

// ---------------------------------------------------------------------------------------
// Tampering: each edit, deletion or reordering of rows, in either table, is reported by
// GET /v1/audit/verify and by `aipm audit verify` as the first entry that does not match.

/// A tenant history to tamper with: prompts and versions by the admin, plus a key.
struct Tampered {
    app: TestApp,
    auditor: String,
    /// The entries before tampering, in chain order.
    chain: Vec<Value>,
}

async fn history() -> Tampered {
    let app = TestApp::spawn().await;
    let auditor = app.key("acme", "auditor").await;
    let other = app.key("beta", "admin").await;
    let greeting = app.create_prompt("greeting").await;
    app.publish(&greeting, "Hello {{name}}").await;
    let farewell = app.create_prompt("farewell").await;
    app.publish(&greeting, "Hello again {{name}}").await;
    app.publish(&farewell, "Bye {{name}}").await;
    expect_status(
        app.post("/v1/prompts", &other, json!({ "name": "beta-prompt" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let chain = entries(&app, &auditor, "").await;
    assert_eq!(verify(&app, &auditor).await["ok"], true);
    Tampered { app, auditor, chain }
}

impl Tampered {
    /// The chain entry recording `event_type` number `nth` (0-based) of the prompts.
    fn entry(&self, event_type: &str, nth: usize) -> &Value {
        self.chain
            .iter()
            .filter(|e| e["event_type"] == event_type)
            .nth(nth)
            .expect("entry")
    }

    /// Asserts that both the HTTP endpoint and the CLI name entry `sequence` of acme with
    /// `kind`, and that beta's chain is still intact.
    async fn assert_caught(&self, sequence: i64, kind: &str, cli_kind: &str) -> Value {
        let report = verify(&self.app, &self.auditor).await;
        assert_eq!(report["ok"], false, "{report}");
        let mismatch = &report["first_mismatch"];
        assert_eq!(mismatch["kind"], kind, "{report}");
        assert_eq!(mismatch["sequence"], sequence, "{report}");
        assert!(mismatch["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("#{sequence}"))));

        let failure = api::cli::audit::verify(self.app.pool(), Some("acme"), None)
            .await
            .expect_err("the CLI fails");
        assert!(
            failure.contains(&format!("entry #{sequence} ({cli_kind})")),
            "{failure}"
        );
        let every_tenant = api::cli::audit::verify(self.app.pool(), None, None)
            .await
            .expect_err("the CLI fails for all tenants too");
        assert!(every_tenant.contains("tenant acme"), "{every_tenant}");
        let beta = api::cli::audit::verify(self.app.pool(), Some("beta"), None).await;
        assert!(beta.is_ok(), "{beta:?}");
        report
    }

    fn sql_for_event(&self, entry: &Value) -> String {
        format!(
            "aggregate_type = '{}' and aggregate_id = '{}' and sequence = {}",
            entry["aggregate_type"].as_str().expect("aggregate_type"),
            entry["aggregate_id"].as_str().expect("aggregate_id"),
            entry["aggregate_version"]
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_event_is_caught() {
    let t = history().await;
    let target = t.entry("PromptVersionPublished", 1).clone();
    tamper(
        t.app.pool(),
        &[format!(
            "update events set payload = jsonb_set(payload, '{{PromptVersionPublished,template}}', '\"Forged {{{{name}}}}\"')
             where {}",
            t.sql_for_event(&target)
        )],
    )
    .await;
    let report = t
        .assert_caught(
            target["sequence"].as_i64().unwrap(),
            "content_differs",
            "content differs",
        )
        .await;
    assert_eq!(report["first_mismatch"]["fields"], json!(["payload"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_event_time_or_actor_is_caught() {
    let t = history().await;
    let target = t.entry("PromptCreated", 1).clone();
    tamper(
        t.app.pool(),
        &[format!(
            "update events set recorded_at = recorded_at - interval '1 day',
                               metadata = jsonb_set(metadata, '{{actor_name}}', '\"someone-else\"')
             where {}",
            t.sql_for_event(&target)
        )],
    )
    .await;
    let report = t
        .assert_caught(
            target["sequence"].as_i64().unwrap(),
            "content_differs",
            "content differs",
        )
        .await;
    assert_eq!(
        report["first_mismatch"]["fields"],
        json!(["actor_name", "metadata", "recorded_at"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_event_is_caught() {
    let t = history().await;
    let target = t.entry("PromptVersionPublished", 0).clone();
    tamper(
        t.app.pool(),
        &[format!("delete from events where {}", t.sql_for_event(&target))],
    )
    .await;
    let report = t
        .assert_caught(target["sequence"].as_i64().unwrap(), "extra", "extra")
        .await;
    assert_eq!(
        report["first_mismatch"]["found"]["aggregate_id"],
        target["aggregate_id"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_events_are_caught() {
    let t = history().await;
    let first = t.entry("PromptCreated", 1).clone();
    let second = t.entry("PromptVersionPublished", 2).clone();
    let cursor = |e: &Value| {
        e["cursor"]
            .as_str()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_string()
    };
    // Swapping the transactions swaps the two events' places in the global order.
    tamper(
        t.app.pool(),
        &[format!(
            "update events set transaction_id = (case when {} then '{}' else '{}' end)::xid8
             where ({}) or ({})",
            t.sql_for_event(&first),
            cursor(&second),
            cursor(&first),
            t.sql_for_event(&first),
            t.sql_for_event(&second)
        )],
    )
    .await;
    t.assert_caught(
        first["sequence"].as_i64().unwrap(),
        "out_of_order",
        "out of order",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_audit_entry_is_caught() {
    let t = history().await;
    let target = t.entry("PromptCreated", 0).clone();
    let sequence = target["sequence"].as_i64().unwrap();
    tamper(
        t.app.pool(),
        &[format!(
            "update audit_entry set reason = 'approved by the board' where tenant_id = 'acme' and chain_seq = {sequence}"
        )],
    )
    .await;
    let report = t
        .assert_caught(sequence, "content_differs", "content differs")
        .await;
    assert_eq!(report["first_mismatch"]["fields"], json!(["reason"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehashed_audit_entry_is_caught() {
    let t = history().await;
    let sequence = t.entry("PromptVersionPublished", 0)["sequence"].as_i64().unwrap();
    tamper(
        t.app.pool(),
        &[format!(
            "update audit_entry set hash = repeat('a', 64) where tenant_id = 'acme' and chain_seq = {sequence}"
        )],
    )
    .await;
    t.assert_caught(sequence, "hash_differs", "hash differs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_audit_entry_is_caught() {
    let t = history().await;
    let sequence = t.entry("PromptCreated", 1)["sequence"].as_i64().unwrap();
    tamper(
        t.app.pool(),
        &[format!(
            "delete from audit_entry where tenant_id = 'acme' and chain_seq = {sequence}"
        )],
    )
    .await;
    t.assert_caught(sequence, "missing", "missing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_audit_entries_are_caught() {
    let t = history().await;
    let sequence = t.entry("PromptVersionPublished", 0)["sequence"].as_i64().unwrap();
    let next = sequence + 1;
    tamper(
        t.app.pool(),
        &[
            format!("update audit_entry set chain_seq = 1000000 where tenant_id = 'acme' and chain_seq = {sequence}"),
            format!("update audit_entry set chain_seq = {sequence} where tenant_id = 'acme' and chain_seq = {next}"),
            format!("update audit_entry set chain_seq = {next} where tenant_id = 'acme' and chain_seq = 1000000"),
        ],
    )
    .await;
    t.assert_caught(sequence, "out_of_order", "out of order").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_table_refuses_edits_and_deletions() {
    let app = TestApp::spawn().await;
    let auditor = app.key("acme", "auditor").await;
    entries(&app, &auditor, "").await;
    for sql in ["update audit_entry set reason = 'x'", "delete from audit_entry"] {
        let error = sqlx::query(sql).execute(app.pool()).await.expect_err(sql);
        assert!(error.to_string().contains("append-only"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_rewritten_and_audited_anew_matches_its_log_but_not_its_anchors() {
    let anchors = integration_tests::nats::unique_anchor_settings(&integration_tests::nats::nats_url());
    let app = TestApp::spawn_with(api::Settings::default().with_anchors(Some(anchors.clone()))).await;
    let auditor = app.key("acme", "auditor").await;
    let prompt = app.create_prompt("anchored").await;
    app.publish(&prompt, "Hello {{name}}").await;
    // The audit log has caught up with everything once a read of it answers.
    let before = verify(&app, &auditor).await;
    assert_eq!(before["ok"], true, "{before}");

    // Anchor the chain now, as `aipm audit anchor` does.
    let anchored = api::cli::audit::anchor(app.pool(), &anchors, Some("acme"))
        .await
        .expect("anchor");
    assert!(anchored.contains("acme: anchored entry #"), "{anchored}");
    let report = verify(&app, &auditor).await;
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["anchors"]["checked"].as_u64() >= Some(1), "{report}");
    let pinned = report["anchors"]["last"]["entries"]
        .as_i64()
        .expect("anchored entries");

    // Rewrite the prompt's creation with the triggers off, and audit the rewritten log anew:
    // the audit table and the log agree again.
    tamper(
        app.pool(),
        &[format!(
            "update events set payload = jsonb_set(payload, '{{PromptCreated,name}}', '\"forged\"')
             where aggregate_id = '{prompt}' and sequence = 1"
        )],
    )
    .await;
    replay::rebuild(app.pool(), &projections::audit::AuditProjection, false)
        .await
        .expect("rebuild the audit log");
    let report = verify(&app, &auditor).await;
    assert_eq!(
        report["first_mismatch"],
        Value::Null,
        "the table matches the rewritten log: {report}"
    );
    // The anchors do not.
    assert_eq!(report["ok"], false, "{report}");
    let mismatch = &report["anchors"]["first_mismatch"];
    assert_eq!(mismatch["anchor"]["entries"], pinned, "{report}");
    assert_ne!(
        mismatch["recomputed_hash"], mismatch["anchor"]["head_hash"],
        "{report}"
    );
    assert!(
        mismatch["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("rewritten"),
        "{report}"
    );
    let failure = api::cli::audit::verify(app.pool(), Some("acme"), Some(&anchors))
        .await
        .expect_err("the CLI fails too");
    assert!(failure.contains("anchors"), "{failure}");

    // The anchors themselves cannot be deleted or purged.
    let client = async_nats::connect(&anchors.nats_url).await.expect("NATS");
    let stream = async_nats::jetstream::new(client)
        .get_stream(&anchors.stream)
        .await
        .expect("the anchors' stream");
    assert!(
        stream.delete_message(1).await.is_err(),
        "deleting an anchor is refused"
    );
    assert!(stream.purge().await.is_err(), "purging the anchors is refused");
}
