//! The renewal decoder on arbitrary bytes: it never panics, and what it
//! accepts encodes to a message it accepts again, unchanged.
#![no_main]

use cogrion_agent_proto::v1::{self, RenewalRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = v1::decode::<RenewalRequest>(data) {
        let again = v1::encode(&message);
        assert_eq!(v1::decode::<RenewalRequest>(&again).as_ref(), Ok(&message));
    }
});
