//! The controller's identity service against a real kube-apiserver: the `controller`
//! binary loads an issuer from files, reviews each workload's service-account token
//! with the apiserver (TokenReview) and signs the workload's own key.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{Context, Result};
use api::certify::identity_client::IdentityClient;
use api::certify::{CertifyRequest, CertifyResponse, TOKEN_AUDIENCE};
use api::identity::SpiffeId;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use multicluster_tests::{
    ControllerProcess, Harness, admin_get, free_addr, meshlink_binary, ready,
};
use proxy::certify::identity_channel;
use proxy::pki::{Ca, Leaf, Validity, certificates_pem};
use proxy::tls::{Credentials, TlsConfigs, TrustBundle};
use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use tonic::Code;
use tonic::transport::Channel;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const TRUST_DOMAIN: &str = "east.meshlink.test";
const BOOKS: &str = "spiffe://east.meshlink.test/ns/shop/sa/books";
/// The identity service's own identity, the controller's default.
const CONTROLLER: &str = "spiffe://east.meshlink.test/ns/meshlink/sa/meshlink-controller";

/// A key and a certificate signing request over it.
fn key_and_request() -> Result<(KeyPair, Vec<u8>)> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

async fn certify(
    client: &mut IdentityClient<Channel>,
    identity: &str,
    token: &str,
    csr: &[u8],
) -> Result<CertifyResponse, tonic::Status> {
    let request = CertifyRequest {
        identity: identity.into(),
        token: token.as_bytes().to_vec(),
        certificate_signing_request: csr.to_vec(),
    };
    client.certify(request).await.map(|r| r.into_inner())
}

/// One cluster with namespace `shop` and service accounts `books` and `web`, an
/// east issuer under a root, and the `controller` signing with it.
struct Bed {
    // Dropped first (killed), before its cluster stops under it.
    controller: ControllerProcess,
    /// The identity service's TLS listener.
    identity_addr: std::net::SocketAddr,
    harness: Harness,
    root: Ca,
    _issuer_dir: tempfile::TempDir,
}

impl Bed {
    async fn start(lifetime_secs: u64) -> Result<Self> {
        let harness = Harness::builder()
            .cluster("east")
            .without_controller_manager()
            .start()
            .await?;
        let east = harness.cluster("east");
        east.apply_namespace("shop").await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(east.client(), "shop");
        for name in ["books", "web"] {
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            accounts.create(&PostParams::default(), &sa).await?;
        }

        let root = Ca::root("meshlink root", Validity::days(30))?;
        let issuer = root.intermediate("east issuer", Validity::days(30))?;
        let issuer_dir = tempfile::tempdir()?;
        let files = issuer.write(issuer_dir.path())?;
        let identity_addr = free_addr()?;
        let args: Vec<OsString> = vec![
            "--identity-addr".into(),
            identity_addr.to_string().into(),
            "--identity-issuer-cert".into(),
            files.cert_chain.into(),
            "--identity-issuer-key".into(),
            files.key.into(),
            "--identity-trust-anchors".into(),
            files.bundle.into(),
            "--trust-domain".into(),
            TRUST_DOMAIN.into(),
            "--identity-lifetime-secs".into(),
            lifetime_secs.to_string().into(),
        ];
        let controller = ControllerProcess::start_with(east, &args).await?;
        Ok(Self {
            controller,
            identity_addr,
            harness,
            root,
            _issuer_dir: issuer_dir,
        })
    }

    fn east(&self) -> &multicluster_tests::Cluster {
        self.harness.cluster("east")
    }

    /// A client of the identity service that expects it to be `server_id`.
    fn client_expecting(&self, server_id: &str) -> Result<IdentityClient<Channel>> {
        let root = TrustBundle::from_pem(None, self.root.root_pem().as_bytes())?;
        let server_id = SpiffeId::parse(server_id)?;
        let addr = self.identity_addr.to_string();
        Ok(IdentityClient::new(identity_channel(
            &addr,
            &[root],
            &server_id,
        )?))
    }

    async fn client(&self) -> Result<IdentityClient<Channel>> {
        self.client_expecting(CONTROLLER)
    }

    /// A token for the identity service's audience.
    async fn token(&self, sa: &str) -> Result<String> {
        Ok(self
            .east()
            .service_account_token_for("shop", sa, &[TOKEN_AUDIENCE])
            .await?)
    }

    /// Credentials for `sa`, certified by the identity service.
    async fn credentials(&self, sa: &str) -> Result<Credentials> {
        let id = format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/{sa}");
        let (key, csr) = key_and_request()?;
        let issued = certify(&mut self.client().await?, &id, &self.token(sa).await?, &csr).await?;
        let mut chain = vec![issued.leaf_certificate];
        chain.extend(issued.intermediate_certificates);
        let leaf = Leaf {
            id: SpiffeId::parse(&id)?,
            chain_pem: certificates_pem(&chain),
            key_pem: key.serialize_pem(),
            serial: Vec::new(),
        };
        Ok(leaf.credentials(self.root.root_pem())?)
    }
}

#[tokio::test]
async fn workloads_trade_a_service_account_token_for_a_certificate_of_their_own() -> Result<()> {
    let bed = Bed::start(3600).await?;
    let mut identity = bed.client().await?;
    let east = bed.east();
    let controller = &bed.controller;

    // books, with a token for the identity service, gets a leaf for its own key.
    let books_token = east
        .service_account_token_for("shop", "books", &[TOKEN_AUDIENCE])
        .await?;
    let (key, csr) = key_and_request()?;
    let issued = certify(&mut identity, BOOKS, &books_token, &csr).await?;
    let (_, leaf) = X509Certificate::from_der(&issued.leaf_certificate)?;
    let san = leaf.subject_alternative_name()?.context("no SAN")?;
    assert_eq!(san.value.general_names, [GeneralName::URI(BOOKS)]);
    assert_eq!(leaf.public_key().raw, key.subject_public_key_info());
    let lifetime = leaf.validity().time_to_expiration().context("expired")?;
    assert!(
        lifetime.whole_minutes() > 55 && lifetime.whole_minutes() <= 60,
        "{lifetime}"
    );
    assert_eq!(
        issued.valid_until_unix_seconds,
        leaf.validity().not_after.timestamp()
    );
    // With the intermediates it makes credentials that chain to the root.
    let creds = bed.credentials("books").await?;
    assert_eq!(creds.local_id().as_str(), BOOKS);

    // Refusals, each with its code.
    let apiserver_token = east.service_account_token("shop", "books").await?;
    let web = "spiffe://east.meshlink.test/ns/shop/sa/web";
    let mut tampered = csr.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x55;
    for (identity_asked, token, request, code, why) in [
        (
            web,
            books_token.as_str(),
            csr.as_slice(),
            Code::PermissionDenied,
            "another account's token",
        ),
        (
            BOOKS,
            apiserver_token.as_str(),
            &csr,
            Code::Unauthenticated,
            "a token for another audience",
        ),
        (
            BOOKS,
            "not-a-token",
            &csr,
            Code::Unauthenticated,
            "garbage token",
        ),
        (BOOKS, "", &csr, Code::Unauthenticated, "no token"),
        (
            "spiffe://west.meshlink.test/ns/shop/sa/books",
            &books_token,
            &csr,
            Code::InvalidArgument,
            "another trust domain",
        ),
        (
            "spiffe://east.meshlink.test/gateway",
            &books_token,
            &csr,
            Code::InvalidArgument,
            "not a workload",
        ),
        (
            "books",
            &books_token,
            &csr,
            Code::InvalidArgument,
            "not a SPIFFE ID",
        ),
        (
            BOOKS,
            &books_token,
            &tampered,
            Code::InvalidArgument,
            "a request whose signature fails",
        ),
        (
            BOOKS,
            &books_token,
            b"garbage",
            Code::InvalidArgument,
            "garbage request",
        ),
    ] {
        let status = certify(&mut identity, identity_asked, token, request)
            .await
            .err()
            .with_context(|| format!("{why}: signed"))?;
        assert_eq!(status.code(), code, "{why}: {status:?}");
        assert!(
            !status.message().contains(&books_token),
            "{why}: the token is echoed"
        );
    }

    // A client that expects another server identity sends nothing: the
    // handshake fails before the token would go out. A plaintext client gets no
    // answer either.
    let mut impostor_check = bed.client_expecting("spiffe://east.meshlink.test/ns/x/sa/y")?;
    let status = certify(&mut impostor_check, BOOKS, &books_token, &csr)
        .await
        .err()
        .context("signed for a client that expected another server")?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let plaintext = format!("http://{}", bed.identity_addr);
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        let mut client = IdentityClient::connect(plaintext).await?;
        Ok::<_, anyhow::Error>(certify(&mut client, BOOKS, &books_token, &csr).await?)
    })
    .await;
    assert!(!matches!(refused, Ok(Ok(_))), "signed over plaintext");

    // The metrics count each result.
    let (_, metrics) = admin_get(controller.admin, "/metrics")
        .await
        .context("no /metrics")?;
    for (result, n) in [
        ("ok", 2),
        ("permission_denied", 1),
        ("unauthenticated", 3),
        ("invalid_argument", 5),
    ] {
        let line = format!("identity_certify_requests_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }
    bed.controller.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn a_proxy_serves_the_certificate_the_identity_service_signed_and_renews_it() -> Result<()> {
    // Renewed at 70% of 15 s, loaded by the proxy's 10 s credential poll.
    let bed = Bed::start(15).await?;
    let dir = tempfile::tempdir()?;
    let file = |name: &str, text: &str| -> Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let token = file("token", &bed.token("books").await?)?;
    let trust = file("ca.crt", bed.root.root_pem())?;
    let discovery = file("discovery.yaml", "services: []\n")?;
    let (inbound, outbound, admin) = (free_addr()?, free_addr()?, free_addr()?);
    let mut proxy = tokio::process::Command::new(meshlink_binary("proxy")?)
        .arg("run")
        .arg("--identity-addr")
        .arg(bed.identity_addr.to_string())
        .args(["--identity", BOOKS, "--identity-token-file"])
        .arg(&token)
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .arg("--tls-trust")
        .arg(&trust)
        .arg("--discovery-file")
        .arg(&discovery)
        .args(["--app-addr", "127.0.0.1:9"])
        .args(["--inbound-addr", &inbound.to_string()])
        .args(["--outbound-addr", &outbound.to_string()])
        .args(["--admin-addr", &admin.to_string()])
        .kill_on_drop(true)
        .spawn()?;
    let started = tokio::time::Instant::now();
    while !ready(admin).await {
        if let Some(status) = proxy.try_wait()? {
            anyhow::bail!("the proxy exited before it was ready: {status}");
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "proxy not ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A peer certified as web reaches the proxy and finds it is books.
    let web = TlsConfigs::build(&bed.credentials("web").await?, &[])?;
    let books = SpiffeId::parse(BOOKS)?;
    let served_leaf = || async {
        let tcp = tokio::net::TcpStream::connect(inbound).await?;
        let config = web.client_for(&books, None);
        let (tls, id) = proxy::tls::connect(config, tcp, &books, Duration::from_secs(5)).await?;
        anyhow::ensure!(id == books, "the proxy is {id}");
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        Ok::<_, anyhow::Error>(leaf.context("no leaf")?.to_vec())
    };
    let first = served_leaf().await?;
    let (_, cert) = X509Certificate::from_der(&first)?;
    let lifetime = cert.validity().time_to_expiration().context("expired")?;
    assert!(lifetime.whole_seconds() <= 15, "{lifetime}");

    // Before the first leaf expires, the proxy serves a new one.
    let renewed_by = started + Duration::from_secs(40);
    loop {
        if served_leaf().await? != first {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < renewed_by,
            "the proxy still serves its first leaf"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
