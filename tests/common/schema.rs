//! Requests built from an OpenAPI document's schemas: a value each schema allows (its example
//! when it has one), so a test can hold the server to what its document says.

use serde_json::{json, Map, Value};
use uuid::Uuid;

/// One operation of the document.
#[derive(Debug, Clone)]
pub struct Operation {
    pub method: String,
    /// The path template (`/orders/{order_id}`).
    pub path: String,
    pub operation: Value,
}

impl Operation {
    /// The statuses the document lists for it.
    pub fn statuses(&self) -> Vec<u16> {
        self.operation["responses"]
            .as_object()
            .map(|r| r.keys().filter_map(|k| k.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Its parameters of one kind (`path`, `query`, `header`).
    pub fn parameters(&self, kind: &str) -> Vec<Value> {
        self.operation["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["in"] == kind).cloned().collect())
            .unwrap_or_default()
    }

    /// The schema of its JSON body, if it takes one.
    pub fn body_schema(&self) -> Option<&Value> {
        self.operation["requestBody"]["content"]["application/json"].get("schema")
    }

    /// Whether its body is required.
    pub fn body_required(&self) -> bool {
        self.operation["requestBody"]["required"] == true
    }
}

/// Every operation of `doc`.
pub fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            out.push(Operation {
                method: method.clone(),
                path: path.clone(),
                operation: operation.clone(),
            });
        }
    }
    out
}

/// Follows `$ref`s to the schema they name.
pub fn resolve<'a>(schema: &'a Value, doc: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().expect("a schema name");
            resolve(&doc["components"]["schemas"][name], doc)
        }
        None => schema,
    }
}

/// A value `schema` allows: its example if it has one, else one built from its type and
/// bounds. `variant` picks among the alternatives of `oneOf` (modulo their number).
pub fn example(schema: &Value, doc: &Value, variant: usize) -> Value {
    let schema = resolve(schema, doc);
    if let Some(e) = schema.get("example") {
        return e.clone();
    }
    if let Some(e) = schema["examples"].as_array().and_then(|e| e.first()) {
        return e.clone();
    }
    if let Some(values) = schema["enum"].as_array() {
        return values[variant % values.len()].clone();
    }
    if let Some(one_of) = schema["oneOf"].as_array() {
        return example(&one_of[variant % one_of.len()], doc, variant / one_of.len());
    }
    let kind = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_owned(),
        _ => "object".to_owned(),
    };
    match kind.as_str() {
        "object" => {
            let mut object = Map::new();
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    object.insert(name.clone(), example(property, doc, variant));
                }
            }
            Value::Object(object)
        }
        "array" => {
            let n = schema["minItems"].as_u64().unwrap_or(1).max(1);
            Value::Array(
                (0..n)
                    .map(|_| example(&schema["items"], doc, variant))
                    .collect(),
            )
        }
        "integer" | "number" => {
            let min = schema["minimum"].as_i64().unwrap_or(1);
            let max = schema["maximum"].as_i64().unwrap_or(i64::MAX);
            json!(min.max(1).min(max))
        }
        "boolean" => json!(true),
        "string" => match schema["format"].as_str() {
            Some("uuid") => json!(Uuid::now_v7()),
            Some("date-time") => json!(chrono::Utc::now()),
            _ => {
                let min = schema["minLength"].as_u64().unwrap_or(1).max(1) as usize;
                json!("a".repeat(min))
            }
        },
        _ => Value::Null,
    }
}

/// A concrete path for `operation`, each path parameter filled with a value its schema allows.
pub fn concrete_path(operation: &Operation, doc: &Value) -> String {
    let mut path = operation.path.clone();
    for p in operation.parameters("path") {
        let name = p["name"].as_str().expect("a parameter name");
        let value = match p.get("example") {
            Some(e) => e.clone(),
            None => example(&p["schema"], doc, 0),
        };
        let value = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        path = path.replace(&format!("{{{name}}}"), &value);
    }
    path
}
