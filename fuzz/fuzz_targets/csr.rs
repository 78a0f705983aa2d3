//! The CA's CSR check on arbitrary text: it never panics, and a CSR it
//! accepts is one it signs, for a key of an accepted type.
#![no_main]

use std::sync::{Arc, OnceLock};

use cogrion_core::ca::{CaConfig, CertificateAuthority, KeyAlgorithm, LocalCaKey};
use cogrion_core::{Timestamp, WorkspaceId, store::{CertSerial}};
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        let key = LocalCaKey::generate(KeyAlgorithm::EcdsaP256).expect("a CA key");
        CertificateAuthority::create(
            Arc::new(key),
            "fuzz CA",
            Timestamp::from_millis(1_800_000_000_000),
            CaConfig::default(),
        )
        .expect("a CA")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(csr) = ca().check_csr(text) {
        let ws: WorkspaceId = "fuzz-ws".parse().expect("an id");
        let serial: CertSerial = "01".parse().expect("a serial");
        ca().sign_checked(&csr, &ws, &serial, Timestamp::from_millis(1_800_000_000_000))
            .expect("a checked CSR is signed");
    }
});
