//! Static files for browser tests: `GET /web/{path}` serves files below the directory named by
//! the `KHALA_DEV_WEB_ROOT` environment variable (unset → the route answers 404), so a page
//! and the khala-sync wasm package are same-origin with the sync routes (no CORS needed).
//!
//! Only regular files inside the root are served: `..`, absolute and hidden path segments
//! are refused. Directories serve their `index.html`.

use std::path::{Component, Path, PathBuf};

use axum::extract::Path as UrlPath;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Environment variable naming the directory served under `/web/`.
pub(crate) const WEB_ROOT_ENV: &str = "KHALA_DEV_WEB_ROOT";

/// The `/web/` routes (merged into the main router).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/web/", get(|| serve(String::new())))
        .route("/web/{*path}", get(|UrlPath(p): UrlPath<String>| serve(p)))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn resolve(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(s) if !s.to_string_lossy().starts_with('.') => out.push(s),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

async fn serve(rel: String) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "not found").into_response();
    let Some(root) = std::env::var_os(WEB_ROOT_ENV) else {
        return not_found();
    };
    let Some(mut path) = resolve(Path::new(&root), &rel) else {
        return not_found();
    };
    if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_dir()) {
        path.push("index.html");
    }
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(&path)),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let root = Path::new("/srv/web");
        assert_eq!(
            resolve(root, "pkg/index.js"),
            Some(PathBuf::from("/srv/web/pkg/index.js"))
        );
        assert_eq!(resolve(root, "../etc/passwd"), None);
        assert_eq!(resolve(root, "/etc/passwd"), None);
        assert_eq!(resolve(root, "a/.git/config"), None);
        assert_eq!(content_type(Path::new("x.wasm")), "application/wasm");
    }
}
