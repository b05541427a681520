//! Wire types and codecs for the Khala sync protocol (`../shared/PROTOCOL.md`).
//!
//! Pure: no IO, no clocks. Every decoder is total — malformed, oversize, wrong-typed or
//! unknown input gives a [`ProtocolError`], never a panic.

mod error;
pub mod fanout;
pub mod hash;
pub mod http;
pub mod phoenix;
pub mod token;
mod types;
mod update;

pub use error::{DecodeLimits, ProtocolError};
pub use hash::PayloadHash;
pub use types::{DocKey, InvalidName, Topic, Watermark};
pub use update::{
    ServerError, SlowConsumer, StaleCursor, StaleTopic, TopicWatermark, Update, UpdateBatch,
    UpgradeRequired, UPGRADE_CODES,
};

/// Decoding helpers for cold-path bodies (token, error and claims): the body is parsed once
/// into a `serde_json::Value` (whose deserializer every build links anyway) and its fields are
/// taken out by hand, instead of one serde-derived visitor per wire type — the derived
/// visitors were most of the web package's `serde_json` bytes (bindings-wasm README, "Bundle
/// size"). Errors name the field, never its value (token bodies carry secrets).
pub(crate) mod json {
    use serde_json::{Map, Value};

    /// A JSON object whose fields are taken out one by one.
    pub(crate) type Obj = Map<String, Value>;

    /// Parses `text` as a JSON object.
    pub(crate) fn object(text: &str) -> Result<Obj, String> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(o)) => Ok(o),
            Ok(_) => Err("expected a JSON object".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn wrong(key: &str, expected: &str) -> String {
        format!("invalid type for `{key}`, expected {expected}")
    }

    /// A required field.
    pub(crate) fn take(o: &mut Obj, key: &str) -> Result<Value, String> {
        o.remove(key)
            .ok_or_else(|| format!("missing field `{key}`"))
    }

    /// An optional field: absent and `null` are `None`.
    pub(crate) fn opt(o: &mut Obj, key: &str) -> Option<Value> {
        o.remove(key).filter(|v| !v.is_null())
    }

    /// `v` as a string.
    pub(crate) fn string(v: Value, key: &str) -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s),
            _ => Err(wrong(key, "a string")),
        }
    }

    /// `v` as a non-negative integer.
    pub(crate) fn uint(v: &Value, key: &str) -> Result<u64, String> {
        v.as_u64()
            .ok_or_else(|| wrong(key, "a non-negative integer"))
    }

    /// An optional string field (absent or `null`: `None`).
    pub(crate) fn opt_string(o: &mut Obj, key: &str) -> Result<Option<String>, String> {
        opt(o, key).map(|v| string(v, key)).transpose()
    }

    /// An optional integer field (absent or `null`: `None`).
    pub(crate) fn opt_uint(o: &mut Obj, key: &str) -> Result<Option<u64>, String> {
        opt(o, key).map(|v| uint(&v, key)).transpose()
    }

    /// `v` as an array.
    pub(crate) fn array(v: Value, key: &str) -> Result<Vec<Value>, String> {
        match v {
            Value::Array(a) => Ok(a),
            _ => Err(wrong(key, "an array")),
        }
    }

    /// `v` as an object.
    pub(crate) fn obj(v: Value, key: &str) -> Result<Obj, String> {
        match v {
            Value::Object(o) => Ok(o),
            _ => Err(wrong(key, "an object")),
        }
    }

    /// A list field read like a `Vec` with `#[serde(default)]`: absent is empty, `null` is
    /// wrong-typed; each element goes through `f` (given the field's key for its errors).
    pub(crate) fn list<T>(
        o: &mut Obj,
        key: &str,
        f: impl Fn(Value, &str) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        match o.remove(key) {
            None => Ok(Vec::new()),
            Some(v) => array(v, key)?.into_iter().map(|x| f(x, key)).collect(),
        }
    }

    /// `v` as a topic name.
    pub(crate) fn topic(v: Value, key: &str) -> Result<super::Topic, String> {
        super::Topic::new(string(v, key)?).map_err(|_| format!("invalid topic name in `{key}`"))
    }
}
