//! JSON Pointers (RFC 6901) into values from outside, for errors that name
//! where a problem is.

use serde_json::Value;

/// A key as a JSON Pointer token; a NUL is shown as `\0` so the pointer
/// itself can be stored and printed.
pub fn escape_token(key: &str) -> String {
    key.replace('~', "~0")
        .replace('/', "~1")
        .replace('\0', "\\0")
}

/// The pointer of the first string or key of `value` holding a NUL
/// (U+0000), which Postgres cannot store; `""` is the value itself.
pub fn find_nul(value: &Value) -> Option<String> {
    find_nul_below(value, &mut String::new())
}

fn find_nul_below(value: &Value, at: &mut String) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(at.clone()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = at.len();
            at.push_str(&format!("/{i}"));
            let found = find_nul_below(item, at);
            at.truncate(len);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let len = at.len();
            at.push('/');
            at.push_str(&escape_token(key));
            let found = if key.contains('\0') {
                Some(at.clone())
            } else {
                find_nul_below(item, at)
            };
            at.truncate(len);
            found
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_nul_is_found_at_its_pointer() {
        assert_eq!(
            find_nul(&json!({"a": ["x", "y\u{0}"]})),
            Some("/a/1".into())
        );
        assert_eq!(
            find_nul(&json!({"a/b~": {"k\u{0}": 1}})),
            Some("/a~1b~0/k\\0".into())
        );
        assert_eq!(find_nul(&json!("\u{0}")), Some(String::new()));
        assert_eq!(find_nul(&json!({"a": [1, true, null, "ok"]})), None);
    }
}
