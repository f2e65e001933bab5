//! Per-cluster certificates and keys: a CA, the apiserver's serving certificate, an
//! admin client certificate in `system:masters`, and the ServiceAccount signing key.
//! Each cluster has its own CA so a credential for one cluster is useless at another,
//! as with real clusters.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// PEM material of one cluster, also written to files for the Go binaries.
pub(crate) struct ClusterPki {
    pub ca_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    pub files: PkiFiles,
}

/// Where the PEM files live.
pub(crate) struct PkiFiles {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

/// Generates everything a cluster needs and writes it under `dir`.
pub(crate) fn generate(cluster: &str, dir: &Path, serving_ips: &[IpAddr]) -> Result<ClusterPki> {
    let ca = ca(cluster)?;
    let mut names: Vec<String> = serving_ips.iter().map(IpAddr::to_string).collect();
    names.extend(
        [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(String::from),
    );
    let (serving_cert, serving_key) = leaf(&ca, names, "kube-apiserver", None, false)?;
    let (admin_cert, admin_key) = leaf(
        &ca,
        Vec::new(),
        "meshlink-harness-admin",
        Some("system:masters"),
        true,
    )?;
    let sa_key = KeyPair::generate().map_err(Error::pki("service-account signing key"))?;

    let files = PkiFiles {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };
    write(&files.ca_cert, &ca.pem())?;
    write(&files.serving_cert, &serving_cert)?;
    write(&files.serving_key, &serving_key)?;
    write(&files.sa_key, &sa_key.serialize_pem())?;
    // The apiserver's verifying-key flag reads public keys only.
    write(&files.sa_pub, &sa_key.public_key_pem())?;
    Ok(ClusterPki {
        ca_pem: ca.pem(),
        admin_cert_pem: admin_cert,
        admin_key_pem: admin_key,
        files,
    })
}

fn ca(cluster: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let key = KeyPair::generate().map_err(Error::pki("CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::pki("CA"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("meshlink harness CA {cluster}"));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, key).map_err(Error::pki("CA certificate"))
}

/// Returns (certificate PEM, PKCS#8 key PEM).
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    sans: Vec<String>,
    common_name: &str,
    organization: Option<&str>,
    client: bool,
) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(Error::pki("leaf key"))?;
    let mut params = CertificateParams::new(sans).map_err(Error::pki("leaf parameters"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params
        .signed_by(&key, ca)
        .map_err(Error::pki("leaf certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(Error::io(format!("writing {}", path.display())))
}
