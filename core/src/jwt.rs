//! JWT identities: a token signed with the configured HS256 secret or public key (RS256 or
//! EdDSA) carries its rights as claims — `sub`, `exp`, `publish`, `subscribe`, `admin`, with
//! the meaning of a `[[users]]` entry's fields. Only the signature is checked by the
//! `jsonwebtoken` crate; `exp` is checked here, on the core's clock (the crate's would read the
//! system clock).

use crate::config::Config;
use crate::rights::{Rights, UserConfig};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    exp: u64,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    admin: bool,
}

/// A verified token: whose, its rights, and when it expires (seconds since the epoch).
#[derive(Debug)]
pub struct Verified {
    pub sub: String,
    pub rights: Rights,
    pub exp_s: u64,
}

pub struct JwtVerifier {
    keys: Vec<(DecodingKey, Algorithm)>,
}

impl JwtVerifier {
    /// The verifier the config asks for; `None` when it sets no JWT key.
    pub fn from_config(config: &Config) -> Result<Option<JwtVerifier>, String> {
        let mut keys = Vec::new();
        if !config.jwt_hs256_secret.is_empty() {
            keys.push((DecodingKey::from_secret(config.jwt_hs256_secret.as_bytes()), Algorithm::HS256));
        }
        if !config.jwt_public_key_pem.is_empty() {
            let pem = config.jwt_public_key_pem.as_bytes();
            let key = DecodingKey::from_rsa_pem(pem)
                .map(|key| (key, Algorithm::RS256))
                .or_else(|_| DecodingKey::from_ed_pem(pem).map(|key| (key, Algorithm::EdDSA)))
                .map_err(|e| format!("jwt_public_key_file: neither an RSA nor an Ed25519 public key in PEM ({e})"))?;
            keys.push(key);
        }
        Ok((!keys.is_empty()).then_some(JwtVerifier { keys }))
    }

    /// Checks `token`'s signature with each configured key, then its `exp` against `now_s`.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Verified, String> {
        let mut why = "not a JWT".to_string();
        for (key, algorithm) in &self.keys {
            let mut validation = Validation::new(*algorithm);
            // Neither would read the system clock: `exp` is checked below on the core's clock.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if claims.exp <= now_s {
                        return Err(format!("the token of '{}' expired", claims.sub));
                    }
                    let user = UserConfig { token: String::new(), publish: claims.publish, subscribe: claims.subscribe, admin: claims.admin };
                    let rights = Rights::of_user(&user).map_err(|e| format!("the token of '{}' has bad rights: {e}", claims.sub))?;
                    return Ok(Verified { sub: claims.sub, rights, exp_s: claims.exp });
                }
                Err(e) => why = e.to_string(),
            }
        }
        Err(format!("invalid token: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(secret: &str, exp: u64, publish: &[&str]) -> String {
        let claims = serde_json::json!({"sub": "app-7", "exp": exp, "publish": publish, "subscribe": ["orders.>"]});
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    #[test]
    fn a_signed_token_gives_its_claims_rights_until_it_expires() {
        let config = Config { jwt_hs256_secret: "s3cret".into(), ..Config::default() };
        let verifier = JwtVerifier::from_config(&config).unwrap().expect("configured");
        let verified = verifier.verify(&token("s3cret", 1_000, &["orders.*"]), 999).unwrap();
        assert_eq!((verified.sub.as_str(), verified.exp_s), ("app-7", 1_000));
        assert!(verified.rights.may_publish("orders.new") && !verified.rights.may_publish("payments.new"));
        assert!(verifier.verify(&token("s3cret", 1_000, &[]), 1_000).unwrap_err().contains("expired"));
        assert!(verifier.verify(&token("other", 1_000, &[]), 1).unwrap_err().contains("invalid"));
        assert!(verifier.verify("not.a.jwt", 1).is_err());
        assert!(verifier.verify(&token("s3cret", 1_000, &["a..b"]), 1).unwrap_err().contains("bad rights"));
        assert!(JwtVerifier::from_config(&Config::default()).unwrap().is_none());
    }
}
