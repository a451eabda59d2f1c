//! SPIFFE identity parsing (`weft_api::Identity: FromStr`).
//!
//! Beyond "no panic": an accepted identity displays as its input, parses
//! back to itself, and `Identity::new` of its parts builds the same identity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_api::Identity;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(identity) = text.parse::<Identity>() else {
        return;
    };
    assert_eq!(identity.to_string(), text);
    assert_eq!(&*identity.uri(), text);
    assert_eq!(identity.to_string().parse::<Identity>().as_ref(), Ok(&identity));
    let rebuilt = Identity::new(
        identity.trust_domain(),
        identity.namespace(),
        identity.service_account(),
    );
    assert_eq!(rebuilt.as_ref(), Ok(&identity));
});
