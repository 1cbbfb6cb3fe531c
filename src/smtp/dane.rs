//! DANE for SMTP (RFC 7672): a server certificate checked against the TLSA records of
//! its MX host instead of the web's certificate authorities.
//!
//! Two usages count for SMTP: DANE-EE (3), where the server's own certificate or key
//! must match a record, with no name or date check; and DANE-TA (2), where a
//! certificate of the chain the server sends must match a record, and the server's
//! certificate must chain to it and name the MX host. PKIX-TA and PKIX-EE (0 and 1)
//! are not usable in SMTP (section 3.1.3): a host whose records are all of those gets
//! TLS without authentication. This module checks certificates; where the records come
//! from (a DNSSEC-validated lookup) is the router's business.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha512};

use super::tls::{AnyCertificate, TlsConnectors, TlsSetupError};

/// DANE-TA: the record names a trust anchor in the server's chain.
pub const DANE_TA: u8 = 2;
/// DANE-EE: the record names the server's own certificate or key.
pub const DANE_EE: u8 = 3;

/// One TLSA record (RFC 6698 section 2.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsaRecord {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// 0: the whole certificate; 1: its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0: the data itself; 1: its SHA-256; 2: its SHA-512.
    pub matching: u8,
    /// What to compare with.
    pub data: Vec<u8>,
}

impl TlsaRecord {
    /// Whether SMTP may use the record: DANE-TA or DANE-EE, with a selector and a
    /// matching type we know, and data of the digest's length (RFC 7672 section 3.1.3:
    /// a malformed record is an unusable one).
    pub fn is_usable(&self) -> bool {
        let length_ok = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        matches!(self.usage, DANE_TA | DANE_EE) && self.selector <= 1 && length_ok
    }

    /// Whether `cert` (DER) matches the record's selector, matching type and data.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected = match self.selector {
            0 => cert.as_ref().to_vec(),
            1 => match webpki::EndEntityCert::try_from(cert) {
                Ok(parsed) => parsed.subject_public_key_info().as_ref().to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data,
            1 => Sha256::digest(&selected).as_slice() == self.data.as_slice(),
            2 => Sha512::digest(&selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// A verifier that accepts a server only on a usable TLSA record's word.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<TlsaRecord>,
    provider: Arc<CryptoProvider>,
    /// The handshake's signature checks, as for any certificate.
    signatures: AnyCertificate,
}

impl DaneVerifier {
    /// A verifier for one MX host's records; unusable records are left out.
    pub fn new(records: &[TlsaRecord]) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Self {
            records: records.iter().filter(|r| r.is_usable()).cloned().collect(),
            signatures: AnyCertificate(provider.signature_verification_algorithms),
            provider,
        }
    }

    /// DANE-TA: a chain certificate matched a record; the server's certificate must chain
    /// to it, be in date, and name the host.
    fn verify_from_anchor(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned()).map_err(|e| {
            rustls::Error::General(format!("the DANE-TA certificate is unusable: {e}"))
        })?;
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, &[], now)
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // DANE-EE: the key is the identity; names and dates do not apply (RFC 7672 3.1.1).
        if self
            .records
            .iter()
            .any(|r| r.usage == DANE_EE && r.matches(end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        let mut last = None;
        for anchor in intermediates {
            if self
                .records
                .iter()
                .any(|r| r.usage == DANE_TA && r.matches(anchor))
            {
                match self.verify_from_anchor(anchor, end_entity, intermediates, server_name, now) {
                    Ok(verified) => return Ok(verified),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            rustls::Error::General("no TLSA record matches the server's certificate chain".into())
        }))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// Connectors whose verifying side checks `records` (for [`super::TlsPolicy::Verify`]).
pub fn connectors(records: &[TlsaRecord]) -> Result<TlsConnectors, TlsSetupError> {
    let verifier = DaneVerifier::new(records);
    let provider = Arc::clone(&verifier.provider);
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(TlsConnectors::verifying_with(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PublicKeyData};

    struct Chain {
        ca: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
        leaf_spki: Vec<u8>,
    }

    fn chain(name: &str) -> Chain {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        Chain {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
            leaf_spki: leaf_key.subject_public_key_info(),
        }
    }

    fn record(usage: u8, selector: u8, matching: u8, data: &[u8]) -> TlsaRecord {
        let data = match matching {
            1 => Sha256::digest(data).to_vec(),
            2 => Sha512::digest(data).to_vec(),
            _ => data.to_vec(),
        };
        TlsaRecord {
            usage,
            selector,
            matching,
            data,
        }
    }

    fn verify(records: &[TlsaRecord], chain: &Chain, name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        DaneVerifier::new(records)
            .verify_server_cert(
                &chain.leaf,
                std::slice::from_ref(&chain.ca),
                &name,
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn dane_ee_matches_the_key_or_the_certificate_whatever_the_name() {
        let c = chain("mx.example.test");
        for r in [
            record(3, 1, 1, &c.leaf_spki),
            record(3, 1, 2, &c.leaf_spki),
            record(3, 0, 1, &c.leaf),
            record(3, 0, 0, &c.leaf),
        ] {
            verify(std::slice::from_ref(&r), &c, "other.example.test")
                .unwrap_or_else(|e| panic!("{r:?}: {e}"));
        }
        let other = chain("mx.example.test");
        let err = verify(&[record(3, 1, 1, &other.leaf_spki)], &c, "mx.example.test");
        assert!(err.is_err(), "another key does not match");
    }

    #[test]
    fn dane_ta_needs_the_chain_and_the_name() {
        let c = chain("mx.example.test");
        let ta = record(2, 0, 1, &c.ca);
        verify(std::slice::from_ref(&ta), &c, "mx.example.test").unwrap();
        let err = verify(std::slice::from_ref(&ta), &c, "mx.other.test").unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");
        let other = chain("mx.example.test");
        assert!(verify(&[record(2, 0, 1, &other.ca)], &c, "mx.example.test").is_err());
        // The leaf's own key under DANE-TA is not an anchor in the chain.
        assert!(verify(&[record(2, 1, 1, &c.leaf_spki)], &c, "mx.example.test").is_err());
    }

    #[test]
    fn pkix_usages_and_unknown_types_are_not_usable() {
        let c = chain("mx.example.test");
        for r in [
            record(1, 1, 1, &c.leaf_spki),
            record(0, 0, 1, &c.ca),
            TlsaRecord {
                usage: 3,
                selector: 1,
                matching: 9,
                data: vec![1],
            },
            TlsaRecord {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![1; 31],
            },
        ] {
            assert!(!r.is_usable(), "{r:?}");
            assert!(verify(std::slice::from_ref(&r), &c, "mx.example.test").is_err());
        }
    }
}
