//! Who the simulated clients are to the node. With tokens configured each says `hello` with
//! one; in JWT seeds that is a short-lived signed token, which the world refreshes (a new
//! `hello`) before its `exp` on most connections and lets run out on the others, so the node
//! must close those at `exp` and never close the refreshed ones early.

use ferry_core::Config;
use std::collections::BTreeMap;

/// A connection is closed at its token's `exp`, never before, and is sent nothing after it.
pub const INV_EXPIRY: &str = "tokens-expire";

const JWT_SECRET: &str = "sim-jwt-secret-of-at-least-32-bytes";
const SEC: u64 = 1_000_000_000;

pub struct Identities {
    /// Clients say hello with this configured token (none: the node requires no identity).
    token: Option<String>,
    /// JWT seeds: clients say hello with signed tokens lasting this many seconds (at least).
    jwt_lifetime_s: Option<u64>,
    /// Signed tokens on their way to the node: the `exp` (ns) each carries, and how many
    /// hellos carry it (tokens issued in the same second with the same rights are equal).
    issued: BTreeMap<String, (u64, u32)>,
}

impl Identities {
    /// Sets up `config`'s identities for `seed` (from the seed, so that every seed keeps its
    /// rng draws): tokens and the limited user on every fifth seed, and on half of those JWTs
    /// instead of the plain token, lasting 1 to 4 s.
    pub fn for_seed(seed: u64, config: &mut Config) -> Identities {
        if !seed.is_multiple_of(5) {
            return Identities { token: None, jwt_lifetime_s: None, issued: BTreeMap::new() };
        }
        config.tokens = vec!["sim-token".into()];
        // A user with rights on topics no other client uses: the misbehaving client says hello
        // as it and probes the others' topics (`misuse`).
        config.users = vec![crate::misuse::limited_user()];
        let jwt = seed % 10 == 5;
        if jwt {
            config.jwt_hs256_secret = JWT_SECRET.into();
        }
        Identities { token: Some("sim-token".into()), jwt_lifetime_s: jwt.then_some(1 + seed / 10 % 4), issued: BTreeMap::new() }
    }

    /// The `hello` a client says on a new connection (or to refresh its token), and when that
    /// token expires (JWTs only).
    pub fn hello(&mut self, limited: bool, now: u64) -> Option<(String, Option<u64>)> {
        let limited_user = crate::misuse::limited_user();
        let Some(lifetime_s) = self.jwt_lifetime_s else {
            let token = if limited { Some(limited_user.token) } else { self.token.clone() }?;
            return Some((hello_frame(&token), None));
        };
        // At least the lifetime from now, in the whole seconds `exp` counts in.
        let exp_s = now.div_ceil(SEC) + lifetime_s;
        let (publish, subscribe) = if limited { (limited_user.publish, limited_user.subscribe) } else { (vec![">".to_string()], vec![">".to_string()]) };
        let claims = serde_json::json!({"sub": if limited { "sim-limited" } else { "sim-client" }, "exp": exp_s, "publish": publish, "subscribe": subscribe});
        let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).expect("HS256 signs any claims");
        self.issued.entry(token.clone()).or_insert((exp_s * SEC, 0)).1 += 1;
        Some((hello_frame(&token), Some(exp_s * SEC)))
    }

    /// A frame reached the node: if it is a `hello` with a token issued here, that token's
    /// `exp` is in force on its connection from now on.
    pub fn arrived(&mut self, text: &str) -> Option<u64> {
        if self.issued.is_empty() || !text.starts_with(r#"{"op":"hello""#) {
            return None;
        }
        let frame: serde_json::Value = serde_json::from_str(text).ok()?;
        let token = frame["token"].as_str()?;
        let (exp, hellos) = self.issued.get_mut(token)?;
        let exp = *exp;
        *hellos -= 1;
        if *hellos == 0 {
            self.issued.remove(token);
        }
        Some(exp)
    }

    pub fn jwt(&self) -> bool {
        self.jwt_lifetime_s.is_some()
    }
}

fn hello_frame(token: &str) -> String {
    serde_json::json!({"op": "hello", "token": token}).to_string()
}
