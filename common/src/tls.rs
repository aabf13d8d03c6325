//! Certificate set-up (a private CA, the receiver's server certificate, the sender's client
//! certificate; made with rcgen so no openssl recipe is needed) and reading a peer's
//! identity (subject CN and DNS SANs) from its certificate for the receiver's allow-list.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite existing keys")]
    Exists { path: String },
    #[error("peer certificate could not be parsed: {0}")]
    Parse(String),
    #[error("{path}: {message}")]
    Ca { path: String, message: String },
    #[error("identity {0} must be 1 to 64 letters, digits, '.', '-' or '_'")]
    Identity(String),
}

/// How long the certificates `certs init` and `certs issue-sender` make are valid, in
/// days from now (they start a day earlier, for clocks that lag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub ca_days: u32,
    pub server_days: u32,
    pub sender_days: u32,
}

/// Two years for the sender's and the receiver's certificate, ten for the CA.
pub const DEFAULT_SENDER_DAYS: u32 = 730;
pub const DEFAULT_SERVER_DAYS: u32 = 730;
pub const DEFAULT_CA_DAYS: u32 = 3650;

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            ca_days: DEFAULT_CA_DAYS,
            server_days: DEFAULT_SERVER_DAYS,
            sender_days: DEFAULT_SENDER_DAYS,
        }
    }
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    use chrono::Datelike;
    let now = chrono::Utc::now();
    let ymd = |t: chrono::DateTime<chrono::Utc>| {
        rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8)
    };
    params.not_before = ymd(now - chrono::Duration::days(1));
    params.not_after = ymd(now + chrono::Duration::days(i64::from(days.max(1))));
}

/// Selects ring as the process's TLS crypto provider. Both ring (tonic) and aws-lc-rs
/// (the S3 SDK) are linked, so rustls cannot choose by itself; call this first in `main`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What `certs init` writes.
pub struct CertSpec<'a> {
    pub server_name: &'a str,
    pub server_ips: &'a [IpAddr],
    pub sender_identities: &'a [String],
}

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "receiver.pem";
pub const SERVER_KEY: &str = "receiver.key";

/// File names of the client certificate and key for a sender identity. The first
/// identity gets the plain names `sender.pem` / `sender.key`.
pub fn sender_file_names(index: usize, identity: &str) -> (String, String) {
    if index == 0 {
        ("sender.pem".into(), "sender.key".into())
    } else {
        (
            format!("sender-{identity}.pem"),
            format!("sender-{identity}.key"),
        )
    }
}

fn write_new(dir: &Path, name: &str, contents: &str, mode: u32) -> Result<(), TlsError> {
    let path = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => TlsError::Exists {
                path: path.display().to_string(),
            },
            _ => TlsError::Io {
                path: path.display().to_string(),
                source,
            },
        })?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|source| TlsError::Io {
            path: path.display().to_string(),
            source,
        })
}

fn leaf(
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
    days: u32,
) -> Result<(String, String), TlsError> {
    let mut params = CertificateParams::new(names)?;
    set_validity(&mut params, days);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    params.extended_key_usages.push(usage);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Subject CN of the CA `certs init` makes.
const CA_NAME: &str = "familienarchiv-backup CA";

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, CA_NAME);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca_params)
}

/// Creates a private CA and the certificates signed by it in `out` (created if needed),
/// valid for the default [`Lifetimes`]. Refuses to overwrite any existing file. Private
/// keys get mode 0600.
pub fn init_certs(out: &Path, spec: &CertSpec<'_>) -> Result<Vec<String>, TlsError> {
    init_certs_with(out, spec, &Lifetimes::default())
}

/// [`init_certs`] with chosen lifetimes.
pub fn init_certs_with(
    out: &Path,
    spec: &CertSpec<'_>,
    lifetimes: &Lifetimes,
) -> Result<Vec<String>, TlsError> {
    for id in spec.sender_identities {
        check_identity(id)?;
    }
    fs::create_dir_all(out).map_err(|source| TlsError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let mut ca_params = ca_params()?;
    set_validity(&mut ca_params, lifetimes.ca_days);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec![spec.server_name.to_string()];
    names.extend(spec.server_ips.iter().map(|ip| ip.to_string()));
    let (server_pem, server_key) = leaf(
        names,
        spec.server_name,
        ExtendedKeyUsagePurpose::ServerAuth,
        &issuer,
        lifetimes.server_days,
    )?;
    let mut files = vec![
        (CA_CERT.to_string(), ca_pem, 0o644),
        (CA_KEY.to_string(), ca_key_pem, 0o600),
        (SERVER_CERT.to_string(), server_pem, 0o644),
        (SERVER_KEY.to_string(), server_key, 0o600),
    ];
    for (i, identity) in spec.sender_identities.iter().enumerate() {
        let (pem, key) = leaf(
            vec![identity.clone()],
            identity,
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
            lifetimes.sender_days,
        )?;
        let (pem_name, key_name) = sender_file_names(i, identity);
        files.push((pem_name, pem, 0o644));
        files.push((key_name, key, 0o600));
    }
    // Check first so a refusal leaves the directory as it was.
    for (name, _, _) in &files {
        let path = out.join(name);
        if path.exists() {
            return Err(TlsError::Exists {
                path: path.display().to_string(),
            });
        }
    }
    for (name, contents, mode) in &files {
        write_new(out, name, contents, *mode)?;
    }
    Ok(files.into_iter().map(|(n, _, _)| n).collect())
}

fn check_identity(id: &str) -> Result<(), TlsError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(TlsError::Identity(crate::bounded::quoted(id)))
    }
}

fn read_file(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn first_pem_der(path: &Path, pem: &str) -> Result<Vec<u8>, TlsError> {
    let ca_err = |message: String| TlsError::Ca {
        path: path.display().to_string(),
        message,
    };
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| ca_err(format!("not a PEM certificate: {e}")))?;
    Ok(p.contents)
}

/// Issues a new sender certificate for `identity` from the CA in `ca_dir` (`ca.pem` and
/// `ca.key`, as `certs init` wrote them), valid for `days`, as `sender.pem` and
/// `sender.key` in `out` (created if needed; existing files are never overwritten).
/// Returns the paths written.
pub fn issue_sender(
    ca_dir: &Path,
    identity: &str,
    out: &Path,
    days: u32,
) -> Result<Vec<std::path::PathBuf>, TlsError> {
    check_identity(identity)?;
    let ca_path = ca_dir.join(CA_CERT);
    let key_path = ca_dir.join(CA_KEY);
    let ca_err = |path: &Path, message: String| TlsError::Ca {
        path: path.display().to_string(),
        message,
    };
    let ca_pem = read_file(&ca_path)?;
    let ca_der = first_pem_der(&ca_path, &ca_pem)?;
    let ca_key = KeyPair::from_pem(&read_file(&key_path)?)
        .map_err(|e| ca_err(&key_path, format!("not a private key: {e}")))?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| ca_err(&ca_path, format!("not a certificate: {e}")))?;
    if ca_cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&ca_key).as_slice()
    {
        return Err(ca_err(
            &key_path,
            format!("is not the key of {}", ca_path.display()),
        ));
    }
    let ca_subject = ca_cert.subject().as_raw().to_vec();
    let issuer = Issuer::new(ca_params()?, ca_key);
    let (pem, key) = leaf(
        vec![identity.to_string()],
        identity,
        ExtendedKeyUsagePurpose::ClientAuth,
        &issuer,
        days,
    )?;
    // The new certificate must name this CA exactly, or the receiver would not chain it.
    let der = first_pem_der(&ca_path, &pem)?;
    let (_, issued) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::Parse(e.to_string()))?;
    if issued.issuer().as_raw() != ca_subject.as_slice() {
        return Err(ca_err(
            &ca_path,
            format!("its subject is not {CA_NAME:?}; only a CA made by `certs init` can issue"),
        ));
    }
    fs::create_dir_all(out).map_err(|source| TlsError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let (pem_name, key_name) = sender_file_names(0, identity);
    for name in [&pem_name, &key_name] {
        let path = out.join(name);
        if path.exists() {
            return Err(TlsError::Exists {
                path: path.display().to_string(),
            });
        }
    }
    write_new(out, &pem_name, &pem, 0o644)?;
    write_new(out, &key_name, &key, 0o600)?;
    Ok(vec![out.join(pem_name), out.join(key_name)])
}

/// The first certificate of a PEM file, DER-encoded.
pub fn read_pem_certificate(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read_file(path)?;
    first_pem_der(path, &pem)
}

/// When a certificate expires (its notAfter), in Unix seconds.
pub fn cert_not_after(der: &[u8]) -> Result<i64, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Parse(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The value `admission.revoked_certificates` lists for a certificate:
/// `sha256:` and the lower-case hex SHA-256 of its DER encoding.
pub fn fingerprint(der: &[u8]) -> String {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite");
    let digest = suite.common.hash_provider.hash(der);
    format!("sha256:{}", hex::encode(digest.as_ref()))
}

/// The identities a certificate carries: its subject common name and its DNS SANs.
pub fn cert_identities(der: &[u8]) -> Result<Vec<String>, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Parse(e.to_string()))?;
    let mut ids: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                ids.push(dns.to_string());
            }
        }
    }
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_all_files_with_private_keys_0600_and_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let ids = vec!["prod-vps".to_string()];
        let spec = CertSpec {
            server_name: "heim-nas",
            server_ips: &["100.64.0.2".parse().unwrap()],
            sender_identities: &ids,
        };
        let files = init_certs(d.path(), &spec).unwrap();
        assert_eq!(files.len(), 6);
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "receiver.key", "sender.key"] {
            let mode = fs::metadata(d.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let before = fs::read(d.path().join("ca.pem")).unwrap();
        assert!(matches!(
            init_certs(d.path(), &spec),
            Err(TlsError::Exists { .. })
        ));
        assert_eq!(fs::read(d.path().join("ca.pem")).unwrap(), before);

        let pem = fs::read_to_string(d.path().join("sender.pem")).unwrap();
        let der = pem_to_der(&pem);
        assert_eq!(cert_identities(&der).unwrap(), vec!["prod-vps".to_string()]);
    }

    #[test]
    fn issued_senders_chain_to_the_ca_and_have_their_lifetime() {
        let d = tempfile::tempdir().unwrap();
        let ids = vec!["prod-vps".to_string()];
        let spec = CertSpec {
            server_name: "heim-nas",
            server_ips: &[],
            sender_identities: &ids,
        };
        let lifetimes = Lifetimes {
            sender_days: 90,
            ..Lifetimes::default()
        };
        init_certs_with(d.path(), &spec, &lifetimes).unwrap();
        let old = pem_to_der(&fs::read_to_string(d.path().join("sender.pem")).unwrap());
        let days_left =
            |der: &[u8]| (cert_not_after(der).unwrap() - chrono::Utc::now().timestamp()) / 86400;
        assert!((89..=90).contains(&days_left(&old)), "{}", days_left(&old));

        let out = d.path().join("new");
        let files = issue_sender(d.path(), "prod-vps", &out, DEFAULT_SENDER_DAYS).unwrap();
        assert_eq!(files, vec![out.join("sender.pem"), out.join("sender.key")]);
        let new = read_pem_certificate(&out.join("sender.pem")).unwrap();
        assert_ne!(fingerprint(&new), fingerprint(&old));
        assert_eq!(cert_identities(&new).unwrap(), vec!["prod-vps".to_string()]);
        assert!((729..=730).contains(&days_left(&new)));
        let ca = read_pem_certificate(&d.path().join("ca.pem")).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&new).unwrap();
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        // Never overwrites, and refuses a key that is not the CA's.
        assert!(matches!(
            issue_sender(d.path(), "prod-vps", &out, 30),
            Err(TlsError::Exists { .. })
        ));
        fs::copy(d.path().join("receiver.key"), out.join("ca.key")).unwrap();
        fs::copy(d.path().join("ca.pem"), out.join("ca.pem")).unwrap();
        let e = issue_sender(&out, "prod-vps", &d.path().join("x"), 30).unwrap_err();
        assert!(e.to_string().contains("is not the key of"), "{e}");
        assert!(matches!(
            issue_sender(d.path(), "../evil", &d.path().join("y"), 30),
            Err(TlsError::Identity(_))
        ));
        assert!(fingerprint(&new).starts_with("sha256:") && fingerprint(&new).len() == 71);
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }
}
