use std::any::Any;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::HeaderValue;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::{CaType, TlsRef};
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use super::reload::Reload;
use super::verify::{SpiffeClientVerifier, SpiffeServerVerifier};
use super::{Credentials, IdentityFiles, TlsError, TrustDomains};
use crate::identity::{CertIdentity, SpiffeId};

/// What the inbound handshake learned about the caller, computed once per connection.
#[derive(Debug)]
pub struct PeerIdentity {
    pub id: SpiffeId,
    /// `By=<own id>;URI=<peer id>`, ready to hand to the app as `x-forwarded-client-cert`.
    pub xfcc: HeaderValue,
}

/// One credential set and everything built from it.
pub struct TlsState {
    /// Counts the credential sets installed; part of the outbound pool key.
    pub generation: u64,
    pub credentials: Credentials,
    pub acceptor: Acceptor,
    /// For connections this sidecar originates and verifies itself ([`super::connect`]).
    pub client_config: Arc<ClientConfig>,
    /// Mutual TLS for servers outside pingora (the control plane's gRPC listener): a client
    /// certificate of the trust domain is required, and HTTP/2 is offered.
    pub server_config: Arc<ServerConfig>,
    /// The same server identity asking no client certificate: the CA, whose callers have none
    /// yet and prove themselves with a token instead.
    pub server_config_open: Arc<ServerConfig>,
    /// [`client_config`](Self::client_config) offering the tunnel's protocol instead of HTTP/2
    /// (see [`super::tunnel`]).
    pub tunnel_client_config: Arc<ClientConfig>,
    /// [`client_config`](Self::client_config) offering HTTP/1.1 alone: a request that upgrades
    /// the connection (a WebSocket) goes to the peer sidecar on a connection of its own, since
    /// HTTP/2 between the sidecars has no Upgrade.
    pub http1_client_config: Arc<ClientConfig>,
    /// The inbound end of a tunnel: [`server_config`](Self::server_config) accepting only the
    /// tunnel's protocol.
    pub tunnel_server_config: Arc<ServerConfig>,
    /// The workload certificate and the trust bundle in the form pingora's connector takes.
    pub upstream_cert: Arc<CertKey>,
    pub upstream_ca: Arc<CaType>,
}

/// Holds the current [`TlsState`] and replaces it: when the files change, or (credentials from
/// the control plane's CA) when a new certificate or trust bundle is installed.
pub struct TlsStore {
    /// None when the credentials come from the CA, not from files.
    files: Option<(IdentityFiles, Mutex<Reload<3>>)>,
    trust_domain: String,
    domains: TrustDomains,
    state: ArcSwap<TlsState>,
    /// Whether a reload may change the SPIFFE ID (see [`TlsStore::keep_identity`]).
    identity_fixed: bool,
}

impl TlsStore {
    pub fn load(files: IdentityFiles, trust_domain: &str, domains: TrustDomains) -> Result<Self, TlsError> {
        let reload = Reload::read_now(paths(&files));
        let credentials = Credentials::load(&files, trust_domain)?;
        let state = build(credentials, &domains, 0)?;
        Ok(TlsStore {
            files: Some((files, Mutex::new(reload))),
            trust_domain: trust_domain.to_string(),
            domains,
            state: ArcSwap::from_pointee(state),
            identity_fixed: false,
        })
    }

    /// Refuses, from now on, a reloaded certificate for another SPIFFE ID than the one in
    /// force: a workload's policies were selected for who it was at start.
    pub fn keep_identity(mut self) -> Self {
        self.identity_fixed = true;
        self
    }

    pub fn current(&self) -> Arc<TlsState> {
        self.state.load_full()
    }

    /// The generation of the credentials in force, read without taking a reference (per request).
    pub fn generation(&self) -> u64 {
        self.state.load().generation
    }

    /// A store for credentials from the control plane's CA: until the first is installed it
    /// holds a [`Credentials::placeholder`] for `own` beside the roots given, so handshakes with
    /// peers fail (the sidecar is not ready) while the CA can already be checked.
    pub fn bootstrap(
        own: &SpiffeId,
        roots: Vec<rustls_pki_types::CertificateDer<'static>>,
        domains: TrustDomains,
    ) -> Result<Self, TlsError> {
        let credentials = Credentials::placeholder(own, roots, std::path::Path::new("identity.controlPlane"))?;
        let state = build(credentials, &domains, 0)?;
        Ok(TlsStore {
            files: None,
            trust_domain: own.trust_domain().to_string(),
            domains,
            state: ArcSwap::from_pointee(state),
            identity_fixed: false,
        })
    }

    pub fn files(&self) -> Option<&IdentityFiles> {
        self.files.as_ref().map(|(files, _)| files)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Puts credentials in force for new handshakes (open connections keep theirs).
    pub fn install(&self, credentials: Credentials) -> Result<Arc<TlsState>, TlsError> {
        let generation = self.state.load().generation + 1;
        let state = Arc::new(build(credentials, &self.domains, generation)?);
        self.state.store(state.clone());
        Ok(state)
    }

    /// Reloads when any of the three files changed since the set in force was read. Returns the
    /// new state when one was installed; on error the current state stays in force and the error
    /// is returned once. A set that did not load is tried again at every look, quietly, until it
    /// loads or changes: a certificate issued a little ahead of this clock (not valid yet) is
    /// taken once it is, instead of waiting for the old one to expire with the new one on disk,
    /// and a writer that replaces the certificate before the key is taken once the key follows.
    pub fn reload_if_changed(&self) -> Result<Option<Arc<TlsState>>, TlsError> {
        let Some((files, reload)) = &self.files else { return Ok(None) };
        let mut reload = reload.lock().expect("reload lock");
        reload.look(paths(files), || {
            let credentials = Credentials::load(files, &self.trust_domain)?;
            // Who a workload is was settled at start (policies were selected for it, and the
            // configuration checked against it): a certificate naming another is refused, as
            // it would have been then.
            let own = &self.state.load().credentials.id;
            if self.identity_fixed && credentials.id != *own {
                return Err(TlsError::Identity {
                    path: files.cert.clone(),
                    reason: format!(
                        "the certificate names {}, not {own}, which this process was started as: a workload's identity changes with a restart, never by a reload",
                        credentials.id
                    ),
                });
            }
            self.install(credentials)
        })
    }
}

fn paths(files: &IdentityFiles) -> [&std::path::Path; 3] {
    [&files.cert, &files.key, &files.trust_bundle]
}

fn build(credentials: Credentials, domains: &TrustDomains, generation: u64) -> Result<TlsState, TlsError> {
    let verifier = Arc::new(SpiffeClientVerifier::new(credentials.roots.clone(), domains.clone())?);
    let mut settings = TlsSettings::with_callbacks(Box::new(IdentityCallback { own: credentials.id.clone() }))
        .map_err(|e| TlsError::Config(e.to_string()))?;
    settings.set_cert_resolver(Arc::new(FixedCert(credentials.certified_key.clone())));
    settings.set_client_cert_verifier(verifier.clone());
    settings.enable_h2();
    let mut acceptor = settings.build();

    let mut client_config = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            credentials.roots.clone(),
            domains.clone(),
        )))
        .with_client_cert_resolver(Arc::new(FixedCert(credentials.certified_key.clone())));
    // Sidecars always speak HTTP/2 to each other.
    client_config.alpn_protocols = vec![b"h2".to_vec()];
    // The server is named by the SPIFFE ID in its certificate, never by a DNS name.
    client_config.enable_sni = false;
    // A resumed session skips the certificate; every pooled connection proves its identity afresh.
    client_config.resumption = rustls::client::Resumption::disabled();
    let mut server_config = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(FixedCert(credentials.certified_key.clone())));
    server_config.alpn_protocols = vec![b"h2".to_vec()];
    // Mesh clients never resume (see the client config): tickets and a session cache would only
    // cost each handshake work and each connection memory.
    server_config.send_tls13_tickets = 0;
    server_config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    // The HTTP listener's, in place of the one pingora built (its session cache and tickets):
    // a resumed session restores the chain verified then without verifying it again, so one made
    // before an intermediate expired (or left the bundle's trust) would still be let in. HTTP/1.1
    // besides h2, for callers other than sidecars (a probe or a tool with a mesh certificate).
    let mut http_config = server_config.clone();
    http_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    acceptor.acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(http_config));
    let mut server_config_open = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedCert(credentials.certified_key.clone())));
    server_config_open.alpn_protocols = vec![b"h2".to_vec()];
    server_config_open.send_tls13_tickets = 0;
    let mut tunnel_client_config = client_config.clone();
    tunnel_client_config.alpn_protocols = vec![super::TUNNEL_ALPN.to_vec()];
    let mut http1_client_config = client_config.clone();
    http1_client_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut tunnel_server_config = server_config.clone();
    tunnel_server_config.alpn_protocols = vec![super::TUNNEL_ALPN.to_vec()];
    let upstream_cert =
        Arc::new(CertKey::new(credentials.chain.iter().map(|c| c.to_vec()).collect(), credentials.key_der.clone()));
    let upstream_ca: Arc<CaType> =
        credentials.bundle.iter().map(|c| WrappedX509::new(c.to_vec(), parse_x509)).collect::<Vec<_>>().into();
    Ok(TlsState {
        generation,
        credentials,
        acceptor,
        client_config: Arc::new(client_config),
        server_config: Arc::new(server_config),
        server_config_open: Arc::new(server_config_open),
        tunnel_client_config: Arc::new(tunnel_client_config),
        http1_client_config: Arc::new(http1_client_config),
        tunnel_server_config: Arc::new(tunnel_server_config),
        upstream_cert,
        upstream_ca,
    })
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for FixedCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

struct IdentityCallback {
    own: SpiffeId,
}

#[async_trait]
impl TlsAccept for IdentityCallback {
    async fn handshake_complete_callback(&self, tls: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        // The verifier already refused every certificate without a valid SPIFFE ID. Sessions
        // are not resumed (see `build`); were one ever, a leaf that has expired since proves no
        // identity now, and the listener refuses a connection without one.
        let (_, cert) = x509_parser::parse_x509_certificate(tls.peer_certificate_der()?).ok()?;
        if !cert.validity().is_valid() {
            return None;
        }
        let CertIdentity::Spiffe(id) = crate::identity::cert_identity(&cert) else {
            return None;
        };
        let xfcc = HeaderValue::from_str(&format!("By={};URI={}", self.own, id)).ok()?;
        Some(Arc::new(PeerIdentity { id, xfcc }))
    }
}
