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
) -> Result<(String, String), TlsError> {
    let mut params = CertificateParams::new(names)?;
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

/// Creates a private CA and the certificates signed by it in `out` (created if needed).
/// Refuses to overwrite any existing file. Private keys get mode 0600.
pub fn init_certs(out: &Path, spec: &CertSpec<'_>) -> Result<Vec<String>, TlsError> {
    fs::create_dir_all(out).map_err(|source| TlsError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "familienarchiv-backup CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
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

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }
}
