//! The poll decoders — the agent's request and the server's answer, which
//! the agent decodes — on arbitrary bytes: they never panic, and what they
//! accept encodes to a message they accept again, unchanged.
#![no_main]

use cogrion_agent_proto::v1::{self, PollRequest, PollResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = v1::decode::<PollRequest>(data) {
        let again = v1::encode(&message);
        assert_eq!(v1::decode::<PollRequest>(&again).as_ref(), Ok(&message));
    }
    if let Ok(message) = v1::decode::<PollResponse>(data) {
        let again = v1::encode(&message);
        assert_eq!(v1::decode::<PollResponse>(&again).as_ref(), Ok(&message));
    }
});
