//! A small certificate authority for tests, the harness and the demo: a root, per
//! cluster intermediate issuers, and workload or gateway leaves whose URI SAN is a
//! SPIFFE ID. Production certificates come from cert-manager, SPIRE or the
//! controller's identity service; this module exists so every test can mint real
//! chains (including expired or foreign ones) without shelling out to openssl.

use crate::tls::{Credentials, TlsError, TrustBundle};
use api::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
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

    /// Issues a leaf for `id` usable as both TLS client and server.
    pub fn issue(
        &self,
        id: &SpiffeId,
        dns_names: &[&str],
        validity: Validity,
    ) -> Result<Leaf, PkiError> {
        let key = KeyPair::generate()?;
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
        let cert_pem = params.signed_by(&key, &self.issuer)?.pem();
        Ok(Leaf {
            id: id.clone(),
            chain_pem: format!("{cert_pem}{}", self.chain_pem),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// Credentials for `id`, issued with `validity` and trusting this CA's root:
    /// one identity in one trust domain, the fixture most tests need.
    pub fn credentials(&self, id: &SpiffeId, validity: Validity) -> Result<Credentials, PkiError> {
        Ok(self.issue(id, &[], validity)?.credentials(&self.root_pem)?)
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
        let files = WrittenFiles {
            cert_chain: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            bundle: dir.join("ca.crt"),
        };
        write_atomic(&files.key, &self.key_pem)?;
        write_atomic(&files.cert_chain, &self.chain_pem)?;
        write_atomic(&files.bundle, bundle_pem)?;
        Ok(files)
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
    let tmp = path.with_extension("tmp");
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::write(&tmp, contents).map_err(err)?;
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
