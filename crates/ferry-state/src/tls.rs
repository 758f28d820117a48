//! TLS for PostgreSQL sessions, with libpq's `sslmode` meanings. Shared by the control
//! store, the checkpoint store and the PostgreSQL connector, so that one address means
//! the same everywhere.
//!
//! | `sslmode`          | encrypted            | server certificate checked          |
//! |--------------------|----------------------|-------------------------------------|
//! | `disable`          | no                   | —                                   |
//! | `prefer` (default) | if the server offers | no                                  |
//! | `require`          | yes                  | no (as `verify-ca` with a root cert) |
//! | `verify-ca`        | yes                  | chain, against `sslrootcert`        |
//! | `verify-full`      | yes                  | chain and host name                 |
//!
//! The roots are the file `sslrootcert` names (PEM), else the system's store. What an
//! address leaves out comes from `PGSSLMODE` and `PGSSLROOTCERT`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a session is protected, from the address's `sslmode` and `sslrootcert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode '{other}': expected disable, allow, prefer, require, \
                     verify-ca or verify-full"
                ))
            }
        })
    }

    /// What tokio-postgres is told: whether TLS is tried, and whether it is a must.
    pub fn ssl_mode(self) -> SslMode {
        match self {
            Self::Disable => SslMode::Disable,
            Self::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }
}

/// How to open a session: whether to use TLS, and the connector that does it.
pub struct Tls {
    pub mode: Mode,
    pub connector: MakeRustlsConnect,
}

/// The TLS settings from an address's `sslmode` and `sslrootcert` (each `None` when the
/// address has none), else from `PGSSLMODE` and `PGSSLROOTCERT`; `prefer` by default.
pub fn settings(sslmode: Option<&str>, sslrootcert: Option<&str>) -> Result<Tls, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mode = match sslmode {
        Some(mode) => Mode::parse(mode)?,
        None => match env("PGSSLMODE") {
            Some(mode) => Mode::parse(&mode).map_err(|e| format!("PGSSLMODE: {e}"))?,
            None => Mode::Prefer,
        },
    };
    let root = sslrootcert
        .map(str::to_string)
        .or_else(|| env("PGSSLROOTCERT"));
    let connector = connector(mode, root.as_deref().map(Path::new))?;
    Ok(Tls { mode, connector })
}

/// Words for a failed handshake's causes that say what to do, added to `text` (the
/// error with its causes) when it has one of them.
pub fn explain(text: &mut String) {
    if text.contains("UnknownIssuer") {
        text.push_str(
            "; the server's certificate is not signed by a trusted CA: \
             give the CA's certificate as sslrootcert=PATH",
        );
    } else if text.contains("NotValidForName") {
        text.push_str(
            "; the server's certificate does not name this host: connect by a name it \
             holds, or use sslmode=verify-ca",
        );
    } else if text.contains("server does not support TLS") {
        text.push_str("; connect with sslmode=prefer or disable, or turn on ssl in the server");
    }
}

/// The connector for `mode`; `root` is the `sslrootcert` file, if given.
fn connector(mode: Mode, root: Option<&Path>) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // libpq checks `require` like `verify-ca` when a root certificate is given.
    let mode = match (mode, root) {
        (Mode::Require, Some(_)) => Mode::VerifyCa,
        (m, _) => m,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        Mode::Disable | Mode::Prefer | Mode::Require => Arc::new(Unchecked(provider.clone())),
        Mode::VerifyCa | Mode::VerifyFull => {
            let roots = Arc::new(roots(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("TLS roots: {e}"))?;
            if mode == Mode::VerifyFull {
                webpki
            } else {
                Arc::new(AnyName(webpki))
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The certificates in `file`, else the system's.
fn roots(file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match file {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert {shown}: {e}"))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("sslrootcert {shown}: {e}"))?;
                store
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {shown}: {e}"))?;
            }
            if store.is_empty() {
                return Err(format!("sslrootcert {shown}: no certificate in the file"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "no system root certificates; give the server's CA as sslrootcert=PATH".into(),
                );
            }
        }
    }
    Ok(store)
}

/// Encryption without checking who answers (`prefer`, `require`): signatures are still
/// verified, so the session key belongs to the certificate presented.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not compared.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
