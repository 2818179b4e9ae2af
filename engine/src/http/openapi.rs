//! The OpenAPI document of an application, generated from its handlers and types: each module
//! contributes its routes with their schemas (`#[utoipa::path]` on the handler, `ToSchema` on
//! the bodies), the engine adds the generic command route of each registered aggregate type
//! from its command enum, and [`finish`] adds what the shared extractors and middleware answer
//! on every route of a kind, so that no route can forget one:
//!
//! | routes | statuses added | why |
//! |---|---|---|
//! | with a JSON body | 400, 413, 415, 422 | [`super::CommandRequest`]: malformed JSON or header, too large, not JSON, wrong shape |
//! | with path parameters | 400 | [`super::PathParams`]: a parameter of the wrong form |
//! | with query parameters | 400 | [`super::QueryParams`]: a parameter of the wrong form |
//! | every route | 400 | [`super::hygiene`]: a NUL in the path, query or body |
//! | `POST` outside `/admin/` | 503 | [`super::limit_commands`]: overloaded or timed out |
//! | reading the database (all but `/healthz`, `/metrics`, `/openapi.json` and the console's pages and assets) | 503 | the database is unavailable |
//! | under `/admin/` | 401, 403 | [`super::admin::protect`]: no or a wrong token, or none configured |

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, RefOr, Required, ResponseBuilder, Schema,
};
use utoipa::ToSchema;

use super::commands::AcceptedCommand;
use super::ErrorBody;
use crate::aggregate::Aggregate;

/// The name of the admin token's security scheme.
pub const ADMIN_SCHEME: &str = "admin_token";

/// An empty document titled after the application.
pub fn document(title: &str, version: &str) -> OpenApi {
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title(title)
                .version(version)
                .description(Some(format!(
                    "{title}: a service built on sagaflow. Every error is `{{\"error\": {{\"code\", \"message\"}}}}`; \
                     commands answer 202; admin routes need `Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`."
                ))),
        )
        .build()
}

fn json_content(schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", json_content(ErrorBody::name_ref()))
        .build()
}

trait NameRef {
    fn name_ref() -> RefOr<Schema>;
}

impl<T: ToSchema> NameRef for T {
    fn name_ref() -> RefOr<Schema> {
        RefOr::Ref(utoipa::openapi::Ref::from_schema_name(T::name()))
    }
}

/// Adds `schema` and every schema it refers to, under their names.
fn add_schemas<T: ToSchema>(api: &mut OpenApi) {
    let mut schemas: Vec<(String, RefOr<Schema>)> = vec![(T::name().into_owned(), T::schema())];
    T::schemas(&mut schemas);
    let components = api.components.get_or_insert_with(Default::default);
    for (name, schema) in schemas {
        components.schemas.entry(name).or_insert(schema);
    }
}

/// Documents `POST /commands/{A::TYPE}/{aggregate_id}`: its id's schema, its body (the schema
/// of `A::Command`), and the answers of a command.
pub fn document_command_route<A: Aggregate>(api: &mut OpenApi) {
    add_schemas::<A::Command>(api);
    add_schemas::<AcceptedCommand>(api);
    let id = ParameterBuilder::new()
        .name("aggregate_id")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(format!(
            "The id of the {} (stream `{}-<id>`)",
            A::TYPE,
            A::TYPE
        )))
        .schema(Some(A::id_schema()))
        .build();
    let operation = OperationBuilder::new()
        .tag(A::TYPE)
        .summary(Some(format!("Run a command on a {}", A::TYPE)))
        .description(Some(format!(
            "The generic command route of aggregate type `{}`: the body is one of its commands, \
             `{{\"command\": \"...\", \"payload\": {{...}}}}`.",
            A::TYPE
        )))
        .operation_id(Some(format!("run_{}_command", A::TYPE)))
        .parameter(id)
        .request_body(Some(
            RequestBodyBuilder::new()
                .content(
                    "application/json",
                    json_content(<A::Command as NameRef>::name_ref()),
                )
                .required(Some(Required::True))
                .build(),
        ))
        .response(
            "202",
            ResponseBuilder::new()
                .description("accepted: the events the command recorded")
                .content(
                    "application/json",
                    json_content(AcceptedCommand::name_ref()),
                )
                .build(),
        )
        .response(
            "404",
            error_response("the aggregate does not exist (for a command that needs one)"),
        )
        .response(
            "409",
            error_response("`concurrency_conflict`: the stream kept changing"),
        )
        .response(
            "422",
            error_response(
                "`invalid_body`, `unknown_command`, or the domain's rejection with its code",
            ),
        )
        .build();
    api.paths.paths.insert(
        format!("/commands/{}/{{aggregate_id}}", A::TYPE),
        PathItem::new(HttpMethod::Post, operation),
    );
}

/// Narrows a path parameter to the values the application registered (projection names).
pub fn restrict_path_parameter(api: &mut OpenApi, path: &str, name: &str, values: &[&str]) {
    let Some(item) = api.paths.paths.get_mut(path) else {
        return;
    };
    for operation in operations_mut(item) {
        for p in operation.parameters.iter_mut().flatten() {
            if p.name == name {
                p.schema = Some(
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::Type::String)
                        .enum_values(Some(values.iter().copied()))
                        .into(),
                );
            }
        }
    }
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(|o| o.as_mut())
}

/// The headers every request with a JSON body may carry ([`super::CommandRequest`]).
const COMMAND_HEADERS: [(&str, &str); 3] = [
    (
        "Idempotency-Key",
        "1 to 255 visible ASCII characters: a repeat of the same request answers the first response and writes nothing",
    ),
    (
        "X-Correlation-Id",
        "A UUID shared by everything the request causes; minted when absent",
    ),
    (
        "traceparent",
        "W3C trace context: the command joins this trace",
    ),
];

/// Routes that never read the database.
const WITHOUT_DATABASE: [&str; 3] = ["/healthz", "/metrics", "/openapi.json"];

/// Whether the route at `path` never reads the database: those above, and the console's pages
/// and assets (its data routes live under `/admin/console/`).
pub fn reads_no_database(path: &str) -> bool {
    WITHOUT_DATABASE.contains(&path) || path == "/console" || path.starts_with("/console/")
}

/// Adds the answers of the shared extractors and middleware to every operation (see the
/// module's table), the admin token's security scheme, and the error schema.
pub fn finish(api: &mut OpenApi) {
    add_schemas::<ErrorBody>(api);
    let components = api.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        ADMIN_SCHEME.to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("SAGAFLOW_ADMIN_TOKEN"))
                .build(),
        ),
    );
    for (path, item) in api.paths.paths.iter_mut() {
        let admin = path.starts_with("/admin/");
        let is_post = item.post.is_some();
        for operation in operations_mut(item) {
            let mut add: BTreeMap<&str, &str> = BTreeMap::new();
            let params = operation.parameters.iter().flatten();
            let (mut in_path, mut in_query) = (false, false);
            for p in params {
                match p.parameter_in {
                    ParameterIn::Path => in_path = true,
                    ParameterIn::Query => in_query = true,
                    _ => {}
                }
            }
            if operation.request_body.is_some() {
                for (name, description) in COMMAND_HEADERS {
                    let header = ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Header)
                        .required(Required::False)
                        .description(Some(description))
                        .schema(Some(
                            utoipa::openapi::ObjectBuilder::new()
                                .schema_type(utoipa::openapi::Type::String),
                        ))
                        .build();
                    operation
                        .parameters
                        .get_or_insert_with(Vec::new)
                        .push(header);
                }
                add.insert("400", "`malformed_json`, `missing_body`, `invalid_characters` (a NUL), or an invalid `X-Correlation-Id`, `traceparent` or `Idempotency-Key`");
                add.insert("413", "`payload_too_large`: the body is over 1 MiB");
                add.insert("415", "`unsupported_media_type`: the body is not JSON");
                add.insert(
                    "422",
                    "`invalid_body`: the body does not have the documented shape",
                );
            }
            if in_path {
                add.entry("400").or_insert(
                    "`invalid_path`: a path parameter of the wrong form; `invalid_characters`",
                );
            }
            if in_query {
                add.entry("400").or_insert(
                    "`invalid_query`: a query parameter of the wrong form; `invalid_characters`",
                );
            }
            add.entry("400").or_insert(
                "`invalid_characters`: the path, query or body holds U+0000 (NUL), which cannot be stored",
            );
            if !reads_no_database(path) {
                add.insert("503", "`database_unavailable`; on commands also `overloaded` or `command_timeout` (see `Retry-After`)");
            } else if is_post && !admin {
                add.insert(
                    "503",
                    "`overloaded` or `command_timeout` (see `Retry-After`)",
                );
            }
            if admin {
                add.insert("401", "`unauthorized`: no or a wrong bearer token");
                add.insert(
                    "403",
                    "`admin_disabled`: no SAGAFLOW_ADMIN_TOKEN is configured",
                );
                operation
                    .security
                    .get_or_insert_with(Vec::new)
                    .push(SecurityRequirement::new(ADMIN_SCHEME, Vec::<String>::new()));
            }
            for (status, description) in add {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| RefOr::T(error_response(description)));
            }
        }
    }
}

/// Serves the finished document, once the application is built.
pub fn router(document: Arc<OnceLock<String>>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .with_state(document)
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "the OpenAPI 3.1 document of this application", body = serde_json::Value))
)]
async fn openapi_json(State(document): State<Arc<OnceLock<String>>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.get().cloned().unwrap_or_default(),
    )
        .into_response()
}
