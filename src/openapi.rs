//! `GET /openapi.json`: an OpenAPI 3.1 description of every route the application serves,
//! built from the route table [`ROUTES`] and the body schemas in [`schemas`].
//!
//! The table is kept by hand, beside the routers it describes; `tests/operations.rs` lists the
//! routes the application really has (from its router) and fails when one of them is missing
//! here, or when a documented route is not served. Request examples are sent to the real
//! application by that test, so the request schemas cannot drift from the types either.

use std::sync::LazyLock;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

/// One documented route.
pub struct Route {
    pub method: &'static str,
    /// With `{name}` placeholders, as axum writes them.
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    /// Query parameters: name, JSON type, description.
    pub query: &'static [(&'static str, &'static str, &'static str)],
    /// The JSON request body's schema (a name in `components/schemas`), and whether it is
    /// required.
    pub body: Option<(&'static str, bool)>,
    /// Status, description, response schema name (`None`: no JSON schema).
    pub responses: &'static [(u16, &'static str, Option<&'static str>)],
}

/// The answers of every command route: `$ok` is the 202 body's schema.
macro_rules! command_responses {
    ($ok:expr) => {
        &[
            (202, "accepted", Some($ok)),
            (
                400,
                "malformed JSON, invalid path parameter or header",
                Some("Error"),
            ),
            (
                404,
                "the aggregate does not exist (for commands that need one)",
                Some("Error"),
            ),
            (409, "concurrency conflict after every retry", Some("Error")),
            (413, "body larger than 1 MiB", Some("Error")),
            (415, "Content-Type is not JSON", Some("Error")),
            (
                422,
                "invalid body, or the domain rejected the command",
                Some("Error"),
            ),
            (
                503,
                "overloaded or timed out; see Retry-After",
                Some("Error"),
            ),
        ]
    };
}

/// `$answers` and the refusals of every admin route.
macro_rules! admin_responses {
    ($(($status:expr, $what:expr, $schema:expr)),* $(,)?) => {
        &[
            $(($status, $what, $schema),)*
            (401, "missing or wrong bearer token", Some("Error")),
            (403, "no SAGAFLOW_ADMIN_TOKEN is configured", Some("Error")),
        ]
    };
}

/// Every route of the application.
pub const ROUTES: &[Route] = &[
    // Commands (DESIGN §5).
    Route {
        method: "post",
        path: "/commands/{aggregate_type}/{aggregate_id}",
        tag: "commands",
        summary: "Run a command on any registered aggregate",
        query: &[],
        body: Some(("GenericCommand", true)),
        responses: command_responses!("AcceptedCommand"),
    },
    Route {
        method: "post",
        path: "/inventory/{sku}/restock",
        tag: "commands",
        summary: "Add stock to a SKU",
        query: &[],
        body: Some(("RestockBody", true)),
        responses: command_responses!("AcceptedCommand"),
    },
    Route {
        method: "post",
        path: "/accounts/{customer_id}/deposits",
        tag: "commands",
        summary: "Deposit money on a customer's account",
        query: &[],
        body: Some(("DepositBody", true)),
        responses: command_responses!("AcceptedCommand"),
    },
    Route {
        method: "post",
        path: "/orders",
        tag: "commands",
        summary: "Place an order; starts the order fulfillment saga",
        query: &[],
        body: Some(("PlaceOrderBody", true)),
        responses: command_responses!("OrderAccepted"),
    },
    Route {
        method: "post",
        path: "/orders/{order_id}/cancel",
        tag: "commands",
        summary: "Cancel an order",
        query: &[],
        body: Some(("CancelBody", false)),
        responses: command_responses!("AcceptedCommand"),
    },
    // Queries.
    Route {
        method: "get",
        path: "/orders/{order_id}",
        tag: "queries",
        summary: "An order from the orders read model",
        query: &[],
        body: None,
        responses: &[
            (200, "the order", Some("OrderView")),
            (404, "no such order", Some("Error")),
        ],
    },
    Route {
        method: "get",
        path: "/orders/{order_id}/saga",
        tag: "sagas",
        summary: "The order's fulfillment saga: its id, state and links",
        query: &[],
        body: None,
        responses: &[
            (200, "the saga of the order", Some("OrderSaga")),
            (404, "no such order", Some("Error")),
        ],
    },
    Route {
        method: "get",
        path: "/orders",
        tag: "queries",
        summary: "Orders by status and customer, paged",
        query: &[
            (
                "status",
                "string",
                "pending, confirmed, rejected or cancelled",
            ),
            ("customer_id", "string", "a customer id (UUID)"),
            ("limit", "integer", "orders per page, 1 to 500 (50)"),
            ("after", "string", "the next_after of the previous page"),
        ],
        body: None,
        responses: &[
            (200, "a page of orders", Some("OrderPage")),
            (400, "invalid query", Some("Error")),
        ],
    },
    Route {
        method: "get",
        path: "/inventory/{sku}",
        tag: "queries",
        summary: "Stock of a SKU",
        query: &[],
        body: None,
        responses: &[
            (200, "the stock", Some("StockView")),
            (404, "no such SKU", Some("Error")),
        ],
    },
    Route {
        method: "get",
        path: "/accounts/{customer_id}",
        tag: "queries",
        summary: "A customer's account",
        query: &[],
        body: None,
        responses: &[
            (200, "the account", Some("AccountView")),
            (404, "no such account", Some("Error")),
        ],
    },
    Route {
        method: "get",
        path: "/sagas/{saga_id}",
        tag: "sagas",
        summary: "A saga: state, steps, attempts, times",
        query: &[],
        body: None,
        responses: &[
            (200, "the saga", Some("SagaView")),
            (404, "no such saga", Some("Error")),
        ],
    },
    Route {
        method: "get",
        path: "/sagas",
        tag: "sagas",
        summary: "Sagas by state and age, least recently updated first",
        query: &[
            ("state", "string", "one state or several, comma-separated"),
            (
                "older_than",
                "string",
                "seconds without progress, or an RFC 3339 time",
            ),
            ("saga_type", "string", "only sagas of this type"),
            ("limit", "integer", "sagas per page, 1 to 500 (50)"),
            ("after", "string", "the next_after of the previous page"),
        ],
        body: None,
        responses: &[
            (200, "a page of sagas", Some("SagaPage")),
            (400, "invalid query", Some("Error")),
        ],
    },
    Route {
        method: "get",
        path: "/sagas/{saga_id}/timeline",
        tag: "sagas",
        summary: "A saga's events and its participants' events, in order",
        query: &[("limit", "integer", "entries at most")],
        body: None,
        responses: &[
            (200, "the timeline", Some("Object")),
            (404, "no such saga", Some("Error")),
        ],
    },
    // Debugging.
    Route {
        method: "get",
        path: "/streams/{stream_id}/events",
        tag: "streams",
        summary: "A stream's events, paged by version",
        query: &[
            ("from_version", "integer", "first version (1)"),
            ("limit", "integer", "events per page, 1 to 1000 (100)"),
        ],
        body: None,
        responses: &[
            (200, "a page of events", Some("StreamPage")),
            (400, "invalid query", Some("Error")),
            (404, "the stream has no events", Some("Error")),
        ],
    },
    Route {
        method: "get",
        path: "/streams/{stream_id}/state",
        tag: "streams",
        summary: "An aggregate's state as of a version",
        query: &[(
            "at_version",
            "integer",
            "the version (the head when absent)",
        )],
        body: None,
        responses: &[
            (200, "the state", Some("Object")),
            (400, "invalid query", Some("Error")),
            (
                404,
                "unknown aggregate type, stream or version",
                Some("Error"),
            ),
        ],
    },
    // Administration.
    Route {
        method: "get",
        path: "/admin/projections",
        tag: "admin",
        summary: "Projections with their lag, position and rebuild status",
        query: &[],
        body: None,
        responses: admin_responses!((200, "the projections", Some("Object"))),
    },
    Route {
        method: "post",
        path: "/admin/projections/{name}/rebuild",
        tag: "admin",
        summary: "Rebuild a read model from the event store",
        query: &[],
        body: None,
        responses: admin_responses!(
            (202, "the rebuild started", Some("Object")),
            (404, "no such projection", Some("Error")),
            (409, "a rebuild is running", Some("Error")),
        ),
    },
    Route {
        method: "get",
        path: "/admin/dead-letters",
        tag: "admin",
        summary: "Parked messages, in the order they were parked",
        query: &[
            ("status", "string", "parked, retried or discarded"),
            ("consumer", "string", "the consumer group"),
            ("limit", "integer", "rows per page"),
            ("after", "integer", "the next_after of the previous page"),
        ],
        body: None,
        responses: admin_responses!(
            (200, "a page of dead letters", Some("DeadLetterPage")),
            (400, "invalid query", Some("Error")),
        ),
    },
    Route {
        method: "get",
        path: "/admin/dead-letters/{id}",
        tag: "admin",
        summary: "One parked message",
        query: &[],
        body: None,
        responses: admin_responses!(
            (200, "the dead letter", Some("DeadLetter")),
            (404, "no such dead letter", Some("Error")),
        ),
    },
    Route {
        method: "post",
        path: "/admin/dead-letters/{id}/retry",
        tag: "admin",
        summary: "Deliver a parked message again",
        query: &[],
        body: None,
        responses: admin_responses!(
            (200, "the dead letter, retried", Some("DeadLetter")),
            (404, "no such dead letter", Some("Error")),
            (409, "not parked", Some("Error")),
        ),
    },
    Route {
        method: "post",
        path: "/admin/dead-letters/{id}/discard",
        tag: "admin",
        summary: "Give up on a parked message",
        query: &[],
        body: None,
        responses: admin_responses!(
            (200, "the dead letter, discarded", Some("DeadLetter")),
            (404, "no such dead letter", Some("Error")),
            (409, "not parked", Some("Error")),
        ),
    },
    Route {
        method: "post",
        path: "/admin/sagas/{saga_id}/retry-step",
        tag: "admin",
        summary: "Re-drive a failed saga or a timed-out step",
        query: &[],
        body: None,
        responses: admin_responses!(
            (
                202,
                "the events decided and the saga's state",
                Some("Object")
            ),
            (404, "no such saga", Some("Error")),
            (409, "nothing to retry", Some("Error")),
        ),
    },
    Route {
        method: "post",
        path: "/admin/sagas/{saga_id}/abort",
        tag: "admin",
        summary: "Compensate and end a running saga",
        query: &[],
        body: Some(("AbortBody", false)),
        responses: admin_responses!(
            (
                202,
                "the events decided and the saga's state",
                Some("Object")
            ),
            (404, "no such saga", Some("Error")),
            (409, "the saga has ended", Some("Error")),
        ),
    },
    // Operations.
    Route {
        method: "get",
        path: "/healthz",
        tag: "operations",
        summary: "The process is alive",
        query: &[],
        body: None,
        responses: &[(200, "alive", Some("Health"))],
    },
    Route {
        method: "get",
        path: "/readyz",
        tag: "operations",
        summary: "The database and the transport answer, and the process is not draining",
        query: &[],
        body: None,
        responses: &[
            (200, "ready", Some("Readiness")),
            (503, "not ready, or draining", Some("Readiness")),
        ],
    },
    Route {
        method: "get",
        path: "/metrics",
        tag: "operations",
        summary: "Metrics in Prometheus' text format",
        query: &[],
        body: None,
        responses: &[(200, "text/plain; version=0.0.4", None)],
    },
    Route {
        method: "get",
        path: "/openapi.json",
        tag: "operations",
        summary: "This document",
        query: &[],
        body: None,
        responses: &[(200, "OpenAPI 3.1", Some("Object"))],
    },
];

/// Path parameters whose values are UUIDs.
const UUID_PARAMS: &[&str] = &["order_id", "customer_id", "saga_id"];

/// The schemas of request and response bodies.
pub fn schemas() -> Value {
    let uuid = json!({"type": "string", "format": "uuid"});
    let time = json!({"type": "string", "format": "date-time"});
    let int = json!({"type": "integer", "format": "int64"});
    let order_line = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["sku", "quantity", "unit_price_cents"],
        "properties": {
            "sku": {"type": "string", "example": "SKU-1"},
            "quantity": {"type": "integer", "minimum": 1, "example": 2},
            "unit_price_cents": {"type": "integer", "minimum": 0, "example": 1250}
        }
    });
    let mut schemas = Map::new();
    schemas.insert("Object".into(), json!({"type": "object"}));
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "stable, snake_case"},
                    "message": {"type": "string"}
                }
            }}
        }),
    );
    schemas.insert("GenericCommand".into(), json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["command"],
            "properties": {
                "command": {"type": "string", "description": "the command's snake_case name", "example": "restock"},
                "payload": {"type": "object", "description": "its fields; omitted for unit commands", "example": {"quantity": 5}}
            }
        }));
    schemas.insert(
        "AcceptedCommand".into(),
        json!({
            "type": "object",
            "required": ["stream_id", "version", "events"],
            "properties": {
                "stream_id": {"type": "string"},
                "version": int,
                "events": {"type": "array", "items": {
                    "type": "object",
                    "required": ["message_id", "stream_version", "event_type"],
                    "properties": {
                        "message_id": uuid,
                        "stream_version": int,
                        "event_type": {"type": "string"}
                    }
                }}
            }
        }),
    );
    schemas.insert(
        "RestockBody".into(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["quantity"],
            "properties": {"quantity": {"type": "integer", "minimum": 1, "example": 10}}
        }),
    );
    schemas.insert(
        "DepositBody".into(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["amount_cents"],
            "properties": {"amount_cents": {"type": "integer", "minimum": 1, "example": 100000}}
        }),
    );
    schemas.insert("OrderLine".into(), json!(order_line));
    schemas.insert("PlaceOrderBody".into(), json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["customer_id", "lines"],
            "properties": {
                "customer_id": {"type": "string", "format": "uuid", "example": "0190f1a2-7c4e-7a61-9b1e-3f2a1c0d4e5f"},
                "lines": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/OrderLine"}}
            }
        }));
    schemas.insert(
        "OrderAccepted".into(),
        json!({
            "type": "object",
            "required": ["order_id", "saga_id", "stream_id", "version"],
            "properties": {
                "order_id": uuid,
                "saga_id": uuid,
                "stream_id": {"type": "string"},
                "version": int
            }
        }),
    );
    schemas.insert(
        "CancelBody".into(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {"reason": {"type": "string", "example": "changed my mind"}}
        }),
    );
    schemas.insert("OrderView".into(), json!({
            "type": "object",
            "required": ["order_id", "customer_id", "status", "lines", "total_cents", "placed_at", "updated_at", "version"],
            "properties": {
                "order_id": uuid,
                "customer_id": uuid,
                "status": {"type": "string", "enum": ["pending", "confirmed", "rejected", "cancelled"]},
                "reason": {"type": ["string", "null"]},
                "lines": {"type": "array", "items": {"$ref": "#/components/schemas/OrderLine"}},
                "total_cents": int,
                "placed_at": time,
                "updated_at": time,
                "version": int
            }
        }));
    schemas.insert(
        "OrderPage".into(),
        json!({
            "type": "object",
            "required": ["orders"],
            "properties": {
                "orders": {"type": "array", "items": {"$ref": "#/components/schemas/OrderView"}},
                "next_after": {"type": ["string", "null"], "format": "uuid"}
            }
        }),
    );
    schemas.insert(
        "OrderSaga".into(),
        json!({
            "type": "object",
            "required": ["order_id", "saga_id", "state", "links"],
            "properties": {
                "order_id": uuid,
                "saga_id": uuid,
                "state": {"type": ["string", "null"], "description": "null until the saga started"},
                "links": {"type": "object", "properties": {
                    "saga": {"type": "string"},
                    "timeline": {"type": "string"},
                    "order_state": {"type": "string"}
                }}
            }
        }),
    );
    schemas.insert(
        "StockView".into(),
        json!({
            "type": "object",
            "required": ["sku", "on_hand", "reserved", "available", "updated_at", "version"],
            "properties": {
                "sku": {"type": "string"},
                "on_hand": int,
                "reserved": int,
                "available": int,
                "updated_at": time,
                "version": int
            }
        }),
    );
    schemas.insert("AccountView".into(), json!({
            "type": "object",
            "required": ["customer_id", "balance_cents", "held_cents", "available_cents", "updated_at", "version"],
            "properties": {
                "customer_id": uuid,
                "balance_cents": int,
                "held_cents": int,
                "available_cents": int,
                "updated_at": time,
                "version": int
            }
        }));
    schemas.insert("SagaView".into(), json!({
            "type": "object",
            "required": ["saga_id", "saga_type", "state", "data", "steps", "correlation_id", "started_at", "updated_at", "version"],
            "properties": {
                "saga_id": uuid,
                "saga_type": {"type": "string"},
                "state": {"type": "string", "enum": ["running", "compensating", "completed", "compensated", "failed"]},
                "current_step": {"type": ["string", "null"]},
                "data": {"type": "object"},
                "failure": {"type": ["object", "null"]},
                "steps": {"type": "array", "items": {"type": "object"}},
                "correlation_id": uuid,
                "started_at": time,
                "updated_at": time,
                "version": int
            }
        }));
    schemas.insert(
        "SagaPage".into(),
        json!({
            "type": "object",
            "required": ["sagas"],
            "properties": {
                "sagas": {"type": "array", "items": {"type": "object"}},
                "next_after": {"type": ["string", "null"]}
            }
        }),
    );
    schemas.insert(
        "AbortBody".into(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {"reason": {"type": "string"}}
        }),
    );
    schemas.insert("StreamPage".into(), json!({
            "type": "object",
            "required": ["stream_id", "events"],
            "properties": {
                "stream_id": {"type": "string"},
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/RecordedEvent"}},
                "next_from_version": {"type": ["integer", "null"]}
            }
        }));
    schemas.insert("RecordedEvent".into(), json!({
            "type": "object",
            "required": ["global_position", "message_id", "stream_id", "stream_version", "event_type", "schema_version", "payload", "metadata", "recorded_at"],
            "properties": {
                "global_position": int,
                "message_id": uuid,
                "stream_id": {"type": "string"},
                "stream_version": int,
                "event_type": {"type": "string"},
                "schema_version": {"type": "integer"},
                "payload": {"type": "object"},
                "metadata": {"$ref": "#/components/schemas/Metadata"},
                "recorded_at": time
            }
        }));
    schemas.insert(
        "Metadata".into(),
        json!({
            "type": "object",
            "required": ["correlation_id"],
            "properties": {
                "correlation_id": uuid,
                "causation_id": uuid,
                "traceparent": {"type": "string", "description": "W3C trace context"},
                "saga_id": {"type": "string"},
                "saga_step": {"type": "string"},
                "attempt": {"type": "integer"}
            }
        }),
    );
    schemas.insert("DeadLetter".into(), json!({
            "type": "object",
            "required": ["id", "consumer", "topic", "partition", "offset", "message_id", "error", "attempts", "status", "envelope"],
            "properties": {
                "id": int,
                "consumer": {"type": "string"},
                "topic": {"type": "string"},
                "partition": {"type": "integer"},
                "offset": int,
                "message_id": uuid,
                "partition_key": {"type": "string"},
                "stream_id": {"type": ["string", "null"]},
                "event_type": {"type": ["string", "null"]},
                "error": {"type": "string"},
                "attempts": {"type": "integer"},
                "first_failed_at": time,
                "last_failed_at": time,
                "status": {"type": "string", "enum": ["parked", "retried", "discarded"]},
                "resolved_at": {"type": ["string", "null"], "format": "date-time"},
                "envelope": {"type": "object"}
            }
        }));
    schemas.insert("DeadLetterPage".into(), json!({
            "type": "object",
            "required": ["dead_letters"],
            "properties": {
                "dead_letters": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}},
                "next_after": {"type": ["integer", "null"]}
            }
        }));
    schemas.insert(
        "Health".into(),
        json!({
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok"]}}
        }),
    );
    schemas.insert(
        "Readiness".into(),
        json!({
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready", "draining"]},
                "checks": {
                    "type": "object",
                    "properties": {
                        "database": {"type": "string", "description": "ok, or the error"},
                        "transport": {"type": "string", "description": "ok, or the error"},
                        "transport_kind": {"type": "string", "enum": ["postgres", "kafka"]}
                    }
                }
            }
        }),
    );
    Value::Object(schemas)
}

fn operation(route: &Route) -> Value {
    let mut parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let schema = if UUID_PARAMS.contains(&name) {
                json!({"type": "string", "format": "uuid"})
            } else if name == "id" {
                json!({"type": "integer", "format": "int64"})
            } else {
                json!({"type": "string"})
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect();
    parameters.extend(route.query.iter().map(|(name, ty, description)| {
        json!({"name": name, "in": "query", "required": false,
               "description": description, "schema": {"type": ty}})
    }));
    if route.method == "post" && !route.path.starts_with("/admin/") {
        parameters.push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "a repeat with the same key answers the first response and writes nothing",
            "schema": {"type": "string", "maxLength": 255}
        }));
    }
    if route.method == "post" {
        parameters.push(json!({
            "name": "traceparent", "in": "header", "required": false,
            "description": "W3C trace context; the command joins this trace (a new one is started without it), reported back in `traceresponse`",
            "schema": {"type": "string"}
        }));
    }
    if route.path.starts_with("/admin/") {
        parameters.push(json!({
            "name": "Authorization", "in": "header", "required": true,
            "description": "Bearer <SAGAFLOW_ADMIN_TOKEN>", "schema": {"type": "string"}
        }));
    }
    let mut responses = Map::new();
    for (status, description, schema) in route.responses {
        let mut response = json!({"description": description});
        if let Some(schema) = schema {
            response["content"] = json!({"application/json": {
                "schema": {"$ref": format!("#/components/schemas/{schema}")}
            }});
        }
        responses.insert(status.to_string(), response);
    }
    let mut op = json!({
        "operationId": operation_id(route),
        "tags": [route.tag],
        "summary": route.summary,
        "parameters": parameters,
        "responses": responses,
    });
    if let Some((schema, required)) = route.body {
        op["requestBody"] = json!({
            "required": required,
            "content": {"application/json": {
                "schema": {"$ref": format!("#/components/schemas/{schema}")}
            }}
        });
    }
    op
}

/// `post_orders_order_id_cancel` for `POST /orders/{order_id}/cancel`.
fn operation_id(route: &Route) -> String {
    let mut id = route.method.to_owned();
    for part in route.path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(part.chars().filter(|c| !matches!(c, '{' | '}')).map(|c| {
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        }));
    }
    id
}

/// The whole OpenAPI document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths
            .entry(route.path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[route.method] = operation(route);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sagaflow",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Event-sourced CQRS and saga orchestration engine. Errors are `{\"error\": {\"code\", \"message\"}}`; money is in integer cents."
        },
        "tags": [
            {"name": "commands"}, {"name": "queries"}, {"name": "sagas"},
            {"name": "streams"}, {"name": "admin"}, {"name": "operations"}
        ],
        "paths": paths,
        "components": {"schemas": schemas()},
    })
}

/// `GET /openapi.json`.
pub fn router() -> Router {
    static DOCUMENT: LazyLock<Value> = LazyLock::new(document);
    Router::new().route("/openapi.json", get(|| async { Json(DOCUMENT.clone()) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_once_and_every_reference_resolves() {
        let doc = document();
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let text = doc.to_string();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "no schema {name}");
        }
        assert_eq!(
            doc["paths"]["/orders/{order_id}/cancel"]["post"]["operationId"],
            "post_orders_order_id_cancel"
        );
    }
}
