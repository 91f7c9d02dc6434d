//! The Kubernetes API server, as the control plane reaches it from inside the cluster: the
//! TokenReview that proves who a service-account token belongs to, and the pod it names (whose
//! labels select policies). Plain HTTP/1.1 requests on hyper and tokio-rustls, one connection
//! each: both are rare (a token is reviewed when a certificate is asked for or a stream opens).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tokens::Proven;
use super::Refused;

/// Where a pod finds the API server and its own credentials.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A TokenReview or a pod is a few KiB; more is not an answer to trust.
const MAX_ANSWER_BYTES: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the control plane needs to know of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

/// The API server: its address, how it is trusted, and the control plane's own token.
pub struct KubeApi {
    host: String,
    port: u16,
    /// The `Host` header: as the URL wrote it (an IPv6 address in brackets).
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    token_file: Option<PathBuf>,
}

impl KubeApi {
    /// The API server as a pod sees it: `KUBERNETES_SERVICE_HOST`/`_PORT`, the service
    /// account's CA and token.
    pub fn in_cluster() -> Result<KubeApi, String> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
            "KUBERNETES_SERVICE_HOST is not set: not running in a pod; give the API server's url".to_string()
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        KubeApi::new(&format!("https://{host}:{port}"), Some(&dir.join("ca.crt")), Some(&dir.join("token")))
    }

    /// An API server at `url`: `https://` verified against `ca_file` (the system's roots
    /// without one), or `http://` on loopback only (tests, `kubectl proxy`).
    pub fn new(url: &str, ca_file: Option<&Path>, token_file: Option<&Path>) -> Result<KubeApi, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: not a URL ({e})"))?;
        let authority = uri.authority().ok_or_else(|| format!("{url}: no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http")
                if host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) || host == "localhost" =>
            {
                false
            }
            _ => return Err(format!("{url}: the API server is reached over https (plain http on loopback only)")),
        };
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            if let Some(ca) = ca_file {
                use rustls::pki_types::pem::PemObject;
                for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("{}: {e}", ca.display()))?
                {
                    roots.add(cert.map_err(|e| format!("{}: {e}", ca.display()))?).map_err(|e| e.to_string())?;
                }
            }
            if roots.is_empty() {
                return Err(format!("{url}: give the API server's CA (caFile)"));
            }
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            let name = ServerName::try_from(host.clone()).map_err(|e| format!("{url}: {e}"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let authority = authority.as_str().to_string();
        Ok(KubeApi { host, port, authority, tls, token_file: token_file.map(Path::to_path_buf) })
    }

    /// Who `token` belongs to, by the API server's TokenReview for `audience`.
    pub async fn token_review(&self, token: &str, audience: &str) -> Result<Proven, Refused> {
        let review = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        });
        let (status, answer) = self
            .call(Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews", Some(review))
            .await
            .map_err(Refused::Unavailable)?;
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(Refused::Unavailable(format!("TokenReview answered {status}: {}", message(&answer))));
        }
        let result = &answer["status"];
        if result["authenticated"] != true {
            let error = result["error"].as_str().unwrap_or("not authenticated").to_string();
            // The API server says why in words only; these are the ones it uses.
            return Err(if error.contains("expired") {
                Refused::Expired
            } else if error.contains("audience") {
                Refused::Audience(error)
            } else {
                Refused::Token(error)
            });
        }
        // The API server names the audiences it checked; none named means the token is the API
        // server's own (an authenticator that does not check audiences answers so): a pod's
        // ordinary API token must not pass for a Palisade one.
        let audiences: Vec<&str> =
            result["audiences"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !audiences.contains(&audience) {
            return Err(Refused::Audience(format!(
                "the API server validated it for {audiences:?}, not for {audience:?}"
            )));
        }
        let user = &result["user"];
        let username = user["username"].as_str().unwrap_or_default();
        let extra = |key: &str| user["extra"][key][0].as_str().map(str::to_string);
        Proven::from_username(
            username,
            extra("authentication.kubernetes.io/pod-name"),
            extra("authentication.kubernetes.io/pod-uid"),
        )
    }

    /// A pod's uid, service account and labels.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<PodInfo, String> {
        let path = format!("/api/v1/namespaces/{}/pods/{}", segment(namespace)?, segment(name)?);
        let (status, pod) = self.call(Method::GET, &path, None).await?;
        if status != StatusCode::OK {
            return Err(format!("GET {path} answered {status}: {}", message(&pod)));
        }
        let labels = pod["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        Ok(PodInfo {
            uid: pod["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
            service_account: pod["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_string(),
            labels,
        })
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<(StatusCode, Value), String> {
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| format!("the API server did not answer within {TIMEOUT:?}"))?
    }

    async fn exchange(&self, method: Method, path: &str, body: Option<Value>) -> Result<(StatusCode, Value), String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to the API server {}:{}: {e}", self.host, self.port))?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::ACCEPT, "application/json");
        if let Some(file) = &self.token_file {
            // Read at each call: the kubelet rotates the projected token in place.
            let token = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        if !bytes.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(bytes)).map_err(|e| e.to_string())?;
        let response = match &self.tls {
            Some((connector, name)) => {
                let tls =
                    connector.connect(name.clone(), tcp).await.map_err(|e| format!("TLS to the API server: {e}"))?;
                send(TokioIo::new(tls), request).await?
            }
            None => send(TokioIo::new(tcp), request).await?,
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the API server's answer: {e}"))?
            .to_bytes();
        let value = serde_json::from_slice(&body).map_err(|e| format!("the API server's answer is not JSON: {e}"))?;
        Ok((status, value))
    }
}

async fn send<I>(io: I, request: Request<Full<Bytes>>) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP to the API server: {e}"))?;
    tokio::spawn(connection);
    sender.send_request(request).await.map_err(|e| format!("HTTP to the API server: {e}"))
}

/// A path segment from a name the API server would accept (DNS labels and subdomains).
fn segment(name: &str) -> Result<&str, String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    ok.then_some(name).ok_or_else(|| format!("{name:?} is not a Kubernetes name"))
}

fn message(answer: &Value) -> String {
    answer["message"].as_str().unwrap_or_default().chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::KubeApi;

    #[test]
    fn an_ipv6_api_server_is_named_in_brackets_in_the_host_header() {
        // An IPv6-only cluster's KUBERNETES_SERVICE_HOST is an IPv6 address.
        let api = KubeApi::new("http://[::1]:8080", None, None).unwrap();
        assert_eq!((api.host.as_str(), api.port, api.authority.as_str()), ("::1", 8080, "[::1]:8080"));
        let api = KubeApi::new("http://localhost:8080", None, None).unwrap();
        assert_eq!(api.authority, "localhost:8080");
    }
}
