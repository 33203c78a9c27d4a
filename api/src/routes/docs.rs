//! The contract and its reader: `GET /openapi.json`, and Swagger UI under `/docs`, served
//! from the binary (vendored, no CDN) so that it works offline.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::openapi::OpenApi;
use utoipa_swagger_ui::Config;

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;
use crate::openapi::NotFound;
use crate::state::AppState;

/// The docs routes' part of the document (they are served outside the documented router).
#[derive(utoipa::OpenApi)]
#[openapi(paths(openapi_json, docs_page, docs_index, docs_asset))]
pub struct DocsApi;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// What Swagger UI needs and nothing more: its own scripts and styles, the inline styles
/// React sets on elements, its icons (inline `data:` images in its CSS), and requests to this
/// origin (the document and "Try it out"). Nothing may frame it, and it posts no forms.
pub const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) struct Docs {
    /// The document, serialised once.
    json: Bytes,
    swagger: Arc<Config<'static>>,
}

/// The docs routes, serving `document`.
pub fn router(document: &OpenApi) -> Router<AppState> {
    // Start-up: the document is built from the code, so failing to serialise it is a bug
    // that every test would show.
    let json = serde_json::to_vec(document).expect("the OpenAPI document serialises");
    let swagger = Config::new([OPENAPI_PATH])
        // The default validator badge would send the document to a public service.
        .validator_url("none")
        .persist_authorization(true)
        .try_it_out_enabled(true);
    let docs = Arc::new(Docs {
        json: Bytes::from(json),
        swagger: Arc::new(swagger),
    });
    let page = Router::new()
        .route("/docs/", get(docs_index))
        .route("/docs/{file}", get(docs_asset))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(DOCS_CONTENT_SECURITY_POLICY),
        ));
    Router::new()
        .route(OPENAPI_PATH, get(openapi_json))
        .route("/docs", get(docs_page))
        .merge(page)
        .with_state(docs)
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "docs",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub(crate) async fn openapi_json(State(docs): State<Arc<Docs>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], docs.json.clone())
}

/// The interactive API documentation (Swagger UI).
#[utoipa::path(
    get,
    path = "/docs",
    tag = "docs",
    security(()),
    responses((status = 303, description = "The page is at `/docs/`",
        headers(("Location" = String, description = "`/docs/`"))))
)]
pub(crate) async fn docs_page() -> Redirect {
    // Swagger UI's page loads its files relative to itself, so it lives at `/docs/`.
    Redirect::to("/docs/")
}

/// The interactive API documentation's page.
#[utoipa::path(
    get,
    path = "/docs/",
    tag = "docs",
    security(()),
    responses((status = 200, description = "Swagger UI", content_type = "text/html", body = String))
)]
pub(crate) async fn docs_index(State(docs): State<Arc<Docs>>) -> ApiResult<impl IntoResponse> {
    swagger_file(&docs, "index.html")
}

/// A file of the interactive API documentation (scripts, styles, icons).
#[utoipa::path(
    get,
    path = "/docs/{file}",
    tag = "docs",
    security(()),
    params(("file" = String, Path, description = "File name, e.g. `swagger-ui.css`")),
    responses(
        (status = 200, description = "The file", content(
            ("text/html"), ("text/css"), ("text/javascript"), ("image/png"), ("application/octet-stream"))),
        (status = 404, response = NotFound),
    )
)]
pub(crate) async fn docs_asset(
    State(docs): State<Arc<Docs>>,
    ApiPath(file): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    swagger_file(&docs, &file)
}

fn swagger_file(docs: &Docs, name: &str) -> ApiResult<impl IntoResponse + use<>> {
    let file = utoipa_swagger_ui::serve(name, docs.swagger.clone())
        .map_err(|error| ApiError::Internal(format!("serving Swagger UI's {name}: {error}")))?
        .ok_or(ApiError::NotFound("file"))?;
    Ok((
        [(header::CONTENT_TYPE, file.content_type)],
        file.bytes.into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi as _;

    use super::*;
    use crate::openapi::{base, finish, BEARER};

    #[test]
    fn public_operations_state_that_they_need_no_key() {
        let mut document = base();
        document.merge(DocsApi::openapi());
        let document = serde_json::to_value(finish(document)).unwrap();
        let docs_page = &document["paths"]["/docs"]["get"];
        assert_eq!(docs_page["security"], serde_json::json!([]));
        assert!(docs_page["responses"].get("401").is_none());
        assert_eq!(
            document["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
    }
}
