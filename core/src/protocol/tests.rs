//! Framing and handshake tests.

use super::frame::{FRAME_BODY_BYTES_MAX, FRAME_CONTROL_BYTES_MAX, FRAME_MAGIC};
use super::*;
use crate::batch::{BatchHeader, Encoding, Op, OpKind, BLOCK_BYTES};
use crate::ids::{ComponentId, DiskId, Epoch};
use crate::stats::{
    AgentDiskStats, AgentStats, CacheDiskStats, MasterTargetStats, ProcessServerStats,
    ReplicaStats, ReplicationMode,
};
use crate::time::Timestamp;
use proptest::prelude::*;

fn disk() -> DiskId {
    DiskId::new("web01-disk0").unwrap()
}

fn comp(name: &str) -> ComponentId {
    ComponentId::new(name).unwrap()
}

fn hello(role: Role) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        role,
        component: comp("node-1"),
        epoch: Epoch(3),
    }
}

fn batch_header() -> BatchHeader {
    let ops = vec![
        Op {
            seq: 7,
            block: 0,
            blocks: 2,
            kind: OpKind::Data,
        },
        Op {
            seq: 8,
            block: 10,
            blocks: 3,
            kind: OpKind::Zero,
        },
        Op {
            seq: 9,
            block: 4,
            blocks: 1,
            kind: OpKind::Data,
        },
    ];
    BatchHeader {
        disk: disk(),
        epoch: Epoch(2),
        first_seq: 7,
        last_seq: 9,
        first_time: Timestamp(100),
        last_time: Timestamp(250),
        consistent: true,
        raw_bytes: BatchHeader::data_bytes_needed(&ops),
        ops,
        encoding: Encoding::Raw,
    }
}

/// One value of every `Message` variant.
fn every_message() -> Vec<Message> {
    let reg = Registration {
        data_addr: "10.0.0.1:7001".into(),
        api_addr: "10.0.0.1:8001".into(),
        disks: vec![DiskInfo {
            disk: disk(),
            size_bytes: 1 << 30,
            source_path: "/var/lib/haven/disks/disk0.img".into(),
        }],
    };
    let agent_stats = AgentStats {
        disks: vec![AgentDiskStats {
            disk: disk(),
            mode: ReplicationMode::Data,
            size_bytes: 1 << 30,
            seq_written: 10,
            seq_cached: 9,
            seq_applied: 8,
            rpo_ms: 12,
            bytes_written: 4096 * 10,
            buffered_bytes: 4096,
            connected: true,
        }],
    };
    let ps_stats = ProcessServerStats {
        disks: vec![CacheDiskStats {
            disk: disk(),
            cached_seq: 9,
            applied_seq: 8,
            cached_batches: 1,
            cached_bytes: 4096,
            master_target_connected: false,
            refused: Some("disk disk0: resize is not supported".into()),
        }],
        cache_bytes: 4096,
        cache_bytes_max: 1 << 30,
        bytes_in: 1,
        bytes_out: 2,
    };
    let mt_stats = MasterTargetStats {
        replicas: vec![ReplicaStats {
            disk: disk(),
            epoch: Epoch(1),
            size_bytes: 1 << 30,
            applied_seq: 8,
            points: 3,
            journal_bytes: 1 << 20,
            inconsistent: Some("writes 3..=4 were lost".into()),
        }],
    };
    let msgs = vec![
        Message::Hello(hello(Role::Agent)),
        Message::reject("no"),
        Message::OpenStream {
            disk: disk(),
            epoch: Epoch(1),
            size_bytes: 1 << 30,
            first_seq: 5,
        },
        Message::StreamState {
            disk: disk(),
            epoch: Epoch(1),
            cached_seq: 9,
            applied_seq: 8,
        },
        Message::Batch(batch_header()),
        Message::BatchAck {
            disk: disk(),
            epoch: Epoch(1),
            cached_seq: 9,
            applied_seq: 8,
        },
        Message::Busy {
            disk: disk(),
            first_seq: 10,
            retry_after_ms: 50,
        },
        Message::Applied {
            disk: disk(),
            epoch: Epoch(1),
            applied_seq: u64::MAX,
        },
        Message::Register(reg),
        Message::Assign(vec![Assignment {
            disk: disk(),
            epoch: Epoch(1),
            process_server: comp("ps1"),
            process_server_addr: "ps1:7001".into(),
            batch_bytes_max: Some(1 << 20),
            batch_delay_ms: None,
        }]),
        Message::Retire(vec![Retired {
            disk: disk(),
            epoch: Epoch(2),
        }]),
        Message::Routes(vec![Route {
            disk: disk(),
            epoch: Epoch(1),
            size_bytes: 1 << 30,
            master_target: comp("mt1"),
            master_target_addr: "mt1:7002".into(),
        }]),
        Message::AgentHeartbeat(agent_stats),
        Message::ProcessServerHeartbeat(ps_stats),
        Message::MasterTargetHeartbeat(mt_stats),
    ];
    // Keep this list complete: every kind appears exactly once.
    let mut kinds: Vec<&str> = msgs.iter().map(|m| m.kind()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), 15);
    msgs
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// A frame header with the given fields.
fn raw_header(magic: [u8; 4], body_len: u32, ctl_len: u32, crc: u32) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&body_len.to_le_bytes());
    h.extend_from_slice(&ctl_len.to_le_bytes());
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// A frame whose body is `ctl` then `data`, with a correct header and checksum.
fn raw_frame(ctl: &[u8], data: &[u8]) -> Vec<u8> {
    let mut body = ctl.to_vec();
    body.extend_from_slice(data);
    let mut f = raw_header(
        FRAME_MAGIC,
        body.len() as u32,
        ctl.len() as u32,
        crc32fast::hash(&body),
    );
    f.extend_from_slice(&body);
    f
}

#[test]
fn every_message_round_trips_with_and_without_data() {
    for msg in every_message() {
        for data in [Vec::new(), pattern(1), pattern(3 * BLOCK_BYTES as usize)] {
            let frame = encode(&msg, &data).unwrap();
            let (got, got_data, used) = decode(&frame).unwrap().expect("a whole frame");
            assert_eq!(got, msg, "{}", msg.kind());
            assert_eq!(got_data, data, "{}", msg.kind());
            assert_eq!(used, frame.len());
            // encode_head + data is the same frame.
            let mut split = encode_head(&msg, &data).unwrap();
            split.extend_from_slice(&data);
            assert_eq!(split, frame);
            // The header parses to what the frame holds.
            let h = parse_header(frame[..FRAME_HEADER_BYTES].try_into().unwrap()).unwrap();
            assert_eq!(h.body_len as usize, frame.len() - FRAME_HEADER_BYTES);
            assert_eq!(h.data_len() as usize, data.len());
        }
    }
}

#[test]
fn frames_decode_one_at_a_time_from_a_stream() {
    let msgs = every_message();
    let mut stream = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        stream.extend_from_slice(&encode(m, &pattern(i * 100)).unwrap());
    }
    let mut at = 0;
    for (i, m) in msgs.iter().enumerate() {
        let (got, data, used) = decode(&stream[at..]).unwrap().unwrap();
        assert_eq!(&got, m);
        assert_eq!(data, pattern(i * 100));
        at += used;
    }
    assert_eq!(at, stream.len());
    assert_eq!(decode(&stream[at..]).unwrap(), None);
}

#[test]
fn every_truncated_prefix_is_incomplete() {
    for msg in every_message() {
        let frame = encode(&msg, &pattern(100)).unwrap();
        for len in 0..frame.len() {
            assert_eq!(
                decode(&frame[..len]).unwrap(),
                None,
                "{} cut at {len}",
                msg.kind()
            );
        }
    }
}

#[test]
fn a_flipped_body_byte_is_a_checksum_error() {
    let frame = encode(
        &Message::Batch(batch_header()),
        &pattern(3 * BLOCK_BYTES as usize),
    )
    .unwrap();
    for i in FRAME_HEADER_BYTES..frame.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = frame.clone();
            bad[i] ^= bit;
            match decode(&bad) {
                Err(FrameError::BadChecksum { expected, actual }) => assert_ne!(expected, actual),
                other => panic!("flip at {i}: {other:?}"),
            }
        }
    }
    // A corrupt checksum field is caught too.
    let mut bad = frame.clone();
    bad[12] ^= 1;
    assert!(matches!(decode(&bad), Err(FrameError::BadChecksum { .. })));
}

#[test]
fn bad_magic_is_refused() {
    let mut frame = encode(&Message::reject("x"), &[]).unwrap();
    frame[0] = b'G';
    assert_eq!(decode(&frame), Err(FrameError::BadMagic(*b"GVN1")));
    // Refused as soon as the header is there, before the body.
    assert_eq!(
        decode(&frame[..FRAME_HEADER_BYTES]),
        Err(FrameError::BadMagic(*b"GVN1"))
    );
    let http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(matches!(decode(http), Err(FrameError::BadMagic(_))));
}

#[test]
fn oversized_body_is_refused_from_the_header() {
    let h = raw_header(FRAME_MAGIC, FRAME_BODY_BYTES_MAX + 1, 10, 0);
    assert_eq!(
        decode(&h),
        Err(FrameError::BodyTooLarge(FRAME_BODY_BYTES_MAX + 1))
    );
    let h = raw_header(FRAME_MAGIC, u32::MAX, 10, 0);
    assert_eq!(decode(&h), Err(FrameError::BodyTooLarge(u32::MAX)));
    // The limit itself is allowed: the header is fine, the body is just not there yet.
    let h = raw_header(FRAME_MAGIC, FRAME_BODY_BYTES_MAX, 10, 0);
    assert_eq!(decode(&h), Ok(None));
}

#[test]
fn bad_control_lengths_are_refused() {
    for (body, ctl) in [
        (10, 0),
        (0, 0),
        (10, 11),
        (0, 1),
        (FRAME_BODY_BYTES_MAX, FRAME_CONTROL_BYTES_MAX + 1),
    ] {
        let h = raw_header(FRAME_MAGIC, body, ctl, 0);
        assert_eq!(
            decode(&h),
            Err(FrameError::BadControlLength { ctl, body }),
            "body {body} ctl {ctl}"
        );
    }
}

#[test]
fn a_control_part_that_is_not_a_message_is_bad_control() {
    // Variant index 200 does not exist.
    let frame = raw_frame(&[200], &[1, 2, 3]);
    assert!(matches!(decode(&frame), Err(FrameError::BadControl(_))));
    // A valid variant cut short.
    let ctl = postcard::to_allocvec(&Message::Batch(batch_header())).unwrap();
    let frame = raw_frame(&ctl[..ctl.len() / 2], &[]);
    assert!(matches!(decode(&frame), Err(FrameError::BadControl(_))));
    // A name that does not validate (DiskId checks on decode).
    let bad_name = Message::Busy {
        disk: disk(),
        first_seq: 1,
        retry_after_ms: 0,
    };
    let mut ctl = postcard::to_allocvec(&bad_name).unwrap();
    let pos = ctl.windows(3).position(|w| w == b"web").unwrap();
    ctl[pos] = b'/';
    let frame = raw_frame(&ctl, &[]);
    assert!(matches!(decode(&frame), Err(FrameError::BadControl(_))));
}

#[test]
fn oversized_messages_are_not_encoded() {
    let data = vec![0u8; FRAME_BODY_BYTES_MAX as usize];
    assert!(matches!(
        encode_head(&Message::reject("x"), &data),
        Err(FrameError::TooLargeToEncode(_))
    ));
}

#[test]
fn reject_reasons_are_bounded() {
    // One ASCII byte first, so that the limit falls inside a two-byte character.
    let long = format!("a{}", "é".repeat(2000));
    let Message::Reject { reason } = Message::reject(long) else {
        panic!()
    };
    assert_eq!(reason.len(), message::REASON_BYTES_MAX - 1);
    assert!(reason[1..].chars().all(|c| c == 'é'));
}

/// A registration whose control part is `ctl_bytes` long once encoded.
fn registration_of(ctl_bytes: usize) -> Message {
    let with_path = |len: usize| {
        Message::Register(Registration {
            data_addr: "ps:7001".into(),
            api_addr: "ps:7080".into(),
            disks: vec![DiskInfo {
                disk: disk(),
                size_bytes: 1 << 30,
                source_path: "p".repeat(len),
            }],
        })
    };
    let overhead = postcard::to_allocvec(&with_path(0)).unwrap().len();
    // The path's length prefix grows with it: try the lengths around the estimate.
    (ctl_bytes.saturating_sub(overhead + 4)..=ctl_bytes - overhead)
        .map(with_path)
        .find(|m| postcard::to_allocvec(m).unwrap().len() == ctl_bytes)
        .expect("some path length gives exactly ctl_bytes")
}

#[test]
fn the_frame_limits_themselves_are_allowed() {
    // A control part of exactly the limit encodes and decodes; one byte more does not encode.
    let max = FRAME_CONTROL_BYTES_MAX as usize;
    let msg = registration_of(max);
    let frame = encode_head(&msg, &[]).expect("a control part at the limit");
    assert_eq!(decode(&frame).unwrap().map(|(m, ..)| m), Some(msg));
    assert!(matches!(
        encode_head(&registration_of(max + 1), &[]),
        Err(FrameError::TooLargeToEncode(_))
    ));
    // A body of exactly the limit.
    let ctl = postcard::to_allocvec(&Message::reject("x")).unwrap().len();
    let data = vec![7u8; FRAME_BODY_BYTES_MAX as usize - ctl];
    let head = encode_head(&Message::reject("x"), &data).expect("a body at the limit");
    let mut frame = head;
    frame.extend_from_slice(&data);
    let (m, d, used) = decode(&frame).unwrap().unwrap();
    assert_eq!(
        (m, d.len(), used),
        (Message::reject("x"), data.len(), frame.len())
    );
}

#[test]
fn hello_is_checked() {
    let ok = Message::Hello(hello(Role::ProcessServer));
    assert_eq!(
        check_hello(&ok, &[Role::Agent, Role::ProcessServer]),
        Ok(hello(Role::ProcessServer))
    );

    let mut old = hello(Role::Agent);
    old.version = PROTOCOL_VERSION + 1;
    assert_eq!(
        check_hello(&Message::Hello(old), &[Role::Agent]),
        Err(HandshakeError::Version {
            theirs: PROTOCOL_VERSION + 1
        })
    );

    let wrong = Message::Hello(hello(Role::MasterTarget));
    match check_hello(&wrong, &[Role::Agent, Role::ProcessServer]) {
        Err(HandshakeError::Role { got, expected }) => {
            assert_eq!(got, "master-target");
            assert_eq!(expected, "agent or process-server");
        }
        other => panic!("{other:?}"),
    }

    for msg in every_message()
        .into_iter()
        .filter(|m| !matches!(m, Message::Hello(_)))
    {
        assert_eq!(
            check_hello(&msg, &[Role::Agent]),
            Err(HandshakeError::NotHello(msg.kind()))
        );
    }
}

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&buf);
    }

    /// Arbitrary control bytes behind a valid header and checksum reach the postcard decoder.
    #[test]
    fn decode_never_panics_on_arbitrary_control(
        ctl in prop::collection::vec(any::<u8>(), 1..256),
        data in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let frame = raw_frame(&ctl, &data);
        match decode(&frame) {
            Ok(Some((_, got, used))) => {
                prop_assert_eq!(got, data);
                prop_assert_eq!(used, frame.len());
            }
            Ok(None) => prop_assert!(false, "a whole frame must not be incomplete"),
            Err(e) => prop_assert!(matches!(e, FrameError::BadControl(_)), "{:?}", e),
        }
    }

    #[test]
    fn data_payloads_round_trip(data in prop::collection::vec(any::<u8>(), 0..20_000), seq in 1u64..u64::MAX) {
        let msg = Message::Applied { disk: disk(), epoch: Epoch(seq), applied_seq: seq };
        let frame = encode(&msg, &data).unwrap();
        let (got, got_data, used) = decode(&frame).unwrap().unwrap();
        prop_assert_eq!(got, msg);
        prop_assert_eq!(got_data, data);
        prop_assert_eq!(used, frame.len());
    }
}
