//! What a shard's raft entries carry: the changes every replica applies to its state, in log
//! order, so that every replica gives the same ids and positions. Encoded like log records:
//! a kind byte, then binary for publishes (the hot path) and JSON for the rare rest.
//!
//! ```text
//! publish      = 1 ts_ms:u64 topic:str16 key:opt16 producer:opt16 seq:u64 body:bytes32
//! create group = 2 JSON {topic, group, from, filter}
//! position     = 3 JSON (a group record: floor, floor_prev, acked above the floor)
//! dead letter  = 4 JSON {topic, group, id}
//! ```

use crate::protocol::StartFrom;
use crate::record::{put_message_fields, GroupRecord, MessageFields, Reader};
use serde::{Deserialize, Serialize};

const KIND_PUBLISH: u8 = 1;
const KIND_CREATE_GROUP: u8 = 2;
const KIND_POSITION: u8 = 3;
const KIND_DEAD_LETTER: u8 = 4;
const KIND_RESET_GROUP: u8 = 5;
const KIND_DROP_GROUP: u8 = 6;

#[derive(Debug, Clone, PartialEq)]
pub enum Command<'a> {
    /// A publish as its client sent it; its id is its topic's next when it is applied.
    Publish(PublishCommand<'a>),
    /// A group its first member created; where it starts is decided when it is applied.
    CreateGroup(CreateGroupCommand),
    /// A group's position, as the shard leader's acks moved it.
    Position(GroupRecord),
    /// A message of `topic` that `group` moved to `<topic>.dlq`.
    DeadLetter(DeadLetterCommand),
    /// An operator moved a group (where to is decided when it is applied, like a creation).
    ResetGroup(ResetGroupCommand),
    /// An operator dropped a group.
    DropGroup(DropGroupCommand),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishCommand<'a> {
    pub ts_ms: u64,
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub producer: Option<(&'a str, u64)>,
    pub body: &'a str,
}

/// Where a new group starts, as its first `sub` asked (the protocol's `from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStart {
    Latest,
    Earliest,
    Id(u64),
}

impl From<StartFrom> for GroupStart {
    fn from(from: StartFrom) -> GroupStart {
        match from {
            StartFrom::Latest => GroupStart::Latest,
            StartFrom::Earliest => GroupStart::Earliest,
            StartFrom::Id(id) => GroupStart::Id(id),
        }
    }
}

impl From<GroupStart> for StartFrom {
    fn from(from: GroupStart) -> StartFrom {
        match from {
            GroupStart::Latest => StartFrom::Latest,
            GroupStart::Earliest => StartFrom::Earliest,
            GroupStart::Id(id) => StartFrom::Id(id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateGroupCommand {
    pub topic: String,
    pub group: String,
    pub from: GroupStart,
    /// The group's filter in its protocol form.
    pub filter: Option<serde_json::Value>,
    /// Its coalescing window (`GroupTerms`); absent in entries older than coalescing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterCommand {
    pub topic: String,
    pub group: String,
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetGroupCommand {
    pub topic: String,
    pub group: String,
    pub to: GroupStart,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropGroupCommand {
    pub topic: String,
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    Empty,
    UnknownKind(u8),
    Malformed(&'static str),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Empty => write!(f, "empty command"),
            CommandError::UnknownKind(kind) => write!(f, "unknown command kind {kind}"),
            CommandError::Malformed(what) => write!(f, "malformed {what} command"),
        }
    }
}

/// Appends `command`'s encoding to `out`.
pub fn encode(out: &mut Vec<u8>, command: &Command<'_>) {
    match command {
        Command::Publish(p) => {
            out.push(KIND_PUBLISH);
            let (producer, seq) = p.producer.map_or((None, 0), |(name, seq)| (Some(name), seq));
            put_message_fields(out, &MessageFields { ts_ms: p.ts_ms, topic: p.topic, key: p.key, producer, seq, body: p.body });
        }
        Command::CreateGroup(c) => put_json(out, KIND_CREATE_GROUP, c),
        Command::Position(g) => put_json(out, KIND_POSITION, g),
        Command::DeadLetter(d) => put_json(out, KIND_DEAD_LETTER, d),
        Command::ResetGroup(r) => put_json(out, KIND_RESET_GROUP, r),
        Command::DropGroup(d) => put_json(out, KIND_DROP_GROUP, d),
    }
}

/// Reads a command `encode` wrote; anything else is an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<Command<'_>, CommandError> {
    let (&kind, payload) = bytes.split_first().ok_or(CommandError::Empty)?;
    match kind {
        KIND_PUBLISH => decode_publish(payload).map(Command::Publish).ok_or(CommandError::Malformed("publish")),
        KIND_CREATE_GROUP => serde_json::from_slice(payload).map(Command::CreateGroup).map_err(|_| CommandError::Malformed("create group")),
        KIND_POSITION => serde_json::from_slice(payload).map(Command::Position).map_err(|_| CommandError::Malformed("position")),
        KIND_DEAD_LETTER => serde_json::from_slice(payload).map(Command::DeadLetter).map_err(|_| CommandError::Malformed("dead letter")),
        KIND_RESET_GROUP => serde_json::from_slice(payload).map(Command::ResetGroup).map_err(|_| CommandError::Malformed("reset group")),
        KIND_DROP_GROUP => serde_json::from_slice(payload).map(Command::DropGroup).map_err(|_| CommandError::Malformed("drop group")),
        other => Err(CommandError::UnknownKind(other)),
    }
}

fn decode_publish(payload: &[u8]) -> Option<PublishCommand<'_>> {
    let mut r = Reader::new(payload);
    let f = r.message_fields()?;
    let producer = f.producer.map(|name| (name, f.seq));
    r.at_end().then_some(PublishCommand { ts_ms: f.ts_ms, topic: f.topic, key: f.key, producer, body: f.body })
}

fn put_json<T: Serialize>(out: &mut Vec<u8>, kind: u8, value: &T) {
    out.push(kind);
    // Serializing plain data structs into a Vec cannot fail.
    serde_json::to_writer(out, value).expect("plain data serializes");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(command: Command<'_>) {
        let mut bytes = Vec::new();
        encode(&mut bytes, &command);
        assert_eq!(decode(&bytes), Ok(command));
    }

    #[test]
    fn every_command_reads_back_as_written() {
        roundtrip(Command::Publish(PublishCommand { ts_ms: 7, topic: "orders", key: Some("k1"), producer: Some(("shop", 42)), body: "{\"n\":1}" }));
        roundtrip(Command::Publish(PublishCommand { ts_ms: 0, topic: "t", key: None, producer: None, body: "" }));
        roundtrip(Command::CreateGroup(CreateGroupCommand {
            topic: "t".into(),
            group: "g".into(),
            from: GroupStart::Id(9),
            filter: Some(serde_json::json!({"key_prefix": "a"})),
            coalesce_ms: Some(500),
        }));
        roundtrip(Command::Position(GroupRecord {
            topic: "t".into(),
            group: "g".into(),
            filter: None,
            start_id: 1,
            floor: 4,
            floor_prev: 3,
            acked: vec![6],
            resets: 2,
            coalesce_ms: Some(500),
        }));
        roundtrip(Command::DeadLetter(DeadLetterCommand { topic: "t".into(), group: "g".into(), id: 5 }));
        roundtrip(Command::ResetGroup(ResetGroupCommand { topic: "t".into(), group: "g".into(), to: GroupStart::Earliest }));
        roundtrip(Command::DropGroup(DropGroupCommand { topic: "t".into(), group: "g".into() }));
    }

    #[test]
    fn damaged_or_foreign_bytes_are_errors() {
        let mut bytes = Vec::new();
        encode(&mut bytes, &Command::Publish(PublishCommand { ts_ms: 7, topic: "orders", key: None, producer: None, body: "x" }));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), Err(CommandError::Malformed("publish")));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(CommandError::Malformed("publish")), "trailing bytes");
        assert_eq!(decode(&[]), Err(CommandError::Empty));
        assert_eq!(decode(&[9, 1, 2]), Err(CommandError::UnknownKind(9)));
        assert_eq!(decode(&[KIND_DEAD_LETTER, b'{']), Err(CommandError::Malformed("dead letter")));
    }
}
