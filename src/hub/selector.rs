//! Topic selectors, as Mercure subscribers and claims write them: `*` (every topic), an
//! exact topic (any string, usually an IRI), or an RFC 6570 URI template
//! (`https://example.com/books/{id}`). A selector matches a topic that equals it, whatever
//! its kind (as the reference hub does), and a template also matches every topic that is
//! one of its expansions.
//!
//! A template is compiled once into an anchored regular expression (the `regex` crate) that
//! accepts the expansions of the template: literal text as is, and per expression the
//! characters its operator may produce (unreserved and percent-encoded for `{x}`, `{.x}`,
//! `{/x}`, `{;x}`, `{?x}`, `{&x}`; reserved ones too for `{+x}` and `{#x}`), its prefix and
//! separators, the names of named operators, any subset of its variables in order (an
//! undefined variable expands to nothing), lists, explode and prefix lengths. No crate of
//! the ecosystem matches templates (they expand them), hence this small compiler.

use std::fmt;
use std::fmt::Write as _;

use regex::Regex;

use crate::sync::Arc;

/// Longest template pattern compiled, in bytes of regular expression (bounds the work a
/// subscriber's selector can cost).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A parsed selector (module docs).
#[derive(Clone)]
pub struct Selector {
    text: Arc<str>,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// `*`: every topic.
    All,
    /// Only the topic equal to the text.
    Exact,
    /// The text's expansions (and the text itself).
    Template(Regex),
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::All => "all",
            Kind::Exact => "exact",
            Kind::Template(_) => "template",
        };
        f.debug_struct("Selector").field("text", &&*self.text).field("kind", &kind).finish()
    }
}

/// Why a selector is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The selector is empty.
    #[error("a topic selector is empty; use `*` for every topic")]
    Empty,
    /// The template's syntax is wrong.
    #[error("the topic selector `{text}` is not a valid URI template (RFC 6570): {reason}")]
    Template {
        /// The selector.
        text: String,
        /// What is wrong, and where.
        reason: String,
    },
}

impl Selector {
    /// Parses `text`: `*`, a template if it has a `{`, else an exact topic.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let kind = match text {
            "" => return Err(SelectorError::Empty),
            "*" => Kind::All,
            _ if text.contains('{') => Kind::Template(compile(text)?),
            _ => Kind::Exact,
        };
        Ok(Self { text: Arc::from(text), kind })
    }

    /// An exact selector, even if it has braces (draft-08's `match`, `matchType: Exact`).
    pub fn exact(text: &str) -> Result<Self, SelectorError> {
        if text.is_empty() {
            return Err(SelectorError::Empty);
        }
        Ok(Self { text: Arc::from(text), kind: Kind::Exact })
    }

    /// A URI template, even without an expression (draft-08's `matchURITemplate`).
    pub fn template(text: &str) -> Result<Self, SelectorError> {
        if text.is_empty() {
            return Err(SelectorError::Empty);
        }
        Ok(Self { text: Arc::from(text), kind: Kind::Template(compile(text)?) })
    }

    /// The selector as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The selector as written, shared.
    pub(crate) fn shared_text(&self) -> &Arc<str> {
        &self.text
    }

    /// Whether only the equal topic matches (so a hash lookup finds every match).
    pub fn is_exact(&self) -> bool {
        matches!(self.kind, Kind::Exact)
    }

    /// Whether `topic` matches (module docs).
    pub fn matches(&self, topic: &str) -> bool {
        match &self.kind {
            Kind::All => true,
            Kind::Exact => *self.text == *topic,
            Kind::Template(regex) => *self.text == *topic || regex.is_match(topic),
        }
    }

    /// Whether any of `topics` matches.
    pub fn matches_any<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> bool {
        topics.into_iter().any(|topic| self.matches(topic))
    }
}

/// Characters an unreserved expansion produces (RFC 6570 section 3.2.1: unreserved, and
/// everything else percent-encoded).
const UNRESERVED: &str = r"[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2}";
/// Characters a reserved expansion (`+`, `#`) produces: unreserved, reserved, pct-encoded.
const RESERVED: &str = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2}";

/// One expression operator's expansion rules (RFC 6570 appendix A).
struct Operator {
    first: &'static str,
    sep: &'static str,
    named: bool,
    /// What a named variable with an empty value expands to after its name.
    if_empty: &'static str,
    chars: &'static str,
}

fn operator(op: Option<char>) -> Option<Operator> {
    let (first, sep, named, if_empty, chars) = match op {
        None => ("", ",", false, "", UNRESERVED),
        Some('+') => ("", ",", false, "", RESERVED),
        Some('#') => ("#", ",", false, "", RESERVED),
        Some('.') => (".", ".", false, "", UNRESERVED),
        Some('/') => ("/", "/", false, "", UNRESERVED),
        Some(';') => (";", ";", true, "", UNRESERVED),
        Some('?') => ("?", "&", true, "=", UNRESERVED),
        Some('&') => ("&", "&", true, "=", UNRESERVED),
        _ => return None,
    };
    Some(Operator { first, sep, named, if_empty, chars })
}

struct VarSpec<'a> {
    name: &'a str,
    explode: bool,
    prefix: Option<u16>,
}

/// Compiles a template into the anchored regular expression of its expansions.
/// Templates compiled lately, by text, at most this many: every subscriber of a popular
/// selector would otherwise compile the same pattern again, at connect.
const COMPILED_MAX: usize = 1024;

/// The compiled form of the template `text`, from the cache of recent templates when it is
/// there (a `Regex` clone shares the compiled program).
fn compile(text: &str) -> Result<Regex, SelectorError> {
    static COMPILED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Regex>>> =
        std::sync::LazyLock::new(Default::default);
    let cache = || COMPILED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(regex) = cache().get(text) {
        return Ok(regex.clone());
    }
    // Compiled outside the lock: a slow template does not hold up other subscribers.
    let regex = compile_uncached(text)?;
    let mut cache = cache();
    if cache.len() >= COMPILED_MAX {
        cache.clear();
    }
    cache.insert(text.to_owned(), regex.clone());
    Ok(regex)
}

fn compile_uncached(text: &str) -> Result<Regex, SelectorError> {
    let fail = |reason: String| SelectorError::Template { text: text.to_owned(), reason };
    let mut pattern = String::with_capacity(text.len() * 4);
    pattern.push('^');
    let mut rest = text;
    let mut at = 0;
    while !rest.is_empty() {
        let Some(open) = rest.find(['{', '}']) else {
            pattern.push_str(&regex::escape(rest));
            break;
        };
        pattern.push_str(&regex::escape(&rest[..open]));
        if rest.as_bytes()[open] == b'}' {
            return Err(fail(format!("a `}}` without its `{{` at byte {}", at + open)));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(fail(format!("the expression at byte {} has no closing `}}`", at + open)));
        };
        let body = &rest[open + 1..open + close];
        expression(body, &mut pattern).map_err(|reason| fail(format!("{reason} (in `{{{body}}}`)")))?;
        at += open + close + 1;
        rest = &rest[open + close + 1..];
    }
    pattern.push('$');
    regex::RegexBuilder::new(&pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|error| fail(format!("it is too complex to match ({error})")))
}

/// Appends the regular expression of one expression (`body` is what is between the braces).
fn expression(body: &str, out: &mut String) -> Result<(), String> {
    let mut chars = body.chars();
    let op = match chars.clone().next() {
        Some(c) if "+#./;?&".contains(c) => {
            chars.next();
            Some(c)
        }
        Some(c) if "=,!@|".contains(c) => return Err(format!("the operator `{c}` is reserved")),
        _ => None,
    };
    let operator = operator(op).ok_or_else(|| "an unknown operator".to_owned())?;
    let specs = chars.as_str().split(',').map(varspec).collect::<Result<Vec<_>, _>>()?;
    let parts: Vec<String> = specs.iter().map(|spec| part(spec, &operator)).collect();
    // Any subset of the variables, in order: the first defined one comes after `first`, the
    // others after `sep`; none defined expands to nothing.
    let sep = regex::escape(operator.sep);
    out.push_str("(?:");
    out.push_str(&regex::escape(operator.first));
    out.push_str("(?:");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        out.push_str(part);
        for later in &parts[i + 1..] {
            let _ = write!(out, "(?:{sep}{later})?");
        }
    }
    out.push_str("))?");
    Ok(())
}

fn varspec(text: &str) -> Result<VarSpec<'_>, String> {
    let (name, explode, prefix) = if let Some(name) = text.strip_suffix('*') {
        (name, true, None)
    } else if let Some((name, length)) = text.split_once(':') {
        let length: u16 = length
            .parse()
            .ok()
            .filter(|length| (1..10_000).contains(length))
            .ok_or_else(|| format!("the prefix length `{length}` is not 1 to 9999"))?;
        (name, false, Some(length))
    } else {
        (text, false, None)
    };
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'%');
    if !valid {
        return Err(format!("`{name}` is not a variable name"));
    }
    Ok(VarSpec { name, explode, prefix })
}

/// The regular expression of one variable's expansion under `operator`.
fn part(spec: &VarSpec<'_>, operator: &Operator) -> String {
    let chars = operator.chars;
    let value = match spec.prefix {
        Some(length) => format!("(?:{chars}){{0,{length}}}"),
        None => format!("(?:{chars})*"),
    };
    // A list without explode: values joined by `,`; an associative array: `k,v,k,v`.
    let list = format!("{value}(?:,{value})*");
    let sep = regex::escape(operator.sep);
    let name = regex::escape(spec.name);
    match (operator.named, spec.explode) {
        (false, false) => list,
        // Items joined by `sep`; an associative array's are `k=v`.
        (false, true) => format!("(?:{chars}|=)*(?:{sep}(?:{chars}|=)*)*"),
        (true, false) if operator.if_empty.is_empty() => format!("{name}(?:={list})?"),
        (true, false) => format!("{name}=(?:{list})?"),
        // `name=v` per item of a list, or `k=v` per pair of an associative array.
        (true, true) => {
            let item = format!("(?:{chars})+(?:=(?:{chars})*)?");
            format!("{item}(?:{sep}{item})*")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Selector, SelectorError};

    fn matches(template: &str, topic: &str) -> bool {
        Selector::parse(template).is_ok_and(|s| s.matches(topic))
    }

    #[test]
    fn exact_and_all() {
        assert!(matches("https://example.com/foo", "https://example.com/foo"));
        assert!(!matches("https://example.com/foo", "https://example.com/foo/1"));
        assert!(matches("*", "anything at all"));
        assert!(Selector::parse("bar").is_ok_and(|s| s.is_exact()));
        assert_eq!(Selector::parse("").err(), Some(SelectorError::Empty));
    }

    #[test]
    fn simple_expressions_match_one_segment() {
        let books = "https://example.com/books/{id}";
        assert!(matches(books, "https://example.com/books/1"));
        assert!(matches(books, "https://example.com/books/a%2Fb"));
        assert!(matches(books, "https://example.com/books/"), "an empty value is an expansion");
        assert!(!matches(books, "https://example.com/books/1/reviews"), "`/` is reserved");
        assert!(!matches(books, "https://example.com/authors/1"));
        assert!(matches(books, books), "a template matches its own text");
        assert!(matches("https://example.com/{a}/{b}", "https://example.com/x/y"));
    }

    /// Every expansion of the RFC 6570 examples (section 1.2, levels 1 to 4) matches its
    /// template, with the variables defined there.
    #[test]
    fn the_rfc_examples_match() {
        let cases = [
            ("{var}", "value"),
            ("{hello}", "Hello%20World%21"),
            ("{+var}", "value"),
            ("{+hello}", "Hello%20World!"),
            ("{+path}/here", "/foo/bar/here"),
            ("here?ref={+path}", "here?ref=/foo/bar"),
            ("X{#var}", "X#value"),
            ("X{#hello}", "X#Hello%20World!"),
            ("map?{x,y}", "map?1024,768"),
            ("{x,hello,y}", "1024,Hello%20World%21,768"),
            ("{+x,hello,y}", "1024,Hello%20World!,768"),
            ("{+path,x}/here", "/foo/bar,1024/here"),
            ("{#x,hello,y}", "#1024,Hello%20World!,768"),
            ("{#path,x}/here", "#/foo/bar,1024/here"),
            ("X{.var}", "X.value"),
            ("X{.x,y}", "X.1024.768"),
            ("{/var}", "/value"),
            ("{/var,x}/here", "/value/1024/here"),
            ("{;x,y}", ";x=1024;y=768"),
            ("{;x,y,empty}", ";x=1024;y=768;empty"),
            ("{?x,y}", "?x=1024&y=768"),
            ("{?x,y,empty}", "?x=1024&y=768&empty="),
            ("?fixed=yes{&x}", "?fixed=yes&x=1024"),
            ("{&x,y,empty}", "&x=1024&y=768&empty="),
            ("{var:3}", "val"),
            ("{var:30}", "value"),
            ("{list}", "red,green,blue"),
            ("{list*}", "red,green,blue"),
            ("{keys}", "semi,%3B,dot,.,comma,%2C"),
            ("{keys*}", "semi=%3B,dot=.,comma=%2C"),
            ("{+path:6}/here", "/foo/b/here"),
            ("{+list}", "red,green,blue"),
            ("{+list*}", "red,green,blue"),
            ("{+keys}", "semi,;,dot,.,comma,,"),
            ("{+keys*}", "semi=;,dot=.,comma=,"),
            ("{#path:6}/here", "#/foo/b/here"),
            ("{#list}", "#red,green,blue"),
            ("{#keys*}", "#semi=;,dot=.,comma=,"),
            ("X{.var:3}", "X.val"),
            ("X{.list}", "X.red,green,blue"),
            ("X{.list*}", "X.red.green.blue"),
            ("X{.keys}", "X.semi,%3B,dot,.,comma,%2C"),
            ("X{.keys*}", "X.semi=%3B.dot=..comma=%2C"),
            ("{/var:1,var}", "/v/value"),
            ("{/list}", "/red,green,blue"),
            ("{/list*}", "/red/green/blue"),
            ("{/list*,path:4}", "/red/green/blue/%2Ffoo"),
            ("{/keys}", "/semi,%3B,dot,.,comma,%2C"),
            ("{/keys*}", "/semi=%3B/dot=./comma=%2C"),
            ("{;hello:5}", ";hello=Hello"),
            ("{;list}", ";list=red,green,blue"),
            ("{;list*}", ";list=red;list=green;list=blue"),
            ("{;keys}", ";keys=semi,%3B,dot,.,comma,%2C"),
            ("{;keys*}", ";semi=%3B;dot=.;comma=%2C"),
            ("{?var:3}", "?var=val"),
            ("{?list}", "?list=red,green,blue"),
            ("{?list*}", "?list=red&list=green&list=blue"),
            ("{?keys}", "?keys=semi,%3B,dot,.,comma,%2C"),
            ("{?keys*}", "?semi=%3B&dot=.&comma=%2C"),
            ("{&var:3}", "&var=val"),
            ("{&list*}", "&list=red&list=green&list=blue"),
            ("{&keys*}", "&semi=%3B&dot=.&comma=%2C"),
            ("{?x,y}", "?y=768"),
            ("{?x,y}", ""),
        ];
        for (template, expansion) in cases {
            assert!(matches(template, expansion), "`{template}` should match `{expansion}`");
        }
    }

    #[test]
    fn what_is_not_an_expansion_does_not_match() {
        let cases = [
            ("{var:3}", "value"),
            ("{?x,y}", "?z=1"),
            ("{?x,y}", "?y=1&x=2"),
            ("X{.var}", "Xvalue"),
            ("{/var}", "value"),
            ("{var}", "a b"),
            ("https://example.com/users/{id}/", "https://example.com/users/1"),
        ];
        for (template, topic) in cases {
            assert!(!matches(template, topic), "`{template}` should not match `{topic}`");
        }
    }

    #[test]
    fn malformed_templates_are_refused_with_a_reason() {
        assert!(Selector::parse("https://example.com/id}").is_ok_and(|s| s.is_exact()), "no `{{`: an exact topic");
        for (text, reason) in [
            ("https://example.com/{id", "no closing"),
            ("https://example.com/id}", "without its"),
            ("{=x}", "reserved"),
            ("{a b}", "not a variable name"),
            ("{x:0}", "prefix length"),
            ("{}", "not a variable name"),
        ] {
            match Selector::template(text) {
                Err(SelectorError::Template { reason: got, .. }) => {
                    assert!(got.contains(reason), "`{text}`: `{got}` should say `{reason}`");
                }
                other => panic!("`{text}` should be refused, got {other:?}"),
            }
        }
    }

    #[test]
    fn templates_from_the_cache_match_as_freshly_compiled_ones() {
        // More distinct templates than the cache keeps, then the first again: each answers
        // for its own pattern, whether it came from the cache or was compiled again.
        for i in 0..super::COMPILED_MAX + 10 {
            let template = format!("https://example.com/{i}/{{id}}");
            let selector = Selector::parse(&template).expect("a valid template");
            assert!(selector.matches(&format!("https://example.com/{i}/7")));
            assert!(!selector.matches(&format!("https://example.com/{}/7", i + 1)));
        }
        let again = Selector::parse("https://example.com/0/{id}").expect("a valid template");
        assert!(again.matches("https://example.com/0/x") && !again.matches("https://example.com/1/x"));
        assert!(Selector::parse("https://example.com/{id").is_err(), "an error is not cached as a pattern");
        assert!(Selector::parse("https://example.com/{id").is_err());
    }
}
