//! Target `segments`: segment scanning and recovery over arbitrary logs. Random bytes rarely
//! pass a CRC, so most segments are built from real batches and records (any field values,
//! crafted control records, torn batches, junk, zero fill) and then damaged (flipped bytes,
//! cuts, zeroed runs); raw byte segments are in the mix too.
//!
//! Checked: `scan_segment` never panics, visits records in order inside the bytes, reports
//! bad regions in order and in bounds, the torn tail only last and only in the newest
//! segment, and reads an undamaged built segment back record for record. `Node::recover`
//! never panics: without salvage it gives `Err` (with the damage named) or a node whose
//! invariants hold; with salvage it always starts. A started node publishes to every topic it
//! recovered above every id found on disk (also inside damaged or torn batches, and above
//! every topic snapshot's next id), and after a salvage a new topic starts above 1. The log it
//! then writes restarts without salvage, and ids keep rising.

use arbitrary::{Arbitrary, Unstructured};
use ferry_core::batch;
use ferry_core::record::{self, GroupRecord, MessageRef, NewTopicsRecord, ProducerRecord, RecordRef, SalvagedRecord, TopicRecord};
use ferry_core::recovery::{self, Found, SegmentScan};
use ferry_core::testkit::{Harness, MemDisk};
use ferry_core::{Config, ConnId, Node};
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Arbitrary, Debug)]
struct Input {
    segments: Vec<SegmentSpec>,
    damage: Vec<Damage>,
    first_segment: u8,
}

#[derive(Arbitrary, Debug)]
struct SegmentSpec {
    /// Ids of consecutive segments may have gaps (retention deleted some).
    gap: bool,
    content: Content,
}

#[derive(Arbitrary, Debug)]
enum Content {
    Raw(Vec<u8>),
    Built(Vec<Piece>),
}

#[derive(Arbitrary, Debug)]
enum Piece {
    Batch(Vec<Rec>),
    /// A batch cut after this many bytes (an interrupted write).
    Torn(Vec<Rec>, u16),
    Junk(Vec<u8>),
    Zeros(u8),
}

#[derive(Arbitrary, Debug)]
enum Rec {
    Message {
        topic: Name,
        id: Id,
        key: Option<Name>,
        producer: Option<(Name, u8)>,
        body: Body,
    },
    /// Retention's copy of the newest message of a key (any id, any key, even none).
    LatestCopy {
        topic: Name,
        id: Id,
        key: Option<Name>,
        body: Body,
    },
    Topic {
        topic: Name,
        next_id: Id,
        latest_incomplete: bool,
    },
    Group {
        topic: Name,
        group: Name,
        filter: FilterSpec,
        start_id: Id,
        floor: Id,
        floor_prev: Id,
        acked: Vec<Id>,
    },
    Producer {
        producer: Name,
        seqs: Vec<(u8, Name, Id)>,
    },
    Salvaged {
        segment: u8,
        offset: u16,
        end: u16,
        new_topic_first_id: Id,
        cut: bool,
    },
    /// Any kind byte and payload, with a valid CRC.
    Raw {
        kind: u8,
        payload: Vec<u8>,
    },
    NewTopics {
        first_id: Id,
    },
}

#[derive(Arbitrary, Debug, Clone)]
enum Name {
    Known(u8),
    Any(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Known(n) => ["t", "u", "v", "t.dlq"][*n as usize % 4].to_string(),
            Name::Any(s) => s.clone(),
        }
    }
}

/// Ids stay below 2^16. Recovery trusts the ids of checksum-valid records: one near u64::MAX
/// overflows a topic's next id, and one far above the previous of its topic makes the index
/// hold a slot per id skipped (gigabytes for a gap of 2^30). Only crafted records do that, as
/// ferry never writes such ids (skipped ranges are bounded by the bytes they replace), so the
/// target leaves them out (see the README, Fuzzing).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Id {
    Small(u8),
    Medium(u16),
}

impl Id {
    fn value(self) -> u64 {
        match self {
            Id::Small(n) => u64::from(n),
            Id::Medium(n) => u64::from(n),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Body {
    Number(u16),
    Text(String),
    Object {
        n: u8,
        c: bool,
    },
    /// Not JSON at all (only a damaged or crafted log holds such a body).
    Invalid(String),
}

impl Body {
    fn text(&self) -> String {
        match self {
            Body::Number(n) => n.to_string(),
            Body::Text(s) => serde_json::to_string(s).expect("string serializes"),
            Body::Object { n, c } => json!({"n": n, "c": if *c { "red" } else { "blue" }}).to_string(),
            Body::Invalid(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum FilterSpec {
    None,
    KeyPrefix(Name),
    Field(bool),
    Bad(u8),
}

#[derive(Arbitrary, Debug)]
enum Damage {
    Flip { segment: u8, at: u16, mask: u8 },
    Cut { segment: u8, at: u16 },
    Zero { segment: u8, at: u16, len: u8 },
}

fn encode(out: &mut Vec<u8>, rec: &Rec) {
    match rec {
        Rec::LatestCopy { topic, id, key, body } => {
            let (topic, key, body) = (topic.text(), key.as_ref().map(Name::text), body.text());
            if topic.len() >= u16::MAX as usize || key.as_ref().is_some_and(|k| k.len() >= u16::MAX as usize - 1) {
                return;
            }
            let m = MessageRef { id: id.value(), ts_ms: 1_700_000_000_000, topic: &topic, key: key.as_deref(), producer: None, seq: 0, body: &body };
            record::encode_latest_copy(out, &m);
        }
        Rec::Message { topic, id, key, producer, body } => {
            let topic = topic.text();
            let key = key.as_ref().map(Name::text);
            let (producer, seq) = match producer {
                Some((name, seq)) => (Some(name.text()), u64::from(*seq)),
                None => (None, 0),
            };
            let body = body.text();
            if topic.len() >= u16::MAX as usize
                || key.as_ref().is_some_and(|k| k.len() >= u16::MAX as usize - 1)
                || producer.as_ref().is_some_and(|p| p.len() >= u16::MAX as usize - 1)
            {
                return;
            }
            let m = MessageRef { id: id.value(), ts_ms: 1_700_000_000_000, topic: &topic, key: key.as_deref(), producer: producer.as_deref(), seq, body: &body };
            record::encode_message(out, &m);
        }
        Rec::Topic { topic, next_id, latest_incomplete } => {
            let record = TopicRecord { topic: topic.text(), next_id: next_id.value(), latest_incomplete: *latest_incomplete };
            record::encode_control(out, record::KIND_TOPIC, &record);
        }
        Rec::Group { topic, group, filter, start_id, floor, floor_prev, acked } => {
            let filter = match filter {
                FilterSpec::None => None,
                FilterSpec::KeyPrefix(p) => Some(json!({"key_prefix": p.text()})),
                FilterSpec::Field(red) => Some(json!({"field": "c", "equals": if *red { "red" } else { "blue" }})),
                FilterSpec::Bad(n) => Some(json!(n)),
            };
            // As a node writes them: the prev at the floor is at most the floor, and the acked
            // ids above it ascend (a crafted record that breaks this breaks recovery's trust).
            let floor = floor.value();
            let mut acked: Vec<u64> = acked.iter().map(|id| id.value()).filter(|id| *id > floor).collect();
            acked.sort_unstable();
            acked.dedup();
            // Some groups coalesce, so recovery's replay coalesces too.
            let coalesce_ms = (floor % 3 == 1).then_some(50);
            let record = GroupRecord {
                topic: topic.text(),
                group: group.text(),
                filter,
                start_id: start_id.value(),
                floor,
                floor_prev: floor_prev.value().min(floor),
                acked,
                resets: 0,
                coalesce_ms,
            };
            record::encode_control(out, record::KIND_GROUP, &record);
        }
        Rec::Producer { producer, seqs } => {
            let seqs = seqs.iter().map(|(seq, topic, id)| (u64::from(*seq), topic.text(), id.value())).collect();
            record::encode_control(out, record::KIND_PRODUCER, &ProducerRecord { producer: producer.text(), seqs });
        }
        Rec::Salvaged { segment, offset, end, new_topic_first_id, cut } => {
            let (segment, offset, end, cut) = (u64::from(*segment), u64::from(*offset), u64::from(*end), *cut);
            let record = SalvagedRecord { segment, offset, end, new_topic_first_id: new_topic_first_id.value(), cut };
            record::encode_control(out, record::KIND_SALVAGED, &record);
        }
        Rec::NewTopics { first_id } => {
            record::encode_control(out, record::KIND_NEW_TOPICS, &NewTopicsRecord { first_id: first_id.value() });
        }
        Rec::Raw { kind, payload } => {
            // The record framing by hand: len, crc, kind, payload.
            let mut body = vec![*kind];
            body.extend_from_slice(payload);
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc32(&body).to_le_bytes());
            out.extend_from_slice(&body);
        }
    }
}

/// crc32fast's polynomial (IEEE), bit by bit: the fuzz targets need no crc crate of their own.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn batch_of(recs: &[Rec]) -> Vec<u8> {
    let mut out = Vec::new();
    batch::begin(&mut out);
    for rec in recs {
        encode(&mut out, rec);
    }
    batch::seal(&mut out);
    out
}

/// Whether `rec` encodes to a record `decode_record` reads back (a crafted `Raw` may not).
fn well_formed(rec: &Rec) -> bool {
    match rec {
        Rec::Raw { .. } => false,
        Rec::Message { body: Body::Invalid(_), .. } => true,
        _ => true,
    }
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let mut segments: Vec<(u64, Vec<u8>, bool)> = Vec::new();
    let mut id = 1 + u64::from(input.first_segment);
    for spec in input.segments.iter().take(6) {
        let (bytes, clean, expected) = match &spec.content {
            Content::Raw(bytes) => (bytes.clone(), false, 0),
            Content::Built(pieces) => {
                let mut bytes = Vec::new();
                let mut clean = true;
                let mut expected = 0;
                let mut zeros_seen = false;
                for piece in pieces {
                    match piece {
                        Piece::Batch(recs) => {
                            bytes.extend_from_slice(&batch_of(recs));
                            clean &= !zeros_seen && recs.iter().all(well_formed);
                            expected += recs.len();
                        }
                        Piece::Torn(recs, cut) => {
                            let whole = batch_of(recs);
                            bytes.extend_from_slice(&whole[..(*cut as usize).min(whole.len())]);
                            clean = false;
                        }
                        Piece::Junk(junk) => {
                            bytes.extend_from_slice(junk);
                            clean &= junk.is_empty();
                        }
                        Piece::Zeros(n) => {
                            bytes.resize(bytes.len() + *n as usize, 0);
                            zeros_seen |= *n > 0;
                        }
                    }
                }
                (bytes, clean, expected)
            }
        };
        let scan = check_scan(&bytes, false);
        if clean {
            assert!(scan.0.bad.is_empty(), "a built segment of intact batches scans with damage: {:?}", scan.0);
            assert_eq!(scan.1, expected, "a built segment of intact batches does not read back record for record");
        }
        segments.push((id, bytes, clean));
        id += 1 + u64::from(spec.gap);
    }
    for damage in input.damage.iter().take(4) {
        let (segment, at) = match damage {
            Damage::Flip { segment, at, .. } | Damage::Cut { segment, at } | Damage::Zero { segment, at, .. } => (*segment, *at),
        };
        let count = segments.len().max(1);
        let Some((_, bytes, _)) = segments.get_mut(segment as usize % count) else { break };
        if bytes.is_empty() {
            continue;
        }
        let at = at as usize % bytes.len();
        match damage {
            Damage::Flip { mask, .. } => bytes[at] ^= mask.max(&1),
            Damage::Cut { .. } => bytes.truncate(at),
            Damage::Zero { len, .. } => {
                let end = (at + *len as usize).min(bytes.len());
                bytes[at..end].fill(0);
            }
        }
    }
    let count = segments.len();
    for (position, (_, bytes, _)) in segments.iter().enumerate() {
        check_scan(bytes, position + 1 == count);
    }
    let views: Vec<(u64, &[u8])> = segments.iter().map(|(id, bytes, _)| (*id, bytes.as_slice())).collect();
    check_recovery(&views);
}

/// Scans `bytes` and checks what the scan says against the bytes; returns the scan and the
/// number of intact records visited.
fn check_scan(bytes: &[u8], newest: bool) -> (SegmentScan, usize) {
    let len = bytes.len() as u64;
    let mut last_end = 0u64;
    let mut intact = 0;
    let scan = recovery::scan_segment(bytes, newest, |offset, size, rec, found| {
        let end = offset + size as u64;
        assert!(offset >= last_end && end <= len, "record {offset}+{size} out of order or past the end ({last_end}, {len})");
        assert!(offset >= batch::HEADER_BYTES as u64, "record at {offset} inside the first batch header");
        let (decoded, decoded_size) = record::decode_record(&bytes[offset as usize..end as usize]).expect("a visited record decodes where it was found");
        assert_eq!((decoded, decoded_size), (rec, size));
        if found == Found::TornTail {
            assert!(newest, "a torn tail outside the newest segment");
        }
        if found == Found::Intact {
            intact += 1;
        }
        last_end = end;
    });
    assert!(scan.valid_len <= len);
    let mut at = 0;
    for (i, region) in scan.bad.iter().enumerate() {
        assert!(region.offset >= at && region.offset < region.end && region.end <= len, "bad region {region:?} out of order or bounds (len {len})");
        assert!(!region.torn_tail || (newest && i + 1 == scan.bad.len()), "torn tail misplaced: {:?}", scan.bad);
        at = region.end;
    }
    if let Some(last) = scan.bad.last() {
        if last.torn_tail {
            assert!(scan.valid_len <= last.offset);
        }
    }
    assert!(bytes[scan.valid_len as usize..].iter().all(|b| *b == 0) || !scan.bad.is_empty(), "bytes after the intact batches without a bad region");
    (scan, intact)
}

fn config(salvage: bool) -> Config {
    Config { salvage, ..Config::default() }
}

/// Per topic, above the highest message id found anywhere in the segments (torn tail
/// included: its ids are never given out again) and at least every durable snapshot's next id.
fn ids_on_disk(segments: &[(u64, &[u8])]) -> BTreeMap<String, u64> {
    let mut above: BTreeMap<String, u64> = BTreeMap::new();
    let count = segments.len();
    for (position, (_, bytes)) in segments.iter().enumerate() {
        recovery::scan_segment(bytes, position + 1 == count, |_, _, rec, found| match rec {
            RecordRef::Message(m) => {
                let e = above.entry(m.topic.to_string()).or_default();
                *e = (*e).max(m.id.saturating_add(1));
            }
            // A snapshot in the torn tail was never durable: it promises nothing.
            RecordRef::Topic(r) if found != Found::TornTail => {
                let e = above.entry(r.topic).or_default();
                *e = (*e).max(r.next_id);
            }
            _ => {}
        });
    }
    above
}

fn check_recovery(segments: &[(u64, &[u8])]) {
    let now = 1_700_000_000_000 * 1_000_000;
    let strict = Node::recover(config(false), segments, now);
    let (node, report) = match strict {
        Ok(started) => started,
        Err(error) => {
            assert!(!error.damage.is_empty(), "a refusal names no damage");
            let _ = error.to_string();
            Node::recover(config(true), segments, now).unwrap_or_else(|e| panic!("salvage refused to start: {e}"))
        }
    };
    node.check_invariants();
    let salvaged = !report.salvaged.is_empty();
    drop(node);

    // Start it again inside a harness, over the same files, and publish.
    let mut h = Harness::new(config(true));
    h.disk = MemDisk::default();
    for (id, bytes) in segments {
        h.disk.files.insert(*id, bytes.to_vec());
    }
    h.disk.sync_all();
    h.try_restart_from_disk().unwrap_or_else(|e| panic!("salvage refused to start: {e}"));
    h.node.check_invariants();
    let above = ids_on_disk(segments);
    h.connect(ConnId(1));
    let mut published: BTreeMap<String, u64> = BTreeMap::new();
    for (topic, above) in &above {
        if h.node.topic_next_id(topic).is_none() {
            // A name no record made a topic of (an invalid one the node skipped).
            continue;
        }
        if let Some(id) = publish(&mut h, topic) {
            assert!(id >= *above, "topic {topic:?} published id {id}, but the log already had ids up to {}", above - 1);
            published.insert(topic.clone(), id);
        }
    }
    let fresh = "fresh-topic-after-recovery";
    if h.node.topic_next_id(fresh).is_none() {
        if let Some(id) = publish(&mut h, fresh) {
            assert!(!salvaged || id > 1, "a topic created after a salvage starts at id 1, which a damaged region may have held");
            published.insert(fresh.to_string(), id);
        }
    }
    h.node.check_invariants();

    // The salvage is on record: a later start needs no salvage, and ids keep rising.
    h.config.salvage = false;
    h.sent.clear();
    h.try_restart_from_disk().unwrap_or_else(|e| panic!("a start after a salvage refused the log again: {e}"));
    h.node.check_invariants();
    h.connect(ConnId(1));
    for (topic, first) in &published {
        if let Some(id) = publish(&mut h, topic) {
            assert!(id > *first, "topic {topic:?}: id {id} after a restart, {first} was already pubacked");
        }
    }
}

/// Publishes one message; the id pubacked, or None when the publish is refused (a name the
/// protocol does not accept, or an id space used up).
fn publish(h: &mut Harness, topic: &str) -> Option<u64> {
    h.send_json(ConnId(1), json!({"op": "pub", "req": 1, "topic": topic, "body": "after recovery"}));
    let frames = h.take(ConnId(1));
    let frame: &Value = frames.back()?;
    match frame["op"].as_str() {
        Some("puback") => frame["id"].as_u64(),
        Some("error") => None,
        _ => panic!("unexpected answer to a publish: {frames:?}"),
    }
}

/// The input as the target reads it (to study a finding).
pub fn describe(data: &[u8]) -> String {
    format!("{:#?}", Input::arbitrary_take_rest(Unstructured::new(data)))
}
