//! Responses lb writes itself: a route's fixed answer or redirect, and the 404 for a request no
//! route takes.

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Sends a complete response with a body.
pub(super) async fn send(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    location: Option<&str>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, content_type)?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    if let Some(location) = location {
        resp.insert_header(header::LOCATION, location)?;
    }
    let head = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(if head { None } else { Some(body) }, true)
        .await?;
    Ok(())
}

/// No route takes the request.
pub(super) async fn not_found(session: &mut Session) -> Result<()> {
    send(
        session,
        404,
        "text/plain; charset=utf-8",
        Bytes::from_static(b"404 Not Found: nothing is served at this address\n"),
        None,
    )
    .await
}

/// A redirect to `to` followed by the request's path and query.
pub(super) async fn redirect(
    session: &mut Session,
    status: u16,
    to: &str,
    path_and_query: &str,
) -> Result<()> {
    let path = if path_and_query.starts_with('/') {
        path_and_query.to_string()
    } else {
        format!("/{path_and_query}")
    };
    let location = format!("{to}{path}");
    let body = Bytes::from(format!("Redirecting to {location}\n"));
    send(
        session,
        status,
        "text/plain; charset=utf-8",
        body,
        Some(&location),
    )
    .await
}

/// A route's fixed answer.
pub(super) async fn fixed(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: String,
) -> Result<()> {
    send(session, status, content_type, Bytes::from(body), None).await
}
