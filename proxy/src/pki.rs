//! A small certificate authority: a root, per-cluster intermediate issuers, and
//! workload or gateway leaves whose URI SAN is a SPIFFE ID. Tests, the harness and
//! the demo mint whole chains with it (expired or foreign ones too) without
//! shelling out to openssl; the controller's identity service loads a cluster's
//! issuer from files ([`Ca::load`]) and signs workloads' requests with it
//! ([`Ca::sign_request`]).

use crate::tls::{Credentials, TlsError, TrustBundle};
use api::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Failures minting or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or failed to sign.
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A DNS SAN is not a valid IA5 string.
    #[error("invalid DNS name {0:?} for a certificate SAN")]
    BadDnsName(String),
    /// Writing a PEM file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// File that could not be written.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An issued certificate did not load as TLS credentials.
    #[error("loading issued credentials: {0}")]
    Tls(#[from] TlsError),
    /// An issuer's certificate chain or key could not be used.
    #[error("issuer: {0}")]
    Issuer(String),
    /// A certificate signing request is malformed or its signature does not verify.
    #[error("certificate signing request: {0}")]
    Request(rcgen::Error),
}

/// When a certificate is valid. Settable so tests can mint expired certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// From one hour ago (tolerates clock skew) until `lifetime` from now.
    pub fn for_duration(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(3600),
            not_after: now + lifetime,
        }
    }

    /// `days` days from now.
    pub fn days(days: u64) -> Self {
        Self::for_duration(Duration::from_secs(days * 86_400))
    }

    /// A window that ended an hour ago.
    pub fn expired() -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(2 * 86_400),
            not_after: now - Duration::from_secs(3600),
        }
    }

    fn apply(self, params: &mut CertificateParams) {
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
    }
}

/// A certificate authority (root or intermediate) able to sign.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// This CA's certificate followed by its parents, root excluded.
    chain_pem: String,
    root_pem: String,
}

/// A freshly issued leaf certificate with its key.
#[derive(Clone)]
pub struct Leaf {
    /// The leaf's SPIFFE ID.
    pub id: SpiffeId,
    /// Leaf certificate followed by the intermediates (what a peer presents).
    pub chain_pem: String,
    /// PKCS#8 private key. Test material only: never log it.
    pub key_pem: String,
    /// Serial number bytes, unique per issued certificate.
    pub serial: Vec<u8>,
}

/// Paths written by [`Leaf::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFiles {
    /// `tls.crt`: the chain.
    pub cert_chain: PathBuf,
    /// `tls.key`: the private key.
    pub key: PathBuf,
    /// `ca.crt`: the root bundle.
    pub bundle: PathBuf,
}

impl WrittenFiles {
    /// Writes `tls.crt`, `tls.key` and `ca.crt` into `dir`, each through a
    /// temporary name and a rename, so a watcher never reads a half-written file.
    fn write(
        dir: &Path,
        chain_pem: &str,
        key_pem: &str,
        bundle_pem: &str,
    ) -> Result<Self, PkiError> {
        let files = Self {
            cert_chain: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            bundle: dir.join("ca.crt"),
        };
        write_private_atomic(&files.key, key_pem)?;
        write_atomic(&files.cert_chain, chain_pem)?;
        write_atomic(&files.bundle, bundle_pem)?;
        Ok(files)
    }

    /// The `--tls-cert`, `--tls-key` and `--tls-trust` flags naming these files,
    /// as `proxy` and `gateway` take them.
    pub fn flags(&self) -> [std::ffi::OsString; 6] {
        [
            "--tls-cert".into(),
            self.cert_chain.clone().into(),
            "--tls-key".into(),
            self.key.clone().into(),
            "--tls-trust".into(),
            self.bundle.clone().into(),
        ]
    }
}

impl Ca {
    /// A self-signed root.
    pub fn root(common_name: &str, validity: Validity) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let params = ca_params(common_name, validity, BasicConstraints::Unconstrained);
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            chain_pem: String::new(),
            root_pem: cert_pem.clone(),
            cert_pem,
        })
    }

    /// An intermediate issuer (e.g. one per cluster) signed by this CA; it may
    /// sign leaves but no further CAs.
    pub fn intermediate(&self, common_name: &str, validity: Validity) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let params = ca_params(common_name, validity, BasicConstraints::Constrained(0));
        let cert_pem = params.signed_by(&key, &self.issuer)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            chain_pem: format!("{cert_pem}{}", self.chain_pem),
            root_pem: self.root_pem.clone(),
            cert_pem,
        })
    }

    /// An issuer loaded from PEM: `chain_pem` is its certificate followed by its
    /// parents (root excluded or not), `key_pem` its PKCS#8 key and `root_pem` the
    /// trust anchor peers verify against. Fails, naming the problem, when a part
    /// does not parse, the certificate is not a CA, or the key is not the
    /// certificate's.
    pub fn load(chain_pem: &str, key_pem: &str, root_pem: &str) -> Result<Self, PkiError> {
        let cert_pem = first_certificate(chain_pem)
            .ok_or_else(|| PkiError::Issuer("no certificate in the chain".into()))?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| issuer_error("certificate", e))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| issuer_error("key", e))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| issuer_error("certificate", e))?;
        if !x509.is_ca() {
            return Err(PkiError::Issuer("the certificate is not a CA".into()));
        }
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::Issuer("the key is not the certificate's".into()));
        }
        let issuer =
            Issuer::from_ca_cert_der(&cert, key).map_err(|e| issuer_error("certificate", e))?;
        Ok(Self {
            issuer,
            cert_pem: format!("{cert_pem}\n"),
            chain_pem: chain_pem.to_owned(),
            root_pem: root_pem.to_owned(),
        })
    }

    /// Issues a leaf for `id` usable as both TLS client and server.
    pub fn issue(
        &self,
        id: &SpiffeId,
        dns_names: &[&str],
        validity: Validity,
    ) -> Result<Leaf, PkiError> {
        let key = KeyPair::generate()?;
        let (params, serial) = leaf_params(id, dns_names, validity)?;
        let cert_pem = params.signed_by(&key, &self.issuer)?.pem();
        Ok(Leaf {
            id: id.clone(),
            chain_pem: format!("{cert_pem}{}", self.chain_pem),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// Signs a leaf for `id` over the public key of `csr_der`, a PKCS#10 request
    /// whose signature proves its sender holds the private key. Nothing else of
    /// the request is used: the identity, usages and validity are the caller's.
    /// Returns the leaf followed by this CA's chain, DER-encoded.
    pub fn sign_request(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        validity: Validity,
    ) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        let csr = CertificateSigningRequestDer::from(csr_der);
        let request = CertificateSigningRequestParams::from_der(&csr).map_err(PkiError::Request)?;
        let (params, _) = leaf_params(id, &[], validity)?;
        let leaf = params.signed_by(&request.public_key, &self.issuer)?;
        let mut chain = vec![leaf.der().clone()];
        for cert in CertificateDer::pem_slice_iter(self.chain_pem.as_bytes()) {
            chain.push(cert.map_err(|e| issuer_error("certificate", e))?);
        }
        Ok(chain)
    }

    /// Credentials for `id`, issued with `validity` and trusting this CA's root:
    /// one identity in one trust domain, the fixture most tests need.
    pub fn credentials(&self, id: &SpiffeId, validity: Validity) -> Result<Credentials, PkiError> {
        Ok(self.issue(id, &[], validity)?.credentials(&self.root_pem)?)
    }

    /// Writes this CA as an issuer Secret holds it (`tls.crt`: its certificate and
    /// parents, `tls.key`: its key, `ca.crt`: the root) into `dir`, for
    /// [`Ca::load`] in the controller's identity service.
    pub fn write(&self, dir: &Path) -> Result<WrittenFiles, PkiError> {
        let chain = if self.chain_pem.is_empty() {
            &self.cert_pem
        } else {
            &self.chain_pem
        };
        let key = self.issuer.key().serialize_pem();
        WrittenFiles::write(dir, chain, &key, &self.root_pem)
    }

    /// This CA's own certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root at the top of this CA's chain: the trust bundle peers need.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }
}

impl Leaf {
    /// Writes `tls.crt`, `tls.key` and `ca.crt` (from `bundle_pem`) into `dir`.
    /// Each file is written to a temporary name and renamed, so a watcher never
    /// reads a half-written file.
    pub fn write(&self, dir: &Path, bundle_pem: &str) -> Result<WrittenFiles, PkiError> {
        WrittenFiles::write(dir, &self.chain_pem, &self.key_pem, bundle_pem)
    }

    /// TLS credentials presenting this leaf and trusting `root_pem` for every
    /// trust domain.
    pub fn credentials(&self, root_pem: &str) -> Result<Credentials, TlsError> {
        let bundle = TrustBundle::from_pem(None, root_pem.as_bytes())?;
        Credentials::from_pem(
            self.chain_pem.as_bytes(),
            self.key_pem.as_bytes(),
            vec![bundle],
        )
    }
}

/// Writes `contents` to `path` via a temporary file and a rename.
pub fn write_atomic(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_via_rename(path, contents, 0o644)
}

/// Like [`write_atomic`], readable and writable by the owner only: for keys.
pub fn write_private_atomic(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_via_rename(path, contents, 0o600)
}

fn write_via_rename(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn ca_params(common_name: &str, validity: Validity, limit: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(limit);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    validity.apply(&mut params);
    params
}

/// DER certificates as one PEM text, in order: a chain as the credential files
/// hold it.
pub fn certificates_pem<C: AsRef<[u8]>>(ders: &[C]) -> String {
    let blocks: Vec<pem::Pem> = ders
        .iter()
        .map(|der| pem::Pem::new("CERTIFICATE", der.as_ref()))
        .collect();
    pem::encode_many_config(
        &blocks,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The first `CERTIFICATE` block of `pem`, armour included.
fn first_certificate(pem: &str) -> Option<&str> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = start + pem[start..].find(END)? + END.len();
    Some(&pem[start..end])
}

fn issuer_error(what: &str, error: impl std::fmt::Display) -> PkiError {
    PkiError::Issuer(format!("{what}: {error}"))
}

/// A leaf's parameters: `id` and `dns_names` as SANs, TLS client and server use,
/// a fresh serial (returned too).
fn leaf_params(
    id: &SpiffeId,
    dns_names: &[&str],
    validity: Validity,
) -> Result<(CertificateParams, Vec<u8>), PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = leaf_sans(id, dns_names)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let serial = random_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = true;
    validity.apply(&mut params);
    Ok((params, serial))
}

fn leaf_sans(id: &SpiffeId, dns_names: &[&str]) -> Result<Vec<SanType>, PkiError> {
    let mut sans = vec![SanType::URI(id.as_str().try_into()?)];
    for name in dns_names {
        let ia5 = (*name)
            .try_into()
            .map_err(|_| PkiError::BadDnsName((*name).to_owned()))?;
        sans.push(SanType::DnsName(ia5));
    }
    Ok(sans)
}

/// 16 random bytes, high bit clear so the DER integer stays positive.
fn random_serial() -> Vec<u8> {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    serial.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, GeneralName, Pem, X509Certificate};

    fn parse_chain(pem: &str) -> Vec<Vec<u8>> {
        Pem::iter_from_buffer(pem.as_bytes())
            .map(|p| p.unwrap().contents)
            .collect()
    }

    #[test]
    fn leaf_chains_through_intermediate_with_spiffe_san() {
        let root = Ca::root("meshlink root", Validity::days(365)).unwrap();
        let east = root
            .intermediate("east issuer", Validity::days(30))
            .unwrap();
        let id = SpiffeId::parse("spiffe://east.local/ns/shop/sa/books").unwrap();
        let leaf = east.issue(&id, &["books.shop"], Validity::days(1)).unwrap();

        let chain = parse_chain(&leaf.chain_pem);
        assert_eq!(chain.len(), 2, "leaf + intermediate, root excluded");
        let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
        assert_eq!(cert.raw_serial(), leaf.serial.as_slice());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names = &san.value.general_names;
        assert!(names.contains(&GeneralName::URI(id.as_str())));
        assert!(names.contains(&GeneralName::DNSName("books.shop")));
        let (_, inter) = X509Certificate::from_der(&chain[1]).unwrap();
        assert_eq!(cert.issuer(), inter.subject());
        assert_eq!(east.root_pem(), root.cert_pem());
    }

    #[test]
    fn expired_validity_is_in_the_past() {
        let root = Ca::root("r", Validity::days(1)).unwrap();
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        let leaf = root.issue(&id, &[], Validity::expired()).unwrap();
        let der = &parse_chain(&leaf.chain_pem)[0];
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        assert!(!cert.validity().is_valid());
    }

    #[test]
    fn writes_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = Ca::root("r", Validity::days(1)).unwrap();
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        let leaf = root.issue(&id, &[], Validity::days(1)).unwrap();
        let files = leaf.write(dir.path(), root.root_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.key), 0o600, "the key is the owner's only");
        assert_eq!(std::fs::read_to_string(files.key).unwrap(), leaf.key_pem);
        assert_eq!(
            std::fs::read_to_string(files.bundle).unwrap(),
            root.cert_pem()
        );
        assert!(
            std::fs::read_to_string(files.cert_chain)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
    }

    /// An east issuer written as an issuer Secret holds it, and loaded back.
    fn loaded_east_issuer() -> (Ca, Ca, tempfile::TempDir) {
        let root = Ca::root("meshlink root", Validity::days(365)).unwrap();
        let east = root
            .intermediate("east issuer", Validity::days(30))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = east.write(dir.path()).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let loaded = Ca::load(
            &read(&files.cert_chain),
            &read(&files.key),
            &read(&files.bundle),
        );
        (root, loaded.unwrap(), dir)
    }

    #[test]
    fn a_loaded_issuer_signs_the_requesters_key_with_the_callers_identity_only() {
        let (root, east, _dir) = loaded_east_issuer();
        let key = KeyPair::generate().unwrap();
        // The request asks for another identity and for a CA: both are ignored.
        let mut asked = CertificateParams::new(Vec::<String>::new()).unwrap();
        asked.subject_alt_names = vec![SanType::URI("spiffe://evil/ns/a/sa/b".try_into().unwrap())];
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&key).unwrap();
        let id = SpiffeId::parse("spiffe://east.local/ns/shop/sa/books").unwrap();

        let chain = east
            .sign_request(csr.der(), &id, Validity::days(1))
            .unwrap();
        assert_eq!(chain.len(), 2, "leaf + east issuer");
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let (_, issuer) = X509Certificate::from_der(&chain[1]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names, [GeneralName::URI(id.as_str())]);
        assert!(!leaf.is_ca());
        assert_eq!(leaf.public_key().raw, key.subject_public_key_info());
        leaf.verify_signature(Some(issuer.public_key())).unwrap();
        let root_der = &parse_chain(root.root_pem())[0];
        let (_, root_cert) = X509Certificate::from_der(root_der).unwrap();
        issuer
            .verify_signature(Some(root_cert.public_key()))
            .unwrap();
        // The requester's key and the returned chain make working credentials.
        let creds = Leaf {
            id: id.clone(),
            chain_pem: certificates_pem(&chain),
            key_pem: key.serialize_pem(),
            serial: Vec::new(),
        }
        .credentials(root.root_pem())
        .unwrap();
        assert_eq!(creds.local_id(), &id);
        assert_eq!(creds.leaf(), &chain[0]);
    }

    #[test]
    fn a_request_whose_signature_does_not_verify_is_refused() {
        let (_, east, _dir) = loaded_east_issuer();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        let mut der = csr.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x55;
        let id = SpiffeId::parse("spiffe://east.local/ns/shop/sa/books").unwrap();
        for bad in [der.as_slice(), b"garbage".as_slice()] {
            let err = east.sign_request(bad, &id, Validity::days(1)).unwrap_err();
            assert!(matches!(err, PkiError::Request(_)), "{err}");
        }
    }

    #[test]
    fn an_unusable_issuer_is_named() {
        let root = Ca::root("r", Validity::days(1)).unwrap();
        let other = Ca::root("other", Validity::days(1)).unwrap();
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        let leaf = root.issue(&id, &[], Validity::days(1)).unwrap();
        let other_key = other.issuer.key().serialize_pem();
        let root_key = root.issuer.key().serialize_pem();
        for (chain, key, named) in [
            ("", root_key.as_str(), "no certificate"),
            (root.cert_pem(), "not a key", "key"),
            (root.cert_pem(), other_key.as_str(), "not the certificate's"),
            (leaf.chain_pem.as_str(), leaf.key_pem.as_str(), "not a CA"),
        ] {
            let err = Ca::load(chain, key, root.root_pem()).err().unwrap();
            assert!(err.to_string().contains(named), "{named}: {err}");
        }
    }

    #[test]
    fn bad_dns_name_is_named() {
        let root = Ca::root("r", Validity::days(1)).unwrap();
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        let err = root
            .issue(&id, &["bad\u{e9}"], Validity::days(1))
            .err()
            .unwrap();
        assert!(err.to_string().contains("bad\u{e9}"), "{err}");
    }
}
