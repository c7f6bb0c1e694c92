//! Who may act: every action needs `Authorization: Bearer <token>` (compared in constant
//! time), and a request another site's page sent is refused (its `Origin` or
//! `Sec-Fetch-Site` says so). A form on another site cannot set the header; the origin check is
//! a second wall. Without a token the console is read-only.

use axum::http::{HeaderMap, StatusCode, header};
use subtle::ConstantTimeEq;

/// Why an action is refused: the status and a message (never the token).
pub type Refusal = (StatusCode, String);

/// A request from another site's page.
fn cross_site(headers: &HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Some(format!("the browser says this request came from another site ({site})"));
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())?;
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    // Behind a reverse proxy the page's host is the one the proxy was asked for.
    let hosts: Vec<&str> = [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .collect();
    (!hosts.contains(&origin_host))
        .then(|| format!("the request came from {origin}, not from this console ({})", hosts.join(", ")))
}

/// Lets an action through, or says why not.
pub fn authorize(headers: &HeaderMap, token: Option<&str>) -> Result<(), Refusal> {
    if let Some(why) = cross_site(headers) {
        return Err((StatusCode::FORBIDDEN, format!("refused: {why}")));
    }
    let Some(token) = token else {
        return Err((
            StatusCode::FORBIDDEN,
            "this console is read-only: start it with --token-file (or CONNECTOR_CONSOLE_TOKEN) to allow actions"
                .into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => Err((StatusCode::UNAUTHORIZED, "an action needs the header Authorization: Bearer <token>".into())),
        Some(g) if bool::from(g.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        Some(_) => Err((StatusCode::UNAUTHORIZED, "the token is wrong".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_token_is_required_and_cross_site_requests_are_refused() {
        let ok = headers(&[("host", "127.0.0.1:8080"), ("authorization", "Bearer s3cret")]);
        assert!(authorize(&ok, Some("s3cret")).is_ok());
        assert_eq!(authorize(&ok, None).unwrap_err().0, StatusCode::FORBIDDEN, "no token: read-only");
        let wrong = headers(&[("authorization", "Bearer nope")]);
        assert_eq!(authorize(&wrong, Some("s3cret")).unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert_eq!(authorize(&HeaderMap::new(), Some("s3cret")).unwrap_err().0, StatusCode::UNAUTHORIZED);
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("authorization", "Bearer s3cret"),
        ]);
        assert!(authorize(&same, Some("s3cret")).is_ok());
        let other = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
            ("authorization", "Bearer s3cret"),
        ]);
        let (code, why) = authorize(&other, Some("s3cret")).unwrap_err();
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(why.contains("evil.example") && !why.contains("s3cret"), "{why}");
        let proxied = headers(&[
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-host", "sync.example.com"),
            ("origin", "https://sync.example.com"),
            ("authorization", "Bearer s3cret"),
        ]);
        assert!(authorize(&proxied, Some("s3cret")).is_ok(), "behind a proxy");
        let fetched = headers(&[("sec-fetch-site", "cross-site"), ("authorization", "Bearer s3cret")]);
        assert_eq!(authorize(&fetched, Some("s3cret")).unwrap_err().0, StatusCode::FORBIDDEN);
    }
}
