//! TLS to the server: `ssl_mode` as the driver's options, and what a failed handshake means in
//! the user's words.

use connector_framework::{ConnectorError, Result};
use mysql_async::{ClientIdentity, SslOpts};

use crate::config::{MySqlSourceConfig, SslMode};

/// The driver's TLS options for `config` (`None`: no TLS). For `verify_ca` this reads the
/// server's certificate names first (see [`certificate_names`]).
pub(crate) async fn ssl_opts(config: &MySqlSourceConfig) -> Result<Option<SslOpts>> {
    if config.ssl_mode == SslMode::Disabled {
        return Ok(None);
    }
    let mut opts = SslOpts::default();
    if let Some(ca) = &config.ssl_ca {
        // Only the CA the user named: a certificate some public authority signed is not one
        // this server was configured to present.
        opts = opts.with_root_certs(vec![ca.clone().into()]).with_disable_built_in_roots(true);
    }
    if let (Some(cert), Some(key)) = (&config.ssl_cert, &config.ssl_key) {
        opts = opts.with_client_identity(Some(ClientIdentity::new(cert.clone().into(), key.clone().into())));
    }
    Ok(Some(match config.ssl_mode {
        // The MySQL client's meaning: encrypted, the certificate not checked.
        SslMode::Preferred | SslMode::Required | SslMode::Disabled => opts.with_danger_accept_invalid_certs(true),
        SslMode::VerifyCa => {
            let timeout = std::time::Duration::from_secs(config.connect_timeout.max(1));
            match certificate_names(&config.host, config.port, timeout).await?.into_iter().next() {
                // Verified in full, for a name the certificate holds: the chain is what counts.
                Some(name) => opts.with_danger_tls_hostname_override(Some(name)),
                // No DNS name in it: the host's own name or address must do.
                None => opts,
            }
        }
        SslMode::VerifyIdentity => opts,
    }))
}

/// Whether `e` says the server offers no TLS at all.
pub(crate) fn server_has_no_tls(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer))
}

/// A TLS failure explained: which check failed and what to look at. `None` for other errors.
pub(crate) fn explain(e: &mysql_async::Error, config: &MySqlSourceConfig, endpoint: &str) -> Option<ConnectorError> {
    let mode = config.ssl_mode.as_str();
    let ca = config.ssl_ca.as_ref().map_or_else(|| "none".to_string(), |p| p.display().to_string());
    if server_has_no_tls(e) {
        return Some(ConnectorError::config(format!(
            "{endpoint} offers no TLS, and db_ssl_mode is {mode}: enable TLS on the server (ssl_cert and ssl_key \
             in its config), or set db_ssl_mode to preferred to allow an unencrypted connection"
        )));
    }
    let text = e.to_string();
    let why = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        format!(
            "the server's certificate does not chain to db_ssl_ca ({ca}): check that this file is the CA that \
             signed the server's certificate"
        )
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        format!(
            "the server's certificate is not for `{}`: connect by a name its certificate holds (db_host), or use \
             db_ssl_mode verify_ca, which checks the CA only",
            config.host
        )
    } else if text.contains("Expired") || text.contains("NotValidYet") {
        "the server's certificate is expired or not valid yet: renew it on the server".to_string()
    } else if text.contains("certificate") || text.contains("TLS error") || text.contains("tls") {
        format!("the TLS handshake failed ({text}); db_ssl_mode is {mode}, db_ssl_ca {ca}")
    } else {
        return None;
    };
    Some(ConnectorError::config(format!("cannot connect to {endpoint} over TLS (db_ssl_mode {mode}): {why}")))
}

/// The DNS names in the server's certificate, read by a TLS handshake that checks nothing.
///
/// Why: `verify_ca` means "signed by the CA, whatever the name", and the driver's switch for
/// that does not work with the rustls in use (blackbeam/mysql_async#404, fixed upstream in
/// #408 but not released). So the names are read first, and the real connections verify the
/// certificate in full (chain and name) for one of those names. Nothing is trusted from this
/// handshake: a certificate for that name that does not chain to `ssl_ca` still fails.
pub(crate) async fn certificate_names(host: &str, port: u16, timeout: std::time::Duration) -> Result<Vec<String>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        ConnectorError::transient(format!("MySQL at {host}:{port}: reading its TLS certificate: {what}: {e}"))
    };
    let fetch = async {
        let mut tcp = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| failed("connect", &e))?;
        // The server's greeting: a packet of 3 length bytes, a sequence byte, the payload.
        let mut header = [0u8; 4];
        tcp.read_exact(&mut header).await.map_err(|e| failed("greeting", &e))?;
        let mut greeting =
            vec![0u8; usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16];
        tcp.read_exact(&mut greeting).await.map_err(|e| failed("greeting", &e))?;
        if greeting.first() == Some(&0xff) {
            return Err(failed("refused", &String::from_utf8_lossy(greeting.get(9..).unwrap_or_default())));
        }
        // SSLRequest: LONG_PASSWORD | PROTOCOL_41 | SSL | SECURE_CONNECTION, 16 MiB, utf8mb4.
        let caps: u32 = 0x0001 | 0x0200 | 0x0800 | 0x8000;
        let mut request = vec![32, 0, 0, 1];
        request.extend_from_slice(&caps.to_le_bytes());
        request.extend_from_slice(&(16u32 << 20).to_le_bytes());
        request.push(45);
        request.extend_from_slice(&[0u8; 23]);
        tcp.write_all(&request).await.map_err(|e| failed("TLS request", &e))?;
        let verifier = AnyCertificate::default();
        let config = rustls::ClientConfig::builder_with_provider(verifier.0.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| failed("TLS setup", &e))?
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| failed("host name", &e))?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| failed("handshake", &e))?;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
        let Some(leaf) = leaf else { return Ok(Vec::new()) };
        let cert = webpki::EndEntityCert::try_from(&leaf).map_err(|e| failed("certificate", &e))?;
        // A wildcard name stands for any one label; any such name will do for the check.
        Ok(cert.valid_dns_names().map(|n| n.replacen("*.", "x.", 1)).collect())
    };
    tokio::time::timeout(timeout, fetch).await.map_err(|_| failed("timeout", &"no answer"))?
}

/// Accepts any certificate: used only to read one (see [`certificate_names`]).
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl Default for AnyCertificate {
    fn default() -> Self {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        Self(provider)
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
