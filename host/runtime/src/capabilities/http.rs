//! Outgoing HTTP (`wasi:http/outgoing-handler`), only to granted origins, through the SSRF guard.
//!
//! A grant is an origin: `scheme://host[:port]`. A request goes out only if its scheme, host and
//! port equal a grant's. The host is resolved and checked like a TCP grant. For `http://` the
//! request is then sent to the checked address (the `Host` header keeps the name), so DNS cannot
//! change between check and connect; for `https://` the connection goes by name and the
//! certificate check binds it to that name.

use std::sync::Arc;

use super::HostNotes;

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiHttpHooks};

use super::net::resolve_guarded;

pub use tend_manifest::grant::HttpGrant;

/// Per-invocation HTTP policy; notes what it refused into the report.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    grants: Arc<Vec<HttpGrant>>,
    notes: HostNotes,
}

impl HttpPolicy {
    pub fn new(grants: &[String], notes: HostNotes) -> Self {
        HttpPolicy {
            grants: Arc::new(
                grants
                    .iter()
                    .filter_map(|g| HttpGrant::parse(g).ok())
                    .collect(),
            ),
            notes,
        }
    }
}

fn note(notes: &HostNotes, message: String) {
    tracing::info!("{message}");
    notes.push(message);
}

type SendResult = Result<
    (
        http::Response<wasmtime_wasi_http::WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let grants = self.grants.clone();
        let notes = self.notes.clone();
        Box::new(async move {
            let uri = request.uri().clone();
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let origin = format!("{}://{}:{port}", if https { "https" } else { "http" }, host);
            if !grants
                .iter()
                .any(|g| g.https == https && g.host == host && g.port == port)
            {
                note(
                    &notes,
                    format!("http request to {origin} denied: origin not granted"),
                );
                return Err(HttpError::HttpRequestDenied);
            }
            let (addrs, refused) = resolve_guarded(&host, port).await;
            let Some(addr) = addrs.first().copied() else {
                for r in refused {
                    note(&notes, format!("http request to {origin} denied: {r}"));
                }
                return Err(HttpError::DestinationIpProhibited);
            };
            if !https {
                // Pin the checked address; the Host header (already set) keeps the name.
                let mut parts = uri.into_parts();
                parts.authority = Some(
                    addr.to_string()
                        .parse()
                        .map_err(|_| HttpError::HttpRequestUriInvalid)?,
                );
                *request.uri_mut() =
                    http::Uri::from_parts(parts).map_err(|_| HttpError::HttpRequestUriInvalid)?;
            }
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            HttpGrant::parse("https://Status.Example.com"),
            Ok(HttpGrant {
                https: true,
                host: "status.example.com".into(),
                port: 443
            })
        );
        assert_eq!(
            HttpGrant::parse("http://127.0.0.1:8080/"),
            Ok(HttpGrant {
                https: false,
                host: "127.0.0.1".into(),
                port: 8080
            })
        );
        assert_eq!(
            HttpGrant::parse("http://[::1]:81").map(|g| g.host),
            Ok("::1".into())
        );
        assert!(HttpGrant::parse("ftp://x").is_err());
        assert!(HttpGrant::parse("https://x/path").is_err());
        assert!(HttpGrant::parse("https://user@x").is_err());
        assert!(HttpGrant::parse("https://x:http").is_err());
    }
}
