//! TLS material for the sink: a throw-away CA and a leaf certificate signed by it, generated
//! at start-up with rcgen, and the rustls server configuration (ring provider only).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// Why the sink's TLS material could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// Key or certificate generation failed (e.g. a hostname that is not a valid DNS name).
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the generated certificate or the protocol configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

impl From<TlsSetupError> for std::io::Error {
    fn from(err: TlsSetupError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, err)
    }
}

/// The sink's server-side TLS state.
pub(crate) struct TlsMaterial {
    /// PEM of the CA certificate that signed the leaf (what test clients must trust).
    pub ca_pem: String,
    /// Acceptor configured with the leaf certificate and key.
    pub acceptor: TlsAcceptor,
    /// The certificates in DER, for TLSA records.
    pub identity: TlsIdentity,
}

/// A server's certificates in DER, what a TLSA record (DANE) is made from.
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    /// The CA certificate that signed the leaf; the server sends it after the leaf.
    pub ca: Vec<u8>,
    /// The server's own certificate.
    pub leaf: Vec<u8>,
    /// The leaf's SubjectPublicKeyInfo.
    pub leaf_spki: Vec<u8>,
}

/// Generates a CA and a leaf certificate valid for `localhost`, `hostname`, 127.0.0.1, ::1
/// and the `extra` addresses (the sink's own), so a verifying client can reach it by any.
pub(crate) fn generate(
    hostname: &str,
    extra: &[std::net::IpAddr],
) -> Result<TlsMaterial, TlsSetupError> {
    generate_for(hostname, &[], extra)
}

/// Like [`generate`], with more DNS names in the certificate.
pub(crate) fn generate_for(
    hostname: &str,
    more_names: &[&str],
    extra: &[std::net::IpAddr],
) -> Result<TlsMaterial, TlsSetupError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "volley-sink test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !names.iter().any(|n| n.eq_ignore_ascii_case(hostname)) {
        names.push(hostname.to_owned());
    }
    for name in more_names {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push((*name).to_owned());
        }
    }
    for ip in extra {
        let ip = ip.to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(names)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, hostname);
    leaf_params.is_ca = IsCa::NoCa;
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    // The chain as servers send it: the leaf, then its issuer (DANE-TA needs it there).
    .with_single_cert(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)?;

    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
        identity: TlsIdentity {
            ca: ca_cert.der().to_vec(),
            leaf: leaf_cert.der().to_vec(),
            leaf_spki: leaf_key.subject_public_key_info(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_material() {
        let material = generate("sink.test", &[]).expect("generate");
        assert!(material.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn hostname_equal_to_a_default_name_is_not_duplicated() {
        assert!(generate("localhost", &[]).is_ok());
    }
}
