//! On-disk record format of the log segments.
//!
//! ```text
//! record  = len:u32le  crc:u32le  kind:u8  payload      (len counts kind+payload; crc covers them)
//! message = id:u64 ts_ms:u64 topic:str16 key:opt16 producer:opt16 seq:u64 body:bytes32
//! control = JSON (topic, group and producer state; rare, so readability wins)
//! raft entry = index:u64 term:u64 entry_type:u8 data:bytes32        (a cluster shard's log)
//! raft state = term:u64 vote:u64 commit:u64                         (its hard state)
//! latest copy = as a message                  (retention's copy of the newest of a key)
//! ```
//! The message's own id is inside its CRC'd bytes so a misdirected read or write is caught.

use serde::{Deserialize, Serialize};

pub const HEADER_BYTES: usize = 8;
pub const KIND_MESSAGE: u8 = 1;
pub const KIND_TOPIC: u8 = 2;
pub const KIND_GROUP: u8 = 3;
pub const KIND_PRODUCER: u8 = 4;
pub const KIND_SALVAGED: u8 = 5;
pub const KIND_NEW_TOPICS: u8 = 6;
pub const KIND_RAFT_ENTRY: u8 = 7;
pub const KIND_RAFT_STATE: u8 = 8;
pub const KIND_APPLIED: u8 = 9;
/// An operator dropped a group: a restart forgets its earlier records.
pub const KIND_GROUP_DROPPED: u8 = 10;
/// Retention is deleting the segment holding the newest message of a key: a copy of it, so
/// the key's latest message survives (`latest`); the topic does not hold the id again.
pub const KIND_LATEST_COPY: u8 = 11;
/// Bounds `len` so a corrupt length field cannot make recovery allocate or skip wildly.
pub const RECORD_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct MessageRef<'a> {
    pub id: u64,
    pub ts_ms: u64,
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub producer: Option<&'a str>,
    pub seq: u64,
    pub body: &'a str,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub topic: String,
    pub next_id: u64,
    /// Its latest-per-key index left keys out (`latest_index_bytes_max` was reached): a
    /// restart must not take it for complete. Absent: false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub latest_incomplete: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub topic: String,
    pub group: String,
    pub filter: Option<serde_json::Value>,
    pub start_id: u64,
    /// Every filter-passing id <= floor is acked.
    pub floor: u64,
    /// Largest filter-passing id <= floor (0 when none): the `prev` of the next one.
    pub floor_prev: u64,
    /// Acked ids above the floor.
    pub acked: Vec<u64>,
    /// Operator resets of the group so far: a position recorded before the latest reset is
    /// stale (in a cluster, a Position entry proposed before a ResetGroup entry committed
    /// after it must not move the group back). Absent in records older than resets: 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resets: u64,
    /// Its coalescing window (`GroupTerms`); absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce_ms: Option<u64>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// A `GroupRecord` borrowed from its group: the same fields in the same order, so it
/// serializes to the same bytes, without copying the names or collecting the acked ids
/// (`acked` serializes as a sequence of ids).
#[derive(Serialize)]
pub struct GroupRecordRef<'a, A: Serialize> {
    pub topic: &'a str,
    pub group: &'a str,
    pub filter: Option<serde_json::Value>,
    pub start_id: u64,
    pub floor: u64,
    pub floor_prev: u64,
    pub acked: A,
    #[serde(skip_serializing_if = "is_zero")]
    pub resets: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesce_ms: Option<u64>,
}

impl From<GroupRecordRef<'_, Vec<u64>>> for GroupRecord {
    fn from(r: GroupRecordRef<'_, Vec<u64>>) -> GroupRecord {
        GroupRecord {
            topic: r.topic.to_string(),
            group: r.group.to_string(),
            filter: r.filter,
            start_id: r.start_id,
            floor: r.floor,
            floor_prev: r.floor_prev,
            acked: r.acked,
            resets: r.resets,
            coalesce_ms: r.coalesce_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProducerRecord {
    pub producer: String,
    /// (seq, topic, id)
    pub seqs: Vec<(u64, String, u64)>,
}

/// A damaged region of the log the operator chose to salvage: later starts accept it without
/// `salvage`, and keep the ids it may have held out of use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalvagedRecord {
    pub segment: u64,
    pub offset: u64,
    pub end: u64,
    /// First id of any topic created after the salvage.
    pub new_topic_first_id: u64,
    /// The region was the newest segment's torn final batch, cut by the restart that wrote
    /// this record in the batch right after it: its records are not read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

/// The first id of topics created from now on, above 1 once a salvage or a cut torn tail
/// skipped ids of topics whose names were lost (carried by every snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTopicsRecord {
    pub first_id: u64,
}

/// One entry of a cluster shard's raft log (see `cluster::raft_log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftEntryRef<'a> {
    pub index: u64,
    pub term: u64,
    /// raft-rs's `EntryType` as its protobuf number.
    pub entry_type: u8,
    pub data: &'a [u8],
}

/// A cluster shard's raft hard state: what it voted and knows committed, per term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftStateRecord {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// In a cluster node's snapshot: the last raft entry its state includes, so a restart applies
/// the committed entries after it (and only those) again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRecord {
    pub index: u64,
    pub term: u64,
    /// The state came from the leader (state transfer), not from applying entries: the
    /// segments before this one are superseded, and recovery starts here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub installed: bool,
    /// The process's shard count (`Config::shards`) when it was written: it cannot change
    /// for a data directory (topics would move between shards). Absent: 1.
    #[serde(default = "one_shard", skip_serializing_if = "is_one_shard")]
    pub shards: u32,
}

fn one_shard() -> u32 {
    1
}

fn is_one_shard(shards: &u32) -> bool {
    *shards == 1
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecordRef<'a> {
    Message(MessageRef<'a>),
    Topic(TopicRecord),
    Group(GroupRecord),
    Producer(ProducerRecord),
    Salvaged(SalvagedRecord),
    NewTopics(NewTopicsRecord),
    RaftEntry(RaftEntryRef<'a>),
    RaftState(RaftStateRecord),
    Applied(AppliedRecord),
    GroupDropped(GroupDroppedRecord),
    LatestCopy(MessageRef<'a>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDroppedRecord {
    pub topic: String,
    pub group: String,
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.len() < u16::MAX as usize);
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// 0 = absent, n = n-1 bytes follow.
fn put_opt16(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(&0u16.to_le_bytes()),
        Some(s) => {
            debug_assert!(s.len() < u16::MAX as usize - 1);
            out.extend_from_slice(&(s.len() as u16 + 1).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    out.push(kind);
    start
}

fn finish(out: &mut [u8], start: usize) -> usize {
    let len = out.len() - start - HEADER_BYTES;
    assert!(len <= RECORD_BYTES_MAX, "record of {len} bytes exceeds RECORD_BYTES_MAX");
    let crc = crc32fast::hash(&out[start + HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Appends one message record; returns its size in bytes.
pub fn encode_message(out: &mut Vec<u8>, m: &MessageRef<'_>) -> usize {
    encode_message_as(out, KIND_MESSAGE, m)
}

/// Appends retention's copy of the newest message of a key; returns its size in bytes.
pub fn encode_latest_copy(out: &mut Vec<u8>, m: &MessageRef<'_>) -> usize {
    encode_message_as(out, KIND_LATEST_COPY, m)
}

fn encode_message_as(out: &mut Vec<u8>, kind: u8, m: &MessageRef<'_>) -> usize {
    let start = begin(out, kind);
    out.extend_from_slice(&m.id.to_le_bytes());
    put_message_fields(out, &MessageFields { ts_ms: m.ts_ms, topic: m.topic, key: m.key, producer: m.producer, seq: m.seq, body: m.body });
    finish(out, start)
}

/// The fields a stored message shares with a cluster's publish command (`cluster::command`),
/// in one binary form: `ts_ms:u64 topic:str16 key:opt16 producer:opt16 seq:u64 body:bytes32`.
pub(crate) struct MessageFields<'a> {
    pub(crate) ts_ms: u64,
    pub(crate) topic: &'a str,
    pub(crate) key: Option<&'a str>,
    pub(crate) producer: Option<&'a str>,
    pub(crate) seq: u64,
    pub(crate) body: &'a str,
}

pub(crate) fn put_message_fields(out: &mut Vec<u8>, f: &MessageFields<'_>) {
    out.extend_from_slice(&f.ts_ms.to_le_bytes());
    put_str16(out, f.topic);
    put_opt16(out, f.key);
    put_opt16(out, f.producer);
    out.extend_from_slice(&f.seq.to_le_bytes());
    out.extend_from_slice(&(f.body.len() as u32).to_le_bytes());
    out.extend_from_slice(f.body.as_bytes());
}

pub fn message_record_bytes(m: &MessageRef<'_>) -> usize {
    HEADER_BYTES + 1 + 8 + 8 + 2 + m.topic.len() + 2 + m.key.map_or(0, str::len) + 2 + m.producer.map_or(0, str::len) + 8 + 4 + m.body.len()
}

/// Appends one raft entry record; returns its size in bytes.
pub fn encode_raft_entry(out: &mut Vec<u8>, e: &RaftEntryRef<'_>) -> usize {
    let start = begin(out, KIND_RAFT_ENTRY);
    out.extend_from_slice(&e.index.to_le_bytes());
    out.extend_from_slice(&e.term.to_le_bytes());
    out.push(e.entry_type);
    out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
    out.extend_from_slice(e.data);
    finish(out, start)
}

pub fn raft_entry_record_bytes(data_len: usize) -> usize {
    HEADER_BYTES + 1 + 8 + 8 + 1 + 4 + data_len
}

/// Appends one raft hard state record; returns its size in bytes.
pub fn encode_raft_state(out: &mut Vec<u8>, s: &RaftStateRecord) -> usize {
    let start = begin(out, KIND_RAFT_STATE);
    for n in [s.term, s.vote, s.commit] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    finish(out, start)
}

pub fn encode_control<T: Serialize>(out: &mut Vec<u8>, kind: u8, value: &T) -> usize {
    let start = begin(out, kind);
    // Serializing plain data structs into a Vec cannot fail.
    serde_json::to_writer(&mut *out, value).expect("control record serializes");
    finish(out, start)
}

/// Reads the binary fields `put_*` wrote, each `None` when the bytes run short or are not
/// what the field needs.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }
    pub(crate) fn message_fields(&mut self) -> Option<MessageFields<'a>> {
        let ts_ms = self.u64()?;
        let topic_len = self.u16()? as usize;
        let topic = self.str(topic_len)?;
        let key = self.opt16()?;
        let producer = self.opt16()?;
        let seq = self.u64()?;
        let body_len = self.u32()? as usize;
        let body = self.str(body_len)?;
        Some(MessageFields { ts_ms, topic, key, producer, seq, body })
    }
    /// Every byte was read.
    pub(crate) fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self, n: usize) -> Option<&'a str> {
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn opt16(&mut self) -> Option<Option<&'a str>> {
        match self.u16()? {
            0 => Some(None),
            n => Some(Some(self.str(n as usize - 1)?)),
        }
    }
}

fn decode_raft_entry(payload: &[u8]) -> Option<RaftEntryRef<'_>> {
    let mut r = Reader::new(payload);
    let index = r.u64()?;
    let term = r.u64()?;
    let entry_type = r.take(1)?[0];
    let len = r.u32()? as usize;
    let data = r.take(len)?;
    r.at_end().then_some(RaftEntryRef { index, term, entry_type, data })
}

fn decode_raft_state(payload: &[u8]) -> Option<RaftStateRecord> {
    let mut r = Reader::new(payload);
    let state = RaftStateRecord { term: r.u64()?, vote: r.u64()?, commit: r.u64()? };
    r.at_end().then_some(state)
}

fn decode_message(payload: &[u8]) -> Option<MessageRef<'_>> {
    let mut r = Reader::new(payload);
    let id = r.u64()?;
    let f = r.message_fields()?;
    r.at_end().then_some(MessageRef { id, ts_ms: f.ts_ms, topic: f.topic, key: f.key, producer: f.producer, seq: f.seq, body: f.body })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer bytes than the header or the declared length: an interrupted append.
    Truncated,
    /// Zero length: never written (preallocated or zero-filled tail).
    Unwritten,
    LengthOutOfRange(u32),
    CrcMismatch {
        stored: u32,
        computed: u32,
    },
    Malformed(&'static str),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Truncated => write!(f, "record cut short"),
            RecordError::Unwritten => write!(f, "zero-filled bytes"),
            RecordError::LengthOutOfRange(n) => write!(f, "length {n} out of range"),
            RecordError::CrcMismatch { stored, computed } => write!(f, "crc mismatch (stored {stored:08x}, computed {computed:08x})"),
            RecordError::Malformed(what) => write!(f, "malformed {what}"),
        }
    }
}

/// Decodes the record starting at `bytes[0]`; returns it and its total size.
pub fn decode_record(bytes: &[u8]) -> Result<(RecordRef<'_>, usize), RecordError> {
    if bytes.len() < HEADER_BYTES {
        return Err(RecordError::Truncated);
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().unwrap_or([0; 4]));
    let stored = u32::from_le_bytes(bytes[4..8].try_into().unwrap_or([0; 4]));
    if len == 0 {
        return Err(RecordError::Unwritten);
    }
    if len as usize > RECORD_BYTES_MAX {
        return Err(RecordError::LengthOutOfRange(len));
    }
    let end = HEADER_BYTES + len as usize;
    let Some(body) = bytes.get(HEADER_BYTES..end) else { return Err(RecordError::Truncated) };
    let computed = crc32fast::hash(body);
    if computed != stored {
        return Err(RecordError::CrcMismatch { stored, computed });
    }
    let payload = &body[1..];
    let record = match body[0] {
        KIND_MESSAGE => RecordRef::Message(decode_message(payload).ok_or(RecordError::Malformed("message"))?),
        KIND_TOPIC => RecordRef::Topic(serde_json::from_slice(payload).map_err(|_| RecordError::Malformed("topic"))?),
        KIND_GROUP => RecordRef::Group(serde_json::from_slice(payload).map_err(|_| RecordError::Malformed("group"))?),
        KIND_PRODUCER => RecordRef::Producer(serde_json::from_slice(payload).map_err(|_| RecordError::Malformed("producer"))?),
        KIND_SALVAGED => RecordRef::Salvaged(serde_json::from_slice(payload).map_err(|_| RecordError::Malformed("salvaged"))?),
        KIND_NEW_TOPICS => RecordRef::NewTopics(serde_json::from_slice(payload).map_err(|_| RecordError::Malformed("new topics"))?),
        KIND_RAFT_ENTRY => RecordRef::RaftEntry(decode_raft_entry(payload).ok_or(RecordError::Malformed("raft entry"))?),
        KIND_RAFT_STATE => RecordRef::RaftState(decode_raft_state(payload).ok_or(RecordError::Malformed("raft state"))?),
        KIND_APPLIED => RecordRef::Applied(serde_json::from_slice(payload).map_err(|_| RecordError::Malformed("applied"))?),
        KIND_LATEST_COPY => RecordRef::LatestCopy(decode_message(payload).ok_or(RecordError::Malformed("latest copy"))?),
        KIND_GROUP_DROPPED => RecordRef::GroupDropped(serde_json::from_slice(payload).map_err(|_| RecordError::Malformed("group dropped"))?),
        _ => return Err(RecordError::Malformed("kind")),
    };
    Ok((record, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: u64) -> MessageRef<'static> {
        MessageRef { id, ts_ms: 77, topic: "orders", key: Some("k"), producer: None, seq: 0, body: "{\"n\":1}" }
    }

    #[test]
    fn message_roundtrip_and_size() {
        let mut out = Vec::new();
        let m = sample(9);
        let n = encode_message(&mut out, &m);
        assert_eq!(n, out.len());
        assert_eq!(n, message_record_bytes(&m));
        let (decoded, size) = decode_record(&out).unwrap();
        assert_eq!(size, n);
        assert_eq!(decoded, RecordRef::Message(m));
    }

    #[test]
    fn a_flipped_bit_or_a_cut_is_caught() {
        let mut out = Vec::new();
        encode_message(&mut out, &sample(1));
        let group = GroupRecord { topic: "orders".into(), group: "g".into(), filter: None, start_id: 1, floor: 2, floor_prev: 2, acked: vec![], resets: 0, coalesce_ms: None };
        let control_at = out.len();
        encode_control(&mut out, KIND_GROUP, &group);
        assert_eq!(decode_record(&out[control_at..]).unwrap().0, RecordRef::Group(group));
        assert_eq!(decode_record(&out[..control_at - 1]).unwrap_err(), RecordError::Truncated);
        assert_eq!(decode_record(&[0u8; 16]).unwrap_err(), RecordError::Unwritten);
        let mut flipped = out.clone();
        flipped[20] ^= 0x10;
        assert!(matches!(decode_record(&flipped), Err(RecordError::CrcMismatch { .. })));
    }
}
