//! The agents' certificate authority (feature `ca`): it signs each Cluster
//! Agent's certificate signing request with an identity it chooses itself.
//!
//! - The CA's signing key sits behind [`CaKey`], so a host can keep it in a KMS;
//!   the default, [`LocalCaKey`], lives in a file readable only by its owner
//!   (mode 0600), written by [`CertificateAuthority::open_or_create`].
//! - A CSR is accepted only with an ECDSA P-256, ECDSA P-384 or Ed25519 key and
//!   a signature that verifies; anything else is a typed refusal ([`CaError`]).
//! - What the CSR asks for — subject, alternative names, key usages, the CA flag
//!   — is ignored: the certificate names exactly one workspace, as a SPIFFE-style
//!   URI ([`AgentIdentity`]), is good for client authentication only, and is short
//!   lived ([`CaConfig::validity`], default 24 h).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cogrion_agent_proto::{AgentIdentity, WorkspaceId};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, SignatureAlgorithm, SigningKey,
};

use crate::clock::Timestamp;
use crate::store::CertSerial;

/// The key types the CA accepts in an agent's CSR, and can sign with itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl KeyAlgorithm {
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    fn of(alg: &SignatureAlgorithm) -> Option<Self> {
        [Self::EcdsaP256, Self::EcdsaP384, Self::Ed25519]
            .into_iter()
            .find(|a| a.rcgen() == alg)
    }
}

/// Why the CA refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The CSR is not a PKCS#10 request this CA can read (bad PEM or DER, or an
    /// extension it does not know).
    #[error("the CSR cannot be read: {0}")]
    CsrUnreadable(String),
    /// The CSR's signature does not verify with its own key.
    #[error("the CSR's signature does not verify")]
    CsrBadSignature,
    /// The CSR's key is of a type the CA does not accept.
    #[error("the CSR's key is {found}; accepted: ECDSA P-256, ECDSA P-384, Ed25519")]
    CsrKeyType {
        /// The key's algorithm, as the CSR names it.
        found: String,
    },
    /// The signing key failed (a KMS error, for instance).
    #[error("signing failed: {0}")]
    Signing(String),
    /// The CA's files cannot be used.
    #[error("the CA's file {path}: {detail}")]
    Files {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// The CA's private key. [`LocalCaKey`] keeps it in memory; a host can
/// implement this trait over a KMS, so that the key never leaves it.
pub trait CaKey: fmt::Debug + Send + Sync + 'static {
    /// The key's algorithm.
    fn algorithm(&self) -> KeyAlgorithm;
    /// The public key: the subjectPublicKey bits (an uncompressed EC point, or
    /// the 32 Ed25519 bytes).
    fn public_key(&self) -> &[u8];
    /// Signs `message` (ECDSA signatures DER-encoded; Ed25519 raw).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError>;
}

/// A CA key held in memory, generated here or read from PEM (PKCS#8).
pub struct LocalCaKey {
    pair: KeyPair,
    algorithm: KeyAlgorithm,
}

impl fmt::Debug for LocalCaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCaKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl LocalCaKey {
    /// A fresh key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, CaError> {
        let pair = KeyPair::generate_for(algorithm.rcgen())
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(Self { pair, algorithm })
    }

    /// A key from PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<Self, CaError> {
        let pair =
            KeyPair::from_pem(pem).map_err(|e| CaError::Signing(format!("unreadable key: {e}")))?;
        let algorithm = KeyAlgorithm::of(pair.algorithm())
            .ok_or_else(|| CaError::Signing("the key is of an unsupported type".into()))?;
        Ok(Self { pair, algorithm })
    }

    fn to_pem(&self) -> String {
        self.pair.serialize_pem()
    }
}

impl CaKey for LocalCaKey {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
    fn public_key(&self) -> &[u8] {
        PublicKeyData::der_bytes(&self.pair)
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError> {
        SigningKey::sign(&self.pair, message).map_err(|e| CaError::Signing(e.to_string()))
    }
}

/// Adapts a [`CaKey`] to rcgen.
struct Signer(Arc<dyn CaKey>);

impl PublicKeyData for Signer {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm().rcgen()
    }
}

impl SigningKey for Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// The CA's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CaConfig {
    /// The trust domain of the agents' identities (default
    /// [`DEFAULT_TRUST_DOMAIN`](cogrion_agent_proto::DEFAULT_TRUST_DOMAIN)).
    pub trust_domain: String,
    /// How long an agent certificate is valid (default 24 h).
    pub validity: Duration,
    /// How far before "now" a certificate starts being valid, for clocks that
    /// run a little behind (default 5 min).
    pub backdate: Duration,
    /// How long the CA's own certificate is valid when it is created (default
    /// 10 years).
    pub ca_validity: Duration,
    /// How long the control plane's server certificate is valid (default 90
    /// days; issue a new one before then).
    pub server_validity: Duration,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            trust_domain: cogrion_agent_proto::DEFAULT_TRUST_DOMAIN.into(),
            validity: Duration::from_secs(24 * 3600),
            backdate: Duration::from_secs(300),
            ca_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            server_validity: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

impl CaConfig {
    /// With this agent certificate validity.
    pub fn with_validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }
}

/// A certificate the CA issued to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCertificate {
    /// The certificate, PEM.
    pub pem: String,
    /// The identity it carries.
    pub identity: AgentIdentity,
    /// Its serial number.
    pub serial: CertSerial,
    /// When it starts being valid.
    pub not_before: Timestamp,
    /// When it expires.
    pub not_after: Timestamp,
}

/// Signs agents' certificates; see the [module](self) documentation.
pub struct CertificateAuthority {
    issuer: Issuer<'static, Signer>,
    certificate_pem: String,
    config: CaConfig,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn time_of(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(t.as_millis() as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn files_error(path: &Path, detail: impl fmt::Display) -> CaError {
    CaError::Files {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

impl CertificateAuthority {
    /// A new CA around `key`, with a self-signed CA certificate named `name`,
    /// valid from `now` for [`CaConfig::ca_validity`].
    pub fn create(
        key: Arc<dyn CaKey>,
        name: &str,
        now: Timestamp,
        config: CaConfig,
    ) -> Result<Self, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = time_of(now);
        params.not_after = time_of(now + config.ca_validity);
        params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        let signer = Signer(key);
        let certificate = params
            .self_signed(&signer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(Self {
            issuer: Issuer::new(params, signer),
            certificate_pem: certificate.pem(),
            config,
        })
    }

    /// A CA from its key and its certificate (PEM), as saved earlier.
    pub fn from_parts(
        key: Arc<dyn CaKey>,
        certificate_pem: &str,
        config: CaConfig,
    ) -> Result<Self, CaError> {
        let issuer = Issuer::from_ca_cert_pem(certificate_pem, Signer(key))
            .map_err(|e| CaError::Signing(format!("unreadable CA certificate: {e}")))?;
        Ok(Self {
            issuer,
            certificate_pem: certificate_pem.to_owned(),
            config,
        })
    }

    /// The CA kept in `dir`: `ca.key` (PKCS#8 PEM, mode 0600 — a key file
    /// readable by others is refused) and `ca.pem`. Created, with a fresh ECDSA
    /// P-256 key, when neither exists.
    pub fn open_or_create(dir: &Path, now: Timestamp, config: CaConfig) -> Result<Self, CaError> {
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.pem"));
        match (key_path.exists(), cert_path.exists()) {
            (true, true) => {
                check_private(&key_path)?;
                let key_pem =
                    std::fs::read_to_string(&key_path).map_err(|e| files_error(&key_path, e))?;
                let cert_pem =
                    std::fs::read_to_string(&cert_path).map_err(|e| files_error(&cert_path, e))?;
                let key = LocalCaKey::from_pem(&key_pem).map_err(|e| files_error(&key_path, e))?;
                Self::from_parts(Arc::new(key), &cert_pem, config)
            }
            (false, false) => {
                std::fs::create_dir_all(dir).map_err(|e| files_error(dir, e))?;
                let key = LocalCaKey::generate(KeyAlgorithm::EcdsaP256)?;
                write_private(&key_path, key.to_pem().as_bytes())?;
                let ca = Self::create(Arc::new(key), "Cogrion agents CA", now, config)?;
                std::fs::write(&cert_path, &ca.certificate_pem)
                    .map_err(|e| files_error(&cert_path, e))?;
                Ok(ca)
            }
            (true, false) => Err(files_error(&cert_path, "missing, while the key exists")),
            (false, true) => Err(files_error(
                &key_path,
                "missing, while the certificate exists",
            )),
        }
    }

    /// The CA's certificate (PEM): what agents and the server trust.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The settings.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// Checks a CSR as [`sign_agent`](Self::sign_agent) would — readable, its
    /// signature valid, its key of an accepted type — without signing: a server
    /// checks before it consumes a one-time token, then signs the checked CSR
    /// with [`sign_checked`](Self::sign_checked).
    pub fn check_csr(&self, csr_pem: &str) -> Result<CheckedCsr, CaError> {
        read_csr(csr_pem).map(CheckedCsr)
    }

    /// A certificate and a fresh ECDSA P-256 key for the control plane's own
    /// HTTPS endpoint, valid for `names` (DNS names or IP addresses) for
    /// [`CaConfig::server_validity`]. Agents trust it through the CA's
    /// certificate.
    pub fn issue_server(
        &self,
        names: &[&str],
        now: Timestamp,
    ) -> Result<ServerCertificate, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let subject_alt_names =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map_err(|e| CaError::Signing(e.to_string()))?
                .subject_alt_names;
        let params = self.leaf_params(
            names.first().copied().unwrap_or("cogrion").to_owned(),
            subject_alt_names,
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
            now + self.config.server_validity,
            rand::random::<[u8; 16]>().to_vec(),
        );
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(ServerCertificate {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// When a certificate issued at `now` starts being valid.
    fn not_before(&self, now: Timestamp) -> Timestamp {
        Timestamp::from_millis(
            now.as_millis()
                .saturating_sub(self.config.backdate.as_millis() as u64),
        )
    }

    /// The parameters of an end-entity certificate (agent or server): not a CA,
    /// signatures only, one extended usage, backdated by [`CaConfig::backdate`].
    fn leaf_params(
        &self,
        common_name: String,
        subject_alt_names: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        now: Timestamp,
        not_after: Timestamp,
        serial: Vec<u8>,
    ) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = subject_alt_names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time_of(self.not_before(now));
        params.not_after = time_of(not_after);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params
    }

    /// Signs an agent's CSR for `workspace`: the certificate's identity, usages
    /// and validity are the CA's choice; from the CSR only the public key is
    /// taken, after its signature is verified and its type accepted.
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        workspace: &WorkspaceId,
        serial: &CertSerial,
        now: Timestamp,
    ) -> Result<AgentCertificate, CaError> {
        self.sign_checked(&self.check_csr(csr_pem)?, workspace, serial, now)
    }

    /// [`sign_agent`](Self::sign_agent) for a CSR already checked.
    pub fn sign_checked(
        &self,
        csr: &CheckedCsr,
        workspace: &WorkspaceId,
        serial: &CertSerial,
        now: Timestamp,
    ) -> Result<AgentCertificate, CaError> {
        let csr = &csr.0;
        let identity = AgentIdentity::new(&self.config.trust_domain, workspace.clone())
            .map_err(|e| CaError::Signing(e.to_string()))?;
        // Certificates count whole seconds: say exactly when this one ends.
        let not_after =
            Timestamp::from_millis((now + self.config.validity).as_millis() / 1000 * 1000);
        // Everything here is the CA's choice, not the CSR's.
        let uri = identity
            .to_uri()
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Signing(e.to_string()))?;
        let params = self.leaf_params(
            format!("agent {workspace}"),
            vec![SanType::URI(uri)],
            ExtendedKeyUsagePurpose::ClientAuth,
            now,
            not_after,
            serial_bytes(serial),
        );
        let not_before = self.not_before(now);
        let certificate = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(AgentCertificate {
            pem: certificate.pem(),
            identity,
            serial: serial.clone(),
            not_before,
            not_after,
        })
    }
}

/// A CSR that was read, whose signature verified and whose key type is
/// accepted ([`CertificateAuthority::check_csr`]).
#[derive(Debug, Clone)]
pub struct CheckedCsr(CertificateSigningRequestParams);

impl CheckedCsr {
    /// The digest of the key it asks a certificate for: SHA-256 of its DER
    /// `SubjectPublicKeyInfo`.
    pub fn key_digest(&self) -> crate::store::KeyDigest {
        use sha2::Digest;
        crate::store::KeyDigest(
            sha2::Sha256::digest(self.0.public_key.subject_public_key_info()).into(),
        )
    }
}

/// A certificate and its private key for the control plane's HTTPS endpoint.
#[derive(Clone)]
pub struct ServerCertificate {
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate").finish_non_exhaustive()
    }
}

/// Parses a CSR, verifies its signature, and accepts only the key types of
/// [`KeyAlgorithm`].
fn read_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, CaError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => CaError::CsrBadSignature,
        rcgen::Error::UnsupportedSignatureAlgorithm => CaError::CsrKeyType {
            found: "an unsupported algorithm".into(),
        },
        other => CaError::CsrUnreadable(other.to_string()),
    })?;
    let found = csr.public_key.algorithm();
    if KeyAlgorithm::of(found).is_none() {
        return Err(CaError::CsrKeyType {
            found: format!("{found:?}"),
        });
    }
    // rcgen names the key's type after the signature's algorithm: read it
    // from the key itself, and require the signature to be the one that type
    // makes (a P-256 key signing with SHA-384 would otherwise be certified as
    // a P-384 key, which no TLS stack accepts).
    check_key_matches_signature(csr_pem)?;
    Ok(csr)
}

/// The key type the CSR's public key is (from its SubjectPublicKeyInfo:
/// algorithm, curve, length), and that its signature's algorithm is that
/// type's.
fn check_key_matches_signature(csr_pem: &str) -> Result<(), CaError> {
    use x509_parser::prelude::FromDer;
    let unreadable = |e: String| CaError::CsrUnreadable(e);
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|e| unreadable(e.to_string()))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| unreadable(e.to_string()))?;
    let spki = &csr.certification_request_info.subject_pki;
    let key_oid = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| x509_parser::der_parser::oid::Oid::try_from(p).ok())
        .map(|oid| oid.to_id_string());
    let key_len = spki.subject_public_key.data.len();
    // (the key's algorithm, its curve, the length of its point or key) → the
    // type, and the only signature algorithm accepted with it.
    let (key, signature) = match (key_oid.as_str(), curve.as_deref(), key_len) {
        // id-ecPublicKey, prime256v1, an uncompressed point.
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7"), 65) => {
            (KeyAlgorithm::EcdsaP256, "1.2.840.10045.4.3.2")
        }
        // id-ecPublicKey, secp384r1, an uncompressed point.
        ("1.2.840.10045.2.1", Some("1.3.132.0.34"), 97) => {
            (KeyAlgorithm::EcdsaP384, "1.2.840.10045.4.3.3")
        }
        // id-Ed25519, no parameters, 32 bytes.
        ("1.3.101.112", None, 32) => (KeyAlgorithm::Ed25519, "1.3.101.112"),
        _ => {
            return Err(CaError::CsrKeyType {
                found: format!(
                    "a key of algorithm {key_oid} (curve {}, {key_len} bytes)",
                    curve.as_deref().unwrap_or("none")
                ),
            });
        }
    };
    let signed_with = csr.signature_algorithm.algorithm.to_id_string();
    if signed_with != signature {
        return Err(CaError::CsrKeyType {
            found: format!("a {key:?} key whose CSR is signed with {signed_with}, not {signature}"),
        });
    }
    Ok(())
}

/// A serial's hex digits as a positive DER integer's bytes.
fn serial_bytes(serial: &CertSerial) -> Vec<u8> {
    let hex = serial.as_str();
    let hex = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_owned()
    };
    let mut bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
        .collect();
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    bytes
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| files_error(path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(files_error(
            path,
            format!(
                "mode {:o} lets others read the CA's key; it must be 0600",
                mode & 0o777
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), CaError> {
    Ok(())
}

/// Writes a new file only its owner can read (created with mode 0600, never
/// over an existing one).
fn write_private(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| files_error(path, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| files_error(path, e))
}

#[cfg(test)]
mod tests;
