//! `keyferry connect`: a client like `openssl s_client -quiet`, with the
//! data plane in a guest.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use keyferry::handshake::Handshake;
use keyferry::tls::{self, ServerVerification};
use keyferry::{DataPlane, GuestComponent, GuestEngine};
use keyferry_server::transport::Timeouts;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

use super::args::{SandboxArgs, TlsArgs};

#[derive(Args)]
pub(crate) struct ConnectArgs {
    /// Server to connect to.
    pub(crate) address: String,
    /// Trust anchors (PEM). Defaults to the system bundle.
    #[arg(long, conflicts_with = "insecure")]
    pub(crate) ca: Option<PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Server name for SNI and verification (defaults to the host part).
    #[arg(long)]
    pub(crate) sni: Option<String>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
}

pub(crate) fn connect_command(args: ConnectArgs) -> anyhow::Result<()> {
    let (host, _port) = args
        .address
        .rsplit_once(':')
        .context("address must be HOST:PORT")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = args.sni.clone().unwrap_or_else(|| host.to_string());
    let server_name = ServerName::try_from(name.clone())
        .with_context(|| format!("invalid server name {name}"))?;
    let verification = if args.insecure {
        ServerVerification::DangerousNone
    } else {
        let ca = args
            .ca
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
        ServerVerification::Roots(tls::roots_from_pem_file(&ca)?)
    };
    let options = args.tls.options();
    let config = Arc::new(options.client_config(verification)?);
    let engine = GuestEngine::new(args.sandbox.config())?;
    let guest = GuestComponent::reference(&engine)?.instantiate()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut stream = tokio::net::TcpStream::connect(&args.address)
            .await
            .with_context(|| format!("cannot connect to {}", args.address))?;
        stream.set_nodelay(true)?;
        let hs = Handshake::client(&config, server_name, rand_id())?;
        let handoff = tokio::time::timeout(
            Timeouts::default().handshake,
            keyferry_server::transport::handshake_async(&mut stream, hs),
        )
        .await
        .context("the handshake timed out")??;
        info!(version = ?handoff.facts.version, suite = %handoff.facts.suite, "handshake complete; data plane in the guest");
        let (mut plane, first) = DataPlane::new(guest, handoff)?;
        let (mut net_in, mut net_out) = stream.split();
        let mut stdout = tokio::io::stdout();
        stdout.write_all(&first.plaintext).await?;
        // Full duplex: the socket is always read, so a peer that echoes
        // while we send can never deadlock against us.
        let mut pending = first.to_send;
        let mut written = 0;
        let mut stdin = tokio::io::stdin();
        let mut stdin_open = true;
        let mut net = vec![0u8; 16 * 1024 + 512];
        let mut input = vec![0u8; 16 * 1024];
        loop {
            if written == pending.len() {
                pending.clear();
                written = 0;
            }
            tokio::select! {
                read = net_in.read(&mut net) => {
                    let n = read?;
                    let d = if n == 0 { plane.end_of_stream()? } else { plane.receive(&net[..n])? };
                    stdout.write_all(&d.plaintext).await?;
                    stdout.flush().await?;
                    pending.extend_from_slice(&d.to_send);
                    if pending.len() - written > MAX_PENDING {
                        bail!("the server is not reading what we send");
                    }
                    if let Some(closed) = d.closed {
                        net_out.write_all(&pending[written..]).await?;
                        info!(?closed, "peer closed");
                        break;
                    }
                }
                w = net_out.write(&pending[written..]), if written < pending.len() => {
                    written += w?;
                }
                read = stdin.read(&mut input), if stdin_open && pending.len() - written < (1 << 20) => {
                    let n = read?;
                    if n == 0 {
                        stdin_open = false;
                        pending.extend_from_slice(&plane.close()?.to_send);
                    } else {
                        pending.extend_from_slice(&plane.send(&input[..n])?);
                    }
                }
            }
        }
        let _ = stream.shutdown().await;
        Ok(())
    })
}

/// The most unsent ciphertext `connect` holds before giving up on a peer
/// that does not read.
pub(crate) const MAX_PENDING: usize = 16 << 20;

pub(crate) fn rand_id() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom_fill(&mut b);
    u64::from_be_bytes(b)
}

pub(crate) fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}
