//! The controller's identity service against a real kube-apiserver: the `controller`
//! binary loads an issuer from files, reviews each workload's service-account token
//! with the apiserver (TokenReview) and signs the workload's own key.

use std::ffi::OsString;

use anyhow::{Context, Result};
use api::certify::identity_client::IdentityClient;
use api::certify::{CertifyRequest, CertifyResponse, TOKEN_AUDIENCE};
use api::identity::SpiffeId;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use multicluster_tests::{ControllerProcess, Harness, admin_get};
use proxy::pki::{Ca, Leaf, Validity, certificates_pem};
use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use tonic::Code;
use tonic::transport::Channel;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const TRUST_DOMAIN: &str = "east.meshlink.test";
const BOOKS: &str = "spiffe://east.meshlink.test/ns/shop/sa/books";

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

#[tokio::test]
async fn workloads_trade_a_service_account_token_for_a_certificate_of_their_own() -> Result<()> {
    let harness = Harness::builder()
        .cluster("east")
        .without_controller_manager()
        .start()
        .await?;
    let east = harness.cluster("east");
    let client = east.client();
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("shop".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "shop");
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
    let args: Vec<OsString> = vec![
        "--identity-issuer-cert".into(),
        files.cert_chain.clone().into(),
        "--identity-issuer-key".into(),
        files.key.clone().into(),
        "--identity-trust-anchors".into(),
        files.bundle.clone().into(),
        "--trust-domain".into(),
        TRUST_DOMAIN.into(),
        "--identity-lifetime-secs".into(),
        "3600".into(),
    ];
    let controller = ControllerProcess::start_with(east, &args).await?;
    let mut identity = IdentityClient::connect(format!("http://{}", controller.discovery)).await?;

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
    let mut chain = vec![issued.leaf_certificate.clone()];
    chain.extend(issued.intermediate_certificates.iter().cloned());
    let creds = Leaf {
        id: SpiffeId::parse(BOOKS)?,
        chain_pem: certificates_pem(&chain),
        key_pem: key.serialize_pem(),
        serial: Vec::new(),
    }
    .credentials(root.root_pem())?;
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

    // The metrics count each result.
    let (_, metrics) = admin_get(controller.admin, "/metrics")
        .await
        .context("no /metrics")?;
    for (result, n) in [
        ("ok", 1),
        ("permission_denied", 1),
        ("unauthenticated", 3),
        ("invalid_argument", 5),
    ] {
        let line = format!("identity_certify_requests_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }
    controller.terminate().await?;
    Ok(())
}
