//! Every v1 message: round trips, and each kind of refusal.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::{CommandKind, CommandOutcome, CommandSeq};

const CSR: &str =
    "-----BEGIN CERTIFICATE REQUEST-----\nMIIBAA==\n-----END CERTIFICATE REQUEST-----\n";
const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";

fn token() -> TokenText {
    TokenText::new("0123456789abcdef".repeat(4)).unwrap()
}

fn bootstrap() -> BootstrapRequest {
    BootstrapRequest {
        version: PROTOCOL_VERSION,
        workspace: "acme-prod".parse().unwrap(),
        token: token(),
        csr_pem: CSR.into(),
        agent_version: AgentVersion::new("0.1.0").unwrap(),
    }
}

fn bootstrap_response() -> BootstrapResponse {
    BootstrapResponse {
        version: PROTOCOL_VERSION,
        certificate_chain_pem: CERT.into(),
        ca_bundle_pem: CERT.into(),
        not_after_ms: 1_800_000_000_000,
        poll: PollSettings {
            wait_secs: 30,
            max_commands: 16,
        },
        renewal: RenewalSettings {
            renew_at_percent: 66,
        },
    }
}

fn command(id: &str) -> Command {
    Command::new(
        CommandId::new(id).unwrap(),
        CommandSeq(1),
        CommandKind::new("health").unwrap(),
        json!({}),
    )
    .unwrap()
}

fn result() -> ResultRequest {
    ResultRequest {
        version: PROTOCOL_VERSION,
        result: CommandResult::new(
            CommandId::new("c1").unwrap(),
            CommandOutcome::Succeeded,
            json!({"status": "ok"}),
        )
        .unwrap(),
    }
}

/// Encodes, decodes, and compares.
fn round_trip<M: Message + PartialEq + std::fmt::Debug>(m: M) {
    let again: M = decode(&encode(&m)).unwrap_or_else(|e| panic!("{}: {e}", M::NAME));
    assert_eq!(again, m);
}

/// The message as JSON with `f` applied.
fn edited<M: Message>(m: &M, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v = serde_json::to_value(m).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

/// Each of the generic refusals, for one message type.
fn refusals<M: Message + std::fmt::Debug>(m: &M) {
    // Oversized: refused before parsing.
    let big = vec![b' '; M::MAX_LEN + 1];
    assert!(
        matches!(decode::<M>(&big), Err(DecodeError::TooLarge { .. })),
        "{}: oversized",
        M::NAME
    );
    // Not JSON, and JSON of the wrong shape.
    for bad in [&b"{not json"[..], b"[]", b"{}", b"null"] {
        assert!(
            matches!(decode::<M>(bad), Err(DecodeError::Malformed { .. })),
            "{}: {:?}",
            M::NAME,
            String::from_utf8_lossy(bad)
        );
    }
    // An unknown field.
    let extra = edited(m, |v| {
        v["extra"] = json!(1);
    });
    assert!(
        matches!(decode::<M>(&extra), Err(DecodeError::Malformed { .. })),
        "{}: unknown field",
        M::NAME
    );
    // Another version: refused as such, with or without fields this version
    // does not know.
    for body in [
        edited(m, |v| v["version"] = json!(2)),
        edited(m, |v| {
            v["version"] = json!(2);
            v["new_in_v2"] = json!(true);
        }),
        edited(m, |v| v["version"] = json!(0)),
    ] {
        let e = decode::<M>(&body).unwrap_err();
        assert!(
            matches!(e, DecodeError::UnsupportedVersion { .. }),
            "{}: {e:?}",
            M::NAME
        );
        assert_eq!(e.code(), ErrorCode::UnsupportedVersion);
    }
}

#[test]
fn every_message_round_trips() {
    round_trip(bootstrap());
    round_trip(bootstrap_response());
    round_trip(PollRequest::new(vec![CommandId::new("c1").unwrap()], 30).unwrap());
    round_trip(PollResponse {
        version: PROTOCOL_VERSION,
        commands: vec![command("c1"), command("c2")],
        cancel: Vec::new(),
    });
    round_trip(PollResponse {
        version: PROTOCOL_VERSION,
        commands: vec![command("c2")],
        cancel: vec![CommandId::new("c1").unwrap()],
    });
    round_trip(result());
    round_trip(ResultAck {
        version: PROTOCOL_VERSION,
        id: CommandId::new("c1").unwrap(),
    });
    round_trip(RenewalRequest {
        version: PROTOCOL_VERSION,
        csr_pem: CSR.into(),
    });
    round_trip(RenewalResponse {
        version: PROTOCOL_VERSION,
        certificate_chain_pem: CERT.into(),
        not_after_ms: 1,
    });
    round_trip(ErrorResponse::new(
        ErrorCode::RateLimited,
        "slow down",
        Some(3),
    ));
}

#[test]
fn every_message_refuses_oversized_malformed_unknown_fields_and_other_versions() {
    refusals(&bootstrap());
    refusals(&bootstrap_response());
    refusals(&PollRequest::new(Vec::new(), 0).unwrap());
    refusals(&PollResponse {
        version: PROTOCOL_VERSION,
        commands: Vec::new(),
        cancel: vec![CommandId::new("c1").unwrap()],
    });
    refusals(&result());
    refusals(&ResultAck {
        version: PROTOCOL_VERSION,
        id: CommandId::new("c1").unwrap(),
    });
    refusals(&RenewalRequest {
        version: PROTOCOL_VERSION,
        csr_pem: CSR.into(),
    });
    refusals(&RenewalResponse {
        version: PROTOCOL_VERSION,
        certificate_chain_pem: CERT.into(),
        not_after_ms: 1,
    });
    refusals(&ErrorResponse::new(ErrorCode::Internal, "x", None));
}

/// Expects `body` to decode as `M` only to break a field's rule.
fn invalid<M: Message + std::fmt::Debug>(body: Vec<u8>, why: &str) {
    match decode::<M>(&body) {
        Err(e @ DecodeError::Invalid { .. }) => assert_eq!(e.code(), ErrorCode::BadRequest),
        // Field types that check themselves while parsing (tokens, ids) are
        // malformed rather than invalid: both are `bad_request`.
        Err(e @ DecodeError::Malformed { .. }) => assert_eq!(e.code(), ErrorCode::BadRequest),
        other => panic!("{}: {why}: expected a refusal, got {other:?}", M::NAME),
    }
}

#[test]
fn broken_field_rules_are_refused() {
    let b = bootstrap();
    invalid::<BootstrapRequest>(
        edited(&b, |v| v["token"] = json!("ab".repeat(31))),
        "short token",
    );
    invalid::<BootstrapRequest>(
        edited(&b, |v| v["token"] = json!("AB".repeat(32))),
        "uppercase token",
    );
    invalid::<BootstrapRequest>(
        edited(&b, |v| v["workspace"] = json!("Acme_Prod")),
        "bad workspace id",
    );
    invalid::<BootstrapRequest>(
        edited(&b, |v| v["csr_pem"] = json!(CERT)),
        "a certificate for a CSR",
    );
    invalid::<BootstrapRequest>(edited(&b, |v| v["csr_pem"] = json!("")), "an empty CSR");
    invalid::<BootstrapRequest>(
        edited(&b, |v| {
            v["csr_pem"] = json!(format!("{CSR}{}", "A".repeat(MAX_CSR_PEM_LEN)))
        }),
        "an oversized CSR",
    );
    invalid::<BootstrapRequest>(
        edited(&b, |v| v["agent_version"] = json!("0.1 beta")),
        "a bad version",
    );

    let r = bootstrap_response();
    invalid::<BootstrapResponse>(
        edited(&r, |v| v["poll"]["wait_secs"] = json!(0)),
        "no poll wait",
    );
    invalid::<BootstrapResponse>(
        edited(&r, |v| v["poll"]["wait_secs"] = json!(61)),
        "a poll wait too long",
    );
    invalid::<BootstrapResponse>(
        edited(&r, |v| v["poll"]["max_commands"] = json!(65)),
        "too many commands",
    );
    invalid::<BootstrapResponse>(
        edited(&r, |v| v["renewal"]["renew_at_percent"] = json!(95)),
        "renewing too late",
    );
    invalid::<BootstrapResponse>(
        edited(&r, |v| v["ca_bundle_pem"] = json!(CSR)),
        "a CSR for a CA",
    );

    let ids: Vec<String> = (0..=MAX_FINISHED_PER_POLL)
        .map(|i| format!("c{i}"))
        .collect();
    invalid::<PollRequest>(
        serde_json::to_vec(&json!({"version": 1, "finished": ids, "wait_secs": 1})).unwrap(),
        "too many finished ids",
    );
    invalid::<PollRequest>(
        serde_json::to_vec(&json!({"version": 1, "finished": [], "wait_secs": 61})).unwrap(),
        "a poll held too long",
    );
    invalid::<PollRequest>(
        serde_json::to_vec(&json!({"version": 1, "finished": ["-bad"], "wait_secs": 1})).unwrap(),
        "a bad command id",
    );
    assert!(PollRequest::new(Vec::new(), 61).is_err());

    let commands: Vec<Command> = (0..=MAX_COMMANDS_PER_POLL)
        .map(|i| command(&format!("c{i}")))
        .collect();
    invalid::<PollResponse>(
        serde_json::to_vec(&json!({"version": 1, "commands": commands})).unwrap(),
        "too many commands",
    );
    let cancel: Vec<String> = (0..MAX_COMMANDS_PER_POLL)
        .map(|i| format!("x{i}"))
        .collect();
    invalid::<PollResponse>(
        serde_json::to_vec(&json!({"version": 1, "commands": [command("c1")], "cancel": cancel}))
            .unwrap(),
        "too many commands and cancels together",
    );
    invalid::<PollResponse>(
        serde_json::to_vec(&json!({"version": 1, "commands": [], "cancel": ["-bad"]})).unwrap(),
        "a bad id to cancel",
    );
    // A poll with nothing to cancel is the message agents knew before.
    assert_eq!(
        String::from_utf8(encode(&PollResponse {
            version: PROTOCOL_VERSION,
            commands: Vec::new(),
            cancel: Vec::new(),
        }))
        .unwrap(),
        r#"{"version":1,"commands":[]}"#
    );
    invalid::<ResultRequest>(
        edited(
            &result(),
            |v| {
                v["result"]["outcome"] =
                    json!({"status": "failed", "message": "m".repeat(5000), "retryable": false})
            },
        ),
        "a failure message too long",
    );
    invalid::<ErrorResponse>(
        serde_json::to_vec(&json!({"version": 1, "code": "internal", "message": "m".repeat(MAX_ERROR_MESSAGE_LEN + 1)}))
            .unwrap(),
        "an error message too long",
    );
    assert!(matches!(
        decode::<ErrorResponse>(br#"{"version":1,"code":"no_such_code","message":""}"#),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn tokens_never_show_in_debug_output() {
    let b = bootstrap();
    assert!(!format!("{b:?}").contains(token().expose()));
    assert!(format!("{b:?}").contains("<redacted>"));
}

#[test]
fn error_messages_are_cut_at_a_character_boundary() {
    let e = ErrorResponse::new(ErrorCode::Internal, "é".repeat(MAX_ERROR_MESSAGE_LEN), None);
    assert!(e.message.len() <= MAX_ERROR_MESSAGE_LEN);
    assert!(e.check().is_ok());
}

/// Decodes arbitrary bytes as every message: refusals, never a panic.
fn decode_all(bytes: &[u8]) {
    let _ = decode::<BootstrapRequest>(bytes);
    let _ = decode::<BootstrapResponse>(bytes);
    let _ = decode::<PollRequest>(bytes);
    let _ = decode::<PollResponse>(bytes);
    let _ = decode::<ResultRequest>(bytes);
    let _ = decode::<ResultAck>(bytes);
    let _ = decode::<RenewalRequest>(bytes);
    let _ = decode::<RenewalResponse>(bytes);
    let _ = decode::<ErrorResponse>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random bytes.
    #[test]
    fn decoders_are_total_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    /// Valid messages with one field's text replaced by anything.
    #[test]
    fn decoders_are_total_on_mutated_messages(field in 0usize..5, text in ".{0,80}", version in 0u32..4) {
        let b = bootstrap();
        let keys = ["workspace", "token", "csr_pem", "agent_version", "version"];
        let body = edited(&b, |v| {
            v[keys[field]] = json!(text);
            if field != 4 {
                v["version"] = json!(version);
            }
        });
        decode_all(&body);
        // Whatever decodes is what was sent, and passes its own rules.
        if let Ok(m) = decode::<BootstrapRequest>(&body) {
            prop_assert_eq!(m.version, PROTOCOL_VERSION);
            prop_assert!(m.check().is_ok());
        }
    }

    /// Polls built from valid parts always round-trip.
    #[test]
    fn valid_polls_round_trip(ids in proptest::collection::vec("[a-z0-9][a-z0-9._-]{0,20}", 0..20), wait in 0u32..=MAX_POLL_WAIT_SECS) {
        let finished = ids.into_iter().map(|i| CommandId::new(i).unwrap()).collect();
        let poll = PollRequest::new(finished, wait).unwrap();
        let again: PollRequest = decode(&encode(&poll)).unwrap();
        prop_assert_eq!(again, poll);
    }
}

/// A result's floats read back as they were decoded: what the control plane
/// acknowledges is what it stores and reads again. (Found by the `result`
/// fuzz target: serde_json's default float parser was one ULP off for this
/// number, so each decode of the re-encoded result changed it.)
#[test]
fn a_results_floats_survive_being_stored_and_read_again() {
    let body = br#"{"version": 1, "result": {"id": "c1", "outcome": {"status": "succeeded"}, "output": {"n": [1, 600000133584215634616407.5, 0.1, 1e-320]}}}"#;
    let first = decode::<ResultRequest>(body).unwrap();
    let again = decode::<ResultRequest>(&encode(&first)).unwrap();
    assert_eq!(again, first);
    assert_eq!(
        first.result.output["n"][1].as_f64(),
        Some(600000133584215634616407.5_f64)
    );
}
