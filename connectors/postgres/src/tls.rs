//! TLS to the server: `ssl_mode` as libpq means it, built on rustls, and what a failed
//! handshake means in the user's words.

use std::sync::Arc;

use connector_framework::{ConnectorError, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{PostgresSourceConfig, SslMode};

/// The driver's TLS setting and connector for `config`.
pub(crate) fn connector(config: &PostgresSourceConfig) -> Result<(tokio_postgres::config::SslMode, MakeRustlsConnect)> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (config.ssl_mode, &config.ssl_ca) {
        (SslMode::VerifyFull, Some(ca)) => WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
            .build()
            .map_err(|e| ConnectorError::config(format!("ssl_ca {}: {e}", ca.display())))?,
        // libpq: `require` with a root certificate checks the chain, as verify-ca.
        (SslMode::VerifyCa | SslMode::Require, Some(ca)) => Arc::new(ChainOnly(
            WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
                .build()
                .map_err(|e| ConnectorError::config(format!("ssl_ca {}: {e}", ca.display())))?,
        )),
        _ => Arc::new(AnyCertificate(provider.clone())),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectorError::config(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let tls = match (&config.ssl_cert, &config.ssl_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|c| c.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| ConnectorError::config(format!("ssl_cert {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ConnectorError::config(format!("ssl_key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ConnectorError::config(format!("ssl_cert / ssl_key: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let mode = match config.ssl_mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    };
    Ok((mode, MakeRustlsConnect::new(tls)))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Only the CA the user named: a certificate some public authority signed is not one this
/// server was configured to present.
fn roots(ca: &std::path::Path) -> Result<Arc<rustls::RootCertStore>> {
    let mut store = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(ca).and_then(|c| c.collect::<std::result::Result<Vec<_>, _>>()).map_err(|e| {
            ConnectorError::config(format!("ssl_ca {}: cannot read a PEM certificate from it ({e})", ca.display()))
        })?;
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ConnectorError::config(format!("ssl_ca {}: holds no usable CA certificate", ca.display())));
    }
    Ok(Arc::new(store))
}

/// A TLS failure explained: which check failed and what to look at. `None` for other errors.
pub(crate) fn explain(
    e: &tokio_postgres::Error,
    config: &PostgresSourceConfig,
    endpoint: &str,
) -> Option<ConnectorError> {
    let mode = config.ssl_mode.as_str();
    let ca = config.ssl_ca.as_ref().map_or_else(|| "none".to_string(), |p| p.display().to_string());
    let mut text = e.to_string();
    if let Some(source) = std::error::Error::source(e) {
        text = format!("{text}: {source}");
    }
    let why = if text.contains("server does not support TLS") || text.contains("server does not support SSL") {
        format!(
            "the server offers no TLS, and ssl_mode is {mode}: enable ssl on the server, or set ssl_mode to prefer \
             to allow an unencrypted connection"
        )
    } else if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        format!(
            "the server's certificate does not chain to ssl_ca ({ca}): check that this file is the CA that signed \
             the server's certificate"
        )
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        format!(
            "the server's certificate is not for `{}`: connect by a name its certificate holds (host), or use \
             ssl_mode verify-ca, which checks the CA only",
            config.host
        )
    } else if text.contains("Expired") || text.contains("NotValidYet") {
        "the server's certificate is expired or not valid yet: renew it on the server".to_string()
    } else if text.contains("certificate") || text.contains("tls") || text.contains("TLS") {
        format!("the TLS handshake failed ({text}); ssl_mode is {mode}, ssl_ca {ca}")
    } else {
        return None;
    };
    Some(ConnectorError::config(format!("cannot connect to {endpoint} over TLS (ssl_mode {mode}): {why}")))
}

/// `verify-ca`: the chain must lead to the CA; the certificate's names are not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            // Reported only after the chain was verified (webpki checks the name last).
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a CA: encrypted, any certificate (libpq's meaning).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
