//! The routing pipeline a publish passes before it is stored: validate → authenticate →
//! filter → transform; the node then stores and traces it. Each stage is a small type and the
//! pipeline is a list, so a stage is added without touching the others.

use crate::protocol::ErrorCode;

pub const TOPIC_BYTES_MAX: usize = 200;
pub const GROUP_BYTES_MAX: usize = 100;
pub const KEY_BYTES_MAX: usize = 1024;
pub const PRODUCER_BYTES_MAX: usize = 200;

/// Topic and group names: 1..=max bytes of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn check_name(what: &str, name: &str, max: usize) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > max || name.starts_with('.') || !name.chars().all(ok_char) {
        return Err(format!("invalid {what} name: use 1 to {max} of A-Z a-z 0-9 . _ - (not starting with '.')"));
    }
    Ok(())
}

pub struct Publish<'a> {
    pub topic: crate::protocol::Name<'a>,
    pub key: Option<crate::protocol::Name<'a>>,
    pub producer: Option<crate::protocol::Name<'a>>,
    pub seq: Option<u64>,
}

pub struct PublishContext {
    pub authenticated: bool,
}

pub type Verdict = Result<(), (ErrorCode, String)>;

pub trait Stage {
    fn name(&self) -> &'static str;
    fn apply(&self, publish: &mut Publish, context: &PublishContext) -> Verdict;
}

/// Shape of the request: names, sizes, `producer`/`seq` pairing.
pub struct Validate;

impl Stage for Validate {
    fn name(&self) -> &'static str {
        "validate"
    }
    fn apply(&self, p: &mut Publish, _: &PublishContext) -> Verdict {
        let bad = |m: String| (ErrorCode::BadFrame, m);
        check_name("topic", &p.topic, TOPIC_BYTES_MAX).map_err(bad)?;
        if p.key.as_ref().is_some_and(|k| k.len() > KEY_BYTES_MAX) {
            return Err(bad(format!("key longer than {KEY_BYTES_MAX} bytes")));
        }
        if p.producer.as_ref().is_some_and(|k| k.is_empty() || k.len() > PRODUCER_BYTES_MAX) {
            return Err(bad(format!("producer must be 1 to {PRODUCER_BYTES_MAX} bytes")));
        }
        if p.producer.is_some() != p.seq.is_some() {
            return Err(bad("'producer' and 'seq' go together".into()));
        }
        Ok(())
    }
}

/// Every op of an unauthenticated connection is refused when the server requires tokens.
pub struct Authenticate {
    pub required: bool,
}

impl Stage for Authenticate {
    fn name(&self) -> &'static str {
        "authenticate"
    }
    fn apply(&self, _: &mut Publish, c: &PublishContext) -> Verdict {
        if self.required && !c.authenticated {
            return Err((ErrorCode::Unauthorized, "send hello with a valid token first".into()));
        }
        Ok(())
    }
}

/// Policy on where clients may publish: dead-letter topics are written only by the server.
pub struct Filter;

impl Stage for Filter {
    fn name(&self) -> &'static str {
        "filter"
    }
    fn apply(&self, p: &mut Publish, _: &PublishContext) -> Verdict {
        if p.topic.ends_with(".dlq") {
            return Err((ErrorCode::Forbidden, format!("{} is a dead-letter topic; only the server writes it", p.topic)));
        }
        Ok(())
    }
}

/// Normalizes what the store keeps: an empty key is no key.
pub struct Transform;

impl Stage for Transform {
    fn name(&self) -> &'static str {
        "transform"
    }
    fn apply(&self, p: &mut Publish, _: &PublishContext) -> Verdict {
        if p.key.as_deref() == Some("") {
            p.key = None;
        }
        Ok(())
    }
}

pub fn default_stages(tokens_required: bool) -> Vec<Box<dyn Stage>> {
    vec![Box::new(Validate), Box::new(Authenticate { required: tokens_required }), Box::new(Filter), Box::new(Transform)]
}

pub fn run(stages: &[Box<dyn Stage>], publish: &mut Publish, context: &PublishContext) -> Verdict {
    stages.iter().try_for_each(|s| s.apply(publish, context))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str) -> Publish<'_> {
        Publish { topic: topic.into(), key: Some("".into()), producer: None, seq: None }
    }

    #[test]
    fn stages_reject_with_protocol_codes() {
        let stages = default_stages(true);
        let authed = PublishContext { authenticated: true };
        assert_eq!(run(&stages, &mut publish("bad topic"), &authed).unwrap_err().0, ErrorCode::BadFrame);
        assert_eq!(run(&stages, &mut publish("x.dlq"), &authed).unwrap_err().0, ErrorCode::Forbidden);
        let anon = PublishContext { authenticated: false };
        assert_eq!(run(&stages, &mut publish("orders"), &anon).unwrap_err().0, ErrorCode::Unauthorized);
        let mut p = publish("orders");
        run(&stages, &mut p, &authed).unwrap();
        assert_eq!(p.key, None);
        let mut p = publish("orders");
        p.producer = Some("p".into());
        assert_eq!(run(&stages, &mut p, &authed).unwrap_err().0, ErrorCode::BadFrame);
    }
}
