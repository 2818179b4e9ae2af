//! A property-based test driven by `/openapi.json`: for a fixed time, random requests built
//! from the document's schemas (and random mutations of them) go to every operation, and
//! every answer must be one the document lists for it, never a server error; a request the
//! schemas allow is never refused as bad input; every error has the usual body.
//!
//! The run is seeded: `SAGAFLOW_PROPERTY_SEED` replays one, `SAGAFLOW_PROPERTY_SECONDS` sets
//! the time budget (30 s by default). A failure prints the seed and the request.

mod common;

use std::time::{Duration, Instant};

use common::engine::{everything, start_engine_with};
use common::schema::{operations, resolve, Operation};
use common::transport::postgres;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use sagaflow::app::Options;
use sagaflow_engine::http::admin::AdminToken;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

const TOKEN: &str = "property-token";

/// Error codes that mean "the input is not what the route takes".
const INPUT_ERRORS: [&str; 10] = [
    "malformed_json",
    "missing_body",
    "invalid_body",
    "invalid_path",
    "invalid_query",
    "invalid_id",
    "invalid_characters",
    "unknown_command",
    "unsupported_media_type",
    "payload_too_large",
];

/// Characters random strings are made of: letters, digits, punctuation, spaces, line breaks,
/// and characters beyond ASCII (accents, CJK, an emoji). Never U+0000.
const CHARS: &[char] = &[
    'a', 'b', 'z', 'A', 'Q', '0', '7', '9', ' ', '-', '_', '.', ',', '"', '\'', '\\', '/', '?',
    '#', '%', '&', '=', '+', '{', '}', '[', ']', '\n', '\t', 'é', 'ß', 'ü', '日', '本', '😀',
    '\u{7f}', '\u{85}', '\u{2028}',
];

struct Gen<'a> {
    rng: StdRng,
    doc: &'a Value,
}

impl Gen<'_> {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// A string a simple pattern (`^[class]{m,n}$`, `^[class]+$`, `^(a|b)?$`) allows.
    fn matching(&mut self, pattern: &str) -> Option<String> {
        let inner = pattern.strip_prefix('^')?.strip_suffix('$')?;
        if let Some(alternatives) = inner.strip_prefix('(') {
            let (list, rest) = alternatives.split_once(')')?;
            let options: Vec<&str> = list.split('|').collect();
            if !(rest.is_empty() || rest == "?") || options.iter().any(|o| o.contains(['(', '['])) {
                return None;
            }
            if rest == "?" && self.chance(0.2) {
                return Some(String::new());
            }
            return Some(options[self.rng.random_range(0..options.len())].to_owned());
        }
        let class = inner.strip_prefix('[')?;
        let (class, count) = class.split_once(']')?;
        let (min, max) = match count {
            "+" => (1, 20),
            "*" => (0, 20),
            _ => {
                let c = count.strip_prefix('{')?.strip_suffix('}')?;
                let (a, b) = c.split_once(',')?;
                (a.parse().ok()?, b.parse::<usize>().ok()?.min(40))
            }
        };
        let (negated, class) = match class.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, class),
        };
        let allowed: Vec<char> = if negated {
            // Everything printable but what the class names (only control ranges here).
            CHARS.iter().copied().filter(|c| !c.is_control()).collect()
        } else {
            let chars: Vec<char> = class.chars().collect();
            let mut out = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                if i + 2 < chars.len() && chars[i + 1] == '-' {
                    out.extend(chars[i]..=chars[i + 2]);
                    i += 3;
                } else {
                    out.push(chars[i]);
                    i += 1;
                }
            }
            out
        };
        let n = self.rng.random_range(min.max(1)..=max.max(min.max(1)));
        Some(
            (0..n)
                .map(|_| allowed[self.rng.random_range(0..allowed.len())])
                .collect(),
        )
    }

    fn string(&mut self, schema: &Value) -> String {
        if let Some(p) = schema["pattern"].as_str() {
            if let Some(s) = self.matching(p) {
                return s;
            }
            if p == r"\S" {
                // Any text that is not blank.
                let s = self.string(&json!({"maxLength": schema["maxLength"]}));
                return format!("x{}", s.chars().skip(1).collect::<String>());
            }
            // A pattern beyond the simple forms: the document's example is the valid value.
            // Every such parameter must have one (it shows users the form, too).
            match schema["examples"].as_array().and_then(|e| e.first()) {
                Some(e) => return e.as_str().unwrap_or_default().to_owned(),
                None => panic!("the pattern {p:?} has no example in the document"),
            }
        }
        match schema["format"].as_str() {
            Some("uuid") => return Uuid::now_v7().to_string(),
            Some("date-time") => return chrono::Utc::now().to_rfc3339(),
            _ => {}
        }
        let min = schema["minLength"].as_u64().unwrap_or(0) as usize;
        let max = schema["maxLength"].as_u64().unwrap_or(40).min(60) as usize;
        let n = self.rng.random_range(min..=max.max(min));
        let s: String = (0..n)
            .map(|_| CHARS[self.rng.random_range(0..CHARS.len())])
            .collect();
        if min > 0 && s.trim().is_empty() {
            // Blank strings are refused where a text is required; the schemas say so with
            // patterns, and a string of length `min` made of spaces is not the point here.
            return "x".repeat(min.max(1));
        }
        s
    }

    fn integer(&mut self, schema: &Value) -> i64 {
        let min = schema["minimum"].as_i64();
        let max = schema["maximum"].as_i64();
        let lo = min.unwrap_or(-1000);
        let hi = max.unwrap_or(lo.saturating_add(1000));
        match self.rng.random_range(0..4) {
            0 => lo,
            1 => hi,
            _ => self
                .rng
                .random_range(lo..=hi.min(lo.saturating_add(10_000))),
        }
    }

    /// A random value `schema` allows.
    fn valid(&mut self, schema: &Value) -> Value {
        let schema = resolve(schema, self.doc).clone();
        if let Some(values) = schema["enum"].as_array() {
            return values[self.rng.random_range(0..values.len())].clone();
        }
        if let Some(one_of) = schema["oneOf"].as_array() {
            let pick = one_of[self.rng.random_range(0..one_of.len())].clone();
            return self.valid(&pick);
        }
        let types: Vec<String> = match &schema["type"] {
            Value::String(t) => vec![t.clone()],
            Value::Array(ts) => ts
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
            _ => vec!["object".to_owned()],
        };
        let kind = if types.len() > 1 && types.contains(&"null".to_owned()) && self.chance(0.3) {
            "null".to_owned()
        } else {
            types
                .into_iter()
                .find(|t| t != "null")
                .unwrap_or_else(|| "null".to_owned())
        };
        match kind.as_str() {
            "object" => {
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut object = Map::new();
                if let Some(properties) = schema["properties"].as_object() {
                    for (name, property) in properties {
                        if required.contains(&name.as_str()) || self.chance(0.6) {
                            object.insert(name.clone(), self.valid(property));
                        }
                    }
                }
                Value::Object(object)
            }
            "array" => {
                let min = schema["minItems"].as_u64().unwrap_or(0);
                let max = schema["maxItems"].as_u64().unwrap_or(3).min(3).max(min);
                let n = self.rng.random_range(min..=max);
                Value::Array((0..n).map(|_| self.valid(&schema["items"])).collect())
            }
            "integer" => json!(self.integer(&schema)),
            "number" => json!(self.integer(&schema) as f64 / 4.0),
            "boolean" => json!(self.chance(0.5)),
            "string" => json!(self.string(&schema)),
            _ => Value::Null,
        }
    }

    /// A value of the wrong kind for anything.
    fn garbage(&mut self) -> Value {
        match self.rng.random_range(0..8) {
            0 => json!(null),
            1 => json!(-1),
            2 => json!(i64::MAX),
            3 => json!("not what was asked"),
            4 => json!([1, "two"]),
            5 => json!({"unexpected": true}),
            6 => json!("nul \u{0000} inside"),
            _ => json!(1.5e300),
        }
    }

    /// `value` with one part replaced by garbage.
    fn mutate(&mut self, value: &mut Value) {
        match value {
            Value::Object(map) if !map.is_empty() && self.chance(0.8) => {
                let keys: Vec<String> = map.keys().cloned().collect();
                let key = keys[self.rng.random_range(0..keys.len())].clone();
                if self.chance(0.5) {
                    self.mutate(map.get_mut(&key).unwrap());
                } else if self.chance(0.5) {
                    map.insert(key, self.garbage());
                } else {
                    map.insert(format!("{key}_unknown"), json!(1));
                }
            }
            Value::Array(items) if !items.is_empty() && self.chance(0.7) => {
                let i = self.rng.random_range(0..items.len());
                self.mutate(&mut items[i]);
            }
            other => *other = self.garbage(),
        }
    }
}

fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Built {
    method: reqwest::Method,
    path: String,
    query: Vec<(String, String)>,
    body: Option<String>,
    content_type: &'static str,
    token: bool,
    /// Built from the schemas without mutation: it must not be refused as bad input.
    valid: bool,
}

/// A parameter's schema, with the parameter's own example among the schema's.
fn parameter_schema(p: &Value) -> Value {
    let mut schema = p["schema"].clone();
    if let (Some(example), Some(object)) = (p.get("example"), schema.as_object_mut()) {
        object.entry("examples").or_insert_with(|| json!([example]));
    }
    schema
}

fn build(op: &Operation, g: &mut Gen, valid: bool) -> Built {
    let mut path = op.path.clone();
    let broken = if valid {
        None
    } else {
        Some(g.rng.random_range(0..4))
    };
    for p in op.parameters("path") {
        let name = p["name"].as_str().unwrap();
        let mut value = match g.valid(&parameter_schema(&p)) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if broken == Some(0) && g.chance(0.7) {
            value = match g.garbage() {
                Value::String(s) => s,
                other => other.to_string(),
            };
        }
        // An empty segment, or one that is only "." or ".." (even written
        // %2E), is removed by every URL parser before the request leaves the
        // client (RFC 3986 §5.2.4), so no client can send it: give it a letter.
        if value.is_empty() || value == "." || value == ".." {
            value.push('x');
        }
        path = path.replace(&format!("{{{name}}}"), &encode(&value));
    }
    let mut query = Vec::new();
    for p in op.parameters("query") {
        if p["required"] != true && !g.chance(0.5) {
            continue;
        }
        let name = p["name"].as_str().unwrap().to_owned();
        let mut value = g.valid(&parameter_schema(&p));
        if broken == Some(1) && g.chance(0.7) {
            value = g.garbage();
        }
        let value = match value {
            Value::String(s) => s,
            Value::Null => continue,
            other => other.to_string(),
        };
        query.push((name, value));
    }
    let mut content_type = "application/json";
    let body = op.body_schema().map(|schema| {
        let mut value = g.valid(schema);
        match broken {
            Some(2) => g.mutate(&mut value),
            Some(3) => match g.rng.random_range(0..3) {
                0 => return "{\"truncated\": ".to_owned(),
                1 => content_type = "text/plain",
                _ => return "x".repeat(1024 * 1024 + 10),
            },
            _ => {}
        }
        value.to_string()
    });
    Built {
        method: op.method.to_uppercase().parse().unwrap(),
        path,
        query,
        body,
        content_type,
        token: !op.path.starts_with("/admin/") || !g.chance(0.1),
        valid,
    }
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn random_requests_get_only_documented_answers(pool: PgPool) {
    let seed: u64 = std::env::var("SAGAFLOW_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let budget = Duration::from_secs(
        std::env::var("SAGAFLOW_PROPERTY_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    eprintln!("property seed {seed} (SAGAFLOW_PROPERTY_SEED={seed} replays it), {budget:?}");
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
    let doc: Value = reqwest::get(format!("{}/openapi.json", engine.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ops = operations(&doc);
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        doc: &doc,
    };
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    while started.elapsed() < budget {
        let op = &ops[g.rng.random_range(0..ops.len())];
        let valid = g.chance(0.6);
        let built = build(op, &mut g, valid);
        let mut request = client
            .request(
                built.method.clone(),
                format!("{}{}", engine.base, built.path),
            )
            .query(&built.query)
            .timeout(Duration::from_secs(30));
        if built.token {
            request = request.bearer_auth(TOKEN);
        }
        if let Some(body) = &built.body {
            request = request
                .header("content-type", built.content_type)
                .body(body.clone());
        }
        let r = request.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        sent += 1;
        *by_status.entry(status.as_u16()).or_default() += 1;
        let what = format!(
            "seed {seed}, request {sent}: {} {} {:?} {}",
            built.method,
            built.path,
            built.query,
            built
                .body
                .as_deref()
                .map(|b| &b[..b.len().min(300)])
                .unwrap_or("")
        );
        assert!(
            status.as_u16() < 500
                || (op.path == "/readyz" && status == StatusCode::SERVICE_UNAVAILABLE),
            "{what}\n-> {status} {text}"
        );
        assert!(
            op.statuses().contains(&status.as_u16()),
            "{what}\n-> {status} is not documented ({:?}): {text}",
            op.statuses()
        );
        if status.is_client_error() {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str();
            assert!(
                code.is_some() && body["error"]["message"].as_str().is_some(),
                "{what}\n-> {status} without the error body: {text}"
            );
            if built.valid {
                assert!(
                    !INPUT_ERRORS.contains(&code.unwrap()),
                    "{what}\n-> a request the schemas allow was refused: {text}"
                );
            }
        }
    }
    eprintln!("{sent} requests in {:?}: {by_status:?}", started.elapsed());
    assert!(sent > 100, "only {sent} requests");
    engine.stop().await;
}
