//! `GET /openapi.json` is generated from the handlers and types, and agrees with the server:
//! every documented operation is served, lists every error status the shared extractors and
//! middleware can answer on it, and a request built from its schemas is accepted (or refused
//! only for a documented business reason, never as malformed input).

mod common;

use std::time::Duration;

use common::engine::{everything, start_engine_with};
use common::schema::{concrete_path, example, operations, resolve, Operation};
use common::transport::postgres;
use reqwest::StatusCode;
use sagaflow::app::Options;
use sagaflow_engine::http::admin::AdminToken;
use serde_json::Value;
use sqlx::PgPool;

const TOKEN: &str = "openapi-token";

/// Error codes that mean "the input is not what the route takes": a request built from the
/// document's schemas must never get one.
const INPUT_ERRORS: [&str; 9] = [
    "malformed_json",
    "missing_body",
    "invalid_body",
    "invalid_path",
    "invalid_query",
    "invalid_id",
    "unknown_command",
    "unsupported_media_type",
    "payload_too_large",
];

async fn document(base: &str) -> Value {
    let r = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    r.json().await.unwrap()
}

async fn send(
    client: &reqwest::Client,
    base: &str,
    operation: &Operation,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let method: reqwest::Method = operation.method.to_uppercase().parse().unwrap();
    let mut request = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(20));
    if let Some(body) = body {
        request = request.json(body);
    }
    let r = request.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every operation lists the statuses the engine's shared parts can answer on it, and every
/// schema it names resolves.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn every_operation_lists_the_errors_it_can_answer(pool: PgPool) {
    let transport = postgres(&pool);
    let engine = start_engine_with(&pool, &transport, &[], Options::default()).await;
    let doc = document(&engine.base).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "sagaflow");
    let ops = operations(&doc);
    assert!(ops.len() >= 29, "{} operations", ops.len());
    for op in &ops {
        let statuses = op.statuses();
        let what = format!("{} {}", op.method, op.path);
        if op.body_schema().is_some() {
            for s in [400, 413, 415, 422] {
                assert!(statuses.contains(&s), "{what} does not list {s}");
            }
        }
        if !op.parameters("path").is_empty() || !op.parameters("query").is_empty() {
            assert!(statuses.contains(&400), "{what} does not list 400");
        }
        if !sagaflow_engine::http::openapi::reads_no_database(&op.path) {
            assert!(statuses.contains(&503), "{what} does not list 503");
        }
        if op.path.starts_with("/admin/") {
            assert!(statuses.contains(&401) && statuses.contains(&403), "{what}");
            assert_eq!(
                op.operation["security"][0]["admin_token"],
                serde_json::json!([])
            );
        }
        // Every schema named anywhere resolves.
        let text = op.operation.to_string();
        for r in text.split("\"$ref\":\"").skip(1) {
            let name = r.split('"').next().unwrap();
            let reference = serde_json::json!({"$ref": name});
            assert!(
                !resolve(&reference, &doc).is_null(),
                "{what}: {name} does not resolve"
            );
        }
    }
    // The generic command route of each registered aggregate, with its command's schema.
    for (aggregate, command) in [
        ("order", "OrderCommand"),
        ("inventory", "InventoryCommand"),
        ("account", "AccountCommand"),
    ] {
        let path = format!("/commands/{aggregate}/{{aggregate_id}}");
        let body =
            &doc["paths"][&path]["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(
            body["$ref"],
            format!("#/components/schemas/{command}"),
            "{path}"
        );
    }
    // The projections' admin route takes exactly the registered names.
    let name = &doc["paths"]["/admin/projections/{name}/rebuild"]["post"]["parameters"][0];
    assert_eq!(
        name["schema"]["enum"],
        serde_json::json!(["orders", "inventory", "accounts"])
    );
    engine.stop().await;
}

/// For every operation, a request built from the document's schemas (its examples where it
/// has them) reaches the route and is not refused as bad input: the answer is a status the
/// document lists, never a 5xx, and never an input error. The routes are served: none answers
/// `route_not_found` or 405, and a path the document does not list is 404 `route_not_found`.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn requests_built_from_the_schemas_are_accepted(pool: PgPool) {
    let transport = postgres(&pool);
    let engine = start_engine_with(
        &pool,
        &transport,
        &everything(),
        Options {
            admin_token: AdminToken::new(Some(TOKEN)),
            ..Default::default()
        },
    )
    .await;
    let doc = document(&engine.base).await;
    let client = reqwest::Client::new();
    let mut ops = operations(&doc);
    // Commands before queries, so that the queries find something.
    ops.sort_by_key(|op| (op.method != "post", op.path.clone()));
    for op in &ops {
        let variants = op
            .body_schema()
            .map(|s| resolve(s, &doc)["oneOf"].as_array().map_or(1, Vec::len))
            .unwrap_or(1);
        for variant in 0..variants {
            let path = concrete_path(op, &doc);
            let body = op.body_schema().map(|s| example(s, &doc, variant));
            let (status, answer) = send(&client, &engine.base, op, &path, body.as_ref()).await;
            let what = format!("{} {path} {}", op.method, body.clone().unwrap_or_default());
            assert!(
                status.as_u16() < 500
                    || (status == StatusCode::SERVICE_UNAVAILABLE && op.path == "/readyz"),
                "{what}: {status} {answer}"
            );
            assert!(
                op.statuses().contains(&status.as_u16()),
                "{what}: {status} is not in the document ({:?}): {answer}",
                op.statuses()
            );
            let code = answer["error"]["code"].as_str().unwrap_or_default();
            assert!(
                !INPUT_ERRORS.contains(&code)
                    && code != "route_not_found"
                    && code != "method_not_allowed",
                "{what}: refused as {code}: {answer}"
            );
        }
    }
    let (status, answer) = send(&client, &engine.base, &ops[0], "/no/such/route", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(answer["error"]["code"], "route_not_found");
    engine.stop().await;
}
