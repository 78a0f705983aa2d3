//! The CA against real keys and CSRs (rcgen on aws-lc-rs), its certificates read
//! back and verified with x509-parser.

use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);
/// An RSA-2048 CSR made once with `openssl req -new -newkey rsa:2048`.
const RSA_CSR: &str = include_str!("rsa-2048.csr");
/// A CSR for an ECDSA P-256 key signed with ECDSA-SHA384, made once with
/// `openssl ecparam -name prime256v1 -genkey` and `openssl req -new -sha384`:
/// its signature verifies, but rcgen takes the key for a P-384 one.
const P256_SHA384_CSR: &str = include_str!("p256-sha384.csr");

fn ca() -> CertificateAuthority {
    let key = LocalCaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    CertificateAuthority::create(Arc::new(key), "test CA", NOW, CaConfig::default()).unwrap()
}

/// A CSR for a fresh key of `alg`, asking for more than it may get: another
/// workspace's identity, a server name, and to be a CA.
fn greedy_csr(alg: &'static SignatureAlgorithm) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::new(vec!["admin.example.com".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::URI(
        "spiffe://cogrion/workspace/someone-else"
            .try_into()
            .unwrap(),
    ));
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn der_of(pem_text: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
    pem.contents
}

#[test]
fn an_agent_certificate_carries_only_what_the_ca_chose() {
    let ca = ca();
    let ws: WorkspaceId = "acme-prod".parse().unwrap();
    let serial: CertSerial = "8a1b2c".parse().unwrap();
    let issued = ca
        .sign_agent(
            &greedy_csr(&rcgen::PKCS_ECDSA_P256_SHA256),
            &ws,
            &serial,
            NOW,
        )
        .unwrap();
    assert_eq!(issued.identity.workspace(), &ws);
    assert_eq!(issued.not_after, NOW + Duration::from_secs(24 * 3600));

    let der = der_of(&issued.pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    // The identity: exactly one URI naming this workspace, nothing the CSR asked.
    let san = cert.subject_alternative_name().unwrap().expect("a SAN");
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| format!("{n}"))
        .collect();
    assert_eq!(
        names,
        vec![format!("URI({})", issued.identity.to_uri())],
        "{names:?}"
    );
    assert!(issued.identity.to_uri().contains("/workspace/acme-prod"));
    // Not a CA; client authentication only.
    assert!(!cert.is_ca(), "the CSR asked to be a CA");
    let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any);
    // Short validity, backdated a little; the serial asked for.
    assert_eq!(
        cert.validity().not_after.timestamp(),
        (NOW.as_millis() / 1000 + 24 * 3600) as i64
    );
    assert_eq!(
        cert.validity().not_before.timestamp(),
        (NOW.as_millis() / 1000 - 300) as i64
    );
    assert_eq!(cert.raw_serial_as_string(), "00:8a:1b:2c");
    // Signed by the CA.
    let ca_der = der_of(ca.certificate_pem());
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
    assert!(ca_cert.is_ca());
    assert_eq!(cert.issuer(), ca_cert.subject());
    cert.verify_signature(Some(ca_cert.public_key()))
        .expect("the CA's signature verifies");
}

#[test]
fn p384_and_ed25519_keys_are_accepted() {
    let ca = ca();
    let ws: WorkspaceId = "acme-prod".parse().unwrap();
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let issued = ca
            .sign_agent(&greedy_csr(alg), &ws, &"01".parse().unwrap(), NOW)
            .unwrap();
        let der = der_of(&issued.pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            X509Certificate::from_der(&der).unwrap().1.public_key().raw
        );
    }
}

#[test]
fn weak_forged_and_unreadable_csrs_are_refused_distinctly() {
    let ca = ca();
    let ws: WorkspaceId = "acme-prod".parse().unwrap();
    let serial: CertSerial = "01".parse().unwrap();
    match ca.sign_agent(RSA_CSR, &ws, &serial, NOW) {
        Err(CaError::CsrKeyType { .. }) => {}
        other => panic!("an RSA key: {other:?}"),
    }
    // The key's type is read from the key and must match the signature's
    // (before issue 16 this was certified as a P-384 key: unusable for mTLS,
    // and the bootstrap token spent on it).
    match ca.check_csr(P256_SHA384_CSR) {
        Err(CaError::CsrKeyType { found }) => {
            assert!(found.contains("EcdsaP256"), "{found}");
            assert!(found.contains("1.2.840.10045.4.3.3"), "{found}");
        }
        other => panic!("a P-256 key signed with SHA-384: {other:?}"),
    }
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        ca.check_csr(&greedy_csr(alg))
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
    }
    // A CSR whose signature was tampered with: a base64 digit in the middle of
    // the last line (the signature's final bytes; away from the padding, whose
    // bits must stay zero).
    let good = greedy_csr(&rcgen::PKCS_ECDSA_P256_SHA256);
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    let last = lines.len() - 2;
    let line = &mut lines[last];
    let i = line.trim_end_matches('=').len() / 2;
    let flipped = if &line[i..=i] == "A" { "B" } else { "A" };
    line.replace_range(i..=i, flipped);
    let forged = lines.join("\n") + "\n";
    match ca.sign_agent(&forged, &ws, &serial, NOW) {
        Err(CaError::CsrBadSignature) => {}
        other => panic!("a tampered CSR: {other:?}"),
    }
    for junk in [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        match ca.sign_agent(junk, &ws, &serial, NOW) {
            Err(CaError::CsrUnreadable(_)) => {}
            other => panic!("{junk:?}: {other:?}"),
        }
    }
}

#[test]
fn the_ca_kept_in_files_is_private_and_reopens_as_itself() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("cogrion-ca-{}", rand::random::<u64>()));
    let first = CertificateAuthority::open_or_create(&dir, NOW, CaConfig::default()).unwrap();
    let mode = std::fs::metadata(dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is the owner's alone");
    let again = CertificateAuthority::open_or_create(&dir, NOW, CaConfig::default()).unwrap();
    assert_eq!(again.certificate_pem(), first.certificate_pem());
    // What the reopened CA signs verifies against the first one's certificate.
    let ws: WorkspaceId = "acme-prod".parse().unwrap();
    let issued = again
        .sign_agent(
            &greedy_csr(&rcgen::PKCS_ECDSA_P256_SHA256),
            &ws,
            &"02".parse().unwrap(),
            NOW,
        )
        .unwrap();
    let (der, ca_der) = (der_of(&issued.pem), der_of(first.certificate_pem()));
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();

    // A key file others can read is refused, and left as it is.
    std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    match CertificateAuthority::open_or_create(&dir, NOW, CaConfig::default()) {
        Err(CaError::Files { detail, .. }) => assert!(detail.contains("0600"), "{detail}"),
        other => panic!("a readable key: {other:?}"),
    }
    // Half a CA is refused, not completed.
    std::fs::remove_file(dir.join("ca.pem")).unwrap();
    std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        CertificateAuthority::open_or_create(&dir, NOW, CaConfig::default()),
        Err(CaError::Files { .. })
    ));
    assert!(!dir.join("ca.pem").exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// A signing key behind the trait, as a KMS would be: it counts its uses, and
/// can be made to fail.
#[derive(Debug)]
struct RemoteKey {
    inner: LocalCaKey,
    uses: AtomicU64,
    broken: std::sync::atomic::AtomicBool,
}

impl CaKey for RemoteKey {
    fn algorithm(&self) -> KeyAlgorithm {
        self.inner.algorithm()
    }
    fn public_key(&self) -> &[u8] {
        self.inner.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(CaError::Signing("the KMS is unreachable".into()));
        }
        self.uses.fetch_add(1, Ordering::SeqCst);
        self.inner.sign(message)
    }
}

#[test]
fn a_key_behind_the_trait_signs_and_its_failures_are_typed() {
    let key = Arc::new(RemoteKey {
        inner: LocalCaKey::generate(KeyAlgorithm::EcdsaP384).unwrap(),
        uses: AtomicU64::new(0),
        broken: Default::default(),
    });
    let ca = CertificateAuthority::create(key.clone(), "kms CA", NOW, CaConfig::default()).unwrap();
    assert_eq!(key.uses.load(Ordering::SeqCst), 1, "the CA certificate");
    let ws: WorkspaceId = "acme-prod".parse().unwrap();
    let csr = greedy_csr(&rcgen::PKCS_ED25519);
    let issued = ca
        .sign_agent(&csr, &ws, &"03".parse().unwrap(), NOW)
        .unwrap();
    assert_eq!(key.uses.load(Ordering::SeqCst), 2);
    let (der, ca_der) = (der_of(&issued.pem), der_of(ca.certificate_pem()));
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    key.broken.store(true, Ordering::SeqCst);
    assert!(matches!(
        ca.sign_agent(&csr, &ws, &"04".parse().unwrap(), NOW),
        Err(CaError::Signing(_))
    ));
}

#[test]
fn serials_become_positive_integers() {
    assert_eq!(serial_bytes(&"ff".parse().unwrap()), vec![0, 0xff]);
    assert_eq!(serial_bytes(&"abc".parse().unwrap()), vec![0x0a, 0xbc]);
    assert_eq!(serial_bytes(&"01".parse().unwrap()), vec![1]);
}
