//! `portcullis dev`: zero-config local mTLS in front of a local port.
//!
//! Creates (or reuses) a local dev CA in the user's data folder, issues a
//! short-lived certificate for the proxy and a client certificate for the
//! developer, and runs one inbound listener that admits only that client. The
//! proxy's certificate is renewed by rewriting its files, which the `files`
//! identity source picks up like any other rotation. With no `--forward`, a
//! tiny built-in HTTP backend answers, so it works on a fresh machine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{
    AdminConfig, AllowRule, AuthzMode, BackendProtocol, Config, FilesIdentity, HttpLimits,
    IdentityConfig, IdentityHeaderKind, InboundConfig, ListenerProtocol, OutboundConfig,
    ShutdownConfig, TlsVersion,
};
use crate::tls::linger::LingerLimits;

/// The trust domain of dev certificates.
pub const DEV_TRUST_DOMAIN: &str = "dev.local";
/// The developer's client identity.
pub const DEVELOPER_ID: &str = "spiffe://dev.local/developer";
/// The proxy's own identity.
pub const PROXY_ID: &str = "spiffe://dev.local/proxy";

/// Lifetime of the proxy's and the developer's certificates.
const LEAF_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Lifetime of the dev CA.
const CA_LIFETIME_DAYS: i64 = 365;

/// Options of `portcullis dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Local service to put mTLS in front of; None starts the demo backend.
    pub forward: Option<String>,
    /// Where the mTLS listener listens.
    pub listen: SocketAddr,
    /// Where the admin endpoint listens.
    pub admin: SocketAddr,
    /// Optional upstream for an outbound listener (plaintext in on `outbound_listen`).
    pub outbound: Option<String>,
    /// Where the outbound listener listens.
    pub outbound_listen: SocketAddr,
    /// Folder for the dev CA and certificates.
    pub dir: PathBuf,
}

/// The default folder: `$XDG_DATA_HOME/portcullis/dev` or `~/.local/share/portcullis/dev`.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("portcullis").join("dev")
}

/// Files written by dev mode.
#[derive(Debug, Clone)]
pub struct DevFiles {
    /// The dev CA certificate (trust bundle for clients and the proxy).
    pub ca_cert: PathBuf,
    /// The dev CA key (0600).
    pub ca_key: PathBuf,
    /// The proxy's certificate.
    pub proxy_cert: PathBuf,
    /// The proxy's key (0600).
    pub proxy_key: PathBuf,
    /// The developer's client certificate.
    pub client_cert: PathBuf,
    /// The developer's client key (0600).
    pub client_key: PathBuf,
}

impl DevFiles {
    fn in_dir(dir: &Path) -> DevFiles {
        DevFiles {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            proxy_cert: dir.join("proxy.crt"),
            proxy_key: dir.join("proxy.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// Run dev mode until Ctrl-C.
pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    let signals = crate::runtime::signals::Signals::install()?;
    let files = prepare_files(&options.dir)?;
    let backend = match &options.forward {
        Some(target) => target.clone(),
        None => start_demo_backend().await?.to_string(),
    };
    let config = dev_config(&options, &files, &backend);
    let config_path = options.dir.join("(dev)");
    let prepared = crate::runtime::prepare(config, &config_path)?;

    let renew_dir = options.dir.clone();
    tokio::spawn(async move {
        // Renew at 2/3 of the lifetime, by rewriting the proxy's files.
        loop {
            tokio::time::sleep(LEAF_LIFETIME * 2 / 3).await;
            match load_ca(&DevFiles::in_dir(&renew_dir))
                .and_then(|ca| issue_leaf(&ca, &DevFiles::in_dir(&renew_dir), Role::Proxy))
            {
                Ok(()) => tracing::info!("dev: renewed the proxy certificate"),
                Err(error) => tracing::warn!(%error, "dev: cannot renew the proxy certificate"),
            }
        }
    });

    let serve = crate::runtime::ServeOptions::default();
    crate::runtime::serve(prepared, serve, signals, |bound| {
        // The addresses as bound: a port 0 on the command line shows as
        // the port the kernel chose.
        let shown = DevOptions {
            listen: bound.inbound.get("dev").copied().unwrap_or(options.listen),
            admin: bound.admin.unwrap_or(options.admin),
            outbound_listen: (bound.outbound.get("dev-outbound").copied())
                .unwrap_or(options.outbound_listen),
            ..options.clone()
        };
        println!("{}", instructions(&shown, &files, &backend));
    })
    .await
}

fn dev_config(options: &DevOptions, files: &DevFiles, backend: &str) -> Config {
    let mut outbound = Vec::new();
    if let Some(upstream) = &options.outbound {
        outbound.push(OutboundConfig {
            name: "dev-outbound".into(),
            listen: options.outbound_listen,
            upstream: upstream.clone(),
            server_name: None,
            expect: AllowRule {
                spiffe_id: Some(format!("spiffe://{DEV_TRUST_DOMAIN}/*")),
                ..AllowRule::default()
            },
            allow_non_loopback: false,
            tls_min_version: TlsVersion::Tls13,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 1024,
            lingering_time: LingerLimits::DEFAULT.time,
            lingering_bytes: LingerLimits::DEFAULT.bytes,
        });
    }
    Config {
        admin: AdminConfig {
            listen: options.admin,
            ..AdminConfig::default()
        },
        identity: IdentityConfig::Files(FilesIdentity {
            cert: files.proxy_cert.clone(),
            key: files.proxy_key.clone(),
            trust_bundle: files.ca_cert.clone(),
            crls: vec![],
            watch: true,
            insecure_key_permissions: false,
        }),
        inbound: vec![InboundConfig {
            name: "dev".into(),
            listen: options.listen,
            backend: backend.to_string(),
            allow: vec![AllowRule {
                spiffe_id: Some(DEVELOPER_ID.into()),
                ..AllowRule::default()
            }],
            allow_any_authenticated: false,
            authz_mode: AuthzMode::Enforce,
            shadow_allow: vec![],
            reauthorize_on_reload: false,
            tls_min_version: TlsVersion::Tls13,
            proxy_protocol: None,
            protocol: ListenerProtocol::Tcp,
            backend_protocol: BackendProtocol::Http1,
            identity_headers: vec![IdentityHeaderKind::Xfcc],
            spiffe_id_header: "x-spiffe-id".into(),
            client_cert_chain: false,
            route: vec![],
            http: HttpLimits::default(),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 1024,
            lingering_time: LingerLimits::DEFAULT.time,
            lingering_bytes: LingerLimits::DEFAULT.bytes,
        }],
        outbound,
        shutdown: ShutdownConfig {
            drain_timeout: Duration::from_secs(5),
        },
        watch: vec![],
    }
}

/// Create the folder, the dev CA (unless a valid one exists) and fresh leaves.
pub fn prepare_files(dir: &Path) -> anyhow::Result<DevFiles> {
    create_private_dir(dir)?;
    let files = DevFiles::in_dir(dir);
    let ca = match load_ca(&files) {
        Ok(ca) => ca,
        Err(_) if !files.ca_cert.exists() => create_ca(&files)?,
        Err(error) => {
            tracing::warn!(%error, "dev: existing dev CA unusable; creating a new one");
            create_ca(&files)?
        }
    };
    issue_leaf(&ca, &files, Role::Proxy)?;
    issue_leaf(&ca, &files, Role::Developer)?;
    Ok(files)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

/// The dev CA: its certificate params (as parsed back) and key.
struct DevCa {
    cert_pem: String,
    key: KeyPair,
}

fn load_ca(files: &DevFiles) -> anyhow::Result<DevCa> {
    let cert_pem = std::fs::read_to_string(&files.ca_cert)
        .with_context(|| format!("cannot read {}", files.ca_cert.display()))?;
    let key_pem = std::fs::read_to_string(&files.ca_key)
        .with_context(|| format!("cannot read {}", files.ca_key.display()))?;
    let key = KeyPair::from_pem(&key_pem).context("dev CA key does not parse")?;
    let summaries = crate::inspect::summarize_pem(cert_pem.as_bytes(), &files.ca_cert)?;
    let Some(summary) = summaries.first() else {
        bail!("dev CA certificate file is empty");
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    // Renew the CA when less than a day is left, so leaves never outlive it.
    if summary.not_after < now + 86_400 || !summary.is_ca {
        bail!("dev CA certificate expired or not a CA");
    }
    // Check that the key belongs to the certificate before trusting the pair.
    Issuer::from_ca_cert_pem(&cert_pem, &key).context("dev CA certificate does not parse")?;
    Ok(DevCa { cert_pem, key })
}

fn create_ca(files: &DevFiles) -> anyhow::Result<DevCa> {
    let key = KeyPair::generate().context("cannot generate the dev CA key")?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "portcullis dev CA");
    name.push(DnType::OrganizationName, "portcullis dev");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(CA_LIFETIME_DAYS);
    let cert = params.self_signed(&key).context("cannot sign the dev CA")?;
    write_file(&files.ca_key, &key.serialize_pem(), true)?;
    write_file(&files.ca_cert, &cert.pem(), false)?;
    tracing::info!(ca = %files.ca_cert.display(), "dev: created a local dev CA");
    Ok(DevCa {
        cert_pem: cert.pem(),
        key,
    })
}

#[derive(Clone, Copy)]
enum Role {
    Proxy,
    Developer,
}

fn issue_leaf(ca: &DevCa, files: &DevFiles, role: Role) -> anyhow::Result<()> {
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, &ca.key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    let (id, cn, cert_path, key_path) = match role {
        Role::Proxy => (PROXY_ID, "localhost", &files.proxy_cert, &files.proxy_key),
        Role::Developer => (
            DEVELOPER_ID,
            "developer",
            &files.client_cert,
            &files.client_key,
        ),
    };
    name.push(DnType::CommonName, cn);
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
    if matches!(role, Role::Proxy) {
        params.subject_alt_names.extend([
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ]);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + LEAF_LIFETIME;
    let cert = params.signed_by(&key, &issuer)?;
    // Key first: the watcher refuses a certificate whose key is not there yet,
    // then picks up the pair when the certificate lands.
    write_file(key_path, &key.serialize_pem(), true)?;
    write_file(cert_path, &cert.pem(), false)?;
    Ok(())
}

/// Write atomically (temp file + rename); private files are 0600 from the start.
fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A tiny HTTP/1.x backend on a loopback port that answers every request.
async fn start_demo_backend() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot start the demo backend")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                // Read up to the end of the request head (or 16 KiB).
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16_384 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body =
                    "hello from the portcullis dev backend: your request came through mTLS\n";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// What dev mode prints: copy-pasteable client commands.
pub fn instructions(options: &DevOptions, files: &DevFiles, backend: &str) -> String {
    let port = options.listen.port();
    let host = if options.listen.ip().is_loopback() || options.listen.ip().is_unspecified() {
        "localhost".to_string()
    } else {
        options.listen.ip().to_string()
    };
    let ca = shell_quote(&files.ca_cert);
    let cert = shell_quote(&files.client_cert);
    let key = shell_quote(&files.client_key);
    let mut out = format!(
        "portcullis dev is running: mTLS on {listen} -> {backend}\n\
         admin: http://{admin}/metrics\n\
         only the client certificate below is admitted ({DEVELOPER_ID})\n\
         \n\
         curl:\n  curl --cacert {ca} --cert {cert} --key {key} https://{host}:{port}/\n\
         openssl:\n  openssl s_client -connect {host}:{port} -CAfile {ca} -cert {cert} -key {key} -quiet\n\
         python:\n  python3 -c \"import ssl,socket; c=ssl.create_default_context(cafile='{ca_raw}'); c.load_cert_chain('{cert_raw}','{key_raw}'); s=c.wrap_socket(socket.create_connection(('{host}',{port})),server_hostname='{host}'); s.sendall(b'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n'); print(s.recv(65536).decode())\"\n",
        listen = options.listen,
        admin = options.admin,
        ca_raw = files.ca_cert.display(),
        cert_raw = files.client_cert.display(),
        key_raw = files.client_key.display(),
    );
    if let Some(upstream) = &options.outbound {
        out.push_str(&format!(
            "outbound: plaintext on {} -> mTLS to {upstream} (expects spiffe://{DEV_TRUST_DOMAIN}/*)\n",
            options.outbound_listen
        ));
    }
    out.push_str("\nstop with Ctrl-C\n");
    out
}

fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}
