//! How the loadgen reaches the server: a TCP socket from a source address, TLS over it
//! (rustls, for `https://`), and HTTP/2 connections that several client streams share
//! (`--http2`, `--streams-per-connection`).
//!
//! A client reads through one poll function whatever its transport ([`Body::poll_fill`]):
//! plain TCP and TLS through `AsyncRead`, an HTTP/2 stream through its DATA frames, whose
//! window is given back as soon as a frame is read (what a browser does). A client that stops
//! reading (a slow one) stops giving the window back, so an HTTP/2 server sees a blocked
//! stream, as it would a full socket on HTTP/1.1.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types};

/// An open byte stream to the server: plain TCP or TLS over TCP.
pub(crate) enum Io {
    Plain(TcpStream),
    /// Boxed: the TLS session is large and most runs use plain TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Which certificates a TLS client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trust {
    /// The operating system's roots (the default).
    System,
    /// The CA certificates of a PEM file (`--ca-cert`).
    CaFile(std::path::PathBuf),
    /// Any certificate (`--insecure`); the handshake's signatures are still checked.
    Anything,
}

/// The TLS side of a run: a connector per ALPN offer, and the name to send and check.
pub(crate) struct Tls {
    /// For event streams: ALPN `h2` with `--http2`, else `http/1.1`.
    pub(crate) streams: TlsConnector,
    /// For the publisher, which speaks HTTP/1.1.
    pub(crate) publish: TlsConnector,
    pub(crate) name: pki_types::ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Tls {
    /// TLS to `host` trusting `trust`; event streams offer `h2` when `http2`.
    pub(crate) fn new(host: &str, trust: &Trust, http2: bool) -> anyhow::Result<Self> {
        let name = pki_types::ServerName::try_from(host.to_owned())
            .with_context(|| format!("`{host}` is not a host name or IP address TLS can check"))?;
        let config = |alpn: &[u8]| -> anyhow::Result<TlsConnector> {
            let mut config = client_config(trust)?;
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(TlsConnector::from(Arc::new(config)))
        };
        Ok(Self { streams: config(if http2 { b"h2" } else { b"http/1.1" })?, publish: config(b"http/1.1")?, name })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(trust: &Trust) -> anyhow::Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("rustls has no safe protocol version for the ring provider")?;
    let config = match trust {
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
        Trust::CaFile(path) => builder.with_root_certificates(roots_from_file(path)?).with_no_client_auth(),
        Trust::System => builder.with_root_certificates(system_roots()?).with_no_client_auth(),
    };
    Ok(config)
}

fn roots_from_file(path: &Path) -> anyhow::Result<RootCertStore> {
    use pki_types::pem::PemObject as _;
    let mut roots = RootCertStore::empty();
    let certs = pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("could not read --ca-cert {}", path.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("--ca-cert {}: not a PEM certificate", path.display()))?;
        roots.add(cert).with_context(|| format!("--ca-cert {}: a certificate rustls cannot use", path.display()))?;
    }
    ensure!(!roots.is_empty(), "--ca-cert {} holds no certificate", path.display());
    Ok(roots)
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    ensure!(
        added > 0,
        "found no trusted CA certificate on this system ({} errors); pass --ca-cert FILE with the server's CA, \
         or --insecure for a test server",
        found.errors.len()
    );
    Ok(roots)
}

/// `--insecure`: accepts any certificate, but still checks that the server holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &pki_types::CertificateDer<'_>,
        _intermediates: &[pki_types::CertificateDer<'_>],
        _server_name: &pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Socket options of one connection.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SocketOptions {
    /// Bind to this address (any port) before connecting.
    pub(crate) source: Option<std::net::Ipv4Addr>,
    /// `SO_RCVBUF`, in bytes.
    pub(crate) recv_buffer: Option<usize>,
    pub(crate) nodelay: bool,
}

/// Opens a TCP connection to `server` and, with `tls`, the TLS session over it.
pub(crate) async fn connect(
    server: SocketAddr,
    options: SocketOptions,
    tls: Option<(&TlsConnector, &pki_types::ServerName<'static>)>,
) -> io::Result<Io> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if let Some(source) = options.source {
        socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    }
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = tokio::net::TcpSocket::from_std_stream(socket.into()).connect(server).await?;
    if options.nodelay {
        stream.set_nodelay(true)?;
    }
    match tls {
        None => Ok(Io::Plain(stream)),
        Some((connector, name)) => {
            let session = connector.connect(name.clone(), stream).await.map_err(|error| {
                // rustls's reason (e.g. an unknown issuer) is the useful part: keep it.
                io::Error::new(error.kind(), TlsFailure(error.to_string()))
            })?;
            Ok(Io::Tls(Box::new(session)))
        }
    }
}

/// A failed TLS handshake, told apart from other I/O errors by its type.
#[derive(Debug)]
pub(crate) struct TlsFailure(pub(crate) String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake failed: {}", self.0)
    }
}

impl std::error::Error for TlsFailure {}

/// Where a client's event-stream body comes from.
pub(crate) enum Body {
    /// HTTP/1.1 on the connection itself.
    Stream(Io),
    /// One HTTP/2 stream, and the rest of the DATA frame last read.
    H2 { stream: h2::RecvStream, pending: Bytes },
}

impl Body {
    /// Reads into `buf` what is there now: `Ready(Ok(0))` at the end of the body; `Pending`
    /// (with the task woken when more comes) when nothing is.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Self::Stream(io) => {
                let mut read = ReadBuf::new(buf);
                ready!(Pin::new(io).poll_read(cx, &mut read))?;
                Poll::Ready(Ok(read.filled().len()))
            }
            Self::H2 { stream, pending } => {
                while pending.is_empty() {
                    match ready!(stream.poll_data(cx)) {
                        None => return Poll::Ready(Ok(0)),
                        Some(Err(error)) => return Poll::Ready(Err(h2_error(&error))),
                        Some(Ok(data)) => {
                            // Give the window back at once: a reading client never holds it.
                            let _ = stream.flow_control().release_capacity(data.len());
                            *pending = data;
                        }
                    }
                }
                let n = buf.len().min(pending.len());
                buf[..n].copy_from_slice(&pending.split_to(n));
                Poll::Ready(Ok(n))
            }
        }
    }
}

/// An HTTP/2 error as an I/O error a client reports (a reset stream reads as a reset).
pub(crate) fn h2_error(error: &h2::Error) -> io::Error {
    if let Some(io) = error.get_io() {
        return io::Error::new(io.kind(), io.to_string());
    }
    let kind = if error.is_reset() || error.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::InvalidData
    };
    io::Error::new(kind, format!("HTTP/2: {error}"))
}

/// The HTTP/2 client settings of the loadgen: windows as large as a browser's, so that flow
/// control holds back only a client that stops reading.
pub(crate) fn h2_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(1 << 20).initial_connection_window_size(8 << 20);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("loadgen-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate\n").unwrap();
        let error = Tls::new("localhost", &Trust::CaFile(dir.clone()), false).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert!(format!("{error:#}").contains("holds no certificate"), "{error:#}");
        let missing = Tls::new("localhost", &Trust::CaFile("/nonexistent/ca.pem".into()), false).unwrap_err();
        assert!(format!("{missing:#}").contains("could not read --ca-cert /nonexistent/ca.pem"), "{missing:#}");
    }

    #[test]
    fn ip_hosts_and_names_are_accepted_for_tls() {
        assert!(Tls::new("127.0.0.1", &Trust::Anything, true).is_ok());
        assert!(Tls::new("localhost", &Trust::Anything, false).is_ok());
    }
}
