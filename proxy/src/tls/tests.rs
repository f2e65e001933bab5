//! Real TLS over real loopback sockets: who is admitted, who is refused and why,
//! federation, and rotation under a live transfer.

use super::*;
use crate::pki::{Ca, Leaf, Validity};
use api::identity::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const SERVER: &str = "spiffe://east.local/ns/meshlink/sa/gateway";
const CLIENT: &str = "spiffe://east.local/ns/shop/sa/web";
const LIMIT: Duration = Duration::from_secs(10);

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn leaf(ca: &Ca, who: &str, validity: Validity) -> Leaf {
    ca.issue(&id(who), &[], validity).unwrap()
}

fn bundle(ca: &Ca, domain: Option<&str>) -> TrustBundle {
    TrustBundle::from_pem(domain.map(str::to_owned), ca.root_pem().as_bytes()).unwrap()
}

fn creds(leaf: &Leaf, bundles: Vec<TrustBundle>) -> Credentials {
    Credentials::from_pem(leaf.chain_pem.as_bytes(), leaf.key_pem.as_bytes(), bundles).unwrap()
}

/// A client presenting `leaf` and trusting `ca`'s root.
fn client_of(leaf: &Leaf, ca: &Ca) -> Arc<ClientConfig> {
    creds(leaf, vec![bundle(ca, None)])
        .client_config(&[])
        .unwrap()
}

fn root() -> Ca {
    Ca::root("meshlink test root", Validity::days(2)).unwrap()
}

/// Accepts one connection; on success answers "ping" with "pong".
async fn serve_once(
    config: Arc<ServerConfig>,
    policy: Policy,
) -> (SocketAddr, JoinHandle<Result<SpiffeId, HandshakeError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut tls, peer) = accept(config, tcp, &policy, LIMIT).await?;
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await.unwrap();
        tls.write_all(b"pong").await.unwrap();
        tls.shutdown().await.unwrap();
        Ok(peer)
    });
    (addr, task)
}

/// Connects, checks identity, sends "ping", expects "pong".
async fn ping(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    expected: &str,
) -> Result<SpiffeId, HandshakeError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tls, peer) = connect(config, tcp, &id(expected), LIMIT).await?;
    tls.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    tls.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong");
    Ok(peer)
}

/// Runs a handshake where the client is expected to be refused; returns the
/// server's reason. The client's own outcome is irrelevant (in TLS 1.3 it may only
/// learn of the refusal on its first read).
async fn refused(
    server: Arc<ServerConfig>,
    policy: Policy,
    client: Arc<ClientConfig>,
) -> RejectReason {
    let (addr, task) = serve_once(server, policy).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from("east.local").unwrap();
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let _ = tls.write_all(b"ping").await;
        let _ = tls.read(&mut [0u8; 4]).await;
    }
    let err = task.await.unwrap().unwrap_err();
    eprintln!("refused: {err}");
    err.reason
}

struct Pair {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn pair(ca: &Ca) -> Pair {
    let server = creds(&leaf(ca, SERVER, Validity::days(1)), vec![bundle(ca, None)]);
    let client = creds(&leaf(ca, CLIENT, Validity::days(1)), vec![bundle(ca, None)]);
    Pair {
        server: server.server_config(&[]).unwrap(),
        client: client.client_config(&[]).unwrap(),
    }
}

#[tokio::test]
async fn mutual_tls_sees_both_identities() {
    let ca = root()
        .intermediate("east issuer", Validity::days(1))
        .unwrap();
    let p = pair(&ca);
    let (addr, task) = serve_once(p.server, Policy::AnyTrusted).await;
    assert_eq!(ping(p.client, addr, SERVER).await.unwrap(), id(SERVER));
    assert_eq!(task.await.unwrap().unwrap(), id(CLIENT));
}

#[tokio::test]
async fn transport_header_follows_alpn_and_leaves_session_bytes() {
    use api::transport_header::{ALPN, SessionProtocol, TargetName, TransportHeader};
    let ca = root();
    let server = creds(
        &leaf(&ca, SERVER, Validity::days(1)),
        vec![bundle(&ca, None)],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = server.server_config(&[ALPN.to_vec()]).unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut tls, _) = accept(config, tcp, &Policy::AnyTrusted, LIMIT)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN));
        let deadline = tokio::time::Instant::now() + LIMIT;
        let header = read_header(&mut tls, deadline).await.unwrap();
        let mut session = Vec::new();
        tls.read_to_end(&mut session).await.unwrap();
        (header, session)
    });
    let sent = TransportHeader {
        name: TargetName::parse("books.shop.svc.cluster.local").unwrap(),
        port: 8080.try_into().unwrap(),
        protocol: SessionProtocol::Http1,
        hops: 0,
    };
    let client = creds(
        &leaf(&ca, CLIENT, Validity::days(1)),
        vec![bundle(&ca, None)],
    );
    let config = TlsConfigs::build(&client, &[])
        .unwrap()
        .client_for(&id(SERVER), Some(ALPN));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tls, _) = connect(config, tcp, &id(SERVER), LIMIT).await.unwrap();
    write_header(&mut tls, &sent).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    tls.shutdown().await.unwrap();
    let (header, session) = task.await.unwrap();
    assert_eq!(header, sent);
    assert_eq!(session, b"GET / HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn client_for_pins_the_expected_identity_in_the_handshake() {
    let ca = root();
    let p = pair(&ca);
    let client = creds(
        &leaf(&ca, CLIENT, Validity::days(1)),
        vec![bundle(&ca, None)],
    );
    let configs = TlsConfigs::build(&client, &[]).unwrap();
    // Connecting by IP, with only the verifier to check who answers.
    let handshake = |expected: &str| {
        let config = configs.client_for(&id(expected), None);
        let server = p.server.clone();
        async move {
            let (addr, _task) = serve_once(server, Policy::AnyTrusted).await;
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::IpAddress(addr.ip().into());
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
        }
    };
    let tls = handshake(SERVER).await.unwrap();
    assert_eq!(peer_id(tls.get_ref().1).unwrap(), id(SERVER));
    let err = handshake("spiffe://east.local/ns/shop/sa/books")
        .await
        .unwrap_err();
    assert_eq!(RejectReason::from_io(&err), RejectReason::IdentityMismatch);
}

#[tokio::test]
async fn refuses_client_without_certificate() {
    let p = pair(&root());
    let anonymous = anonymous_client(&rustls::version::TLS13);
    let reason = refused(p.server, Policy::AnyTrusted, anonymous).await;
    assert_eq!(reason, RejectReason::NoClientCert);
}

#[tokio::test]
async fn refuses_client_from_untrusted_root() {
    let ca = root();
    let p = pair(&ca);
    let stranger = root();
    let client = client_of(&leaf(&stranger, CLIENT, Validity::days(1)), &ca);
    let reason = refused(p.server, Policy::AnyTrusted, client).await;
    assert_eq!(reason, RejectReason::UntrustedIssuer);
}

#[tokio::test]
async fn refuses_expired_client_certificate() {
    let ca = root();
    let p = pair(&ca);
    let client = client_of(&leaf(&ca, CLIENT, Validity::expired()), &ca);
    let reason = refused(p.server, Policy::AnyTrusted, client).await;
    assert_eq!(reason, RejectReason::Expired);
}

#[tokio::test]
async fn refuses_forbidden_identity() {
    let p = pair(&root());
    let policy = Policy::Allow(vec![
        IdPattern::parse("spiffe://east.local/ns/billing/*").unwrap(),
    ]);
    let reason = refused(p.server, policy, p.client).await;
    assert_eq!(reason, RejectReason::Forbidden);
}

#[tokio::test]
async fn refuses_tls12_only_client() {
    let p = pair(&root());
    let tls12 = anonymous_client(&rustls::version::TLS12);
    let reason = refused(p.server, Policy::AnyTrusted, tls12).await;
    assert_eq!(reason, RejectReason::ProtocolVersion);
}

#[tokio::test]
async fn client_refuses_unexpected_server_identity() {
    let p = pair(&root());
    let (addr, _task) = serve_once(p.server, Policy::AnyTrusted).await;
    let err = ping(p.client, addr, "spiffe://east.local/ns/shop/sa/books")
        .await
        .unwrap_err();
    assert_eq!(err.reason, RejectReason::IdentityMismatch);
    assert!(err.detail.contains(SERVER), "{err}");
}

#[tokio::test]
async fn federated_bundle_vouches_only_for_its_trust_domain() {
    let (east, west) = (root(), root());
    let bundles = vec![bundle(&east, None), bundle(&west, Some("west.local"))];
    let server = creds(&leaf(&east, SERVER, Validity::days(1)), bundles)
        .server_config(&[])
        .unwrap();
    let west_bundles = || vec![bundle(&west, None), bundle(&east, Some("east.local"))];

    let west_web = creds(
        &leaf(
            &west,
            "spiffe://west.local/ns/shop/sa/web",
            Validity::days(1),
        ),
        west_bundles(),
    );
    let (addr, task) = serve_once(server.clone(), Policy::AnyTrusted).await;
    ping(west_web.client_config(&[]).unwrap(), addr, SERVER)
        .await
        .unwrap();
    assert_eq!(task.await.unwrap().unwrap().trust_domain(), "west.local");

    // West's CA minting an east identity must not be believed.
    let impostor = creds(&leaf(&west, CLIENT, Validity::days(1)), west_bundles());
    let reason = refused(
        server,
        Policy::AnyTrusted,
        impostor.client_config(&[]).unwrap(),
    )
    .await;
    assert_eq!(reason, RejectReason::UntrustedIssuer);
}

#[test]
fn bad_credentials_name_the_problem() {
    let ca = root();
    let a = leaf(&ca, CLIENT, Validity::days(1));
    let b = leaf(&ca, SERVER, Validity::days(1));
    let mismatched = Credentials::from_pem(
        a.chain_pem.as_bytes(),
        b.key_pem.as_bytes(),
        vec![bundle(&ca, None)],
    )
    .unwrap()
    .server_config(&[]);
    assert!(
        matches!(mismatched, Err(TlsError::Config(_))),
        "{mismatched:?}"
    );

    let garbage = Credentials::from_pem(b"not pem", a.key_pem.as_bytes(), vec![bundle(&ca, None)]);
    assert!(
        garbage
            .unwrap_err()
            .to_string()
            .contains("certificate chain")
    );

    let plain = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let no_id = Credentials::from_pem(
        plain.cert.pem().as_bytes(),
        plain.signing_key.serialize_pem().as_bytes(),
        vec![bundle(&ca, None)],
    );
    assert!(matches!(
        no_id,
        Err(TlsError::LocalIdentity(RejectReason::NoSpiffeId))
    ));

    let no_bundle = Credentials::from_pem(a.chain_pem.as_bytes(), a.key_pem.as_bytes(), vec![]);
    assert!(matches!(no_bundle, Err(TlsError::NoTrustBundle)));
}

/// Serial of the certificate a client saw.
fn peer_serial(conn: &rustls::CommonState) -> Vec<u8> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = &conn.peer_certificates().unwrap()[0];
    X509Certificate::from_der(der)
        .unwrap()
        .1
        .raw_serial()
        .to_vec()
}

const TRANSFER: usize = 16 << 20;

/// Serves every connection with the newest config, streaming TRANSFER bytes.
fn serve_forever(listener: TcpListener, watch: CredentialWatch) {
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let config = watch.current().server.clone();
            tokio::spawn(async move {
                let (mut tls, _) = accept(config, tcp, &Policy::AnyTrusted, LIMIT)
                    .await
                    .unwrap();
                let chunk = vec![0xa5u8; 64 << 10];
                for _ in 0..TRANSFER / chunk.len() {
                    if tls.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
}

#[tokio::test]
async fn rotation_keeps_live_transfers_and_serves_new_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root();
    let first = leaf(&ca, SERVER, Validity::days(1));
    let written = first.write(dir.path(), ca.root_pem()).unwrap();
    let files = CredentialFiles::in_dir(dir.path());
    assert_eq!(files.bundles[0].path, written.bundle);
    let mut watch = watch_credentials(files, vec![], Duration::from_millis(20)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_forever(listener, watch.clone());
    let client = creds(
        &leaf(&ca, CLIENT, Validity::days(1)),
        vec![bundle(&ca, None)],
    )
    .client_config(&[])
    .unwrap();

    // A transfer starts under the first certificate and is paused mid-way.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut long, _) = connect(client.clone(), tcp, &id(SERVER), LIMIT)
        .await
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    long.read_exact(&mut buf).await.unwrap();
    assert_eq!(peer_serial(long.get_ref().1), first.serial);

    let second = leaf(&ca, SERVER, Validity::days(1));
    second.write(dir.path(), ca.root_pem()).unwrap();
    tokio::time::timeout(LIMIT, watch.configs.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watch.configs.borrow_and_update().serial, second.serial);

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (fresh, _) = connect(client.clone(), tcp, &id(SERVER), LIMIT)
        .await
        .unwrap();
    assert_eq!(peer_serial(fresh.get_ref().1), second.serial);

    // The old connection still finishes its transfer.
    let mut total = buf.len();
    loop {
        match long.read(&mut buf).await.unwrap() {
            0 => break,
            n => total += n,
        }
    }
    assert_eq!(total, TRANSFER);

    // A broken file is rejected and the second certificate stays in service.
    crate::pki::write_atomic(
        &written.cert_chain,
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    tokio::time::timeout(LIMIT, watch.reload_failures.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watch.configs.borrow().serial, second.serial);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (still, _) = connect(client, tcp, &id(SERVER), LIMIT).await.unwrap();
    assert_eq!(peer_serial(still.get_ref().1), second.serial);
}

/// A client with no certificate that trusts any server, speaking only `version`.
fn anonymous_client(version: &'static rustls::SupportedProtocolVersion) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    Arc::new(config)
}

/// Test-only verifier for clients that must reach the server's certificate check
/// without a usable identity of their own.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
