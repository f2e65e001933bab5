//! The identity service: signs workloads' certificates with the cluster's issuer.
//!
//! A request names a SPIFFE ID `spiffe://<trust domain>/ns/<namespace>/sa/<account>`
//! and carries a service-account token and a certificate signing request. The
//! token is reviewed by the Kubernetes API (a TokenReview for the audience
//! [`TOKEN_AUDIENCE`]); only when its user is that service account,
//! `system:serviceaccount:<namespace>:<account>`, is a leaf signed over the
//! request's public key, valid for [`Config::lifetime`]. Every refusal is logged
//! with its reason (never the token) and counted by result.
//!
//! The service has a listener of its own, served over TLS 1.3 with a certificate
//! the issuer signs for [`Config::server_id`] at start: clients have no
//! certificate yet, so they are not asked for one, but they check the server's
//! identity against their trust anchors before sending a token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use api::certify::identity_server::{Identity, IdentityServer};
use api::certify::{CertifyRequest, CertifyResponse, TOKEN_AUDIENCE};
use api::identity::SpiffeId;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use proxy::pki::{Ca, Validity};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tonic::{Code, Request, Response, Status};

/// What the service signs, and with what.
#[derive(Debug, Clone)]
pub struct Config {
    /// The trust domain of every identity it signs.
    pub trust_domain: String,
    /// How long a signed leaf is valid.
    pub lifetime: Duration,
    /// The issuer's certificate chain (PEM, issuer first).
    pub issuer_chain: PathBuf,
    /// The issuer's PKCS#8 private key (PEM).
    pub issuer_key: PathBuf,
    /// The trust anchors the issuer chains to (PEM).
    pub trust_anchors: PathBuf,
    /// The identity the service itself presents to clients.
    pub server_id: SpiffeId,
}

/// How long the service's own certificate is valid. The issuer is read once at
/// start, so a new issuer means a restart, which also renews this certificate.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The loaded service and the TLS config it is served with.
pub struct Server {
    server: IdentityServer<Service>,
    tls: Arc<ServerConfig>,
}

/// Certify requests by result (`ok` or the refusal's gRPC code).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    certify: Family<ResultLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

impl Metrics {
    /// Registers the metrics under `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "certify_requests",
            "Certificate requests by result: ok, or the gRPC code of the refusal",
            m.certify.clone(),
        );
        m
    }

    fn count(&self, result: &str) {
        self.certify
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }
}

/// The gRPC identity service.
pub struct Service {
    client: Client,
    issuer: Ca,
    trust_domain: String,
    lifetime: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("trust_domain", &self.trust_domain)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Loads the issuer named by `config`; reviews tokens through `client`. Fails,
    /// naming the file or the problem, when the issuer cannot sign.
    pub fn load(client: Client, config: &Config, metrics: Metrics) -> anyhow::Result<Server> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let issuer = Ca::load(
            &read(&config.issuer_chain)?,
            &read(&config.issuer_key)?,
            &read(&config.trust_anchors)?,
        )
        .with_context(|| format!("loading the issuer {}", config.issuer_chain.display()))?;
        anyhow::ensure!(
            config.lifetime >= Duration::from_secs(10),
            "a leaf lifetime of {:?} is too short",
            config.lifetime
        );
        let own = issuer
            .issue(
                &config.server_id,
                &[],
                Validity::for_duration(SERVER_CERT_LIFETIME),
            )?
            .credentials(issuer.root_pem())
            .context("loading the identity service's own certificate")?;
        let tls = own.server_config_without_client_auth(&[b"h2".to_vec()])?;
        let server = IdentityServer::new(Self {
            client,
            issuer,
            trust_domain: config.trust_domain.clone(),
            lifetime: config.lifetime,
            metrics,
        });
        Ok(Server { server, tls })
    }

    /// Checks the request and signs its key, or says why not.
    async fn sign(&self, req: CertifyRequest) -> Result<CertifyResponse, Status> {
        let id = SpiffeId::parse(&req.identity)
            .map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
        let account = service_account_of(&id, &self.trust_domain)
            .map_err(|why| Status::invalid_argument(format!("identity {id}: {why}")))?;
        let token = std::str::from_utf8(&req.token)
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Status::unauthenticated("the token is empty or not UTF-8"))?;
        let user = self.review(token).await?;
        if user != account {
            return Err(Status::permission_denied(format!(
                "the token is for {user}, not {account}"
            )));
        }
        let validity = Validity::for_duration(self.lifetime);
        let mut chain = self
            .issuer
            .sign_request(&req.certificate_signing_request, &id, validity)
            .map_err(|e| match e {
                proxy::pki::PkiError::Request(_) => Status::invalid_argument(e.to_string()),
                e => Status::internal(e.to_string()),
            })?
            .into_iter()
            .map(|der| der.to_vec());
        let leaf = chain.next().unwrap_or_default();
        let until = validity
            .not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(CertifyResponse {
            leaf_certificate: leaf,
            intermediate_certificates: chain.collect(),
            valid_until_unix_seconds: i64::try_from(until.as_secs()).unwrap_or(i64::MAX),
        })
    }

    /// The user a token authenticates, per the Kubernetes API, for our audience.
    async fn review(&self, token: &str) -> Result<String, Status> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("reviewing the token: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            return Err(Status::unauthenticated(format!("token review: {why}")));
        }
        status
            .user
            .and_then(|u| u.username)
            .ok_or_else(|| Status::unauthenticated("token review: no user name"))
    }
}

impl Server {
    /// Serves the identity service over TLS on `listener` until `shutdown` turns
    /// true. Handshakes run on their own tasks, so a slow client holds up no other.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), tonic::transport::Error> {
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(self.tls);
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "identity listener accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::info!(%peer, %error, "identity TLS handshake failed");
                        }
                        Err(_) => tracing::info!(%peer, "identity TLS handshake timed out"),
                    }
                });
            }
        });
        let incoming = futures::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|conn| (conn, rx))
        });
        let mut stop = shutdown;
        let served = tonic::transport::Server::builder()
            .add_service(self.server)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        accept.abort();
        served
    }
}

/// The Kubernetes user name of the service account `id` names, if `id` is a
/// workload identity in `trust_domain`.
fn service_account_of(id: &SpiffeId, trust_domain: &str) -> Result<String, String> {
    if id.trust_domain() != trust_domain {
        return Err(format!("not in trust domain {trust_domain:?}"));
    }
    let (ns, sa) = id
        .workload_parts()
        .ok_or("not of the form /ns/<namespace>/sa/<service account>")?;
    Ok(format!("system:serviceaccount:{ns}:{sa}"))
}

#[tonic::async_trait]
impl Identity for Service {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let peer = request.remote_addr();
        // The request's own words, bounded: they are logged before they are checked.
        let identity: String = request.get_ref().identity.chars().take(256).collect();
        let result = self.sign(request.into_inner()).await;
        match &result {
            Ok(rsp) => {
                self.metrics.count("ok");
                tracing::info!(%identity, ?peer, valid_until = rsp.valid_until_unix_seconds, "certified");
            }
            Err(status) => {
                self.metrics.count(code_label(status.code()));
                tracing::info!(%identity, ?peer, code = ?status.code(), reason = status.message(), "certify refused");
            }
        }
        result.map(Response::new)
    }
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid_argument",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission_denied",
        Code::Unavailable => "unavailable",
        _ => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_workload_identities_of_the_trust_domain_name_a_service_account() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        assert_eq!(
            service_account_of(&id("spiffe://east.local/ns/shop/sa/books"), "east.local"),
            Ok("system:serviceaccount:shop:books".into())
        );
        for (other, why) in [
            ("spiffe://west.local/ns/shop/sa/books", "trust domain"),
            ("spiffe://east.local/ns/shop/sa/books/x", "form"),
            ("spiffe://east.local/ns/shop", "form"),
            ("spiffe://east.local/gateway", "form"),
            ("spiffe://east.local/sa/books/ns/shop", "form"),
        ] {
            let err = service_account_of(&id(other), "east.local").unwrap_err();
            assert!(err.contains(why), "{other}: {err}");
        }
    }
}
