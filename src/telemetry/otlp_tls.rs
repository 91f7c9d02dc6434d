//! TLS to an `https://` OTLP collector, verified against the CA certificates of one PEM file
//! (`TraceSettings::tls_roots`: `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`,
//! `telemetry.otlp.trustBundle` or the system's bundle) and nothing else: tonic's rustls client
//! for gRPC, and for HTTP/protobuf a rustls connector under opentelemetry-http's hyper client.
//! rustls with ring, TLS 1.2 and 1.3, the collector's name checked against its certificate.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The collector's CA certificates, read once when the exporter is built.
pub(super) struct CollectorRoots {
    pem: Vec<u8>,
    store: rustls::RootCertStore,
}

impl CollectorRoots {
    pub(super) fn read(path: &Path) -> Result<CollectorRoots, String> {
        let why = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let pem = crate::files::read_regular(path, crate::files::MAX_KEY_FILE_BYTES).map_err(|e| why(&e))?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| why(&e))?;
        let mut store = rustls::RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(why(&"no usable CA certificate"));
        }
        Ok(CollectorRoots { pem, store })
    }

    /// For the gRPC exporter: tonic checks the endpoint's host against the certificate.
    pub(super) fn grpc(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.pem))
    }

    /// For the HTTP/protobuf exporter: HTTP/1.1 over rustls.
    pub(super) fn http_client(&self, timeout: Duration) -> Result<HyperClient<HttpsConnector>, String> {
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(self.store.clone())
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = HttpsConnector { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), timeout };
        Ok(HyperClient::new(connector, timeout, None))
    }
}

/// Opens TLS connections to the host and port of the URI it is given (443 by default).
#[derive(Clone)]
pub(super) struct HttpsConnector {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for HttpsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsConnector").finish_non_exhaustive()
    }
}

impl tower::Service<http::Uri> for HttpsConnector {
    type Response = TokioIo<TlsConnection>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (tls, timeout) = (self.tls.clone(), self.timeout);
        Box::pin(async move {
            let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|_| invalid("not a valid server name"))?;
            let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{uri}: timed out"));
            let tcp = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| timed_out())??;
            let _ = tcp.set_nodelay(true);
            let stream = tokio::time::timeout(timeout, tls.connect(name, tcp)).await.map_err(|_| timed_out())??;
            Ok(TokioIo::new(TlsConnection(stream)))
        })
    }
}

/// A TLS connection as hyper's pooling client takes one.
pub(super) struct TlsConnection(tokio_rustls::client::TlsStream<TcpStream>);

impl Connection for TlsConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
