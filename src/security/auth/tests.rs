use jsonwebtoken::{EncodingKey, Header};
use proptest::prelude::*;

use super::{Auth, AuthConfig, AuthError, JwtKey, Pattern};

const SECRET: &[u8] = b"test-secret-of-enough-length-for-hs256";

fn auth(public: &[&str], anonymous_publish: bool) -> Auth {
    Auth::new(AuthConfig {
        key: Some(JwtKey::Hs256(SECRET.to_vec())),
        leeway: 0,
        public_topics: public.iter().map(|p| Pattern::new(p)).collect(),
        anonymous_publish,
        ..AuthConfig::default()
    })
    .expect("hs256")
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

fn token(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET)).expect("encode")
}

#[test]
fn globs() {
    let cases = [
        ("news/*", "news/sport", true),
        ("news/*", "news/a/b", true),
        ("news/*", "news", false),
        ("*", "anything", true),
        ("*/x", "a/b/x", true),
        ("a*b*c", "abc", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ];
    for (pattern, topic, want) in cases {
        assert_eq!(Pattern::new(pattern).matches(topic), want, "{pattern} vs {topic}");
    }
}

#[test]
fn open_when_no_key() {
    let open = Auth::new(AuthConfig::default()).expect("open");
    assert!(open.is_open());
    assert!(open.subscribe(None, &["x"]).is_ok());
    assert!(open.publish(None, &["x"]).is_ok());
}

#[test]
fn subscribe_rules() {
    let auth = auth(&["public/*"], false);
    assert!(auth.subscribe(None, &["public/a"]).is_ok());
    assert!(
        matches!(auth.subscribe(None, &["public/a", "private"]), Err(AuthError::Unauthorized(m)) if m.contains("`private`"))
    );
    let good = token(&serde_json::json!({ "sub": "u1", "exp": now() + 600, "ringcast": { "subscribe": ["private"] } }));
    let grant = auth.subscribe(Some(&good), &["public/a", "private"]).expect("allowed");
    assert_eq!(grant.subject.as_deref(), Some("u1"));
    assert!(grant.expires.is_some());
    assert!(matches!(auth.subscribe(Some(&good), &["other"]), Err(AuthError::Forbidden(m)) if m.contains("`other`")));
}

#[test]
fn publish_rules() {
    let auth = auth(&[], false);
    assert!(matches!(auth.publish(None, &["a"]), Err(AuthError::Unauthorized(_))));
    let writer = token(&serde_json::json!({ "ringcast": { "publish": ["news/*"] } }));
    assert!(auth.publish(Some(&writer), &["news/a", "news/b"]).is_ok());
    assert!(matches!(auth.publish(Some(&writer), &["news/a", "sport"]), Err(AuthError::Forbidden(_))));
    let reader = token(&serde_json::json!({ "ringcast": { "subscribe": ["*"] } }));
    assert!(matches!(auth.publish(Some(&reader), &["news/a"]), Err(AuthError::Forbidden(_))));
    assert!(self::auth(&[], true).publish(None, &["a"]).is_ok(), "anonymous publishing when enabled");
}

#[test]
fn bad_tokens_are_refused_with_a_reason() {
    let auth = auth(&[], false);
    let rights = serde_json::json!({ "subscribe": ["*"] });
    let expired = token(&serde_json::json!({ "exp": now() - 3600, "ringcast": rights }));
    let immature = token(&serde_json::json!({ "nbf": now() + 3600, "ringcast": rights }));
    let other_secret = jsonwebtoken::encode(
        &Header::default(),
        &serde_json::json!({ "ringcast": rights }),
        &EncodingKey::from_secret(b"another secret entirely, also long"),
    )
    .expect("encode");
    // alg: none, hand-made: header {"alg":"none","typ":"JWT"}, claims, empty signature.
    let none = format!(
        "{}.{}.",
        base64_url_free::encode(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url_free::encode(br#"{"ringcast":{"subscribe":["*"]}}"#)
    );
    let hs512 = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS512),
        &serde_json::json!({ "ringcast": rights }),
        &EncodingKey::from_secret(SECRET),
    )
    .expect("encode");
    for (name, bad, reason) in [
        ("expired", expired, "expired"),
        ("not yet valid", immature, "not valid yet"),
        ("wrong key", other_secret, "signature"),
        ("alg none", none, "algorithm"),
        ("wrong algorithm", hs512, "algorithm"),
        ("garbage", "not.a.jwt".to_owned(), "malformed"),
        ("bad claims", token(&serde_json::json!({ "ringcast": { "subscribe": 5 } })), "claims"),
    ] {
        match auth.subscribe(Some(&bad), &["t"]) {
            Err(AuthError::Unauthorized(message)) => assert!(message.contains(reason), "{name}: {message}"),
            other => panic!("{name}: expected 401, got {other:?}"),
        }
    }
}

#[test]
fn token_sources_in_order() {
    let auth = auth(&[], false);
    assert_eq!(auth.token_from(Some("Bearer abc"), Some("ringcast_token=def"), Some("ghi")), Some("abc"));
    assert_eq!(auth.token_from(Some("Basic xyz"), Some("a=1; ringcast_token=def"), Some("ghi")), Some("def"));
    assert_eq!(auth.token_from(None, Some("other=1"), Some("ghi")), Some("ghi"));
    let no_query = Auth::new(AuthConfig { query_token: false, ..AuthConfig::default() }).expect("open");
    assert_eq!(no_query.token_from(None, None, Some("ghi")), None);
}

/// Minimal base64url without padding, so the test can forge an `alg: none` token.
mod base64_url_free {
    pub(super) fn encode(bytes: &[u8]) -> String {
        const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any string as a token, any topic: never a panic, always a refusal with a reason.
    #[test]
    fn arbitrary_tokens_never_panic(token in ".{0,300}", topic in "[a-z/*]{1,20}") {
        let auth = auth(&["public/*"], false);
        for result in [auth.subscribe(Some(&token), &[&topic]), auth.publish(Some(&token), &[&topic])] {
            if let Err(error) = result {
                prop_assert!(!error.to_string().is_empty());
            }
        }
    }

    /// Validly signed tokens with arbitrary claim JSON: never a panic.
    #[test]
    fn arbitrary_claims_never_panic(value in any::<(Option<String>, Option<i64>, Vec<String>)>()) {
        let (sub, exp, topics) = value;
        let claims = serde_json::json!({ "sub": sub, "exp": exp, "ringcast": { "subscribe": topics, "publish": 7 } });
        let auth = auth(&[], false);
        let _ = auth.subscribe(Some(&token(&claims)), &["t"]);
    }
}
