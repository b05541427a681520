//! The SDK's own JSON reader: one strict RFC 8259 scanner every decoder uses, instead of
//! `serde_json`'s parser plus one derived visitor per wire type.
//!
//! Two shapes over the same scanner:
//! - `Reader` (crate-internal), a streaming pull reader for the hot wire types (update batches, snapshot
//!   pages, fanout messages): one pass, borrowed strings, a payload kept as the exact span of
//!   its raw bytes ([`RawJson`]), no tree;
//! - [`Value`], a small borrowed tree for cold bodies (token, errors, claims, replies), walked
//!   with the helpers below ([`take`], [`opt`], `list`…); it also feeds the canonical JSON
//!   of `payload_hash` (object members sorted, numbers in `serde_json`'s forms).
//!
//! Why not `serde_json`: its parser, `Value`, `RawValue` machinery and the derived visitors
//! were the largest part of the web package (bindings-wasm README, "Bundle size"). The
//! accepted language is the same (the tests compare both on generated documents): strict
//! grammar, no trailing commas or comments, control characters refused inside strings, lone
//! surrogate escapes refused when a string is decoded, nesting limited to 128 levels (a
//! payload nested deeper is a malformed frame; `serde_json` kept it raw but could not
//! canonicalise it). Duplicate object keys: the hot decoders refuse a known field given twice; in a [`Value`]
//! the last one wins (as in `serde_json::Value`). Errors name the field and the byte offset,
//! never a value (token bodies carry secrets).

use std::borrow::Cow;
use std::fmt;

use super::ProtocolError;

/// Deepest nesting accepted (arrays and objects). The reader recurses, so it needs a bound;
/// `serde_json` skips a raw value of any depth without recursing, but its `Value` parser
/// (which the canonical form needed) stopped at 127, so deeper payloads never verified.
const MAX_DEPTH: u32 = 128;

/// A decode error message (the callers wrap it in [`ProtocolError::Malformed`]).
pub type Res<T> = Result<T, String>;

/// JSON text that has been checked to be exactly one valid JSON value, kept byte for byte
/// (payloads are hashed and stored exactly as the server sent them).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(Box<str>);

impl RawJson {
    /// Checks `text` (one JSON value, surrounding whitespace allowed and kept) and wraps it.
    pub fn from_string(text: String) -> Result<Self, ProtocolError> {
        Self::check(&text)?;
        Ok(RawJson(text.into_boxed_str()))
    }

    /// Checks that `text` is one JSON value (surrounding whitespace allowed), without
    /// copying it.
    pub fn check(text: &str) -> Result<(), ProtocolError> {
        let mut r = Reader::new(text);
        r.skip()
            .and_then(|()| r.end())
            .map_err(|e| ProtocolError::malformed("raw json", e))
    }

    /// A span [`Reader::raw`] already checked.
    pub(crate) fn checked(text: &str) -> Self {
        RawJson(Box::from(text))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// The JSON text as an owned `String` (no copy).
    pub fn into_string(self) -> String {
        self.0.into()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The index of the first byte at or after `i` that ends a plain run inside a string: `"`,
/// `\\` or a control character (`b.len()` if none). Eight bytes per step (the usual
/// zero-byte bit trick: the lowest flagged byte of each mask is exact).
fn plain_run_end(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        let v = u64::from_le_bytes(a);
        let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
        let m = zero(v ^ (LO * u64::from(b'"')))
            | zero(v ^ (LO * u64::from(b'\\')))
            | (v.wrapping_sub(LO * 0x20) & !v & HI);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

/// A streaming reader over one JSON text.
pub(crate) struct Reader<'a> {
    s: &'a str,
    i: usize,
    depth: u32,
}

fn at(msg: &str, i: usize) -> String {
    format!("{msg} at byte {i}")
}

/// `invalid type for `key`, expected …`.
pub(crate) fn wrong(key: &str, expected: &str) -> String {
    format!("invalid type for `{key}`, expected {expected}")
}

/// `missing field `key``.
pub(crate) fn missing(key: &str) -> String {
    format!("missing field `{key}`")
}

/// Stores a field's value, refusing a second occurrence of the same field.
pub(crate) fn set<T>(slot: &mut Option<T>, v: T, key: &str) -> Res<()> {
    if slot.is_some() {
        return Err(format!("duplicate field `{key}`"));
    }
    *slot = Some(v);
    Ok(())
}

/// A required field read by a streaming decoder.
pub(crate) fn need<T>(slot: Option<T>, key: &str) -> Res<T> {
    slot.ok_or_else(|| missing(key))
}

impl<'a> Reader<'a> {
    /// A reader at the start of `s`.
    pub(crate) fn new(s: &'a str) -> Self {
        Reader { s, i: 0, depth: 0 }
    }

    /// The current byte offset.
    pub(crate) fn pos(&self) -> usize {
        self.i
    }

    /// The text from `start` to the current offset.
    pub(crate) fn since(&self, start: usize) -> &'a str {
        &self.s[start..self.i]
    }

    fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    fn err(&self, msg: &str) -> String {
        at(msg, self.i)
    }

    /// The next non-whitespace byte, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        while let Some(&c) = b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    fn expect(&mut self, c: u8, what: &str) -> Res<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// Only whitespace is left.
    pub(crate) fn end(&mut self) -> Res<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.err("trailing characters")),
        }
    }

    fn literal(&mut self, word: &str) -> Res<()> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("expected value"))
        }
    }

    /// Consumes a `null` if one is next; true if it did.
    pub(crate) fn null(&mut self) -> Res<bool> {
        if self.peek() == Some(b'n') {
            self.literal("null")?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A boolean; `key` names the field in the error.
    pub(crate) fn bool(&mut self, key: &str) -> Res<bool> {
        match self.peek() {
            Some(b't') => self.literal("true").map(|()| true),
            Some(b'f') => self.literal("false").map(|()| false),
            _ => self.wrong_type(key, "a boolean"),
        }
    }

    /// A non-negative integer that fits `u64` (no fraction, no exponent).
    pub(crate) fn uint(&mut self, key: &str) -> Res<u64> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return self.wrong_type(key, "a non-negative integer");
        }
        let start = self.i;
        // Fast path: plain digits (the usual case), accumulated while scanning.
        let b = self.bytes();
        let mut n: u64 = 0;
        let mut i = start;
        while let Some(&c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            match n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(c - b'0')))
            {
                Some(v) => n = v,
                None => break,
            }
            i += 1;
        }
        let plain = !matches!(b.get(i), Some(b'0'..=b'9' | b'.' | b'e' | b'E'));
        if plain && (b[start] != b'0' || i == start + 1) {
            self.i = i;
            return Ok(n);
        }
        // Leading zero, fraction, exponent or overflow: check the grammar, then refuse.
        self.number()?;
        Err(at(&wrong(key, "a non-negative integer"), start))
    }

    /// A string (escapes decoded; borrowed when it has none).
    pub(crate) fn str(&mut self, key: &str) -> Res<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            return self.wrong_type(key, "a string");
        }
        self.string()
    }

    /// An optional string: `null` is `None`.
    pub(crate) fn opt_str(&mut self, key: &str) -> Res<Option<Cow<'a, str>>> {
        if self.null()? {
            return Ok(None);
        }
        self.str(key).map(Some)
    }

    /// An optional integer: `null` is `None`.
    pub(crate) fn opt_uint(&mut self, key: &str) -> Res<Option<u64>> {
        if self.null()? {
            return Ok(None);
        }
        self.uint(key).map(Some)
    }

    /// The error for a value of the wrong type: a syntax error when the value is not JSON
    /// at all, else the field's expected type.
    fn wrong_type<T>(&mut self, key: &str, expected: &str) -> Res<T> {
        let start = self.i;
        self.skip()?;
        Err(at(&wrong(key, expected), start))
    }

    /// Skips one value, checking it; returns its exact text.
    pub(crate) fn raw(&mut self) -> Res<&'a str> {
        self.peek();
        let start = self.i;
        self.skip()?;
        Ok(&self.s[start..self.i])
    }

    /// Skips one value, checking it.
    pub(crate) fn skip(&mut self) -> Res<()> {
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'{') => self.object(&mut |r, _| r.skip()),
            Some(b'[') => self.array(&mut |r| r.skip()),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            None => Err(self.err("EOF while parsing a value")),
            Some(_) => Err(self.err("expected value")),
        }
    }

    /// Visits an object's members in order: `f` gets the reader at the member's value and
    /// the (unescaped) key, and must consume the value.
    pub(crate) fn object(&mut self, f: &mut dyn FnMut(&mut Self, &str) -> Res<()>) -> Res<()> {
        if self.peek() != Some(b'{') {
            return Err(self.err("expected an object"));
        }
        self.enter()?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a key"));
            }
            let key = self.string()?;
            self.expect(b':', "expected `:`")?;
            f(self, &key)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
    }

    /// Visits an array's elements in order; `f` must consume each element.
    pub(crate) fn array(&mut self, f: &mut dyn FnMut(&mut Self) -> Res<()>) -> Res<()> {
        if self.peek() != Some(b'[') {
            return Err(self.err("expected an array"));
        }
        self.enter()?;
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            f(self)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected `,` or `]`")),
            }
        }
    }

    /// An array field (`key` for the error): `f` reads each element.
    pub(crate) fn list(&mut self, key: &str, f: &mut dyn FnMut(&mut Self) -> Res<()>) -> Res<()> {
        if self.peek() != Some(b'[') {
            return self.wrong_type(key, "an array");
        }
        self.array(f)
    }

    fn enter(&mut self) -> Res<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("recursion limit exceeded"));
        }
        self.i += 1;
        Ok(())
    }

    /// A number's text, checked against the JSON grammar.
    fn number(&mut self) -> Res<&'a str> {
        let b = self.bytes();
        let start = self.i;
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let digits = |i: &mut usize| {
            let s = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i - s
        };
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => return Err(at("invalid number", i)),
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if digits(&mut i) == 0 {
                return Err(at("invalid number", i));
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                return Err(at("invalid number", i));
            }
        }
        self.i = i;
        Ok(&self.s[start..i])
    }

    /// Skips a string without decoding it (escapes checked for shape only).
    fn skip_string(&mut self) -> Res<()> {
        let b = self.bytes();
        let mut i = self.i + 1;
        loop {
            i = plain_run_end(b, i);
            match b.get(i) {
                None => return Err(at("EOF while parsing a string", i)),
                Some(b'"') => break,
                Some(b'\\') => {
                    i = self.escape_end(i)?;
                }
                Some(&c) if c < 0x20 => return Err(at("control character in string", i)),
                Some(_) => i += 1,
            }
        }
        self.i = i + 1;
        Ok(())
    }

    /// The index after the escape starting at `i` (which holds `\`).
    fn escape_end(&self, i: usize) -> Res<usize> {
        let b = self.bytes();
        match b.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
            Some(b'u') => {
                let hex = b
                    .get(i + 2..i + 6)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                hex.map(|_| i + 6).ok_or_else(|| at("invalid escape", i))
            }
            _ => Err(at("invalid escape", i)),
        }
    }

    fn hex4(&self, i: usize) -> u32 {
        self.bytes()[i..i + 4]
            .iter()
            .fold(0, |n, &h| n * 16 + char::from(h).to_digit(16).unwrap_or(0))
    }

    /// Reads a string at `"`, decoding escapes.
    fn string(&mut self) -> Res<Cow<'a, str>> {
        let b = self.bytes();
        let start = self.i + 1;
        let mut i = start;
        // Fast path: no escape before the closing quote.
        loop {
            i = plain_run_end(b, i);
            match b.get(i) {
                None => return Err(at("EOF while parsing a string", i)),
                Some(b'"') => {
                    self.i = i + 1;
                    return Ok(Cow::Borrowed(&self.s[start..i]));
                }
                Some(b'\\') => break,
                Some(&c) if c < 0x20 => return Err(at("control character in string", i)),
                Some(_) => i += 1,
            }
        }
        let mut out = String::from(&self.s[start..i]);
        let mut run = i;
        loop {
            match b.get(i) {
                None => return Err(at("EOF while parsing a string", i)),
                Some(b'"') => {
                    out.push_str(&self.s[run..i]);
                    self.i = i + 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    out.push_str(&self.s[run..i]);
                    let next = self.escape_end(i)?;
                    let c = match b[i + 1] {
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let (c, end) = self.unicode_escape(i)?;
                            out.push(c);
                            i = end;
                            run = i;
                            continue;
                        }
                        other => char::from(other),
                    };
                    out.push(c);
                    i = next;
                    run = i;
                }
                Some(&c) if c < 0x20 => return Err(at("control character in string", i)),
                Some(_) => i += 1,
            }
        }
    }

    /// Decodes `\uXXXX` at `i` (already shape-checked), with a following low surrogate if
    /// the first is a high one; returns the character and the index after the escape(s).
    fn unicode_escape(&self, i: usize) -> Res<(char, usize)> {
        let hi = self.hex4(i + 2);
        if (0xDC00..0xE000).contains(&hi) {
            return Err(at("lone trailing surrogate in hex escape", i));
        }
        if !(0xD800..0xDC00).contains(&hi) {
            return char::from_u32(hi)
                .map(|c| (c, i + 6))
                .ok_or_else(|| at("invalid escape", i));
        }
        let b = self.bytes();
        if b.get(i + 6) != Some(&b'\\') || b.get(i + 7) != Some(&b'u') {
            return Err(at("lone leading surrogate in hex escape", i));
        }
        self.escape_end(i + 6)?;
        let lo = self.hex4(i + 8);
        if !(0xDC00..0xE000).contains(&lo) {
            return Err(at("lone leading surrogate in hex escape", i));
        }
        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
        char::from_u32(c)
            .map(|c| (c, i + 12))
            .ok_or_else(|| at("invalid escape", i))
    }

    /// Reads any value into a [`Value`] tree.
    pub(crate) fn value(&mut self) -> Res<Value<'a>> {
        Ok(match self.peek() {
            Some(b'"') => Value::Str(self.string()?),
            Some(b'{') => {
                let mut members = Vec::new();
                self.object(&mut |r, k| {
                    let v = r.value()?;
                    members.push((Cow::Owned(k.to_owned()), v));
                    Ok(())
                })?;
                Value::Obj(Obj(members))
            }
            Some(b'[') => {
                let mut items = Vec::new();
                self.array(&mut |r| {
                    items.push(r.value()?);
                    Ok(())
                })?;
                Value::Arr(items)
            }
            Some(b't') => self.literal("true").map(|()| Value::Bool(true))?,
            Some(b'f') => self.literal("false").map(|()| Value::Bool(false))?,
            Some(b'n') => self.literal("null").map(|()| Value::Null)?,
            Some(b'-' | b'0'..=b'9') => Value::Num(self.number()?),
            None => return Err(self.err("EOF while parsing a value")),
            Some(_) => return Err(self.err("expected value")),
        })
    }
}

/// A parsed JSON value borrowing from its text (cold paths; see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `null`.
    Null,
    /// `true`/`false`.
    Bool(bool),
    /// A number, as its (grammar-checked) text.
    Num(&'a str),
    /// A string, unescaped.
    Str(Cow<'a, str>),
    /// An array.
    Arr(Vec<Value<'a>>),
    /// An object, members in text order.
    Obj(Obj<'a>),
}

/// A JSON object whose fields are taken out one by one; a key given twice: the last wins.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Obj<'a>(Vec<(Cow<'a, str>, Value<'a>)>);

impl<'a> Obj<'a> {
    /// Removes and returns the field (the last one, if the key repeats).
    pub fn remove(&mut self, key: &str) -> Option<Value<'a>> {
        let pos = self.0.iter().rposition(|(k, _)| k == key)?;
        // Order-preserving: for the other keys, the last occurrence must stay the last.
        let v = self.0.remove(pos).1;
        self.0.retain(|(k, _)| k != key);
        Some(v)
    }

    /// The field's value (the last one, if the key repeats).
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl Value<'_> {
    /// `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The number as a `u64` when it is a non-negative integer in range.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Num(t) if t.bytes().all(|c| c.is_ascii_digit()) => t.parse().ok(),
            _ => None,
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses `text` as one JSON value.
pub fn parse(text: &str) -> Res<Value<'_>> {
    let mut r = Reader::new(text);
    let v = r.value()?;
    r.end()?;
    Ok(v)
}

/// Parses `text` as a JSON object.
pub fn object(text: &str) -> Res<Obj<'_>> {
    match parse(text)? {
        Value::Obj(o) => Ok(o),
        _ => Err("expected a JSON object".into()),
    }
}

/// A required field.
pub fn take<'a>(o: &mut Obj<'a>, key: &str) -> Res<Value<'a>> {
    o.remove(key).ok_or_else(|| missing(key))
}

/// An optional field: absent and `null` are `None`.
pub fn opt<'a>(o: &mut Obj<'a>, key: &str) -> Option<Value<'a>> {
    o.remove(key).filter(|v| !v.is_null())
}

/// `v` as a string.
pub fn string(v: Value<'_>, key: &str) -> Res<String> {
    match v {
        Value::Str(s) => Ok(s.into_owned()),
        _ => Err(wrong(key, "a string")),
    }
}

/// `v` as a non-negative integer.
pub fn uint(v: &Value<'_>, key: &str) -> Res<u64> {
    v.as_u64()
        .ok_or_else(|| wrong(key, "a non-negative integer"))
}

/// An optional string field (absent or `null`: `None`).
pub fn opt_string(o: &mut Obj<'_>, key: &str) -> Res<Option<String>> {
    opt(o, key).map(|v| string(v, key)).transpose()
}

/// An optional integer field (absent or `null`: `None`).
pub fn opt_uint(o: &mut Obj<'_>, key: &str) -> Res<Option<u64>> {
    opt(o, key).map(|v| uint(&v, key)).transpose()
}

/// `v` as an array.
pub fn array<'a>(v: Value<'a>, key: &str) -> Res<Vec<Value<'a>>> {
    match v {
        Value::Arr(a) => Ok(a),
        _ => Err(wrong(key, "an array")),
    }
}

/// `v` as an object.
pub fn obj<'a>(v: Value<'a>, key: &str) -> Res<Obj<'a>> {
    match v {
        Value::Obj(o) => Ok(o),
        _ => Err(wrong(key, "an object")),
    }
}

/// A list field read like a `Vec` with `#[serde(default)]`: absent is empty, `null` is
/// wrong-typed; each element goes through `f` (given the field's key for its errors).
pub(crate) fn list<'a, T>(
    o: &mut Obj<'a>,
    key: &str,
    f: impl Fn(Value<'a>, &str) -> Res<T>,
) -> Res<Vec<T>> {
    match o.remove(key) {
        None => Ok(Vec::new()),
        Some(v) => array(v, key)?.into_iter().map(|x| f(x, key)).collect(),
    }
}

/// `v` as a topic name.
pub(crate) fn topic(v: Value<'_>, key: &str) -> Res<super::Topic> {
    match v {
        Value::Str(s) => {
            super::Topic::from_wire(&s).map_err(|_| format!("invalid topic name in `{key}`"))
        }
        _ => Err(wrong(key, "a string")),
    }
}

/// A topic name read by a streaming decoder.
pub(crate) fn read_topic(r: &mut Reader<'_>, key: &str) -> Res<super::Topic> {
    let s = r.str(key)?;
    super::Topic::from_wire(&s).map_err(|_| format!("invalid topic name in `{key}`"))
}

/// A list of topic names read by a streaming decoder.
pub(crate) fn read_topics(r: &mut Reader<'_>, key: &str) -> Res<Vec<super::Topic>> {
    let mut out = Vec::new();
    r.list(key, &mut |r| {
        out.push(read_topic(r, key)?);
        Ok(())
    })?;
    Ok(out)
}

/// A `[{topic, watermark}]` list read by a streaming decoder.
pub(crate) fn read_watermarks(r: &mut Reader<'_>, key: &str) -> Res<Vec<super::TopicWatermark>> {
    let mut out = Vec::new();
    r.list(key, &mut |r| {
        let (mut topic, mut watermark) = (None, None);
        r.object(&mut |r, k| match k {
            "topic" => set(&mut topic, read_topic(r, "topic")?, "topic"),
            "watermark" => set(&mut watermark, r.uint("watermark")?, "watermark"),
            _ => r.skip(),
        })?;
        out.push(super::TopicWatermark {
            topic: need(topic, "topic")?,
            watermark: super::Watermark(need(watermark, "watermark")?),
        });
        Ok(())
    })?;
    Ok(out)
}

/// Reads a whole text with `f` (which reads one value), then checks nothing follows.
pub(crate) fn read_all<'a, T>(text: &'a str, f: impl FnOnce(&mut Reader<'a>) -> Res<T>) -> Res<T> {
    let mut r = Reader::new(text);
    let v = f(&mut r)?;
    r.end()?;
    Ok(v)
}

// ---- writing ----------------------------------------------------------------------------

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string: `"`, `\` and control characters escaped (`\b \f \n \r \t`,
/// others `\u00xx`), everything else as is. This is also the canonical form of a string.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// [`write_str`] onto a `String`.
pub fn push_str(s: &str, out: &mut String) {
    let mut buf = std::mem::take(out).into_bytes();
    write_str(s, &mut buf);
    // Only whole UTF-8 sequences and ASCII escapes were appended to valid UTF-8.
    *out = String::from_utf8(buf).unwrap_or_default();
}

/// The canonical form of a number's text, as `serde_json` prints the number it parses:
/// integers that fit `u64`/`i64` as they are, everything else (fractions, exponents, `-0`,
/// integers out of range) as the shortest round-trip `f64`. Out-of-range floats are refused.
fn write_number(t: &str, out: &mut Vec<u8>) -> Res<()> {
    let integer = !t.bytes().any(|c| matches!(c, b'.' | b'e' | b'E'));
    if integer && t != "-0" {
        let fits = if t.starts_with('-') {
            t.parse::<i64>().is_ok()
        } else {
            t.parse::<u64>().is_ok()
        };
        if fits {
            out.extend_from_slice(t.as_bytes());
            return Ok(());
        }
    }
    let f = float::parse(t).ok_or_else(|| "number out of range".to_owned())?;
    out.extend_from_slice(zmij::Buffer::new().format_finite(f).as_bytes());
    Ok(())
}

/// A number's text as `serde_json` would print the number (see [`write_number`]).
pub(crate) fn number_text(t: &str) -> Option<String> {
    let mut out = Vec::new();
    write_number(t, &mut out).ok()?;
    String::from_utf8(out).ok()
}

/// Writes the canonical JSON of a value: object members sorted by key bytes (a repeated key:
/// the last one), no whitespace, strings per [`write_str`], numbers per `serde_json`.
pub(crate) fn write_canonical(v: &Value<'_>, out: &mut Vec<u8>) -> Res<()> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Num(t) => write_number(t, out)?,
        Value::Str(s) => write_str(s, out),
        Value::Arr(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Obj(Obj(members)) => {
            let mut idx: Vec<usize> = (0..members.len()).collect();
            // Stable: equal keys keep text order, so the last of a run is the one that counts.
            idx.sort_by(|&a, &b| members[a].0.as_bytes().cmp(members[b].0.as_bytes()));
            out.push(b'{');
            let mut first = true;
            for (n, &i) in idx.iter().enumerate() {
                let key = &members[i].0;
                if idx.get(n + 1).is_some_and(|&j| members[j].0 == *key) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_str(key, out);
                out.push(b':');
                write_canonical(&members[i].1, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

mod float;
#[cfg(test)]
mod tests;
