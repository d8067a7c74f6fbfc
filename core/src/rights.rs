//! Who may do what: each identity's rights as topic patterns, checked at the op that needs
//! them. Deny by default once any identity is configured.
//!
//! A pattern is a topic name split at dots: `*` matches one segment, `>` (last only) one or
//! more, anything else itself. `publish` entries allow `pub`; `subscribe` entries allow `sub`,
//! `pull`, `ack`, `nack` and `unsub` (on any group, or only the group named after the pattern:
//! `"orders.> billing"`) and `fetch` (any entry of the topic). An entry starting with `!`
//! denies what it matches, and a deny wins over every allow. A dead-letter topic is a topic
//! like any other: `orders.>` reads `orders.new.dlq`, `orders.*` does not read `orders.dlq`
//! unless it names it.

use serde::{Deserialize, Serialize};

/// A user as configured (`[[users]]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserConfig {
    pub token: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub admin: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Exact(String),
    One,
    Rest,
}

/// A topic pattern (`orders.*`, `orders.>`, `orders.new`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern(Vec<Segment>);

impl TopicPattern {
    pub fn parse(text: &str) -> Result<TopicPattern, String> {
        if text.is_empty() {
            return Err("an empty topic pattern".into());
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (at, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "" => return Err(format!("topic pattern '{text}' has an empty segment")),
                "*" => Segment::One,
                ">" if at + 1 == parts.len() => Segment::Rest,
                ">" => return Err(format!("topic pattern '{text}': '>' may only end a pattern")),
                part if part.contains(['*', '>']) => return Err(format!("topic pattern '{text}': '*' and '>' stand alone between dots")),
                part => Segment::Exact(part.to_string()),
            });
        }
        Ok(TopicPattern(segments))
    }

    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for segment in &self.0 {
            match segment {
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Exact(name) => {
                    if parts.next() != Some(name.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// One `subscribe` entry: a pattern, and the group it is limited to, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ReadRule {
    topics: TopicPattern,
    group: Option<String>,
}

/// An identity's rights.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rights {
    full: bool,
    publish: Vec<TopicPattern>,
    publish_denied: Vec<TopicPattern>,
    read: Vec<ReadRule>,
    read_denied: Vec<ReadRule>,
    pub admin: bool,
}

impl Rights {
    /// Everything (a `tokens` entry, or a server with no identities configured).
    pub fn full() -> Rights {
        Rights { full: true, admin: true, ..Rights::default() }
    }

    /// A user's rights; the error names the entry at fault.
    pub fn of_user(user: &UserConfig) -> Result<Rights, String> {
        let mut rights = Rights { admin: user.admin, ..Rights::default() };
        for entry in &user.publish {
            match entry.strip_prefix('!') {
                Some(denied) => rights.publish_denied.push(TopicPattern::parse(denied.trim())?),
                None => rights.publish.push(TopicPattern::parse(entry.trim())?),
            }
        }
        for entry in &user.subscribe {
            let (denied, entry) = match entry.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, entry.as_str()),
            };
            let mut words = entry.split_whitespace();
            let topics = TopicPattern::parse(words.next().unwrap_or_default())?;
            let group = words.next().map(str::to_string);
            if let Some(extra) = words.next() {
                return Err(format!("subscribe entry '{entry}': a pattern and at most one group, not '{extra}'"));
            }
            let rule = ReadRule { topics, group };
            if denied {
                rights.read_denied.push(rule);
            } else {
                rights.read.push(rule);
            }
        }
        Ok(rights)
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.full || (!self.publish_denied.iter().any(|p| p.matches(topic)) && self.publish.iter().any(|p| p.matches(topic)))
    }

    /// May read `topic` in `group` (`sub`, `pull`, `ack`, `nack`, `unsub`), or, with no group,
    /// read it at all (`fetch`: any entry of the topic, a denial of the whole topic wins).
    pub fn may_read(&self, topic: &str, group: Option<&str>) -> bool {
        if self.full {
            return true;
        }
        let covers = |rule: &ReadRule| rule.topics.matches(topic) && (rule.group.is_none() || group.is_none() || rule.group.as_deref() == group);
        let denied = self.read_denied.iter().any(|rule| rule.topics.matches(topic) && (rule.group.is_none() || rule.group.as_deref() == group));
        !denied && self.read.iter().any(covers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(publish: &[&str], subscribe: &[&str]) -> Rights {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Rights::of_user(&UserConfig { token: "t".into(), publish: strings(publish), subscribe: strings(subscribe), admin: false }).unwrap()
    }

    #[test]
    fn patterns_match_whole_segments() {
        let one = TopicPattern::parse("orders.*").unwrap();
        assert!(one.matches("orders.new") && !one.matches("orders") && !one.matches("orders.new.dlq") && !one.matches("ordersx.new"));
        let rest = TopicPattern::parse("orders.>").unwrap();
        assert!(rest.matches("orders.new") && rest.matches("orders.new.dlq") && !rest.matches("orders"));
        let exact = TopicPattern::parse("orders").unwrap();
        assert!(exact.matches("orders") && !exact.matches("orders.dlq"));
        assert!(TopicPattern::parse(">").unwrap().matches("anything.at.all"));
        for bad in ["", "a..b", "a.>.b", "a*", "or>ders", "."] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_lists_with_deny_winning_and_groups() {
        let rights = user(&["orders.*", "!orders.internal"], &["orders.> billing", "audit", "!orders.secret.>"]);
        assert!(rights.may_publish("orders.new") && !rights.may_publish("orders.internal") && !rights.may_publish("payments.new"));
        assert!(rights.may_read("orders.new", Some("billing")) && !rights.may_read("orders.new", Some("other")));
        assert!(rights.may_read("orders.new", None), "fetch: any entry of the topic");
        assert!(rights.may_read("audit", Some("any")) && !rights.may_read("audit.dlq", Some("any")));
        assert!(!rights.may_read("orders.secret.x", Some("billing")) && !rights.may_read("orders.secret.x", None), "deny wins");
        assert!(Rights::full().may_publish("x") && Rights::full().may_read("x", None));
        assert!(Rights::of_user(&UserConfig { subscribe: vec!["a b c".into()], ..UserConfig::default() }).is_err());
    }
}
