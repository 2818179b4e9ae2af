//! The one place that decides whether input can be stored: PostgreSQL's `text` and `jsonb`
//! cannot hold the character U+0000 (NUL), so any NUL in a request's path, query or JSON body
//! is refused with `400 invalid_characters` before a handler runs, and nothing is written.
//! Header values never carry one (HTTP forbids it), and the headers the engine keeps
//! (`Idempotency-Key`, `traceparent`, `X-Correlation-Id`) are checked for their own forms.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// The answer to input that contains a NUL.
pub fn invalid_characters(place: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_characters",
        format!(
            "the request's {place} contains the character U+0000 (NUL), which cannot be stored"
        ),
    )
}

/// Whether the raw path or query of a URI names a NUL (`%00`; a raw NUL cannot be in a URI).
pub fn uri_has_nul(text: &str) -> bool {
    text.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// Whether JSON text holds a NUL in a string: raw control characters are not JSON, so a NUL can
/// only be written `\u0000`, and only where its backslash is not itself escaped.
pub fn json_has_nul(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        let run = bytes[i..].iter().take_while(|b| **b == b'\\').count();
        let after = i + run;
        if run % 2 == 1 && bytes[after..].starts_with(b"u0000") {
            return true;
        }
        i = after;
    }
    false
}

/// Refuses a request whose path or query contains a NUL.
pub async fn refuse_unstorable(request: Request, next: Next) -> Response {
    let uri = request.uri();
    if uri_has_nul(uri.path()) {
        return invalid_characters("path").into_response();
    }
    if uri.query().is_some_and(uri_has_nul) {
        return invalid_characters("query").into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_is_found_where_it_is_one_and_nowhere_else() {
        assert!(json_has_nul(br#"{"reason": "a\u0000b"}"#));
        assert!(json_has_nul(br#"{"a\u0000": 1}"#));
        assert!(
            json_has_nul(br#"["\\\u0000"]"#),
            "an escaped backslash, then a NUL"
        );
        assert!(
            !json_has_nul(br#"{"reason": "a\\u0000b"}"#),
            "the text \\u0000"
        );
        assert!(!json_has_nul(br#"{"reason": "\\\\u0000"}"#));
        assert!(uri_has_nul("/streams/a%00b/events"));
        assert!(uri_has_nul("saga_type=a%00b"));
        assert!(!uri_has_nul("/streams/a%0A0b/events"));
        assert!(!uri_has_nul("limit=100"));
    }
}
