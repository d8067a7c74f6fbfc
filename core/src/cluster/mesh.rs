//! Frames between the nodes of a cluster (the mesh), each one kind byte then its body:
//!
//! ```text
//! raft = 1 message   (a raft message of the node's shard, in raft's own protobuf encoding)
//! ```
//!
//! Forwarded publishes, remote members and deliveries come as further kinds (see
//! docs/CLUSTER-DESIGN.md). A frame that does not decode is an error, never a panic: it comes
//! from the network.

use protobuf::Message as _;
use raft::eraftpb::Message;

const KIND_RAFT: u8 = 1;

#[derive(Debug, Clone, PartialEq)]
pub enum PeerFrame {
    Raft(Message),
}

pub fn encode(frame: &PeerFrame) -> Vec<u8> {
    match frame {
        PeerFrame::Raft(message) => {
            let mut out = vec![KIND_RAFT];
            // Writing a well-formed message into a Vec cannot fail.
            message.write_to_vec(&mut out).expect("a raft message encodes");
            out
        }
    }
}

pub fn decode(bytes: &[u8]) -> Result<PeerFrame, String> {
    let (&kind, body) = bytes.split_first().ok_or("empty peer frame")?;
    match kind {
        KIND_RAFT => Message::parse_from_bytes(body).map(PeerFrame::Raft).map_err(|e| format!("raft message: {e}")),
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
        let bytes = encode(&PeerFrame::Raft(message.clone()));
        assert_eq!(decode(&bytes), Ok(PeerFrame::Raft(message)));
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 1]).unwrap_err().contains("kind 9"));
        assert!(decode(&bytes[..bytes.len() - 3]).is_err(), "a cut message");
    }
}
