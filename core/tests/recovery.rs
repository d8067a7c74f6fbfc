//! Recovery against damage: a torn final batch is cut and its ids never reused; damage to
//! acknowledged data stops the start (naming where) unless salvage is asked for; salvage
//! loses only the damaged records; a truncate that fails stops the node.

mod common;

use common::*;
use ferry_core::node::DiskError;
use ferry_core::record::RecordRef;
use ferry_core::recovery::{scan_segment, segment_file_name};
use ferry_core::testkit::Harness;
use ferry_core::Config;
use serde_json::json;

/// (segment, offset, size) of the message record with `id` on `topic`.
fn place_of(h: &Harness, topic: &str, id: u64) -> (u64, usize, usize) {
    for (segment, bytes) in h.disk.segments() {
        let mut found = None;
        scan_segment(bytes, false, |offset, size, rec, _| {
            if let RecordRef::Message(m) = rec {
                if m.topic == topic && m.id == id {
                    found = Some((segment, offset as usize, size));
                }
            }
        });
        if let Some(place) = found {
            return place;
        }
    }
    panic!("no record of {topic} {id}");
}

/// Flips a bit in the body of the record at (segment, offset, size), as bit rot would; a
/// second flip of the same place heals it.
fn flip(h: &mut Harness, (segment, offset, size): (u64, usize, usize)) {
    h.disk.files.get_mut(&segment).unwrap()[offset + size - 2] ^= 0x08;
    h.disk.sync_all();
}

fn rot(h: &mut Harness, topic: &str, id: u64) -> u64 {
    let place = place_of(h, topic, id);
    flip(h, place);
    place.0
}

/// (segment, offset, size) of the snapshot record naming `topic` in `segment`.
fn topic_record_in(h: &Harness, segment: u64, topic: &str) -> (u64, usize, usize) {
    let mut found = None;
    scan_segment(&h.disk.files[&segment], true, |offset, size, rec, _| {
        if matches!(rec, RecordRef::Topic(ref r) if r.topic == topic) {
            found = Some((segment, offset as usize, size));
        }
    });
    found.unwrap_or_else(|| panic!("no snapshot record of {topic} in segment {segment}"))
}

/// Restarts from the disk as it is and publishes to `topic`: the id it gets.
fn publish_after_restart(h: &mut Harness, topic: &str) -> u64 {
    h.restart(false);
    h.connect(P);
    publish(h, topic, None, json!("after the restart"))
}

fn delivered_ids(h: &mut Harness, topic: &str) -> Vec<u64> {
    subscribe(h, S, topic, "audit", json!({"window": 1000}));
    ids(&msgs(h, S))
}

#[test]
fn a_torn_final_batch_is_cut_and_its_ids_are_never_given_out_again() {
    let mut h = harness(Config::default());
    for n in 0..5 {
        publish(&mut h, "t", None, json!(n));
    }
    let newest = *h.disk.files.keys().last().unwrap();
    let file = h.disk.files.get_mut(&newest).unwrap();
    let len = file.len();
    file.truncate(len - 3);
    h.disk.sync_all();
    h.restart(false);
    let report = h.last_recovery.as_ref().unwrap();
    let torn = report.torn_tail.clone().expect("torn tail reported");
    assert_eq!(torn.segment, newest);
    assert_eq!(report.messages, 4);
    assert_eq!(report.truncated, vec![]);
    h.connect(P);
    h.connect(S);
    assert_eq!(delivered_ids(&mut h, "t"), vec![1, 2, 3, 4]);
    assert_eq!(publish(&mut h, "t", None, json!("next")), 6, "id 5 was in the torn batch: it may have been seen, so it is never reused");
    // The log went on after the torn bytes, its first batch recording the cut: later starts
    // need no salvage, do not read the torn records and do not skip again.
    h.restart(false);
    let report = h.last_recovery.as_ref().unwrap();
    assert!(report.torn_tail.is_none() && report.salvaged.is_empty(), "{report:?}");
    assert_eq!(report.previously_salvaged.len(), 1, "the cut region is accepted: {report:?}");
    h.connect(P);
    h.connect(S);
    assert_eq!(delivered_ids(&mut h, "t"), vec![1, 2, 3, 4, 6]);
    assert_eq!(publish(&mut h, "t", None, json!("and on")), 7);
}

#[test]
fn a_crash_before_the_cut_is_recorded_finds_the_same_torn_tail_again() {
    // Found by the `harness` fuzz target: the torn tail used to be cut from the file before
    // the snapshot holding its skipped ids was durable, and a crash in between gave them again.
    let mut h = harness(Config::default());
    for n in 0..5 {
        publish(&mut h, "t", None, json!(n));
    }
    rot(&mut h, "t", 5);
    h.hold_writes = true;
    h.restart(false);
    assert!(h.last_recovery.as_ref().unwrap().torn_tail.is_some());
    h.hold_writes = false;
    h.restart(true);
    h.connect(P);
    let next = publish(&mut h, "t", None, json!("next"));
    assert!(next > 5, "id {next}: 5 was pubacked before its batch rotted");
}

#[test]
fn topics_known_only_from_a_torn_tail_keep_their_skipped_ids_across_restarts() {
    // Found by the `harness` fuzz target: the skip for torn bytes that no longer decode raised
    // the first id of new topics in memory only, so one more restart forgot it.
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!("first"));
    let lost = publish(&mut h, "u", None, json!("only in the final batch"));
    let (segment, offset, _) = place_of(&h, "u", lost);
    rot(&mut h, "u", lost);
    h.disk.files.get_mut(&segment).unwrap()[offset + 9] ^= 0x40; // the record's topic name
    h.disk.sync_all();
    h.restart(false);
    h.restart(false);
    h.connect(P);
    assert!(publish(&mut h, "u", None, json!("again")) > lost, "u {lost} was pubacked");
}

#[test]
fn a_final_batch_torn_inside_a_record_skips_the_ids_it_may_have_held() {
    let mut h = harness(Config::default());
    for n in 0..5 {
        publish(&mut h, "t", None, json!(n));
    }
    let newest = *h.disk.files.keys().last().unwrap();
    let file = h.disk.files.get_mut(&newest).unwrap();
    let len = file.len();
    // The trailer and the end of record 5: its id can no longer be read back.
    file.truncate(len - 12);
    h.disk.sync_all();
    let next = publish_after_restart(&mut h, "t");
    assert!(next > 5, "id {next} may be the id of the record that was torn");
}

#[test]
fn ids_skipped_for_a_torn_tail_stay_skipped_when_the_next_snapshot_is_torn_too() {
    // Found by the `harness` fuzz target. The ids a recovery skips for an unreadable torn
    // tail are kept by the snapshot the log goes on with; when that snapshot is in turn the
    // damaged final batch, its topic records still count.
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    let second = publish(&mut h, "t", None, json!(2));
    rot(&mut h, "t", second);
    h.restart(false);
    h.connect(P);
    let torn = h.last_recovery.as_ref().unwrap().torn_tail.clone().expect("the rotted final batch reads as torn");
    let snapshot_at = torn.region.end as usize;
    assert!(h.disk.files[&torn.segment].len() > snapshot_at, "the snapshot after the cut was written");
    h.disk.files.get_mut(&torn.segment).unwrap()[snapshot_at + 3] ^= 0x01;
    h.disk.sync_all();
    let next = publish_after_restart(&mut h, "t");
    assert!(next > second, "id {next} may be the id of the record that was torn");
}

#[test]
fn damage_to_acknowledged_data_refuses_to_start_and_names_the_place() {
    let mut h = harness(Config::default());
    for n in 1..=20 {
        publish(&mut h, "t", None, json!(n));
    }
    let segment = rot(&mut h, "t", 10);
    let before = h.disk.files.clone();
    let error = h.try_restart_from_disk().expect_err("damage in the middle of the newest segment is not a torn tail");
    let text = error.to_string();
    assert!(text.contains(&segment_file_name(segment)), "{text}");
    assert!(text.contains("ids affected: t 10;") || text.contains("ids affected: t 10\n") || text.contains("ids affected: t 10"), "{text}");
    assert!(text.contains("--salvage"), "the way out is named: {text}");
    assert_eq!(h.disk.files, before, "a refused start changes nothing on disk");
}

#[test]
fn salvage_loses_only_the_damaged_record_and_resynchronises_at_the_next_batch() {
    let mut h = harness(Config::default());
    for n in 1..=5 {
        publish(&mut h, "t", None, json!(n));
    }
    // Id 6 is written alone (nothing was in flight); 7..=10 gather behind it in one batch.
    h.hold_writes = true;
    for n in 6..=10 {
        h.send_json(P, json!({"op": "pub", "req": n, "topic": "t", "body": n}));
    }
    h.hold_writes = false;
    h.complete_writes();
    assert_eq!(h.take_op(P, "puback").len(), 5);
    for n in 11..=15 {
        publish(&mut h, "t", None, json!(n));
    }
    rot(&mut h, "t", 8);
    assert!(h.try_restart_from_disk().is_err());
    h.config.salvage = true;
    h.restart(false);
    let report = h.last_recovery.as_ref().unwrap();
    assert_eq!(report.salvaged.len(), 1, "{report:?}");
    assert_eq!(report.salvaged[0].intact_records, 3, "the other records of the damaged batch pass their own checksums");
    h.connect(P);
    h.connect(S);
    let expected: Vec<u64> = (1..=15).filter(|id| *id != 8).collect();
    assert_eq!(delivered_ids(&mut h, "t"), expected);
    assert_eq!(publish(&mut h, "t", None, json!("next")), 16);
}

#[test]
fn damage_in_an_older_segment_loses_only_the_damaged_batch() {
    let config = Config { frame_bytes_max: 1024, segment_bytes_max: 4096, retention_bytes: 1 << 30, ..Config::default() };
    let mut h = harness(config);
    for n in 1..=60 {
        publish(&mut h, "t", None, json!(format!("message {n:04} {}", "x".repeat(60))));
    }
    assert!(h.disk.files.len() >= 3, "the log rolled over several segments");
    let segment = rot(&mut h, "t", 3);
    assert_ne!(Some(&segment), h.disk.files.keys().last());
    let error = h.try_restart_from_disk().expect_err("damage in an older segment");
    assert!(error.to_string().contains("ids affected: t 3"), "{error}");
    h.config.salvage = true;
    h.restart(false);
    h.connect(P);
    h.connect(S);
    let expected: Vec<u64> = (1..=60).filter(|id| *id != 3).collect();
    assert_eq!(delivered_ids(&mut h, "t"), expected, "every record after the damaged one in its segment is still served");
}

#[test]
fn salvage_never_reuses_an_id_the_damaged_region_may_have_held() {
    let mut h = harness(Config::default());
    for n in 1..=5 {
        publish(&mut h, "t", None, json!(n));
    }
    publish(&mut h, "u", None, json!("after"));
    // The last record of "t" is damaged, and no later record of "t" says how far it went.
    rot(&mut h, "t", 5);
    h.config.salvage = true;
    h.restart(false);
    h.connect(P);
    h.connect(S);
    assert_eq!(delivered_ids(&mut h, "t"), vec![1, 2, 3, 4]);
    let next = publish(&mut h, "t", None, json!("new"));
    assert!(next > 5, "id {next} may have been handed out before the damage");
    let fresh = publish(&mut h, "brand-new", None, json!("new"));
    assert!(fresh > 1, "a topic created after salvage may have lived inside the damaged region: first id {fresh}");
}

#[test]
fn a_second_salvage_skips_ids_above_the_first_ones_floor_for_new_topics() {
    // Found by the `harness` fuzz target. After a salvage, topics created later start above
    // the ids the damaged region may have held (the floor). A topic created then, whose only
    // records are lost to a second damaged region, held ids from that floor on: new topics
    // must start above the floor plus what the second region could hold.
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    publish(&mut h, "t", None, json!(2));
    rot(&mut h, "t", 1);
    h.config.salvage = true;
    h.restart(false);
    h.connect(P);
    let first = publish(&mut h, "late", None, json!("lost"));
    assert!(first > 1);
    publish(&mut h, "t", None, json!("after"));
    rot(&mut h, "late", first);
    let again = publish_after_restart(&mut h, "late");
    assert!(again > first, "id {again} of topic 'late' was pubacked before the damage");
}

#[test]
fn a_failed_truncate_stops_the_node() {
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    h.fail_next_write = Some(DiskError::Io("EIO".into()));
    h.fail_next_truncate = Some(DiskError::Io("EIO".into()));
    h.send_json(P, json!({"op": "pub", "req": 2, "topic": "t", "body": 2}));
    assert_eq!(h.take_op(P, "error")[0]["code"], "internal");
    let why = h.stopped.clone().expect("the node asks to stop");
    assert!(why.contains("cutting a segment"), "{why}");
    assert!(h.node.is_stopped());
    let files = h.disk.files.clone();
    h.send_json(P, json!({"op": "pub", "req": 3, "topic": "t", "body": 3}));
    assert!(h.take(P).is_empty(), "a stopped node answers nothing");
    assert_eq!(h.disk.files, files, "a stopped node writes nothing");
    h.restart(false);
    h.connect(P);
    h.connect(S);
    assert_eq!(delivered_ids(&mut h, "t")[0], 1, "a restart recovers");
}

#[test]
fn a_segment_ends_durable_before_the_next_one_starts() {
    // Acks alone are written without an fsync; the segment they end must still be synced
    // before the log moves on, or a power cut would leave a torn batch in an older segment.
    let config = Config { frame_bytes_max: 1024, segment_bytes_max: 4096, retention_bytes: 1 << 30, ..Config::default() };
    let mut h = harness(config);
    subscribe(&mut h, S, "t", "g", json!({"window": 1000}));
    for round in 0..60 {
        publish(&mut h, "t", None, json!(format!("round {round:02} {}", "y".repeat(100))));
        let got = ids(&msgs(&mut h, S));
        ack(&mut h, S, "t", "g", &got);
        h.advance_ms(20);
    }
    let segments: Vec<u64> = h.disk.files.keys().copied().collect();
    assert!(segments.len() >= 3);
    for segment in &segments[..segments.len() - 1] {
        assert_eq!(h.disk.durable_len(*segment), h.disk.files[segment].len(), "segment {segment} was left with unsynced bytes");
    }
    h.restart(true);
}

#[test]
fn a_salvaged_region_is_accepted_on_later_starts_and_new_damage_is_still_refused() {
    let mut h = harness(Config::default());
    for n in 1..=10 {
        publish(&mut h, "t", None, json!(n));
    }
    rot(&mut h, "t", 5);
    h.config.salvage = true;
    h.restart(false);
    h.config.salvage = false;
    h.connect(P);
    let next = publish(&mut h, "t", None, json!("after salvage"));
    assert_eq!(next, 11);
    h.restart(false);
    let report = h.last_recovery.as_ref().unwrap();
    assert_eq!((report.salvaged.len(), report.previously_salvaged.len()), (0, 1), "{report:?}");
    h.connect(P);
    h.connect(S);
    let expected: Vec<u64> = (1..=11).filter(|id| *id != 5).collect();
    assert_eq!(delivered_ids(&mut h, "t"), expected);
    assert_eq!(publish(&mut h, "t", None, json!("and on")), 12, "no ids skipped again");
    publish(&mut h, "t", None, json!("one more"));
    rot(&mut h, "t", 12);
    let error = h.try_restart_from_disk().expect_err("new damage");
    assert_eq!(error.damage.len(), 1, "{error}");
    assert!(error.to_string().contains("ids affected: t 12\n"), "{error}");
}

#[test]
fn a_snapshot_that_hit_a_full_disk_is_written_again_so_retention_cannot_make_ids_reused() {
    // Found by the harness fuzz target: the first write of a segment (its snapshot) failed with
    // ENOSPC and the segment went on without one; retention then deleted the older segment and
    // a restart gave id 1 to another message.
    let mut h = harness(Config::default());
    assert_eq!(publish(&mut h, "t", None, json!("first")), 1);
    h.fail_next_write = Some(DiskError::NoSpace);
    h.restart(false);
    h.advance_ms(2_000);
    h.connect(P);
    assert_eq!(publish(&mut h, "u", None, json!("elsewhere")), 1);
    let oldest = *h.disk.files.keys().next().unwrap();
    h.disk.files.remove(&oldest);
    h.restart(false);
    h.connect(P);
    assert_eq!(publish(&mut h, "t", None, json!("second")), 2, "id 1 of t was pubacked before");
}

#[test]
fn retention_keeps_older_segments_until_a_newer_snapshot_is_written() {
    // The snapshot that begins a segment is the only record of the topics' next ids once the
    // older segments are gone: deleting them while it still waited for its batch to be written
    // let a crash make a restart give pubacked ids again.
    let config = Config {
        fsync: ferry_core::config::FsyncPolicy::Batch,
        batch_interval_ms: 3_000,
        frame_bytes_max: 4096,
        segment_bytes_max: 8192,
        retention_age_ms: 1_000,
        ..Config::default()
    };
    let mut h = harness(config);
    let body = "x".repeat(1500);
    let mut last = 0;
    loop {
        h.send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "body": body}));
        if h.traces.iter().any(|t| matches!(t, ferry_core::node::Trace::SegmentRolled { segment: 3 })) {
            break;
        }
        h.advance_ms(3_000);
        last = h.take_op(P, "puback")[0]["id"].as_u64().unwrap();
    }
    // Segment 3 has just begun: its snapshot waits in a batch for the interval, and the
    // retention check runs before that is due.
    h.advance_ms(2_500);
    h.restart(true);
    h.connect(P);
    h.send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "body": "after"}));
    h.advance_ms(3_000);
    let next = h.take_op(P, "puback")[0]["id"].as_u64().unwrap();
    assert!(last > 0 && next > last, "id {next} was given again: {last} had been pubacked");
}

#[test]
fn the_record_of_a_cut_is_written_again_after_a_full_disk() {
    // Found by the simulator (seed 1043): the write recording a torn tail's cut hit ENOSPC and
    // the log went on without it, so the next start read the torn records back.
    let mut h = harness(Config::default());
    for n in 0..5 {
        publish(&mut h, "t", None, json!(n));
    }
    rot(&mut h, "t", 5);
    h.fail_next_write = Some(DiskError::NoSpace);
    h.restart(false);
    h.advance_ms(2_000);
    h.connect(P);
    assert!(publish(&mut h, "t", None, json!("next")) > 5);
    h.restart(false);
    let report = h.last_recovery.as_ref().unwrap();
    assert!(report.salvaged.is_empty() && report.torn_tail.is_none(), "the cut was recorded: {report:?}");
}

#[test]
fn a_failed_write_of_the_record_of_a_cut_stops_the_node() {
    let mut h = harness(Config::default());
    for n in 0..5 {
        publish(&mut h, "t", None, json!(n));
    }
    rot(&mut h, "t", 5);
    h.fail_next_write = Some(DiskError::Io("EIO".into()));
    h.restart(false);
    assert!(h.stopped.as_deref().is_some_and(|why| why.contains("torn tail")), "{:?}", h.stopped);
    h.restart(false);
    assert!(h.last_recovery.as_ref().unwrap().torn_tail.is_some(), "the restart finds the torn tail again");
    h.connect(P);
    assert!(publish(&mut h, "t", None, json!("next")) > 5);
}

#[test]
fn a_damaged_final_snapshot_after_retention_still_knows_every_topics_next_id() {
    // Found by the `harness` fuzz target: the snapshot beginning the newest segment, damaged as
    // its final batch, was the only record of a topic's next id once retention had deleted the
    // older segments; the restart gave that topic's ids again.
    let config = Config { frame_bytes_max: 4096, segment_bytes_max: 8192, retention_age_ms: 1_000, ..Config::default() };
    let mut h = harness(config);
    let mut last_u = 0;
    for n in 0..5 {
        last_u = publish(&mut h, "u", None, json!(n));
    }
    let body = "x".repeat(1500);
    while !h.traces.iter().any(|t| matches!(t, ferry_core::node::Trace::SegmentRolled { segment: 4 })) {
        publish(&mut h, "t", None, json!(body));
    }
    h.advance_ms(3_000);
    assert!(h.traces.iter().any(|t| matches!(t, ferry_core::node::Trace::SegmentDeleted { .. })), "retention ran");
    let record = topic_record_in(&h, 4, "u");
    flip(&mut h, record);
    let next = publish_after_restart(&mut h, "u");
    assert!(next > last_u, "u {next} was given again: {last_u} had been pubacked");
}

#[test]
fn a_retry_of_a_publish_whose_record_salvage_lost_is_stored_again() {
    // The producer record in a later snapshot still names the lost id: answering the retry
    // with it would puback a message no reader can ever get.
    let mut h = harness(Config::default());
    for n in 1..=3 {
        publish(&mut h, "t", None, json!(n));
    }
    h.send_json(P, json!({"op": "pub", "req": "r", "topic": "t", "producer": "p", "seq": 1, "body": "once"}));
    assert_eq!(h.take_op(P, "puback")[0]["id"], 4);
    publish(&mut h, "t", None, json!(5));
    h.restart(false);
    rot(&mut h, "t", 4);
    assert!(h.try_restart_from_disk().is_err());
    h.config.salvage = true;
    h.restart(false);
    h.connect(P);
    h.send_json(P, json!({"op": "pub", "req": "r", "topic": "t", "producer": "p", "seq": 1, "body": "once"}));
    let id = h.take_op(P, "puback")[0]["id"].as_u64().unwrap();
    assert!(id > 5, "the retry was answered with id {id}, whose record is lost");
    h.connect(S);
    assert!(delivered_ids(&mut h, "t").contains(&id));
}

#[test]
fn under_fsync_never_retention_waits_for_a_durable_snapshot() {
    // Found by the `harness` fuzz target: with `fsync = never` the snapshot beginning a new
    // segment was written but not fsynced when retention deleted the older segments, so a power
    // cut left no record of the topics' next ids and ids already durable were given again.
    let config = Config { fsync: ferry_core::config::FsyncPolicy::Never, retention_age_ms: 1_000, ..Config::default() };
    let mut h = harness(config);
    let mut last = 0;
    for n in 0..3 {
        last = publish(&mut h, "t", None, json!(n));
    }
    // A process crash: the restart makes segment 1 durable and begins segment 2, which a power
    // cut then loses; the next start begins segment 3 with a snapshot naming t's next id.
    h.restart(false);
    h.restart(true);
    h.advance_ms(3_000);
    h.connect(P);
    publish(&mut h, "u", None, json!("ticks the clock"));
    assert!(h.traces.iter().any(|t| matches!(t, ferry_core::node::Trace::SegmentDeleted { segment: 1 })), "retention deleted segment 1");
    h.restart(true);
    h.connect(P);
    let next = publish(&mut h, "t", None, json!("after"));
    assert!(next > last, "t {next} was given again: {last} was durable before the power cut");
}

#[test]
fn a_topic_unknown_when_a_cut_was_recorded_starts_above_the_cut_even_if_named_later() {
    // Found by the `harness` fuzz target: damage that reads differently at a later start (a
    // flaky read, a repaired disk) named a topic the start that recorded the cut had not
    // known. That start had kept the topic's ids out of use only through the first id of new
    // topics; the later one recreated the topic from its older records and gave a pubacked id
    // again.
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!("first"));
    publish(&mut h, "u", None, json!("between"));
    let last = publish(&mut h, "t", None, json!("last"));
    let places = [place_of(&h, "t", 1), place_of(&h, "t", last)];
    flip(&mut h, places[0]);
    flip(&mut h, places[1]);
    h.config.salvage = true;
    h.restart(false);
    assert!(h.last_recovery.as_ref().unwrap().torn_tail.is_some(), "the final batch is cut");
    assert_eq!(h.node.topic_next_id("t"), None, "no intact record names t");
    h.advance_ms(2_000);
    // The first batch reads well again; the cut is recorded and accepted.
    flip(&mut h, places[0]);
    h.restart(false);
    assert_eq!(h.last_recovery.as_ref().unwrap().previously_salvaged.len(), 1, "{:?}", h.last_recovery);
    h.connect(P);
    let next = publish(&mut h, "t", None, json!("again"));
    assert!(next > last, "t {next} was given again: {last} had been pubacked");
}

#[test]
fn retention_keeps_the_segment_of_the_snapshot_before_the_newest_even_past_a_segment_that_failed() {
    // Found by the `harness` fuzz target: the write creating segment 2 failed (EIO) and the log
    // went on in segment 3. Retention kept "the segment before the newest snapshot", which was
    // the empty segment 2, and deleted segment 1; the damaged snapshot of segment 3 then left
    // no record of the topic's next id, and a restart gave its ids again.
    let config = Config { frame_bytes_max: 4096, segment_bytes_max: 8192, retention_age_ms: 1_000, ..Config::default() };
    let mut h = harness(config);
    let body = "x".repeat(1500);
    let mut last = 0;
    for _ in 0..5 {
        last = publish(&mut h, "t", None, json!(body));
    }
    h.hold_writes = true;
    h.send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "body": body}));
    assert!(h.traces.iter().any(|t| matches!(t, ferry_core::node::Trace::SegmentRolled { segment: 2 })), "the publish rolls to segment 2");
    assert!(matches!(h.held.front(), Some(ferry_core::DiskOp::Write { segment: 2, create: true, .. })), "{:?}", h.held);
    h.fail_next_write = Some(DiskError::Io("EIO".into()));
    h.hold_writes = false;
    h.complete_writes();
    assert_eq!(h.take_op(P, "error").len(), 1, "the publish in the failed write is refused");
    h.advance_ms(3_000);
    let record = topic_record_in(&h, 3, "t");
    flip(&mut h, record);
    let next = publish_after_restart(&mut h, "t");
    assert!(next > last, "t {next} was given again: {last} had been pubacked");
}

#[test]
fn a_retry_is_answered_from_a_retained_segment_only_if_its_first_snapshot_says_the_id_was_deleted() {
    // Found by the `harness` fuzz target: the oldest segment left by retention began before
    // topic t existed, and a snapshot in its middle (recording a torn tail's cut) named t's
    // next id; read as the segment's own, it made t's damaged, salvaged first ids look deleted
    // by retention, so a retry was answered with the id of a message no reader can get.
    let config = Config { frame_bytes_max: 1024, segment_bytes_max: 4096, retention_age_ms: 2_500, ..Config::default() };
    let mut h = harness(config);
    publish(&mut h, "u", None, json!("segment 1"));
    h.restart(false);
    h.connect(P);
    h.send_json(P, json!({"op": "pub", "req": "r", "topic": "t", "producer": "p", "seq": 1, "body": "once"}));
    assert_eq!(h.take_op(P, "puback")[0]["id"], 1);
    publish(&mut h, "t", None, json!(2));
    // A write torn by a power cut: the restart records its cut in a snapshot naming t.
    h.hold_writes = true;
    h.send_json(P, json!({"op": "pub", "req": "x", "topic": "t", "body": "torn"}));
    let Some(ferry_core::DiskOp::Write { segment, offset, data, .. }) = h.held.pop_front() else { panic!("the torn write") };
    assert_eq!(segment, 2);
    h.disk.write(segment, offset, &data[..data.len() / 2]);
    h.disk.mark_durable(segment, offset as usize + data.len() / 2);
    h.hold_writes = false;
    h.restart(true);
    h.connect(P);
    // Segment 1 grows old; segment 2, written on, does not.
    h.advance_ms(2_000);
    let body = "y".repeat(600);
    while !h.traces.iter().any(|t| matches!(t, ferry_core::node::Trace::SegmentRolled { segment: 4 })) {
        publish(&mut h, "v", None, json!(body));
    }
    h.advance_ms(1_500);
    publish(&mut h, "v", None, json!("ticks the clock"));
    assert!(h.traces.iter().any(|t| matches!(t, ferry_core::node::Trace::SegmentDeleted { segment: 1 })), "retention deleted segment 1");
    assert_eq!(h.disk.segments()[0].0, 2, "segment 2 is the oldest kept");
    rot(&mut h, "t", 1);
    h.config.salvage = true;
    h.restart(false);
    h.connect(P);
    h.send_json(P, json!({"op": "pub", "req": "r", "topic": "t", "producer": "p", "seq": 1, "body": "once"}));
    let id = h.take_op(P, "puback")[0]["id"].as_u64().unwrap();
    assert_ne!(id, 1, "the retry was answered with id 1, whose record is lost");
    h.connect(S);
    assert!(delivered_ids(&mut h, "t").contains(&id));
}

#[test]
fn a_torn_final_snapshot_still_raises_the_first_id_of_new_topics_it_records() {
    // Found by the `harness` fuzz target: a salvage raised the first id of new topics, and
    // only the snapshot written after it recorded that (the segment before it predates the
    // salvage; retention deleted the salvaged one). That snapshot and a new topic's first
    // message were damaged as the log's final batches: cut as a torn tail, whose decodable
    // records gave the topics' next ids but not the first id of new topics, so the topic,
    // created again, gave its pubacked first id again.
    let config = Config { retention_age_ms: 1_000, ..Config::default() };
    let mut h = harness(config);
    // One large batch: the salvage of it raises the first id of new topics well above what a
    // small torn region would.
    h.hold_writes = true;
    for n in 0..20 {
        h.send_json(P, json!({"op": "pub", "req": n, "topic": "t", "body": n}));
    }
    h.hold_writes = false;
    h.complete_writes();
    h.restart(false);
    h.connect(P);
    publish(&mut h, "t", None, json!("segment 2"));
    rot(&mut h, "t", 5);
    h.config.salvage = true;
    h.restart(false);
    h.config.salvage = false;
    h.connect(P);
    h.advance_ms(3_000);
    let tick = publish(&mut h, "t", None, json!("ticks the clock"));
    assert!(h.traces.iter().any(|t| matches!(t, ferry_core::node::Trace::SegmentDeleted { segment: 1 })), "retention deleted segment 1");
    let first_u = publish(&mut h, "u", None, json!("u's first"));
    assert!(first_u > 1, "the salvage raised the first id of new topics");
    // Every batch of segment 3 damaged: a torn tail, but for its snapshot's decodable records.
    let snapshot_record = topic_record_in(&h, 3, "t");
    flip(&mut h, snapshot_record);
    rot(&mut h, "t", tick);
    rot(&mut h, "u", first_u);
    h.restart(false);
    assert!(h.last_recovery.as_ref().unwrap().torn_tail.is_some(), "cut as a torn tail");
    h.connect(P);
    let again = publish(&mut h, "u", None, json!("after the cut"));
    assert!(again > first_u, "u {again} was given again: {first_u} had been pubacked");
}
