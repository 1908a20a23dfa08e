//! A small JSON Schema walker over the committed OpenAPI document: values
//! generated from a schema (valid ones, and ones broken on purpose), and a
//! check that a value fits a schema. It knows the subset utoipa emits:
//! `$ref`, `type` (one or a list), `enum`, `oneOf`, `properties`,
//! `required`, `additionalProperties`, `items`, `minimum`, `format`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// A seeded pseudo-random source (splitmix64): a failing run is repeated
/// with its seed (`TFC_FUZZ_SEED`).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Strings that tend to find mistakes: empty, long, control characters,
/// path tricks, non-ASCII, almost-valid names.
const NASTY_STRINGS: &[&str] = &[
    "",
    " ",
    "default",
    "x",
    "..",
    "../../etc/passwd",
    "/",
    "/tmp",
    "a/b",
    "\u{0}",
    "\n",
    "\"'\\",
    "ünïcödé",
    "🦀",
    "-1",
    "0",
    "null",
    "vm-00000000",
    "UPPER",
    "name with spaces",
];

/// Numbers at the edges of the integer formats and beyond them.
fn edge_number(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => json!(-1),
        1 => json!(u32::MAX),
        2 => json!(u64::from(u32::MAX) + 1),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => json!(1e300),
        6 => json!(-0.5),
        7 => json!(0),
        // Past u64: serde_json keeps it as a float.
        8 => serde_json::from_str("18446744073709551616").unwrap(),
        9 => json!(255),
        10 => json!(256),
        _ => json!(1.5),
    }
}

/// The OpenAPI document with its components, for `$ref`s.
#[derive(Debug)]
pub struct Doc {
    pub root: Value,
    /// Values that mean something to the daemon under test, by property
    /// name (`vm_type`: a configured type); used for half of the
    /// properties so named, so that valid requests reach past validation.
    pub hints: BTreeMap<String, Vec<Value>>,
}

impl Doc {
    pub fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut schema = schema;
        while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unsupported $ref {reference}"));
            schema = &self.root["components"]["schemas"][name];
            assert!(!schema.is_null(), "dangling $ref {reference}");
        }
        schema
    }

    fn types(schema: &Value) -> Vec<&str> {
        match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ if schema.get("properties").is_some() => vec!["object"],
            _ => Vec::new(),
        }
    }

    /// A value that fits `schema`, small and often edged (least and most).
    pub fn generate(&self, schema: &Value, rng: &mut Rng, depth: usize) -> Value {
        let schema = self.resolve(schema);
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            return rng.pick(options).clone();
        }
        if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
            return self.generate(rng.pick(options), rng, depth);
        }
        let types = Self::types(schema);
        if types.is_empty() {
            // Unconstrained: anything.
            return json!(rng.pick(NASTY_STRINGS));
        }
        // `null` where allowed, but mostly the real type.
        let non_null: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
        if non_null.is_empty() || (types.contains(&"null") && rng.one_in(4)) {
            return Value::Null;
        }
        match *rng.pick(&non_null) {
            "boolean" => json!(rng.one_in(2)),
            "integer" => {
                let min = schema.get("minimum").and_then(Value::as_i64).unwrap_or(0);
                let max: i64 = match schema.get("format").and_then(Value::as_str) {
                    Some("int32") => u32::MAX as i64,
                    _ => i64::MAX,
                };
                match rng.below(4) {
                    0 => json!(min),
                    1 => json!(min.saturating_add(rng.below(10) as i64)),
                    2 => json!(min.saturating_add(rng.below(100_000) as i64)),
                    _ => json!(min.max(max - rng.below(3) as i64)),
                }
            }
            "number" => json!(rng.below(1000) as f64 / 1000.0),
            "string" => {
                if rng.one_in(2) {
                    json!(rng.pick(NASTY_STRINGS))
                } else {
                    let len = rng.below(12);
                    json!((0..len)
                        .map(|_| (b'a' + rng.below(26) as u8) as char)
                        .collect::<String>())
                }
            }
            "array" => {
                let len = if depth > 3 { 0 } else { rng.below(4) };
                let items = schema.get("items").cloned().unwrap_or(json!({}));
                Value::Array(
                    (0..len)
                        .map(|_| self.generate(&items, rng, depth + 1))
                        .collect(),
                )
            }
            "object" => self.generate_object(schema, rng, depth),
            other => panic!("unsupported schema type {other}"),
        }
    }

    fn generate_object(&self, schema: &Value, rng: &mut Rng, depth: usize) -> Value {
        let mut object = Map::new();
        let required = required(schema);
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                // Required ones always; each optional one half the time.
                if depth < 4 && (required.contains(&name.as_str()) || rng.one_in(2)) {
                    let value = match self.hints.get(name) {
                        Some(hints) if rng.one_in(2) => rng.pick(hints).clone(),
                        _ => self.generate(property, rng, depth + 1),
                    };
                    object.insert(name.clone(), value);
                }
            }
        }
        if let Some(extra @ Value::Object(_)) = schema.get("additionalProperties") {
            for _ in 0..rng.below(3) {
                let key = rng.pick(NASTY_STRINGS).to_string();
                object.insert(key, self.generate(extra, rng, depth + 1));
            }
        }
        Value::Object(object)
    }

    /// A value broken in one way: a wrong type somewhere, a required field
    /// missing, an unknown field, an edge number, a value outside an enum.
    pub fn mutate(&self, schema: &Value, value: Value, rng: &mut Rng) -> Value {
        let schema = self.resolve(schema);
        match value {
            Value::Object(mut object) if !object.is_empty() && !rng.one_in(4) => {
                let keys: Vec<String> = object.keys().cloned().collect();
                let key = rng.pick(&keys).clone();
                let property = schema
                    .get("properties")
                    .and_then(|p| p.get(&key))
                    .cloned()
                    .unwrap_or(json!({}));
                match rng.below(3) {
                    0 => {
                        object.remove(&key);
                    }
                    _ => {
                        let inner = object.remove(&key).unwrap_or(Value::Null);
                        object.insert(key, self.mutate(&property, inner, rng));
                    }
                }
                Value::Object(object)
            }
            Value::Object(mut object) => {
                object.insert("unknown_field".to_owned(), json!(1));
                Value::Object(object)
            }
            _ => match rng.below(8) {
                0 => edge_number(rng),
                1 => json!("not-in-any-enum"),
                2 => json!([]),
                3 => json!({}),
                4 => json!(true),
                5 => Value::Null,
                6 => json!(rng.pick(NASTY_STRINGS)),
                _ => Value::Array(vec![value]),
            },
        }
    }

    /// Where `value` does not fit `schema`, as a JSON-pointer-like path
    /// and what is wrong; `None` when it fits.
    pub fn mismatch(&self, schema: &Value, value: &Value, at: &str) -> Option<String> {
        let schema = self.resolve(schema);
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            return (!options.contains(value)).then(|| format!("{at}: {value} not in {options:?}"));
        }
        if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
            let fits = options
                .iter()
                .filter(|o| self.mismatch(o, value, at).is_none())
                .count();
            return (fits == 0).then(|| format!("{at}: {value} fits no oneOf option"));
        }
        let types = Self::types(schema);
        if types.is_empty() {
            return None;
        }
        let fits_type = types.iter().any(|t| match *t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        });
        if !fits_type {
            return Some(format!("{at}: {value} is not of type {types:?}"));
        }
        if let (Some(min), Some(n)) = (
            schema.get("minimum").and_then(Value::as_f64),
            value.as_f64(),
        ) {
            if n < min {
                return Some(format!("{at}: {n} is below the minimum {min}"));
            }
        }
        match value {
            Value::Array(items) => {
                let item_schema = schema.get("items")?;
                items
                    .iter()
                    .enumerate()
                    .find_map(|(i, item)| self.mismatch(item_schema, item, &format!("{at}/{i}")))
            }
            Value::Object(object) => {
                for name in required(schema) {
                    if !object.contains_key(name) {
                        return Some(format!("{at}: required {name:?} missing"));
                    }
                }
                let properties = schema.get("properties").and_then(Value::as_object);
                for (name, field) in object {
                    let at = format!("{at}/{name}");
                    match properties.and_then(|p| p.get(name)) {
                        Some(property) => {
                            if let Some(m) = self.mismatch(property, field, &at) {
                                return Some(m);
                            }
                        }
                        None => match schema.get("additionalProperties") {
                            Some(Value::Bool(false)) => {
                                return Some(format!("{at}: not a documented field"))
                            }
                            Some(extra @ Value::Object(_)) => {
                                if let Some(m) = self.mismatch(extra, field, &at) {
                                    return Some(m);
                                }
                            }
                            _ => {}
                        },
                    }
                }
                None
            }
            _ => None,
        }
    }
}

fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}
