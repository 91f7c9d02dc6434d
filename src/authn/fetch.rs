//! Fetching a JWKS over HTTPS: hyper's HTTP/1.1 client on tokio-rustls with ring, the stack
//! the crate already has, so no new HTTP client comes in.
//!
//! Trust: a URI's server is verified against `caFile` when one is set (an in-cluster issuer:
//! the Kubernetes API server's CA, `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`; a
//! private IdP), otherwise against the image's CA bundle (`SSL_CERT_FILE`, then the usual
//! Debian/Alpine/RHEL paths). Not webpki-roots: roots compiled into the binary change only when
//! Palisade is rebuilt, an operator cannot remove one, and the in-cluster case needs a CA file
//! anyway; the image's `ca-certificates` is what operators already patch. An image without a
//! bundle fails when the provider is built, saying to set `caFile`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::AuthnError;

/// A JWKS larger than this is refused (real ones are a few KiB).
pub const MAX_JWKS_BYTES: usize = 512 * 1024;

/// Where the image's CA bundle may be, in the order looked at.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// Gets the bytes of one JWKS document. The HTTP(S) implementation is [`HttpFetcher`]; the
/// trait lets tests and other sources (a Kubernetes API client) plug in.
#[async_trait]
pub trait FetchJwks: Send + Sync + 'static {
    async fn fetch(&self) -> Result<Vec<u8>, AuthnError>;
}

/// GET of a JWKS URI, one connection per fetch (a fetch is rare), no redirects followed.
pub struct HttpFetcher {
    uri: Uri,
    /// Host as connected to (IPv6 literals without brackets) and port.
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    bearer_token_file: Option<PathBuf>,
}

// === impl HttpFetcher ===

impl HttpFetcher {
    /// `https://` URIs, verified against `ca_file` or the system bundle. Plain `http://` only
    /// to a loopback address: keys fetched in clear across a network could be replaced.
    pub fn new(uri: &str, ca_file: Option<&Path>) -> Result<HttpFetcher, AuthnError> {
        // Never the password in a message: the URI as written, its user information hidden.
        let shown = crate::files::uri_without_credentials(uri);
        let bad = |why: &str| AuthnError::Fetch(format!("{shown}: {why}"));
        let parsed: Uri = uri.parse().map_err(|e| bad(&format!("not a URI ({e})")))?;
        let authority = parsed.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URI are not accepted"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let https = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") if is_loopback(&host) => false,
            Some("http") => return Err(bad("plain http is accepted for loopback addresses only; use https")),
            _ => return Err(bad("scheme must be https")),
        };
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let roots = roots(ca_file)?;
            let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(&e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone()).map_err(|_| bad("host is not a valid server name"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            if ca_file.is_some() {
                return Err(bad("caFile needs an https URI"));
            }
            None
        };
        Ok(HttpFetcher { uri: parsed, host, port, tls, bearer_token_file: None })
    }

    /// Sends the content of `path` as a bearer token with every fetch.
    pub fn with_bearer_token_file(mut self, path: Option<PathBuf>) -> Self {
        self.bearer_token_file = path;
        self
    }

    async fn exchange<S>(&self, io: S) -> Result<Vec<u8>, AuthnError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let err = |what: &str, e: &dyn std::fmt::Display| AuthnError::Fetch(format!("{}: {what}: {e}", self.uri));
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| err("handshake", &e))?;
        // The connection task ends once the sender is dropped and the response is read.
        tokio::spawn(conn);
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = self.uri.authority().map_or("", |a| a.as_str());
        let mut request = Request::get(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json, application/jwk-set+json")
            .header(header::USER_AGENT, concat!("palisade/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| err("request", &e))?;
        if let Some(path) = &self.bearer_token_file {
            let token = crate::files::read_regular(path, 64 * 1024)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .map_err(|e| AuthnError::File { path: path.clone(), reason: e.to_string() })?;
            let value = http::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| AuthnError::File { path: path.clone(), reason: "not a valid bearer token".into() })?;
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let response = sender.send_request(request).await.map_err(|e| err("request", &e))?;
        if response.status() != StatusCode::OK {
            return Err(AuthnError::Fetch(format!("{}: status {}", self.uri, response.status())));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| err("body", &e.to_string()))?
            .to_bytes();
        Ok(body.to_vec())
    }
}

#[async_trait]
impl FetchJwks for HttpFetcher {
    async fn fetch(&self) -> Result<Vec<u8>, AuthnError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| AuthnError::Fetch(format!("{}: connect: {e}", self.uri)))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| AuthnError::Fetch(format!("{}: TLS: {e}", self.uri)))?;
                self.exchange(tls).await
            }
            None => self.exchange(tcp).await,
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The trust anchors for a JWKS host: `ca_file` alone when set, else the system bundle.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, AuthnError> {
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => system_bundle()
            .ok_or_else(|| AuthnError::Fetch("no CA bundle found in the image; set the JWKS caFile".into()))?,
    };
    let file_err = |reason: String| AuthnError::File { path: path.clone(), reason };
    // A policy names the file: a FIFO or a device must not hang or fill the sidecar.
    let pem =
        crate::files::read_regular(&path, crate::files::MAX_KEY_FILE_BYTES).map_err(|e| file_err(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| file_err(e.to_string()))?;
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(file_err("no usable CA certificate".into()));
    }
    Ok(store)
}

fn system_bundle() -> Option<PathBuf> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    from_env.into_iter().chain(SYSTEM_BUNDLES.iter().map(PathBuf::from)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(HttpFetcher::new("http://127.0.0.1:8080/jwks", None).is_ok());
        assert!(HttpFetcher::new("http://[::1]:8080/jwks", None).is_ok());
        assert!(HttpFetcher::new("http://localhost/jwks", None).is_ok());
        for bad in ["http://auth.example.com/jwks", "http://10.0.0.1/jwks", "ftp://x/", "/jwks", "https://u:p@h/"] {
            assert!(HttpFetcher::new(bad, None).is_err(), "{bad}");
        }
        let e = HttpFetcher::new("https://user:S3cret@auth.example/jwks", None).err().unwrap().to_string();
        assert!(e.contains("credentials") && !e.contains("S3cret"), "the password is never shown: {e}");
    }

    #[test]
    fn a_missing_ca_file_is_an_error_at_build_time() {
        let e = HttpFetcher::new("https://auth.example.com/jwks", Some(Path::new("/nonexistent/ca.pem")));
        assert!(matches!(e, Err(AuthnError::File { .. })));
    }
}
