//! Frames between the nodes of a cluster (the mesh), each the shard it belongs to (u16: each
//! shard is a raft group of its own, with its own sessions), one kind byte, then its body:
//!
//! ```text
//! raft         = 1 message           (a raft message of the shard, in raft's own protobuf encoding)
//! client_frame = 2 conn:u64 text     (a client's frame, forwarded by its node to the leader)
//! to_client    = 3 conn:u64 text     (the leader's frame for that client)
//! close_client = 4 conn:u64 code:u16 reason
//! client_gone  = 5 conn:u64          (the client's connection ended, or moved on)
//! congested    = 6 conn:u64 flag:u8  (its node's queue to it is full (1), or drained (0))
//! node_info    = 7 json              (the sender's client URL and progress, every second)
//! deliver      = 8 conn:u64 index:u64 id:u64 prev:u64 attempt:u32 topic_len:u16 topic group
//!                                    (the leader's delivery of message `id`, raft entry
//!                                    `index`, to a member on the receiving node: the body
//!                                    comes from that node's own replica)
//! deliver_full = 9 conn:u64 id:u64 topic_len:u16 topic group
//!                                    (the member's node cannot: send that delivery in full)
//! ```
//!
//! Integers are big-endian, texts UTF-8 to the end of the frame. `conn` is the connection id
//! on the node holding the client's socket. A frame that does not decode is an error, never a
//! panic: it comes from the network.

use crate::ids::ShardId;
use protobuf::Message as _;
use raft::eraftpb::Message;

const KIND_RAFT: u8 = 1;
const KIND_CLIENT_FRAME: u8 = 2;
const KIND_TO_CLIENT: u8 = 3;
const KIND_CLOSE_CLIENT: u8 = 4;
const KIND_CLIENT_GONE: u8 = 5;
const KIND_CONGESTED: u8 = 6;
const KIND_NODE_INFO: u8 = 7;
const KIND_DELIVER: u8 = 8;
const KIND_DELIVER_FULL: u8 = 9;

/// A delivery the leader decided, by reference: the member's node builds the `msg` frame
/// from its own replica once it has applied entry `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverRef {
    pub conn: u64,
    pub index: u64,
    pub id: u64,
    pub prev: u64,
    pub attempt: u32,
    pub topic: String,
    pub group: String,
}

/// What a node tells its peers about itself, for `welcome` and `ferry cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    /// Where clients reach it (`advertise_url`).
    pub url: String,
    /// The last raft entry it applied.
    pub applied: u64,
    pub term: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PeerFrame {
    Raft(Message),
    ClientFrame {
        conn: u64,
        text: String,
    },
    ToClient {
        conn: u64,
        text: String,
    },
    CloseClient {
        conn: u64,
        code: u16,
        reason: String,
    },
    ClientGone {
        conn: u64,
    },
    Congested {
        conn: u64,
        congested: bool,
    },
    NodeInfo(NodeInfo),
    Deliver(DeliverRef),
    /// The member's node cannot build that delivery (it does not hold the message): the
    /// leader sends it in full if it is still in flight to that connection.
    DeliverFull {
        conn: u64,
        id: u64,
        topic: String,
        group: String,
    },
}

/// `topic_len:u16 topic group`: names are short (bounded by the frame size limit).
fn put_names(out: &mut Vec<u8>, topic: &str, group: &str) {
    let topic_len = u16::try_from(topic.len()).expect("topic names are at most a few hundred bytes (pipeline::TOPIC_BYTES_MAX)");
    out.extend_from_slice(&topic_len.to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(group.as_bytes());
}

fn take_names(kind: &str, bytes: &[u8]) -> Result<(String, String), String> {
    let (len, rest) = bytes.split_first_chunk::<2>().ok_or_else(|| format!("{kind} cut before its topic"))?;
    let len = u16::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(format!("{kind}: topic runs past the frame"));
    }
    let (topic, group) = rest.split_at(len);
    Ok((text(topic)?, text(group)?))
}

fn take_u64(kind: &str, bytes: &mut &[u8]) -> Result<u64, String> {
    let (value, rest) = bytes.split_first_chunk::<8>().ok_or_else(|| format!("{kind} cut short"))?;
    *bytes = rest;
    Ok(u64::from_be_bytes(*value))
}

/// Bytes before a frame's kind: its shard.
const SHARD_BYTES: usize = 2;

fn start(shard: ShardId, kind: u8, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(SHARD_BYTES + 1 + capacity);
    let shard = u16::try_from(shard.0).expect("shards are at most SHARDS_MAX");
    out.extend_from_slice(&shard.to_be_bytes());
    out.push(kind);
    out
}

fn with_conn(shard: ShardId, kind: u8, conn: u64, capacity: usize) -> Vec<u8> {
    let mut out = start(shard, kind, 8 + capacity);
    out.extend_from_slice(&conn.to_be_bytes());
    out
}

pub fn encode(shard: ShardId, frame: &PeerFrame) -> Vec<u8> {
    match frame {
        PeerFrame::Raft(message) => {
            let mut out = start(shard, KIND_RAFT, message.compute_size() as usize);
            // Writing a well-formed message into a Vec cannot fail.
            message.write_to_vec(&mut out).expect("a raft message encodes");
            out
        }
        PeerFrame::ClientFrame { conn, text } | PeerFrame::ToClient { conn, text } => {
            let kind = if matches!(frame, PeerFrame::ClientFrame { .. }) { KIND_CLIENT_FRAME } else { KIND_TO_CLIENT };
            let mut out = with_conn(shard, kind, *conn, text.len());
            out.extend_from_slice(text.as_bytes());
            out
        }
        PeerFrame::CloseClient { conn, code, reason } => {
            let mut out = with_conn(shard, KIND_CLOSE_CLIENT, *conn, 2 + reason.len());
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(reason.as_bytes());
            out
        }
        PeerFrame::ClientGone { conn } => with_conn(shard, KIND_CLIENT_GONE, *conn, 0),
        PeerFrame::NodeInfo(info) => {
            let mut out = start(shard, KIND_NODE_INFO, 64);
            // Plain fields serialize without fail.
            serde_json::to_writer(&mut out, info).expect("node info encodes");
            out
        }
        PeerFrame::Congested { conn, congested } => {
            let mut out = with_conn(shard, KIND_CONGESTED, *conn, 1);
            out.push(u8::from(*congested));
            out
        }
        PeerFrame::Deliver(d) => encode_deliver(shard, d.conn, d.index, d.id, d.prev, d.attempt, &d.topic, &d.group),
        PeerFrame::DeliverFull { conn, id, topic, group } => {
            let mut out = with_conn(shard, KIND_DELIVER_FULL, *conn, 10 + topic.len() + group.len());
            out.extend_from_slice(&id.to_be_bytes());
            put_names(&mut out, topic, group);
            out
        }
    }
}

/// A `deliver` frame, from borrowed names (the leader sends one per delivery).
#[allow(clippy::too_many_arguments)]
pub fn encode_deliver(shard: ShardId, conn: u64, index: u64, id: u64, prev: u64, attempt: u32, topic: &str, group: &str) -> Vec<u8> {
    let mut out = with_conn(shard, KIND_DELIVER, conn, 30 + topic.len() + group.len());
    for value in [index, id, prev] {
        out.extend_from_slice(&value.to_be_bytes());
    }
    out.extend_from_slice(&attempt.to_be_bytes());
    put_names(&mut out, topic, group);
    out
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "text is not UTF-8".to_string())
}

/// A raft message: the peer link sends these ahead of other frames.
pub fn is_raft(bytes: &[u8]) -> bool {
    bytes.get(SHARD_BYTES) == Some(&KIND_RAFT)
}

/// The shard a frame belongs to (the host routes it there).
pub fn shard_of(bytes: &[u8]) -> Result<ShardId, String> {
    let (shard, _) = bytes.split_first_chunk::<SHARD_BYTES>().ok_or("peer frame cut before its shard")?;
    Ok(ShardId(u32::from(u16::from_be_bytes(*shard))))
}

/// A frame and its shard.
pub fn decode(bytes: &[u8]) -> Result<(ShardId, PeerFrame), String> {
    let shard = shard_of(bytes)?;
    decode_body(&bytes[SHARD_BYTES..]).map(|frame| (shard, frame))
}

fn decode_body(bytes: &[u8]) -> Result<PeerFrame, String> {
    let (&kind, body) = bytes.split_first().ok_or("empty peer frame")?;
    if kind == KIND_RAFT {
        return Message::parse_from_bytes(body).map(PeerFrame::Raft).map_err(|e| format!("raft message: {e}"));
    }
    if kind == KIND_NODE_INFO {
        return serde_json::from_slice(body).map(PeerFrame::NodeInfo).map_err(|e| format!("node info: {e}"));
    }
    let (conn, rest) = body.split_first_chunk::<8>().ok_or_else(|| format!("peer frame kind {kind} cut before its connection id"))?;
    let conn = u64::from_be_bytes(*conn);
    match kind {
        KIND_CLIENT_FRAME => Ok(PeerFrame::ClientFrame { conn, text: text(rest)? }),
        KIND_TO_CLIENT => Ok(PeerFrame::ToClient { conn, text: text(rest)? }),
        KIND_CLOSE_CLIENT => {
            let (code, reason) = rest.split_first_chunk::<2>().ok_or("close_client cut before its code")?;
            Ok(PeerFrame::CloseClient { conn, code: u16::from_be_bytes(*code), reason: text(reason)? })
        }
        KIND_CLIENT_GONE if rest.is_empty() => Ok(PeerFrame::ClientGone { conn }),
        KIND_CONGESTED => match rest {
            [0] => Ok(PeerFrame::Congested { conn, congested: false }),
            [1] => Ok(PeerFrame::Congested { conn, congested: true }),
            _ => Err("congested: flag is not one byte of 0 or 1".into()),
        },
        KIND_CLIENT_GONE => Err("client_gone: bytes after the connection id".into()),
        KIND_DELIVER => {
            let mut rest = rest;
            let (index, id, prev) = (take_u64("deliver", &mut rest)?, take_u64("deliver", &mut rest)?, take_u64("deliver", &mut rest)?);
            let (attempt, rest) = rest.split_first_chunk::<4>().ok_or("deliver cut before its attempt")?;
            let (topic, group) = take_names("deliver", rest)?;
            Ok(PeerFrame::Deliver(DeliverRef { conn, index, id, prev, attempt: u32::from_be_bytes(*attempt), topic, group }))
        }
        KIND_DELIVER_FULL => {
            let mut rest = rest;
            let id = take_u64("deliver_full", &mut rest)?;
            let (topic, group) = take_names("deliver_full", rest)?;
            Ok(PeerFrame::DeliverFull { conn, id, topic, group })
        }
        other => Err(format!("unknown peer frame kind {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    #[test]
    fn a_raft_message_reads_back_and_damage_is_an_error() {
        let mut message = Message { msg_type: MessageType::MsgAppend, to: 2, from: 1, term: 3, index: 7, log_term: 2, commit: 6, ..Message::default() };
        message.entries = vec![Entry { index: 8, term: 3, data: b"payload".to_vec().into(), ..Entry::default() }].into();
        let bytes = encode(ShardId(3), &PeerFrame::Raft(message.clone()));
        assert_eq!(decode(&bytes), Ok((ShardId(3), PeerFrame::Raft(message))));
        assert_eq!(shard_of(&bytes), Ok(ShardId(3)));
        assert!(decode(&[]).is_err());
        assert!(decode(&[0]).unwrap_err().contains("shard"));
        assert!(decode(&[0, 0, 11, 1]).unwrap_err().contains("kind 11"));
        assert!(decode(&bytes[..bytes.len() - 3]).is_err(), "a cut message");
    }

    #[test]
    fn client_frames_read_back_and_damage_is_an_error() {
        let frames = [
            PeerFrame::ClientFrame { conn: 7, text: r#"{"op":"pub","topic":"t","body":1}"#.into() },
            PeerFrame::ToClient { conn: u64::MAX, text: "é".into() },
            PeerFrame::CloseClient { conn: 1, code: 1013, reason: "leader changed".into() },
            PeerFrame::ClientGone { conn: 3 },
            PeerFrame::Congested { conn: 4, congested: true },
            PeerFrame::Congested { conn: 4, congested: false },
            PeerFrame::Deliver(DeliverRef { conn: 5, index: 90, id: 12, prev: 11, attempt: 2, topic: "orders".into(), group: "billing".into() }),
            PeerFrame::DeliverFull { conn: 6, id: 12, topic: "orders".into(), group: String::new() },
        ];
        let info = PeerFrame::NodeInfo(NodeInfo { url: "ws://127.0.0.1:7701/ws".into(), applied: 7, term: 2 });
        let shard = ShardId(0);
        assert_eq!(decode(&encode(shard, &info)), Ok((shard, info.clone())));
        assert!(decode(&encode(shard, &info)[..11]).unwrap_err().contains("node info"));
        for frame in frames {
            let bytes = encode(ShardId(255), &frame);
            assert_eq!(decode(&bytes), Ok((ShardId(255), frame.clone())));
            assert!(decode(&bytes[..7]).unwrap_err().contains("connection id"), "{frame:?}");
        }
        assert!(decode(&encode(shard, &PeerFrame::ToClient { conn: 1, text: "é".into() })[..12]).unwrap_err().contains("UTF-8"));
        let mut gone = encode(shard, &PeerFrame::ClientGone { conn: 3 });
        gone.push(0);
        assert!(decode(&gone).is_err());
        let mut congested = encode(shard, &PeerFrame::Congested { conn: 3, congested: true });
        congested[11] = 2;
        assert!(decode(&congested).is_err());
        assert!(decode(&encode(shard, &PeerFrame::CloseClient { conn: 1, code: 1000, reason: String::new() })[..12]).unwrap_err().contains("code"));
        let mut deliver = encode(shard, &PeerFrame::DeliverFull { conn: 6, id: 12, topic: "orders".into(), group: "g".into() });
        deliver[19..21].copy_from_slice(&200u16.to_be_bytes());
        assert!(decode(&deliver).unwrap_err().contains("past the frame"));
        assert!(decode(&deliver[..22]).is_err());
    }
}
