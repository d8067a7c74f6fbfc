//! Unit tests of a group's entries: floor, records, key order, expiry and nacks.

use super::*;

fn group() -> Group {
    Group::new("g".into(), GroupTerms::default(), 1, 1_000, 3)
}

fn admit_and_dispatch(g: &mut Group, id: u64, key: Option<&str>, conn: u64) -> Admit {
    let admit = g.admit_fresh(id, true, key.map(key_hash), 0, None);
    if admit == Admit::Deliverable {
        g.dispatch(id, ConnId(conn), 100, 10);
    }
    admit
}

#[test]
fn floor_follows_contiguous_acks() {
    let mut g = group();
    for id in 1..=4 {
        admit_and_dispatch(&mut g, id, None, 7);
    }
    assert_eq!(g.floor(), (0, 0));
    assert!(matches!(g.ack(2), AckOutcome::Acked { released: Some(Released { conn: ConnId(7), bytes: 10 }), .. }));
    assert_eq!(g.floor(), (0, 0));
    g.ack(1);
    assert_eq!(g.floor(), (2, 2));
    assert_eq!(g.to_record("t").acked, Vec::<u64>::new());
    g.ack(4);
    assert_eq!(g.to_record("t").acked, vec![4]);
    assert_eq!(g.ack(4), AckOutcome::Ignored);
    assert_eq!(g.ack(9), AckOutcome::Unknown);
    g.check_invariants();
}

#[test]
fn the_borrowed_position_record_has_the_bytes_of_the_owned_one() {
    let filter = Filter::KeyPrefix("eu-".into());
    for mut g in [group(), Group::new("billing".into(), GroupTerms { filter: Some(filter), coalesce_ms: Some(9) }, 1, 1_000, 3)] {
        for id in 1..=6 {
            admit_and_dispatch(&mut g, id, None, 7);
        }
        g.ack(1);
        g.ack(3);
        g.ack(5);
        g.resets = 2;
        let (mut borrowed, mut owned) = (Vec::new(), Vec::new());
        let size = g.encode_record("orders", &mut borrowed);
        crate::record::encode_control(&mut owned, crate::record::KIND_GROUP, &g.to_record("orders"));
        assert_eq!(size, borrowed.len());
        assert_eq!(borrowed, owned, "{}", String::from_utf8_lossy(&owned));
        assert!(!g.to_record("orders").acked.is_empty(), "acked ids above the floor are in it");
    }
}

/// 40,960 in flight fill ten chunks of entries (48 bytes with their ids) and ten of ack
/// deadlines (16 bytes): 64 bytes a message, and nothing in the sets.
#[test]
fn state_bytes_count_the_chunks_held() {
    let mut g = group();
    assert_eq!(g.state_bytes(), 0);
    for id in 1..=40_960 {
        admit_and_dispatch(&mut g, id, None, 7);
    }
    let per_message = g.state_bytes() as f64 / 40_960.0;
    assert!((64.0..64.1).contains(&per_message), "{per_message} bytes a message");
    admit_and_dispatch(&mut g, 40_961, Some("k"), 7);
    g.ack(40_961);
    g.admit_fresh(40_962, true, Some(key_hash("k")), 0, None);
    assert!(g.state_bytes() as f64 / 40_962.0 > 64.0, "a new chunk each, a ready id and a key held");
}

#[test]
fn same_key_waits_for_ack() {
    let mut g = group();
    assert_eq!(admit_and_dispatch(&mut g, 1, Some("a"), 1), Admit::Deliverable);
    assert_eq!(admit_and_dispatch(&mut g, 2, Some("a"), 1), Admit::Blocked);
    assert_eq!(admit_and_dispatch(&mut g, 3, Some("b"), 1), Admit::Deliverable);
    assert_eq!(g.next_candidate(4, 100), Candidate::Nothing);
    g.ack(1);
    assert_eq!(g.next_candidate(4, 100), Candidate::Ready { id: 2, attempts: 0 });
    g.check_invariants();
}

#[test]
fn expire_and_nack_make_ready_with_attempts_kept() {
    let mut g = group();
    admit_and_dispatch(&mut g, 1, None, 1);
    assert_eq!(g.expire(1, 99), None, "stale deadline ignored");
    assert_eq!(g.expire(1, 100), Some((ConnId(1), 10)));
    assert_eq!(g.next_candidate(2, 100), Candidate::Ready { id: 1, attempts: 1 });
    // The first deadline's entry is still queued (the test expired it directly): its timer comes first.
    assert_eq!(g.dispatch(1, ConnId(2), 200, 30), Dispatched { attempt: 2, prev: 0, arm_timer: false });
    assert_eq!(g.nack(1, Some(500), ConnId(1)), None, "a nack from the earlier holder changes nothing");
    assert_eq!(g.nack(1, Some(500), ConnId(2)), Some(Released { conn: ConnId(2), bytes: 30 }));
    assert_eq!(g.next_candidate(2, 100), Candidate::Nothing);
    assert!(g.delay_over(1, 500));
    assert_eq!(g.next_candidate(2, 100), Candidate::Ready { id: 1, attempts: 2 });
    g.check_invariants();
}
