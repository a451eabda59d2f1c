//! CSR validation in the controller (`weft_controller::ca::check_csr`) on
//! arbitrary DER, for the identity the caller proved. The seeds are real
//! PKCS#10 requests (OpenSSL, P-256 and P-384, with and without extra SANs).
//!
//! Beyond "no panic": an accepted CSR is accepted only for its own identity
//! (the same bytes are refused with OtherIdentity for another workload).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateSigningRequestDer;
use weft_api::Identity;
use weft_api::certify::RefusalReason;
use weft_controller::ca::check_csr;

static WEB: LazyLock<Identity> = LazyLock::new(|| {
    "spiffe://cluster.local/ns/default/sa/web"
        .parse()
        .expect("a valid identity")
});
static OTHER: LazyLock<Identity> = LazyLock::new(|| {
    "spiffe://cluster.local/ns/shop/sa/checkout"
        .parse()
        .expect("a valid identity")
});

fuzz_target!(|data: &[u8]| {
    let csr = CertificateSigningRequestDer::from(data);
    if check_csr(&csr, &WEB).is_ok() {
        let other = check_csr(&csr, &OTHER).map(|_| ()).map_err(|r| r.reason);
        assert_eq!(other, Err(RefusalReason::OtherIdentity));
    }
});
