//! Target `raft`: the cluster's decoders over arbitrary bytes, which will come from peers and
//! from disk. `cluster::command::decode` and `cluster::raft_log::recover` must never panic;
//! a command they accept encodes and decodes back to itself, and a log they read back writes
//! out (as one persist of its entries and hard state) and reads back the same.
//!
//! Input: one byte for the mode (even: a command, odd: a raft log segment), then the bytes.

use ferry_core::cluster::{command, raft_log};

pub fn run(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else { return };
    if mode % 2 == 0 {
        check_command(bytes);
    } else {
        check_log(bytes);
    }
}

fn check_command(bytes: &[u8]) {
    let Ok(decoded) = command::decode(bytes) else { return };
    let mut again = Vec::new();
    command::encode(&mut again, &decoded);
    let redecoded = command::decode(&again).unwrap_or_else(|e| panic!("re-encoded {decoded:?} does not decode: {e}"));
    assert_eq!(redecoded, decoded, "a command changed on its way through encode and decode");
}

fn check_log(bytes: &[u8]) {
    let Ok(recovered) = raft_log::recover(&[(1, bytes)]) else { return };
    assert!(recovered.newest_valid_len <= bytes.len() as u64, "cut beyond the segment's end");
    let entries = recovered.entries(&[(1, bytes)]);
    assert_eq!(entries.len(), recovered.places.len(), "an entry's record does not read back where the scan found it");
    assert!(entries.windows(2).all(|w| w[0].index < w[1].index), "entries out of order");
    let mut rewritten = Vec::new();
    if !entries.is_empty() || recovered.hard_state != Default::default() {
        raft_log::encode_persist(&mut rewritten, &entries, Some(&recovered.hard_state));
    }
    let again = raft_log::recover(&[(1, &rewritten)]).unwrap_or_else(|e| panic!("a rewritten log does not read back: {e}"));
    assert_eq!(again.hard_state, recovered.hard_state);
    assert_eq!(again.entries(&[(1, &rewritten)]), entries, "entries changed on their way through a rewrite");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../fuzz/corpus/raft/{name}", env!("CARGO_MANIFEST_DIR"))).expect("corpus file")
    }

    #[test]
    fn the_saved_inputs_reach_the_accepting_paths() {
        for name in ["command-publish", "command-create-group"] {
            assert!(command::decode(&corpus(name)[1..]).is_ok(), "{name} does not decode");
        }
        let log = raft_log::recover(&[(1, &corpus("log-with-a-replaced-suffix")[1..])]).expect("the log reads back");
        assert_eq!(log.places.iter().map(|(index, place)| (*index, place.term)).collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
        let torn = raft_log::recover(&[(1, &corpus("log-torn")[1..])]).expect("a torn tail is cut");
        assert_eq!(torn.places.len(), 2, "the torn second write is dropped");
    }
}
