//! containerd's filter syntax (`github.com/containerd/containerd/filters`): the `filters` strings
//! of the List and Subscribe requests.
//!
//! A filter is a comma-separated list of selectors, all of which must match (AND):
//!
//! ```text
//! filter    := selector ("," selector)*
//! selector  := fieldpath [operator value]
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_-]+
//! operator  := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+          (after "~=" also /regexp/ or |regexp|)
//! quoted    := a Go double-quoted string literal
//! ```
//!
//! A request carries a list of filters, any of which may match (OR); an empty list matches
//! everything, as does the empty filter string. Whitespace is allowed between any two tokens.
//!
//! What an operator means for an object, given the value the [`Adaptor`] returns for the field path
//! (`None` for an absent field, which counts as the empty string when compared):
//!
//! * no operator: the field is present;
//! * `==`: the field is present and equal to the value;
//! * `!=`: the field (or `""` when absent) differs from the value;
//! * `~=`: the regular expression (Rust `regex` syntax, unanchored) matches the field (or `""`).
//!
//! Quoted strings take Go's escapes (`\" \\ \n \t \xNN \NNN \uNNNN \UNNNNNNNN` ...). Between the
//! `/` or `|` delimiters of a regular expression the delimiter is escaped as `\/` (`\|`), Go's
//! escapes are decoded as in containerd, and any other backslash sequence (`\.`, `\d`, `\p{L}`) is
//! handed to the regular expression unchanged.

use std::collections::BTreeMap;

use regex::{Regex, RegexBuilder};

use crate::error::{Error, Result};
use crate::store::records::{Container, Sandbox};

/// Largest compiled size of a `~=` regular expression, so a request cannot make the daemon build
/// a huge automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Something a filter can look at: returns the value at a field path, `None` if absent.
pub trait Adaptor {
    /// The value of the field at `path` (never empty: `labels.foo` is `["labels", "foo"]`), or
    /// `None` when the object has no such field.
    fn field(&self, path: &[String]) -> Option<String>;
}

/// An [`Adaptor`] made of a closure, like containerd's `AdapterFunc`.
pub struct FnAdaptor<F>(pub F);

impl<F: Fn(&[String]) -> Option<String>> Adaptor for FnAdaptor<F> {
    fn field(&self, path: &[String]) -> Option<String> {
        (self.0)(path)
    }
}

/// Looks up a map field: the rest of the path joined with `.` is the key, so `labels.a.b` asks for
/// the label `a.b` (containerd's `checkMap`).
pub fn map_field(path: &[String], map: &BTreeMap<String, String>) -> Option<String> {
    map.get(&path.join(".")).cloned()
}

/// A plain string field: present when not empty.
fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

impl Adaptor for Container {
    /// `id`, `image`, `runtime.name` (or `runtime`), `snapshotter`, `snapshotkey` (or
    /// `snapshot_key`), `sandbox` and `labels.<key>`.
    fn field(&self, path: &[String]) -> Option<String> {
        let (first, rest) = path.split_first()?;
        let runtime = || self.runtime.as_ref().and_then(|r| non_empty(&r.name));
        match (first.as_str(), rest) {
            ("id", []) => non_empty(&self.id),
            ("image", []) => non_empty(&self.image),
            ("runtime", []) => runtime(),
            ("runtime", [name]) if name == "name" => runtime(),
            ("snapshotter", []) => non_empty(&self.snapshotter),
            ("snapshotkey" | "snapshot_key", []) => non_empty(&self.snapshot_key),
            ("sandbox", []) => non_empty(&self.sandbox),
            ("labels", key) => map_field(key, &self.labels),
            _ => None,
        }
    }
}

impl Adaptor for Sandbox {
    /// `id`, `sandboxer`, `runtime.name` (or `runtime`) and `labels.<key>`.
    fn field(&self, path: &[String]) -> Option<String> {
        let (first, rest) = path.split_first()?;
        let runtime = || self.runtime.as_ref().and_then(|r| non_empty(&r.name));
        match (first.as_str(), rest) {
            ("id", []) => non_empty(&self.id),
            ("sandboxer", []) => non_empty(&self.sandboxer),
            ("runtime", []) => runtime(),
            ("runtime", [name]) if name == "name" => runtime(),
            ("labels", key) => map_field(key, &self.labels),
            _ => None,
        }
    }
}

/// One filter string: all of its selectors must match.
#[derive(Debug, Clone)]
pub struct Filter {
    selectors: Vec<Selector>,
}

/// A request's list of filters: any of them may match; no filters match everything.
#[derive(Debug, Clone, Default)]
pub struct FilterSet {
    filters: Vec<Filter>,
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Selector {
    fn matches(&self, a: &dyn Adaptor) -> bool {
        let value = a.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(want) => value.as_deref() == Some(want.as_str()),
            Op::NotEqual(want) => value.as_deref().unwrap_or("") != want,
            Op::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

impl Filter {
    /// Parses one filter string; the empty string matches everything.
    pub fn parse(s: &str) -> Result<Filter> {
        if s.is_empty() {
            return Ok(Filter { selectors: Vec::new() });
        }
        let mut p = Parser { input: s, pos: 0 };
        p.selectors().map(|selectors| Filter { selectors }).map_err(|e| {
            let detail = e.detail.map(|d| format!(": {d}")).unwrap_or_default();
            Error::InvalidArgument(format!("invalid filter {s:?}: {} at position {}{detail}", e.msg, e.pos))
        })
    }

    /// Whether every selector matches the object.
    pub fn matches(&self, a: &dyn Adaptor) -> bool {
        self.selectors.iter().all(|s| s.matches(a))
    }
}

impl FilterSet {
    /// Parses a request's filters; the first bad one is the error.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<FilterSet> {
        let filters = filters.iter().map(|f| Filter::parse(f.as_ref())).collect::<Result<_>>()?;
        Ok(FilterSet { filters })
    }

    /// Whether any filter matches the object, or there are no filters.
    pub fn matches(&self, a: &dyn Adaptor) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| f.matches(a))
    }

    /// Whether no filters were given (and so everything matches).
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

/// A syntax error at a byte position of the filter string.
struct ParseError {
    pos: usize,
    msg: String,
    detail: Option<String>,
}

type PResult<T> = std::result::Result<T, ParseError>;

fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

/// A decoded escape sequence: a raw byte (`\xNN`, `\NNN`, `\n` ...) or a character (`\uNNNN`).
enum Escaped {
    Byte(u8),
    Char(char),
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn error(&self, pos: usize, msg: impl Into<String>) -> ParseError {
        ParseError { pos, msg: msg.into(), detail: None }
    }

    fn selectors(&mut self) -> PResult<Vec<Selector>> {
        let mut selectors = vec![self.selector()?];
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Ok(selectors),
                Some(',') => {
                    self.bump();
                    selectors.push(self.selector()?);
                }
                Some(c) => return Err(self.error(self.pos, format!("unexpected character {c:?}"))),
            }
        }
    }

    fn selector(&mut self) -> PResult<Selector> {
        let path = self.fieldpath()?;
        self.skip_ws();
        if matches!(self.peek(), None | Some(',')) {
            return Ok(Selector { path, op: Op::Present });
        }
        let start = self.pos;
        while matches!(self.peek(), Some('=' | '!' | '~')) {
            self.bump();
        }
        let op = match &self.input[start..self.pos] {
            "==" => Op::Equal(self.value(false)?),
            "!=" => Op::NotEqual(self.value(false)?),
            "~=" => {
                self.skip_ws();
                let at = self.pos;
                let pattern = self.value(true)?;
                let re = RegexBuilder::new(&pattern).size_limit(REGEX_SIZE_LIMIT).build().map_err(|e| ParseError {
                    pos: at,
                    msg: format!("invalid regular expression {pattern:?}"),
                    detail: Some(regex_reason(&e)),
                })?;
                Op::Matches(re)
            }
            "" => return Err(self.error(start, "expected operator (==, != or ~=)")),
            other => return Err(self.error(start, format!("unsupported operator {other:?}"))),
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> PResult<Vec<String>> {
        let mut path = vec![self.field()?];
        loop {
            self.skip_ws();
            if self.peek() != Some('.') {
                return Ok(path);
            }
            self.bump();
            path.push(self.field()?);
        }
    }

    fn field(&mut self) -> PResult<String> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            Some('"') => self.quoted(false),
            Some(c) if is_field_char(c) => {
                while self.peek().is_some_and(is_field_char) {
                    self.bump();
                }
                Ok(self.input[start..self.pos].to_owned())
            }
            _ => Err(self.error(start, "expected field")),
        }
    }

    /// A value; `regex` (after `~=`) also allows `/.../` and `|...|` delimiters.
    fn value(&mut self, regex: bool) -> PResult<String> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            Some('"') => self.quoted(false),
            Some('/' | '|') if regex => self.quoted(true),
            Some(c) if is_value_char(c) => {
                while self.peek().is_some_and(is_value_char) {
                    self.bump();
                }
                Ok(self.input[start..self.pos].to_owned())
            }
            _ => Err(self.error(start, "expected value")),
        }
    }

    /// A quoted string starting at the current position (the opening delimiter). With `regex`,
    /// backslash sequences Go does not know are kept for the regular expression instead of being
    /// an error.
    fn quoted(&mut self, regex: bool) -> PResult<String> {
        let start = self.pos;
        let Some(quote) = self.bump() else {
            return Err(self.error(start, "expected quoted string"));
        };
        let what = if regex { "regular expression" } else { "quoted string" };
        let mut out = Vec::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None | Some('\n') => return Err(self.error(start, format!("unterminated {what}"))),
                Some(c) if c == quote => break,
                Some('\\') => match self.escape(quote) {
                    Some(Escaped::Byte(b)) => out.push(b),
                    Some(Escaped::Char(c)) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    None if regex => out.push(b'\\'),
                    None => return Err(self.error(at, "invalid escape sequence")),
                },
                Some(c) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        String::from_utf8(out).map_err(|_| self.error(start, format!("{what} is not valid utf-8")))
    }

    /// Decodes the escape after a backslash as Go's `strconv.Unquote` does, consuming it; `None`
    /// (consuming nothing) when it is not a valid Go escape in a string quoted by `quote`.
    fn escape(&mut self, quote: char) -> Option<Escaped> {
        let rest = &self.input.as_bytes()[self.pos..];
        let digits = |n: usize, radix: u32| -> Option<u32> {
            let d = rest.get(1..=n)?;
            d.iter().try_fold(0u32, |v, &b| Some(v * radix + (b as char).to_digit(radix)?))
        };
        let (len, escaped) = match *rest.first()? {
            b'a' => (1, Escaped::Byte(0x07)),
            b'b' => (1, Escaped::Byte(0x08)),
            b'f' => (1, Escaped::Byte(0x0c)),
            b'n' => (1, Escaped::Byte(b'\n')),
            b'r' => (1, Escaped::Byte(b'\r')),
            b't' => (1, Escaped::Byte(b'\t')),
            b'v' => (1, Escaped::Byte(0x0b)),
            b'\\' => (1, Escaped::Byte(b'\\')),
            c if c as char == quote => (1, Escaped::Byte(c)),
            c @ b'0'..=b'7' => {
                let v = (c - b'0') as u32 * 64 + digits(2, 8)?;
                (3, Escaped::Byte(u8::try_from(v).ok()?))
            }
            b'x' => (3, Escaped::Byte(digits(2, 16)? as u8)),
            b'u' => (5, Escaped::Char(char::from_u32(digits(4, 16)?)?)),
            b'U' => (9, Escaped::Char(char::from_u32(digits(8, 16)?)?)),
            _ => return None,
        };
        self.pos += len;
        Some(escaped)
    }
}

/// The one-line reason of a regex error (a syntax error's display spans several lines).
fn regex_reason(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(s) => {
            s.lines().rev().find_map(|l| l.trim().strip_prefix("error: ")).unwrap_or(s.trim()).to_owned()
        }
        regex::Error::CompiledTooBig(limit) => {
            format!("compiled size exceeds the limit of {limit} bytes")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::Runtime;

    /// containerd's filter_test.go corpus: name, other, labels.
    struct Entry {
        name: &'static str,
        other: &'static str,
        labels: BTreeMap<String, String>,
    }

    impl Adaptor for Entry {
        fn field(&self, path: &[String]) -> Option<String> {
            match path[0].as_str() {
                "name" => non_empty(self.name),
                "other" => non_empty(self.other),
                "labels" => map_field(&path[1..], &self.labels),
                _ => None,
            }
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn corpus() -> Vec<Entry> {
        let e = |name, other, l: &[(&str, &str)]| Entry { name, other, labels: labels(l) };
        vec![
            e("foo", "", &[("foo", "true")]),
            e("bar", "", &[]),
            e("foo", "", &[("foo", "present"), ("more complex label", "present")]),
            e("bar", "", &[("bar", "true")]),
            e("fooer", "", &[("more complex label with \\ and \"", "present")]),
            e("fooer", "", &[("more complex label with \\ and \".post", "present")]),
            e("baz", "too complex, yo", &[]),
            e("bazo", "abc", &[]),
            e("compound", "", &[("foo", "omg_asdf.asdf-qwer")]),
        ]
    }

    /// Indices of the corpus entries the filter matches.
    fn select(filter: &str) -> Vec<usize> {
        let f = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter:?}: {e}"));
        corpus().iter().enumerate().filter(|(_, e)| f.matches(*e)).map(|(i, _)| i).collect()
    }

    fn parse_err(filter: &str) -> String {
        match Filter::parse(filter) {
            Err(Error::InvalidArgument(m)) => m,
            Err(other) => panic!("{filter:?}: wrong category {other:?}"),
            Ok(f) => panic!("{filter:?} parsed: {f:?}"),
        }
    }

    #[test]
    fn containerd_table() {
        let all: Vec<usize> = (0..9).collect();
        let cases: &[(&str, &[usize])] = &[
            ("", &all),
            ("name", &all),
            ("labels.foo", &[0, 2, 8]),
            ("labels.foo,name", &[0, 2, 8]),
            ("labels.foo==true", &[0]),
            ("labels.foo==omg_asdf.asdf-qwer", &[8]),
            ("name==bar", &[1, 3]),
            ("name!=bar", &[0, 2, 4, 5, 6, 7, 8]),
            ("name==bar,labels.bar", &[3]),
            ("other==\"too complex, yo\"", &[6]),
            ("other~=[abc]+,name!=foo", &[6, 7]),
            ("other~=/[abc]+/,name!=foo", &[6, 7]),
            ("other~=/[abc]{1,2}/,name!=foo", &[6, 7]),
            ("other~=|[abc]{1,2}|,name!=foo", &[6, 7]),
            ("other~=/[abc]{0,1}\"\\//,name!=foo", &[]),
            ("name==bar,labels.bar==true", &[3]),
            ("name==bar,labels.bar==wrong", &[]),
            (r#"name==foo,labels."more complex label""#, &[2]),
            (r#"labels."more complex label with \\ and \""==present"#, &[4]),
            (r#"labels."more complex label with \\ and \"".post==present"#, &[5]),
        ];
        for (filter, want) in cases {
            assert_eq!(select(filter), *want, "{filter:?}");
        }
    }

    #[test]
    fn containerd_errors() {
        assert_eq!(
            parse_err("labels.|foo|==omg_asdf.asdf-qwer"),
            r#"invalid filter "labels.|foo|==omg_asdf.asdf-qwer": expected field at position 7"#
        );
        assert_eq!(
            parse_err(r#"labels.?"x"==present"#),
            r#"invalid filter "labels.?\"x\"==present": expected field at position 7"#
        );
        assert_eq!(parse_err("name==foo,"), r#"invalid filter "name==foo,": expected field at position 10"#);
        assert_eq!(parse_err("labels."), r#"invalid filter "labels.": expected field at position 7"#);
        assert_eq!(
            parse_err("image~=,id?=?fbaq"),
            r#"invalid filter "image~=,id?=?fbaq": expected value at position 7"#
        );
    }

    fn container() -> Container {
        Container {
            id: "foo".into(),
            labels: labels(&[("foo", "bar"), ("com.example.key", "x"), ("empty", ""), ("desc", "hello \"world\"")]),
            image: "docker.io/library/alpine:latest".into(),
            runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
            snapshotter: "overlayfs".into(),
            snapshot_key: "foo-snap".into(),
            sandbox: String::new(),
            ..Default::default()
        }
    }

    fn matches(filter: &str, c: &Container) -> bool {
        Filter::parse(filter).unwrap_or_else(|e| panic!("{filter:?}: {e}")).matches(c)
    }

    #[test]
    fn container_fields() {
        let c = container();
        for filter in [
            "id==foo",
            "labels.foo==bar",
            r#"labels."com.example.key"==x"#,
            "labels.com.example.key==x",
            r#"labels.desc=="hello \"world\"""#,
            r#"labels."com.example.key"=="x""#,
            r"image~=^docker\.io/",
            "image~=/^docker\\.io\\/library/",
            r"image~=/^docker\.io\/library/",
            "image==docker.io/library/alpine:latest",
            "runtime.name==io.containerd.runc.v2",
            "runtime==io.containerd.runc.v2",
            "snapshotter==overlayfs",
            "snapshotkey==foo-snap",
            "snapshot_key==foo-snap",
            "id!=bar",
            "labels.missing!=x",
            "sandbox!=sb",
            "labels.foo",
            "labels.empty",
            "labels.empty==\"\"",
            "id==foo,labels.foo==bar,runtime.name~=runc",
            "id",
            "image",
            "runtime.name",
            "labels.missing~=^$",
        ] {
            assert!(matches(filter, &c), "{filter:?} should match");
        }
        for filter in [
            "id==bar",
            "id!=foo",
            "labels.foo==baz",
            "labels.missing",
            "labels.missing==\"\"",
            "labels.foo!=bar",
            "image~=^quay\\.io/",
            "runtime.name==io.containerd.runsc.v1",
            "runtime.other",
            "sandbox",
            "sandbox==\"\"",
            "id==foo,labels.foo==baz",
            "nosuchfield",
            "nosuchfield==x",
            "id.sub",
            "labels",
        ] {
            assert!(!matches(filter, &c), "{filter:?} should not match");
        }
        let no_runtime = Container { runtime: None, ..container() };
        assert!(!matches("runtime.name", &no_runtime));
        assert!(matches("runtime.name!=io.containerd.runc.v2", &no_runtime));
    }

    #[test]
    fn sandbox_fields() {
        let s = Sandbox {
            id: "sb1".into(),
            runtime: Some(Runtime { name: "io.containerd.kata.v2".into(), options: None }),
            labels: labels(&[("io.kubernetes.pod.name", "web")]),
            sandboxer: "shim".into(),
            ..Default::default()
        };
        let m = |f: &str| Filter::parse(f).unwrap().matches(&s);
        assert!(m("id==sb1"));
        assert!(m("sandboxer==shim"));
        assert!(m("runtime.name==io.containerd.kata.v2"));
        assert!(m("runtime~=kata"));
        assert!(m("labels.io.kubernetes.pod.name==web"));
        assert!(m(r#"labels."io.kubernetes.pod.name"==web"#));
        assert!(!m("sandboxer==podsandbox"));
        assert!(!m("image"));
    }

    #[test]
    fn regex_delimiters() {
        let c = Container { image: "a,b".into(), ..container() };
        assert!(matches("image~=/^a,b$/", &c));
        assert!(matches("image~=|^a,b$|", &c));
        assert!(matches(r#"image~="^a,b$""#, &c));
        assert!(matches(r"image~=/^\w,\w$/", &c));
        // Without delimiters the value stops at the comma, and `b$` is no selector.
        assert_eq!(
            parse_err("image~=^a,b$"),
            r#"invalid filter "image~=^a,b$": expected operator (==, != or ~=) at position 11"#
        );
        // A slash starts a delimited regex only after ~=; after == it is part of a plain value.
        let c = Container { snapshot_key: "/a/b".into(), ..container() };
        assert!(matches("snapshotkey==/a/b", &c));
        assert!(matches(r"snapshotkey~=/^\/a\/b$/", &c));
        assert!(matches("snapshotkey~=^/a/b$", &c));
    }

    #[test]
    fn or_across_filters() {
        let c = container();
        let set = |fs: &[&str]| FilterSet::parse_all(fs).unwrap();
        assert!(set(&[]).matches(&c));
        assert!(set(&[]).is_empty());
        assert!(FilterSet::default().matches(&c));
        assert!(set(&["id==bar", "id==foo"]).matches(&c));
        assert!(set(&["id==foo", "id==bar"]).matches(&c));
        assert!(!set(&["id==bar", "labels.foo==baz"]).matches(&c));
        assert!(!set(&["id==bar"]).is_empty());
        assert!(set(&[""]).matches(&c));
        let owned = vec!["id==bar".to_string(), "labels.foo".to_string()];
        assert!(FilterSet::parse_all(&owned).unwrap().matches(&c));
        let err = FilterSet::parse_all(&["id==foo", "id=="]).unwrap_err();
        assert_eq!(err, Error::InvalidArgument(r#"invalid filter "id==": expected value at position 4"#.into()));
    }

    #[test]
    fn whitespace() {
        let c = container();
        for filter in [
            " id==foo",
            "id == foo",
            "id==foo ",
            "id==foo , labels.foo == bar",
            "\tlabels . foo\t,id",
            "labels.foo ,id",
            r#"labels . "com.example.key" == "x" "#,
            "image ~= /^docker/ ",
        ] {
            assert!(matches(filter, &c), "{filter:?} should match");
        }
        assert_eq!(parse_err(" "), r#"invalid filter " ": expected field at position 1"#);
        assert_eq!(parse_err("id==a b"), r#"invalid filter "id==a b": unexpected character 'b' at position 6"#);
        assert_eq!(
            parse_err("labels.foo bar"),
            r#"invalid filter "labels.foo bar": expected operator (==, != or ~=) at position 11"#
        );
    }

    #[test]
    fn quoting() {
        let f = |s: &str| {
            let filter = Filter::parse(&format!("labels.k=={s}")).unwrap_or_else(|e| panic!("{s}: {e}"));
            match &filter.selectors[0].op {
                Op::Equal(v) => v.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(f(r#""a b""#), "a b");
        assert_eq!(f(r#""a \"b\"""#), "a \"b\"");
        assert_eq!(f(r#""\\ \n \t \a \b \f \r \v""#), "\\ \n \t \x07 \x08 \x0c \r \x0b");
        assert_eq!(f(r#""\x41\101\u00e9\U0001F600""#), "AAé😀");
        assert_eq!(f(r#""\xc3\xa9""#), "é");
        assert_eq!(f(r#""""#), "");
        assert_eq!(f(r#""a,b""#), "a,b");
        assert_eq!(f("'a'"), "'a'");
        assert_eq!(f(r#"a"b"#), "a\"b");
        assert_eq!(f("é=x"), "é=x");
        assert_eq!(f("/a/b"), "/a/b");
        for (bad, pos) in [
            // A bad escape is reported at its backslash, the rest at the opening quote.
            (r#""\q""#, 11),
            (r#""\'""#, 11),
            (r#""\x4""#, 11),
            (r#""\400""#, 11),
            (r#""\ud800""#, 11),
            (r#""\xff""#, 10),
            ("\"a\nb\"", 10),
            (r#""abc"#, 10),
            (r#""abc\""#, 10),
        ] {
            let err = parse_err(&format!("labels.k=={bad}"));
            assert!(err.ends_with(&format!("at position {pos}")), "{bad}: {err}");
        }
        assert!(parse_err(r#"labels.k=="\xff""#).contains("quoted string is not valid utf-8"));
        assert!(parse_err(r#"labels.k=="\q""#).contains("invalid escape sequence"));
        assert!(parse_err("id~=/abc").contains("unterminated regular expression at position 4"));
    }

    #[test]
    fn field_names() {
        let c = container();
        let e = |name: &'static str| Entry { name: "n", other: "", labels: labels(&[(name, "v")]) };
        let m = |f: &str, entry: &Entry| Filter::parse(f).unwrap().matches(entry);
        assert!(m("labels.app-name==v", &e("app-name")));
        assert!(m("labels.0==v", &e("0")));
        assert!(m("labels._x==v", &e("_x")));
        assert!(m(r#"labels."a b"==v"#, &e("a b")));
        assert!(m(r#"labels."a"."b"==v"#, &e("a.b")));
        assert!(m(r#"labels."\u00e9"==v"#, &e("é")));
        assert!(m(r#"labels.""==v"#, &e("")));
        assert!(matches("labels.foo==bar", &c));
    }

    #[test]
    fn errors() {
        let cases = [
            ("id==", r#"invalid filter "id==": expected value at position 4"#),
            ("==foo", r#"invalid filter "==foo": expected field at position 0"#),
            ("id=foo", r#"invalid filter "id=foo": unsupported operator "=" at position 2"#),
            ("id===foo", r#"invalid filter "id===foo": unsupported operator "===" at position 2"#),
            ("id<foo", r#"invalid filter "id<foo": expected operator (==, != or ~=) at position 2"#),
            (
                r#"labels."unterminated"#,
                r#"invalid filter "labels.\"unterminated": unterminated quoted string at position 7"#,
            ),
            ("id==a,", r#"invalid filter "id==a,": expected field at position 6"#),
            ("id==a,,", r#"invalid filter "id==a,,": expected field at position 6"#),
            (",id==a", r#"invalid filter ",id==a": expected field at position 0"#),
            ("id==,", r#"invalid filter "id==,": expected value at position 4"#),
            ("id.==a", r#"invalid filter "id.==a": expected field at position 3"#),
            ("id==\"a\"b", r#"invalid filter "id==\"a\"b": unexpected character 'b' at position 7"#),
            ("id~=(", r#"invalid filter "id~=(": invalid regular expression "(" at position 4: unclosed group"#),
            ("id~=/a(/", r#"invalid filter "id~=/a(/": invalid regular expression "a(" at position 4: unclosed group"#),
        ];
        for (filter, want) in cases {
            assert_eq!(parse_err(filter), want, "{filter:?}");
        }
        let big = format!("id~=a{{{}}}{{{}}}", 1000, 1000);
        assert!(parse_err(&big).contains("invalid regular expression"), "{}", parse_err(&big));
    }

    #[test]
    fn map_field_joins_path() {
        let m = labels(&[("a.b", "1"), ("a", "2"), ("", "3")]);
        let p = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(map_field(&p(&["a", "b"]), &m).as_deref(), Some("1"));
        assert_eq!(map_field(&p(&["a"]), &m).as_deref(), Some("2"));
        assert_eq!(map_field(&p(&[]), &m).as_deref(), Some("3"));
        assert_eq!(map_field(&p(&["b"]), &m), None);
    }

    #[test]
    fn fn_adaptor() {
        let a = FnAdaptor(|p: &[String]| (p == ["type"]).then(|| "io.containerd.snapshotter.v1".to_string()));
        assert!(Filter::parse("type==io.containerd.snapshotter.v1").unwrap().matches(&a));
        assert!(!Filter::parse("id").unwrap().matches(&a));
    }
}
