//! Raft replicas (issue 9) on a deterministic in-memory network: elections, commits applied in
//! the same order everywhere, only after a majority persisted, failover, one seed one run.

use ferry_core::cluster::replica::{ProposeError, Replica, ReplicaConfig, ReplicaInput, ReplicaOutput};
use ferry_core::cluster::NodeId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const MS: u64 = 1_000_000;

/// Replicas whose writes become durable only when `persist_now` says so, and whose messages
/// arrive in order unless the node is cut off.
struct Net {
    replicas: BTreeMap<NodeId, Replica>,
    now_ns: u64,
    in_flight: VecDeque<raft::eraftpb::Message>,
    /// Persist outputs not yet durable, per node, in order.
    unpersisted: BTreeMap<NodeId, VecDeque<u64>>,
    applied: BTreeMap<NodeId, Vec<(u64, Vec<u8>)>>,
    down: BTreeSet<NodeId>,
    /// Writes are made durable as soon as they are asked for.
    persist_at_once: bool,
    log: Vec<String>,
}

impl Net {
    fn new(voters: u64, seed: u64) -> Net {
        let ids: Vec<NodeId> = (1..=voters).map(NodeId).collect();
        let mut replicas = BTreeMap::new();
        for id in &ids {
            let config = ReplicaConfig { id: *id, voters: ids.clone(), tick_ns: 10 * MS, election_ticks: 10, heartbeat_ticks: 2, seed: seed * 100 + id.0, preferred_leader: None };
            replicas.insert(*id, Replica::new(&config, 0).unwrap());
        }
        Net {
            replicas,
            now_ns: 0,
            in_flight: VecDeque::new(),
            unpersisted: BTreeMap::new(),
            applied: BTreeMap::new(),
            down: BTreeSet::new(),
            persist_at_once: true,
            log: Vec::new(),
        }
    }

    fn collect(&mut self) {
        for (id, replica) in &mut self.replicas {
            while let Some(output) = replica.poll_output() {
                match output {
                    ReplicaOutput::Send(message) => self.in_flight.push_back(message),
                    ReplicaOutput::Persist { number, entries, .. } => {
                        self.log.push(format!("{} persist {number} entries {}", id.0, entries.len()));
                        self.unpersisted.entry(*id).or_default().push_back(number);
                    }
                    ReplicaOutput::Apply { index, data, .. } => {
                        self.log.push(format!("{} apply {index}", id.0));
                        self.applied.entry(*id).or_default().push((index, data));
                    }
                    ReplicaOutput::Install { .. } => unreachable!("these replicas never compact their log: no state is sent"),
                }
            }
        }
    }

    /// Delivers messages and durable writes until nothing moves.
    fn settle(&mut self) {
        loop {
            self.collect();
            if self.persist_at_once {
                self.persist_all();
            }
            let Some(message) = self.in_flight.pop_front() else { break };
            let (from, to) = (NodeId(message.from), NodeId(message.to));
            if self.down.contains(&from) || self.down.contains(&to) {
                continue;
            }
            self.replicas.get_mut(&to).unwrap().handle_input(self.now_ns, ReplicaInput::Message(message));
        }
    }

    fn persist_all(&mut self) {
        for (id, numbers) in std::mem::take(&mut self.unpersisted) {
            if let Some(&last) = numbers.back() {
                self.replicas.get_mut(&id).unwrap().handle_input(self.now_ns, ReplicaInput::Persisted { number: last });
            }
        }
        self.collect();
    }

    fn run_for(&mut self, duration_ns: u64) {
        let end = self.now_ns + duration_ns;
        loop {
            self.settle();
            let next = self.replicas.iter().filter(|(id, _)| !self.down.contains(id)).filter_map(|(_, r)| r.poll_timeout()).min().unwrap();
            if next > end {
                self.now_ns = end;
                return;
            }
            self.now_ns = self.now_ns.max(next);
            for (id, replica) in &mut self.replicas {
                if !self.down.contains(id) {
                    replica.handle_timeout(self.now_ns);
                }
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self.replicas.iter().filter(|(id, r)| !self.down.contains(id) && r.is_leader()).map(|(id, _)| *id).collect();
        let newest = leaders.iter().max_by_key(|id| self.replicas[id].term()).copied();
        newest
    }

    fn propose(&mut self, data: &str) -> NodeId {
        let leader = self.leader().expect("a leader");
        self.replicas.get_mut(&leader).unwrap().propose(data.as_bytes().to_vec()).unwrap();
        leader
    }

    /// The non-empty entries node `id` applied, in order.
    fn applied_data(&self, id: NodeId) -> Vec<String> {
        self.applied.get(&id).map_or(Vec::new(), |a| a.iter().filter(|(_, d)| !d.is_empty()).map(|(_, d)| String::from_utf8(d.clone()).unwrap()).collect())
    }
}

#[test]
fn three_replicas_elect_a_leader_and_apply_the_same_entries_in_the_same_order() {
    let mut net = Net::new(3, 1);
    net.run_for(1_000 * MS);
    let leader = net.leader().expect("a leader within a second");
    for n in 0..5 {
        net.propose(&format!("m{n}"));
    }
    net.run_for(100 * MS);
    let expected: Vec<String> = (0..5).map(|n| format!("m{n}")).collect();
    for id in net.replicas.keys() {
        assert_eq!(net.applied_data(*id), expected, "node {id} (leader {leader})");
    }
    let indexes: Vec<Vec<u64>> = net.applied.values().map(|a| a.iter().map(|(i, _)| *i).collect()).collect();
    assert!(indexes.windows(2).all(|w| w[0] == w[1]), "same indexes everywhere: {indexes:?}");
}

#[test]
fn nothing_is_applied_before_a_majority_has_persisted_it() {
    let mut net = Net::new(3, 2);
    net.run_for(1_000 * MS);
    let leader = net.leader().expect("a leader");
    net.persist_at_once = false;
    net.propose("held");
    net.settle();
    assert!(net.replicas.keys().all(|id| !net.applied_data(*id).contains(&"held".to_string())), "applied before any write was durable");
    // The leader's own write alone is not a majority.
    let own = net.unpersisted.remove(&leader).unwrap();
    net.replicas.get_mut(&leader).unwrap().handle_input(net.now_ns, ReplicaInput::Persisted { number: *own.back().unwrap() });
    net.settle();
    assert!(!net.applied_data(leader).contains(&"held".to_string()), "committed on the leader's own fsync");
    net.persist_all();
    net.settle();
    assert!(net.applied_data(leader).contains(&"held".to_string()), "a follower's durable write makes a majority");
}

#[test]
fn a_new_leader_takes_over_when_the_leader_is_cut_off_and_keeps_what_was_committed() {
    let mut net = Net::new(3, 3);
    net.run_for(1_000 * MS);
    let first = net.propose("before");
    net.run_for(100 * MS);
    let term = net.replicas[&first].term();
    net.down.insert(first);
    net.run_for(2_000 * MS);
    let second = net.leader().expect("a new leader among the two left");
    assert_ne!(second, first);
    assert!(net.replicas[&second].term() > term);
    net.propose("after");
    net.run_for(100 * MS);
    for id in net.replicas.keys().filter(|id| **id != first) {
        assert_eq!(net.applied_data(*id), vec!["before".to_string(), "after".to_string()], "node {id}");
    }
    assert_eq!(net.replicas.get_mut(&second).unwrap().propose(b"x".to_vec()), Ok(()), "the new leader takes proposals");
    let follower = *net.replicas.keys().find(|id| **id != first && **id != second).unwrap();
    assert_eq!(net.replicas.get_mut(&follower).unwrap().propose(b"y".to_vec()), Err(ProposeError::NotLeader { leader: Some(second) }));
}

#[test]
fn a_single_voter_commits_on_its_own_durable_write() {
    let mut net = Net::new(1, 4);
    net.run_for(1_000 * MS);
    assert_eq!(net.leader(), Some(NodeId(1)));
    net.persist_at_once = false;
    net.propose("alone");
    net.settle();
    assert!(net.applied_data(NodeId(1)).is_empty(), "applied before its write was durable");
    net.persist_all();
    net.settle();
    assert_eq!(net.applied_data(NodeId(1)), vec!["alone".to_string()]);
}

#[test]
fn one_seed_gives_one_run() {
    let run = |seed| {
        let mut net = Net::new(5, seed);
        net.run_for(1_000 * MS);
        net.propose("a");
        net.run_for(500 * MS);
        (net.leader(), net.log)
    };
    assert_eq!(run(7), run(7));
    let leaders: BTreeSet<Option<NodeId>> = (1..=8).map(|seed| run(seed).0).collect();
    assert!(leaders.len() > 1, "the seed decides who wins the election: {leaders:?}");
}
