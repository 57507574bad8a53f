//! JSON to `google.protobuf.Value` and back: how params, outputs and data
//! travel, unchanged, between the REST and gRPC faces.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value as ProtoValue};
use serde_json::{Map, Number, Value};

/// `value` as a protobuf `Value` (numbers become doubles, as in JSON).
pub fn to_proto(value: Value) -> ProtoValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(to_proto).collect(),
        }),
        Value::Object(fields) => Kind::StructValue(to_struct(fields)),
    };
    ProtoValue { kind: Some(kind) }
}

/// An object as a protobuf `Struct`.
pub fn to_struct(fields: Map<String, Value>) -> Struct {
    Struct {
        fields: fields.into_iter().map(|(k, v)| (k, to_proto(v))).collect(),
    }
}

/// A protobuf `Value` as JSON; a whole double becomes an integer (a
/// `Value` cannot say which it was, and parameters are mostly integers).
pub fn from_proto(value: ProtoValue) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.into_iter().map(from_proto).collect())
        }
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

/// A protobuf `Struct` as a JSON object.
pub fn from_struct(s: Struct) -> Value {
    Value::Object(
        s.fields
            .into_iter()
            .map(|(k, v)| (k, from_proto(v)))
            .collect(),
    )
}

fn number(n: f64) -> Value {
    // Exactly representable whole numbers only; 2^53 bounds what a double
    // holds without loss.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        Value::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_survives_the_round_trip_through_protobuf() {
        let value = json!({"n": 3, "x": 1.5, "s": "a", "b": true, "z": null,
                           "l": [1, {"k": []}], "big": -9_007_199_254_740_992_i64});
        assert_eq!(from_proto(to_proto(value.clone())), value);
        // Not a number JSON can hold: null, never a panic.
        assert_eq!(
            from_proto(ProtoValue {
                kind: Some(Kind::NumberValue(f64::NAN))
            }),
            Value::Null
        );
    }
}
