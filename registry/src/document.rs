//! What the documents operators write into etcd (authorization and service policies) share:
//! size-capped JSON decoding whose errors name the line and column, and gRPC method patterns.

use serde::de::DeserializeOwned;

/// Decodes a JSON document of at most `max` bytes; the error says what is wrong and where.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, String> {
    if bytes.len() > max {
        return Err(format!("{} bytes, over the {max}-byte limit", bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Whether a method pattern (`/pkg.Service/Method`, `/pkg.Service/Prefix*`, `*`) fits `path`.
pub(crate) fn method_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exactly_by_prefix_or_everything() {
        assert!(method_matches("*", "/a.B/C"));
        assert!(method_matches("/a.B/*", "/a.B/C"));
        assert!(method_matches("/a.B/Get*", "/a.B/GetOne"));
        assert!(!method_matches("/a.B/Get*", "/a.B/Put"));
        assert!(method_matches("/a.B/C", "/a.B/C"));
        assert!(!method_matches("/a.B/C", "/a.B/CD"));
        assert!(decode::<serde_json::Value>(b"{}", 1).is_err_and(|e| e.contains("over the 1-byte limit")));
    }
}
