//! STARTTLS response injection: a man in the middle appends a forged reply to the
//! server's "220 ready" in clear text. The client must discard it and trust only what
//! the server says inside TLS (the class of CVE-2011-0411).

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use volley::smtp::{Capabilities, HeloName, Session, SessionConfig, TlsConnectors};

fn acceptor() -> TlsAcceptor {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn bytes_before_the_handshake_are_discarded() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = acceptor();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut plain = BufReader::new(socket);
        plain
            .get_mut()
            .write_all(b"220 evil ESMTP\r\n")
            .await
            .unwrap();
        let mut line = String::new();
        plain.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("EHLO"), "{line}");
        plain
            .get_mut()
            .write_all(b"250-evil\r\n250 STARTTLS\r\n")
            .await
            .unwrap();
        line.clear();
        plain.read_line(&mut line).await.unwrap();
        assert_eq!(line, "STARTTLS\r\n");
        // The injected reply rides in the same segment as the 220.
        plain
            .get_mut()
            .write_all(b"220 2.0.0 ready\r\n250 injected-ehlo-reply\r\n")
            .await
            .unwrap();
        let tls = acceptor.accept(plain.into_inner()).await.unwrap();
        let mut tls = BufReader::new(tls);
        line.clear();
        tls.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("EHLO"), "{line}");
        tls.get_mut()
            .write_all(b"250-real\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
            .await
            .unwrap();
        line.clear();
        tls.read_line(&mut line).await.unwrap();
        line
    });
    let config = SessionConfig::new(
        HeloName::new("volley.test").unwrap(),
        TlsConnectors::with_extra_roots_pem(b"", None).unwrap(),
    );
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let session = Session::establish(stream, "localhost", Arc::new(config))
        .await
        .unwrap();
    assert!(session.is_tls());
    let caps = session.capabilities();
    assert!(
        caps.has(Capabilities::PIPELINING | Capabilities::CHUNKING),
        "capabilities must come from the EHLO inside TLS, not the injected reply: {caps:?}"
    );
    session.quit().await;
    assert_eq!(server.await.unwrap(), "QUIT\r\n");
}
