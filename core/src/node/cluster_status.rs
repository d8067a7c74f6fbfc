//! What a cluster node knows of the others, for clients: every second each node tells its
//! peers its client URL, applied entry and term (`node_info`), and `welcome` carries what this
//! node knows then: `node` and `nodes` (the URLs, PROTOCOL.md) and, as ferry's extension,
//! `cluster` with the leader, the term and each node's applied entry and lag (behind the
//! furthest applied any node reported), which `ferry cluster status` prints.

use super::{Node, Output, NS_PER_MS};
use crate::cluster::mesh::{self, NodeInfo, PeerFrame};
use crate::cluster::NodeId;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub(super) struct ClusterStatus {
    voters: Vec<NodeId>,
    /// Per other node: what it last said, and when that arrived.
    heard: BTreeMap<u64, (NodeInfo, u64)>,
}

impl ClusterStatus {
    pub(super) fn new(voters: Vec<NodeId>) -> ClusterStatus {
        ClusterStatus { voters, heard: BTreeMap::new() }
    }
}

impl Node {
    fn my_info(&self) -> Option<NodeInfo> {
        let replication = self.replication.as_ref()?;
        let replica = replication.replica();
        Some(NodeInfo { url: self.config.advertise_url.clone(), applied: replica.applied(), term: replica.term() })
    }

    /// Sends this node's info to every other voter (each second, with the retention check).
    pub(super) fn tell_peers_about_me(&mut self) {
        let Some(info) = self.my_info() else { return };
        let replication = self.replication.as_ref().expect("cluster mode");
        let me = replication.node_id();
        let payload = mesh::encode(self.shard(), &PeerFrame::NodeInfo(info));
        let others: Vec<u64> = replication.status.voters.iter().filter(|v| **v != me).map(|v| v.0).collect();
        for to_node in others {
            self.out.push_back(Output::PeerSend { to_node, payload: payload.clone() });
        }
    }

    pub(super) fn on_node_info(&mut self, from_node: u64, info: NodeInfo) {
        let now_ns = self.now_ns;
        if let Some(replication) = self.replication.as_mut() {
            if replication.status.voters.contains(&NodeId(from_node)) {
                replication.status.heard.insert(from_node, (info, now_ns));
            }
        }
    }

    /// What `welcome` says of the cluster as this shard's replica sees it; `None` on a
    /// single node.
    pub fn cluster_view(&self) -> Option<ClusterView> {
        let (replication, mine) = (self.replication.as_ref()?, self.my_info()?);
        let me = replication.node_id();
        let replica = replication.replica();
        let mut known: BTreeMap<u64, (NodeInfo, Option<u64>)> = BTreeMap::new();
        known.insert(me.0, (mine, None));
        for (node, (info, at_ns)) in &replication.status.heard {
            known.insert(*node, (info.clone(), Some(self.now_ns.saturating_sub(*at_ns) / NS_PER_MS)));
        }
        let furthest = known.values().map(|(info, _)| info.applied).max().unwrap_or(0);
        let nodes: Vec<Value> = replication
            .status
            .voters
            .iter()
            .map(|voter| match known.get(&voter.0) {
                Some((info, heard_ms_ago)) => json!({
                    "id": voter.0,
                    "url": info.url,
                    "applied": info.applied,
                    "lag": furthest - info.applied,
                    "heard_ms_ago": heard_ms_ago,
                }),
                None => json!({"id": voter.0, "url": null, "applied": null, "lag": null, "heard_ms_ago": null}),
            })
            .collect();
        let urls = known.values().map(|(info, _)| info.url.clone()).filter(|url| !url.is_empty()).collect();
        let (leader, term) = (replica.leader().map(|l| l.0), replica.term());
        let cluster = json!({"leader": leader, "term": term, "nodes": nodes});
        Some(ClusterView { node: me.0, urls, cluster, leader, term })
    }
}

/// A shard's view of the cluster, for `welcome`.
pub struct ClusterView {
    pub node: u64,
    /// The client URLs of the nodes heard of (this one's included).
    pub urls: Vec<String>,
    /// `{leader, term, nodes: [{id, url, applied, lag, heard_ms_ago}]}`.
    pub cluster: Value,
    pub leader: Option<u64>,
    pub term: u64,
}
