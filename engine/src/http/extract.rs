//! Extractors whose rejections are JSON errors: bad input is a 4xx with a code, never a
//! plain-text body and never a 500.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use uuid::Uuid;

use super::error::ApiError;
use crate::command::IdempotencyRequest;
use crate::envelope::Metadata;
use crate::trace::TraceContext;

/// Bodies larger than this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON command body with the request's tracing metadata and idempotency key.
pub struct CommandRequest<T> {
    /// The parsed body.
    pub body: T,
    /// The correlation id (from `X-Correlation-Id`, or minted) and trace context (`traceparent`) of
    /// the request, for every event the command records.
    pub metadata: Metadata,
    /// The `Idempotency-Key` with a fingerprint of the request, if the client sent one.
    pub idempotency: Option<IdempotencyRequest>,
}

impl<T> CommandRequest<T> {
    /// The same request carrying another body, typically the command built from it.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> CommandRequest<U> {
        CommandRequest {
            body: f(self.body),
            metadata: self.metadata,
            idempotency: self.idempotency,
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for CommandRequest<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        check_json_content_type(&parts.headers)?;
        let metadata = metadata_from_headers(&parts.headers)?;
        let key = idempotency_key(&parts.headers)?;
        let method = parts.method.clone();
        let path = parts.uri.path().to_owned();
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|r| {
                let status = r.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else {
                    "unreadable_body"
                };
                ApiError::new(status, code, r.body_text())
            })?;
        let body = parse_json(&bytes)?;
        let idempotency = key.map(|k| IdempotencyRequest::new(k, method.as_str(), &path, &bytes));
        Ok(CommandRequest {
            body,
            metadata,
            idempotency,
        })
    }
}

/// Parses a JSON body: syntax errors are 400 `malformed_json`, a NUL in a string is 400
/// `invalid_characters` (see [`super::hygiene`]), well-formed JSON of the wrong shape (missing
/// fields, wrong types, out-of-range values) is 422 `invalid_body`.
/// An empty body reads as JSON `null`, so routes whose body is optional take an `Option` (and
/// take a literal `null` too).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if super::hygiene::json_has_nul(bytes) {
        return Err(super::hygiene::invalid_characters("body"));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"null").map_err(|_| {
            ApiError::bad_request("missing_body", "this route needs a JSON request body")
        });
    }
    let parsed = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
            "malformed_json",
            format!("request body is not valid JSON: {e}"),
        ),
        Category::Data => ApiError::unprocessable("invalid_body", e.to_string()),
    })?;
    // serde lets a struct be written as an array of its fields; a body must be an object, or
    // `null` for a route whose body is optional (it parsed, so `T` takes it).
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') && first != Some(&b'n') {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "request body must be a JSON object",
        ));
    }
    Ok(parsed)
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        None => Ok(()),
        Some(v) => {
            let v = v.to_str().unwrap_or_default().to_ascii_lowercase();
            let mime = v.split(';').next().unwrap_or_default().trim();
            if mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
            {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("expected Content-Type: application/json, got {mime}"),
                ))
            }
        }
    }
}

/// Reads `X-Correlation-Id` (a UUID; minted when absent) and W3C `traceparent` (400
/// `invalid_traceparent` if it is not a valid trace context; [`super::run_command`] starts a
/// new trace when there is none).
pub fn metadata_from_headers(headers: &HeaderMap) -> Result<Metadata, ApiError> {
    let mut metadata = Metadata::new_root();
    if let Some(v) = headers.get("x-correlation-id") {
        metadata.correlation_id = v
            .to_str()
            .ok()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| {
                ApiError::bad_request("invalid_correlation_id", "X-Correlation-Id must be a UUID")
            })?;
    }
    if let Some(v) = headers.get("traceparent") {
        let tp = v.to_str().unwrap_or_default();
        if TraceContext::parse(tp).is_none() {
            return Err(ApiError::bad_request(
                "invalid_traceparent",
                "traceparent must be a W3C trace context",
            ));
        }
        metadata.traceparent = Some(tp.to_owned());
    }
    Ok(metadata)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_owned()))
        }
        _ => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// Path parameters; a parameter of the wrong form (an invalid UUID) is 400 `invalid_path`.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|r| ApiError::bad_request("invalid_path", r.body_text()))
    }
}

/// Query parameters; a parameter of the wrong form is 400 `invalid_query`.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| QueryParams(t))
            .map_err(|r| ApiError::bad_request("invalid_query", r.body_text()))
    }
}
