//! What a group is created with and keeps for its life: its filter and its coalescing window.
//! A subscriber naming an existing group must ask for the same terms (`conflict`).

use crate::protocol::Filter;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupTerms {
    /// Only messages that pass it are the group's.
    pub filter: Option<Filter>,
    /// Coalescing: a message of a key settles the older ones of its key still waiting to be
    /// delivered (not in flight) that were stored at most this long before it.
    pub coalesce_ms: Option<u64>,
}

impl GroupTerms {
    pub fn filtered(filter: Option<Filter>) -> GroupTerms {
        GroupTerms { filter, coalesce_ms: None }
    }

    /// Why a subscriber asking for `asked` cannot join group `group` made with these terms.
    pub fn conflict(&self, group: &str, asked: &GroupTerms) -> Option<String> {
        if self.filter != asked.filter {
            return Some(format!("group '{group}' exists with a different filter"));
        }
        if self.coalesce_ms != asked.coalesce_ms {
            let shown = |ms: Option<u64>| ms.map_or("none".to_string(), |ms| ms.to_string());
            return Some(format!("group '{group}' exists with coalesce_ms {}, not {}", shown(self.coalesce_ms), shown(asked.coalesce_ms)));
        }
        None
    }
}
