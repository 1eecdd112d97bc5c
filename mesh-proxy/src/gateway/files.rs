//! Files the gateway serves itself, for a route with `files:` (a browser page beside the services
//! its scripts call, from the same origin). GET and HEAD only; the path after the route's prefix
//! names a file under the directory (`index.html` for a directory); a path that climbs out of it
//! (`..`), or names a hidden file, is not found; files over 4 MiB are not served.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

/// The largest file served.
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 20;

/// Answers `method` for `rest` (the request path after the route's prefix) from `dir`.
pub(crate) async fn serve(dir: PathBuf, rest: String, method: Method) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, format!("mesh: gateway: {method} on a file"));
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let Some(path) = resolve(&dir, &rest) else {
        return text(StatusCode::NOT_FOUND, format!("mesh: gateway: no file {rest:?}"));
    };
    let file = match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_file() && meta.len() <= MAX_FILE_BYTES => tokio::fs::read(&path).await,
        Ok(meta) if meta.is_file() => {
            return text(StatusCode::NOT_FOUND, format!("mesh: gateway: {rest:?} is over {MAX_FILE_BYTES} bytes"));
        }
        _ => return text(StatusCode::NOT_FOUND, format!("mesh: gateway: no file {rest:?}")),
    };
    let Ok(bytes) = file else {
        return text(StatusCode::NOT_FOUND, format!("mesh: gateway: {rest:?} cannot be read"));
    };
    let length = bytes.len();
    let body = if method == Method::HEAD { Bytes::new() } else { Bytes::from(bytes) };
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if method == Method::HEAD {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

/// The file `rest` names under `dir`, unless it leaves it or is hidden.
fn resolve(dir: &Path, rest: &str) -> Option<PathBuf> {
    let rest = rest.split(['?', '#']).next().unwrap_or_default().trim_start_matches('/');
    let mut path = dir.to_path_buf();
    for segment in rest.split('/').filter(|s| !s.is_empty()) {
        if segment.starts_with('.') || segment.contains(['\\', '\0', '%']) {
            return None;
        }
        path.push(segment);
    }
    if rest.is_empty() || rest.ends_with('/') {
        path.push("index.html");
    }
    Some(path)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or_default() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_directory() {
        let dir = Path::new("/srv/www");
        assert_eq!(resolve(dir, ""), Some(PathBuf::from("/srv/www/index.html")));
        assert_eq!(resolve(dir, "/"), Some(PathBuf::from("/srv/www/index.html")));
        assert_eq!(resolve(dir, "app.js?v=1"), Some(PathBuf::from("/srv/www/app.js")));
        assert_eq!(resolve(dir, "a/b/"), Some(PathBuf::from("/srv/www/a/b/index.html")));
        for bad in ["../etc/passwd", "a/../../x", ".env", "a/.git/config", "%2e%2e/x", "a\\b"] {
            assert_eq!(resolve(dir, bad), None, "{bad}");
        }
        assert_eq!(content_type(Path::new("x/index.html")), "text/html; charset=utf-8");
    }

    #[tokio::test]
    async fn files_are_served_and_what_is_missing_or_not_a_get_is_refused() {
        let dir = std::env::temp_dir().join(format!("mesh-gw-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("index.html"), "<p>hi</p>").unwrap_or_else(|e| panic!("{e}"));
        let page = serve(dir.clone(), "/".into(), Method::GET).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let head = serve(dir.clone(), "index.html".into(), Method::HEAD).await;
        assert_eq!(head.headers()[http::header::CONTENT_LENGTH], "9");
        assert_eq!(serve(dir.clone(), "nope.js".into(), Method::GET).await.status(), StatusCode::NOT_FOUND);
        assert_eq!(serve(dir.clone(), "/".into(), Method::POST).await.status(), StatusCode::METHOD_NOT_ALLOWED);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
