//! Credential scrubbing for the shim's responses. The shim injects a durable credential
//! (an `Authorization`-style header value) into requests upstream; an upstream may echo
//! it back in a response header or body, and the agent must never see it. This module
//! owns what counts as "the credential" and removes every occurrence of it from response
//! bytes and header values. It scrubs whole buffers ([`Scrubber::scrub`], for a body
//! the shim reads whole) and streams ([`StreamScrubber`], for a body relayed as it
//! arrives). A stream scrubber holds back what could still be the start of a match:
//! from the earliest position whose rest is a prefix of some spelling of some text
//! (a second regex, anchored at the end, finds it), never more than
//! [`Scrubber::window`] bytes, the longest a match can be. So it decides every match
//! exactly as the whole-buffer scrub would, wherever the chunk boundaries fall, and
//! releases no byte of a possible match early, while an event that cannot begin one
//! (an SSE event ends in a blank line) leaves at once.
//!
//! The **texts** of a credential are the header value, its credential part after the
//! auth scheme, and for `Basic` the decoded `user:pass` and the password; each as is and
//! in base64 (standard and URL-safe, padded, unpadded, and embedded in a longer base64
//! blob at any byte alignment). Every **character** of a text may then appear in the
//! response independently in any of its spellings, in any mix: raw, percent-encoded
//! (either hex case), form-encoded (`+` for a space), JSON-escaped (`\uXXXX` in either
//! case, `\/`, `\"`, `\\`), or as an HTML/XML character reference (decimal or hex,
//! up to [`MAX_REFERENCE_ZEROS`] leading zeros, with or without `;`, and the named
//! references of ASCII punctuation). A numeric reference with more leading zeros is
//! not scrubbed but makes the answer unscrubbable ([`Scrubber::sees_whole`]): the
//! bound is what gives every match, and so a stream's held-back tail, a finite length.
//! One byte regex matches all of it ([`spelling`] builds each character's alternatives).
//! Not covered, honestly: other encodings (hex, double percent-encoding), compressed
//! bodies (refused instead), credentials echoed with changed case or only in part, and
//! derived texts shorter than 8 bytes (too likely to destroy innocent bytes).

use std::collections::BTreeSet;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
};
use bytes::Bytes;
use http::HeaderValue;

/// What replaces each occurrence.
pub const REDACTED: &str = "[redacted]";

/// Derived needles shorter than this are dropped: a short encoded fragment would match
/// innocent response bytes far more often than it would catch a leak.
const MIN_DERIVED_LEN: usize = 8;

/// A Basic password shorter than this is not treated as a secret form of its own.
const MIN_PASSWORD_LEN: usize = 6;

/// Leading zeros a numeric character reference (`&#0065;`, `&#x0041;`) may carry and
/// still be scrubbed. More are legal HTML but no serializer writes them; an answer that
/// holds such a reference is refused instead ([`Scrubber::sees_whole`]), which keeps
/// every match, and so the tail a [`StreamScrubber`] holds back, bounded.
pub const MAX_REFERENCE_ZEROS: usize = 16;

/// Removes one credential, in every encoding listed in the module doc, from responses.
pub struct Scrubber {
    /// The texts as they are: enough for a body without any escape introducer.
    matcher: Matcher,
    /// Every spelling of the texts; None if it could not be built, and then a haystack
    /// that could hold a spelling is not scrubbed but refused ([`Scrubber::sees_whole`]).
    spellings: Option<regex::bytes::Regex>,
    needle_count: usize,
    /// The longest any match can be, in bytes (at least 1).
    window: usize,
    /// Every prefix of every spelling, anchored at the end of the haystack: where a
    /// match could begin that more bytes might complete ([`Scrubber::hold_from`]).
    /// None when it could not be built; a stream then holds back a whole window. Built
    /// on first use: only streams need it, and it costs more than the rest.
    prefixes: std::sync::OnceLock<Option<regex::bytes::Regex>>,
    /// The texts, for building `prefixes`.
    texts: Vec<Vec<u8>>,
}

/// The automaton is the normal case; the fallback exists only so that an absurd
/// credential cannot make construction panic, and they still fail closed on the plain
/// value.
enum Matcher {
    Automaton(AhoCorasick),
    Plain(Vec<u8>),
}

impl Scrubber {
    /// Builds the scrubber for one credential header value.
    pub fn new(secret: &str) -> Scrubber {
        let texts = texts(secret);
        let matcher = match build_automaton(&texts) {
            Some(ac) => Matcher::Automaton(ac),
            // Losing the derived texts is better than losing the scrubber: keep at
            // least the value exactly as the shim sends it.
            None => Matcher::Plain(secret.as_bytes().to_vec()),
        };
        let spellings = spellings_regex(&texts);
        if spellings.is_none() && !texts.is_empty() {
            tracing::error!(
                texts = texts.len(),
                "the credential's spellings cannot be matched: answers that hold an escape will be refused"
            );
        }
        let window = texts
            .iter()
            .map(|t| text_max_len(t))
            .max()
            .unwrap_or(0)
            .max(secret.len())
            .max(1);
        Scrubber {
            matcher,
            spellings,
            needle_count: texts.len(),
            window,
            prefixes: std::sync::OnceLock::new(),
            texts,
        }
    }

    /// The longest a match can be, in bytes: the longest text, each character in its
    /// longest spelling. A [`StreamScrubber`] holds back one byte less than this.
    pub fn window(&self) -> usize {
        self.window
    }

    /// `input` with every occurrence of any needle replaced by [`REDACTED`], and the
    /// number of input bytes removed (sum of the lengths of the matches). Returns the
    /// input unchanged (no copy: `Bytes` clone) when nothing matched.
    pub fn scrub(&self, input: Bytes) -> (Bytes, usize) {
        match self.replace(&input) {
            Some((out, removed)) => (Bytes::from(out), removed),
            None => (input, 0),
        }
    }

    /// A header value with every occurrence replaced, or None when it holds none. Also
    /// returns bytes removed.
    pub fn scrub_header(&self, value: &HeaderValue) -> Option<(HeaderValue, usize)> {
        let (out, removed) = self.replace(value.as_bytes())?;
        // Every byte kept came from a valid header value and REDACTED is visible ASCII,
        // so this cannot fail; if it somehow did, dropping the whole value fails closed.
        let mut scrubbed = match HeaderValue::from_bytes(&out) {
            Ok(v) => (v, removed),
            Err(_) => (HeaderValue::from_static(REDACTED), value.len()),
        };
        scrubbed.0.set_sensitive(value.is_sensitive());
        Some(scrubbed)
    }

    /// Whether [`scrub`](Self::scrub) can find every spelling in `haystack`: false when
    /// the spellings regex could not be built and `haystack` holds an escape
    /// introducer, or when `haystack` holds a numeric character reference with more
    /// than [`MAX_REFERENCE_ZEROS`] leading zeros. The shim then refuses the answer
    /// rather than pass it half-scrubbed.
    pub fn sees_whole(&self, haystack: &[u8]) -> bool {
        (self.spellings.is_some() || !has_escape(haystack)) && !overpadded(haystack)
    }

    /// Where a stream must start holding back in `pending`: the earliest position from
    /// which the rest could be the start of a match (or a whole match that more bytes
    /// could lengthen); `pending.len()` when there is none. Everything before it can be
    /// scrubbed and released now: each match there is decided.
    fn hold_from(&self, pending: &[u8]) -> usize {
        let from = pending.len().saturating_sub(self.window);
        match self.prefixes.get_or_init(|| prefixes_regex(&self.texts)) {
            Some(re) => re
                .find(&pending[from..])
                .map_or(pending.len(), |m| from + m.start()),
            None => pending.len().saturating_sub(self.window - 1),
        }
    }

    /// The number of needles (for tests and diagnostics).
    pub fn needle_count(&self) -> usize {
        self.needle_count
    }

    /// The scrubbed copy and the bytes removed, or None when nothing matched, so that
    /// the common clean response costs one scan and no allocation.
    fn replace(&self, input: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut out: Option<Vec<u8>> = None;
        let mut last = 0;
        let mut removed = 0;
        self.for_each_match(input, |start, end| {
            let buf = out.get_or_insert_with(|| Vec::with_capacity(input.len()));
            buf.extend_from_slice(&input[last..start]);
            buf.extend_from_slice(REDACTED.as_bytes());
            removed += end - start;
            last = end;
        });
        let mut buf = out?;
        buf.extend_from_slice(&input[last..]);
        Some((buf, removed))
    }

    /// Calls `f(start, end)` for each leftmost-longest, non-overlapping match, in order.
    ///
    /// Every spelling but the raw one starts with `%`, `\\`, `&` or `+`: a haystack
    /// without those bytes can only hold raw texts, which the automaton finds at memory
    /// speed; any other goes through the spellings regex (about ten times slower).
    fn for_each_match(&self, haystack: &[u8], mut f: impl FnMut(usize, usize)) {
        if has_escape(haystack)
            && let Some(re) = &self.spellings
        {
            for m in re.find_iter(haystack) {
                f(m.start(), m.end());
            }
            return;
        }
        match &self.matcher {
            Matcher::Automaton(ac) => {
                for m in ac.find_iter(haystack) {
                    f(m.start(), m.end());
                }
            }
            Matcher::Plain(needle) => {
                if needle.is_empty() {
                    return;
                }
                let mut at = 0;
                while let Some(rest) = haystack.get(at..) {
                    match rest
                        .windows(needle.len())
                        .position(|w| w == needle.as_slice())
                    {
                        Some(i) => {
                            f(at + i, at + i + needle.len());
                            at += i + needle.len();
                        }
                        None => break,
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("needles", &self.needle_count)
            .finish()
    }
}

/// A stream's body seen by a [`Scrubber`] chunk by chunk: what [`push`](Self::push)
/// returns may be released at once, and the concatenation of everything released
/// equals the whole-buffer scrub of the concatenated input (the proptests check it
/// for every split).
///
/// It holds back from the first position whose rest could begin (or be) a match that
/// more bytes could complete or lengthen: any match starting before it is decided, and
/// the held bytes wait for the next chunk (or [`finish`](Self::finish)). That is at
/// most [`Scrubber::window`] bytes, so memory is that tail plus one chunk.
pub struct StreamScrubber {
    scrubber: std::sync::Arc<Scrubber>,
    /// The held-back tail, then the chunk being scanned.
    pending: bytes::BytesMut,
    removed: u64,
}

/// The stream held something the scrubber cannot see whole ([`Scrubber::sees_whole`]):
/// nothing of it was released, and the stream must end here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the answer holds a form of the credential that cannot be scrubbed")]
pub struct Unscrubbable;

impl StreamScrubber {
    pub fn new(scrubber: std::sync::Arc<Scrubber>) -> Self {
        StreamScrubber {
            scrubber,
            pending: bytes::BytesMut::new(),
            removed: 0,
        }
    }

    /// Takes the next chunk; returns the scrubbed bytes that may be released now
    /// (possibly none).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Bytes, Unscrubbable> {
        self.pending.extend_from_slice(chunk);
        let safe = self.scrubber.hold_from(&self.pending);
        self.release(safe)
    }

    /// The end of the stream: everything still held, scrubbed.
    pub fn finish(&mut self) -> Result<Bytes, Unscrubbable> {
        let all = self.pending.len();
        self.release(all)
    }

    /// Credential bytes removed so far.
    pub fn removed(&self) -> u64 {
        self.removed
    }

    /// Bytes seen but not yet released (at most `window - 1` between chunks).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Releases the pending bytes up to `safe`, or past it to the end of a match that
    /// starts before it; matches starting at `safe` or later stay pending.
    fn release(&mut self, safe: usize) -> Result<Bytes, Unscrubbable> {
        if !self.scrubber.sees_whole(&self.pending) {
            self.pending.clear();
            return Err(Unscrubbable);
        }
        if safe == 0 {
            return Ok(Bytes::new());
        }
        let input = &self.pending[..];
        let mut out: Option<Vec<u8>> = None;
        let mut last = 0;
        let mut cut = safe;
        let mut removed = 0;
        self.scrubber.for_each_match(input, |start, end| {
            if start >= safe {
                return;
            }
            let buf = out.get_or_insert_with(|| Vec::with_capacity(input.len()));
            buf.extend_from_slice(&input[last..start]);
            buf.extend_from_slice(REDACTED.as_bytes());
            removed += end - start;
            last = end;
            cut = cut.max(end);
        });
        self.removed += removed as u64;
        let released = match out {
            None => self.pending.split_to(cut).freeze(),
            Some(mut buf) => {
                buf.extend_from_slice(&input[last..cut]);
                let _ = self.pending.split_to(cut);
                Bytes::from(buf)
            }
        };
        Ok(released)
    }
}

impl std::fmt::Debug for StreamScrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamScrubber")
            .field("held", &self.pending.len())
            .field("removed", &self.removed)
            .finish()
    }
}

/// Whether `haystack` holds `&#` or `&#x` (either case) followed by more than
/// [`MAX_REFERENCE_ZEROS`] zeros: a character reference the spellings regex does not
/// match. At most `MAX_REFERENCE_ZEROS + 4` bytes long, shorter than any window.
fn overpadded(haystack: &[u8]) -> bool {
    let mut at = 0;
    while let Some(i) = haystack[at..].iter().position(|&b| b == b'&') {
        let start = at + i;
        at = start + 1;
        let rest = &haystack[start + 1..];
        let Some(rest) = rest.strip_prefix(b"#") else {
            continue;
        };
        let rest = match rest.first() {
            Some(b'x' | b'X') => &rest[1..],
            _ => rest,
        };
        if rest.iter().take_while(|&&b| b == b'0').count() > MAX_REFERENCE_ZEROS {
            return true;
        }
    }
    false
}

/// The longest spelling of `text` the spellings regex matches ([`text_pattern`]).
fn text_max_len(text: &[u8]) -> usize {
    let mut len = 0;
    for chunk in text.utf8_chunks() {
        len += chunk.valid().chars().map(spelling_max_len).sum::<usize>();
        // Raw or `%XX`.
        len += 3 * chunk.invalid().len();
    }
    len
}

/// The longest of the spellings [`spelling`] matches for `c`.
fn spelling_max_len(c: char) -> usize {
    let code = u32::from(c);
    let decimal = code.to_string().len();
    let hex = format!("{code:x}").len();
    [
        c.len_utf8(),
        3 * c.len_utf8(),
        6 * c.len_utf16(),
        // `&#` zeros digits `;`, `&#x` zeros digits `;`.
        2 + MAX_REFERENCE_ZEROS + decimal + 1,
        3 + MAX_REFERENCE_ZEROS + hex + 1,
        html_names(c).iter().map(|n| n.len() + 2).max().unwrap_or(0),
        // `\/`, `\"`, `\\\\`, `+`.
        2,
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
}

/// Whether `haystack` holds a byte that starts a spelling other than the raw one.
fn has_escape(haystack: &[u8]) -> bool {
    haystack
        .iter()
        .any(|b| matches!(b, b'%' | b'\\' | b'&' | b'+'))
}

fn build_automaton(needles: &[Vec<u8>]) -> Option<AhoCorasick> {
    AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostLongest)
        .build(needles)
        .ok()
}

/// The texts of one credential header value (module doc), deduplicated, none empty.
fn texts(secret: &str) -> Vec<Vec<u8>> {
    let mut derived = BTreeSet::new();
    for form in secret_forms(secret) {
        add_base64_forms(&form, &mut derived);
    }
    derived.retain(|n: &Vec<u8>| n.len() >= MIN_DERIVED_LEN);
    if !secret.is_empty() {
        // The value the shim itself sends is always a text, however short: echoing it
        // verbatim is the most likely leak.
        derived.insert(secret.as_bytes().to_vec());
    }
    derived.into_iter().collect()
}

/// One regex matching every text in every mix of character spellings, longest texts
/// first (leftmost-first then prefers the whole value over its parts); None if it
/// cannot be built (the caller falls back to the plain texts).
fn spellings_regex(texts: &[Vec<u8>]) -> Option<regex::bytes::Regex> {
    if texts.is_empty() {
        return None;
    }
    let mut ordered: Vec<&Vec<u8>> = texts.iter().collect();
    ordered.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    let alternatives: Vec<String> = ordered.iter().map(|text| text_pattern(text)).collect();
    regex::bytes::RegexBuilder::new(&format!("(?-u:{})", alternatives.join("|")))
        .unicode(false)
        .size_limit(64 << 20)
        .dfa_size_limit(16 << 20)
        .build()
        .ok()
}

/// One regex matching, at the end of the haystack only, any prefix of any spelling of
/// any text ([`text_prefix_pattern`]); None if it cannot be built.
fn prefixes_regex(texts: &[Vec<u8>]) -> Option<regex::bytes::Regex> {
    if texts.is_empty() {
        return None;
    }
    let alternatives: Vec<String> = texts.iter().map(|t| text_prefix_pattern(t)).collect();
    regex::bytes::RegexBuilder::new(&format!("(?-u:(?:{}))\\z", alternatives.join("|")))
        .unicode(false)
        .nest_limit(4096)
        .size_limit(64 << 20)
        .dfa_size_limit(16 << 20)
        .build()
        .ok()
}

/// The regex for `text`: each character in any of its spellings; a byte that is not
/// part of valid UTF-8 (a decoded Basic pair may hold one) raw or percent-encoded.
fn text_pattern(text: &[u8]) -> String {
    unit_spellings(text)
        .iter()
        .map(|u| alternation(u))
        .collect()
}

/// The regex matching every prefix (empty and whole included) of every spelling of
/// `text`: `(?:P1|S1(?:P2|S2(?:...)))`, where `Sk` matches the k-th unit's spellings and
/// `Pk` their prefixes. A stream scrubber holds back from the earliest position whose
/// rest matches this to the end ([`Scrubber::hold_from`]).
fn text_prefix_pattern(text: &[u8]) -> String {
    let units = unit_spellings(text);
    let mut pattern = String::new();
    for unit in units.iter().rev() {
        let prefixes = unit
            .iter()
            .map(|atoms| prefix_of(atoms))
            .collect::<Vec<_>>()
            .join("|");
        pattern = if pattern.is_empty() {
            format!("(?:{prefixes})")
        } else {
            format!("(?:{prefixes}|{}{pattern})", alternation(unit))
        };
    }
    pattern
}

/// One unit's spellings as one group.
fn alternation(spellings: &[Vec<String>]) -> String {
    let alternatives: Vec<String> = spellings.iter().map(|atoms| atoms.concat()).collect();
    format!("(?:{})", alternatives.join("|"))
}

/// The prefixes of the atom sequence `a1 a2 ... an` (each atom's own set of strings
/// is closed under prefixes): `(?:a1(?:a2(?:...)?)?)?`.
fn prefix_of(atoms: &[String]) -> String {
    let mut pattern = String::new();
    for atom in atoms.iter().rev() {
        pattern = format!("(?:{atom}{pattern})?");
    }
    pattern
}

/// The spellings of each unit of `text` (a character, or a byte outside UTF-8), each
/// spelling as a sequence of atoms: regex pieces matching one byte from a set, or a
/// run (`0{0,N}`) or an optional byte (`;?`), so that each atom's strings are closed
/// under prefixes.
fn unit_spellings(text: &[u8]) -> Vec<Vec<Vec<String>>> {
    let mut units = Vec::new();
    for chunk in text.utf8_chunks() {
        units.extend(chunk.valid().chars().map(spelling_atoms));
        for b in chunk.invalid() {
            let mut percent = vec!["%".to_string()];
            percent.extend(hex_atoms(u32::from(*b), 2));
            units.push(vec![vec![format!("\\x{b:02x}")], percent]);
        }
    }
    units
}

/// Every spelling of the character `c`, as atom sequences ([`unit_spellings`]).
fn spelling_atoms(c: char) -> Vec<Vec<String>> {
    let mut utf8 = [0u8; 4];
    let bytes = c.encode_utf8(&mut utf8).as_bytes();
    let code = u32::from(c);
    let mut alternatives: Vec<Vec<String>> = Vec::new();
    // Raw, and percent-encoded byte by byte.
    alternatives.push(bytes.iter().map(|b| format!("\\x{b:02x}")).collect());
    alternatives.push(
        bytes
            .iter()
            .flat_map(|b| {
                let mut atoms = vec!["%".to_string()];
                atoms.extend(hex_atoms(u32::from(*b), 2));
                atoms
            })
            .collect(),
    );
    // JSON `\uXXXX` (a UTF-16 code unit, or a surrogate pair).
    let mut units = [0u16; 2];
    alternatives.push(
        c.encode_utf16(&mut units)
            .iter()
            .flat_map(|u| {
                let mut atoms = vec!["\\\\".to_string(), "u".to_string()];
                atoms.extend(hex_atoms(u32::from(*u), 4));
                atoms
            })
            .collect(),
    );
    // HTML/XML numeric character references.
    let zeros = format!("0{{0,{MAX_REFERENCE_ZEROS}}}");
    let mut decimal = vec!["&".to_string(), "#".to_string(), zeros.clone()];
    decimal.extend(code.to_string().chars().map(String::from));
    decimal.push(";?".to_string());
    alternatives.push(decimal);
    let mut hex = vec!["&".to_string(), "#".to_string(), "[xX]".to_string(), zeros];
    hex.extend(hex_atoms(code, format!("{code:x}").len()));
    hex.push(";?".to_string());
    alternatives.push(hex);
    for named in html_names(c) {
        let mut atoms = vec!["&".to_string()];
        atoms.extend(named.chars().map(String::from));
        atoms.push(";".to_string());
        alternatives.push(atoms);
    }
    let escaped = |second: &str| vec!["\\\\".to_string(), second.to_string()];
    match c {
        ' ' => alternatives.push(vec!["\\+".into()]),
        '/' => alternatives.push(escaped("/")),
        '"' => alternatives.push(escaped("\"")),
        '\\' => alternatives.push(escaped("\\\\")),
        _ => {}
    }
    alternatives
}

/// `value` as `width` hex digits, one atom each, each letter in either case (`[aA]`).
fn hex_atoms(value: u32, width: usize) -> Vec<String> {
    format!("{value:0width$x}")
        .chars()
        .map(|d| {
            if d.is_ascii_alphabetic() {
                format!("[{d}{}]", d.to_ascii_uppercase())
            } else {
                d.to_string()
            }
        })
        .collect()
}

/// The HTML named character references that stand for the ASCII character `c`.
fn html_names(c: char) -> &'static [&'static str] {
    match c {
        '&' => &["amp", "AMP"],
        '<' => &["lt", "LT"],
        '>' => &["gt", "GT"],
        '"' => &["quot", "QUOT"],
        '\'' => &["apos"],
        '+' => &["plus"],
        '/' => &["sol"],
        '=' => &["equals"],
        ':' => &["colon"],
        '.' => &["period"],
        ',' => &["comma"],
        '_' => &["lowbar", "UnderBar"],
        '#' => &["num"],
        '!' => &["excl"],
        '?' => &["quest"],
        '%' => &["percnt"],
        '$' => &["dollar"],
        '@' => &["commat"],
        '(' => &["lpar"],
        ')' => &["rpar"],
        '[' => &["lsqb", "lbrack"],
        ']' => &["rsqb", "rbrack"],
        '{' => &["lcub", "lbrace"],
        '}' => &["rcub", "rbrace"],
        '*' => &["ast", "midast"],
        ';' => &["semi"],
        '^' => &["Hat"],
        '`' => &["grave", "DiacriticalGrave"],
        '|' => &["verbar", "vert", "VerticalLine"],
        '\\' => &["bsol"],
        '\t' => &["Tab"],
        '\n' => &["NewLine"],
        _ => &[],
    }
}

/// The byte strings that are the credential itself, before any encoding.
fn secret_forms(secret: &str) -> Vec<Vec<u8>> {
    let mut forms = Vec::new();
    if secret.is_empty() {
        return forms;
    }
    forms.push(secret.as_bytes().to_vec());
    let Some((scheme, rest)) = secret.split_once([' ', '\t']) else {
        return forms;
    };
    let rest = rest.trim_matches([' ', '\t']);
    if scheme.is_empty() || !scheme.bytes().all(is_tchar) || rest.is_empty() {
        return forms;
    }
    forms.push(rest.as_bytes().to_vec());
    if scheme.eq_ignore_ascii_case("basic") {
        // Clients disagree on padding; either way the decoded pair is what leaks.
        let lenient = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        if let Ok(decoded) = lenient.decode(rest) {
            if let Some(colon) = decoded.iter().position(|&b| b == b':') {
                let password = &decoded[colon + 1..];
                if password.len() >= MIN_PASSWORD_LEN {
                    forms.push(password.to_vec());
                }
            }
            if !decoded.is_empty() {
                forms.push(decoded);
            }
        }
    }
    forms
}

/// RFC 9110 `tchar`: what an auth-scheme token may be made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Adds `s` and its base64 forms to `out` (length filtering happens later).
fn add_base64_forms(s: &[u8], out: &mut BTreeSet<Vec<u8>>) {
    out.insert(s.to_vec());
    for engine in [&STANDARD, &URL_SAFE] {
        out.insert(engine.encode(s).into_bytes());
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        out.insert(engine.encode(s).into_bytes());
        for k in 0..3 {
            out.insert(base64_core(engine, s, k));
        }
    }
}

/// The base64 characters that depend only on bytes of `s` when `s` starts `k` bytes
/// (mod 3) into a longer encoded blob: the edge characters share bits with the bytes
/// around `s`, so they differ from one blob to the next and are left out.
fn base64_core(engine: &GeneralPurpose, s: &[u8], k: usize) -> Vec<u8> {
    let mut shifted = vec![0u8; k];
    shifted.extend_from_slice(s);
    let encoded = engine.encode(&shifted).into_bytes();
    let lead = match k {
        0 => 0,
        1 => 2,
        _ => 3,
    };
    let trail = usize::from(!shifted.len().is_multiple_of(3));
    encoded
        .get(lead..encoded.len().saturating_sub(trail))
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// The texts and, for each, its whole-string percent (both hex cases, and form)
    /// and JSON encodings: forms that must all be gone after scrubbing.
    fn needles(secret: &str) -> Vec<Vec<u8>> {
        let mut all = BTreeSet::new();
        for text in texts(secret) {
            all.insert(percent_encode(&text, b"0123456789ABCDEF", false));
            all.insert(percent_encode(&text, b"0123456789abcdef", false));
            all.insert(percent_encode(&text, b"0123456789ABCDEF", true));
            if let Some(escaped) = json_escape(&text) {
                all.insert(escaped.replace('/', "\\/").into_bytes());
                all.insert(escaped.into_bytes());
            }
            all.insert(text);
        }
        all.into_iter().collect()
    }

    /// Percent-encoding of every byte outside RFC 3986 `unreserved`; `form` gives the
    /// `application/x-www-form-urlencoded` flavour, where a space is `+`.
    fn percent_encode(s: &[u8], hex: &[u8; 16], form: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(s.len() * 3);
        for &b in s {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b);
            } else if form && b == b' ' {
                out.push(b'+');
            } else {
                out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 0xf)]]);
            }
        }
        out
    }

    /// The inside of the JSON string literal for `s`, or None when `s` is not UTF-8 (JSON
    /// text cannot carry it unescaped, and a `\u` rendering is not covered).
    fn json_escape(s: &[u8]) -> Option<String> {
        let s = std::str::from_utf8(s).ok()?;
        let quoted = serde_json::to_string(s).ok()?;
        Some(quoted.strip_prefix('"')?.strip_suffix('"')?.to_owned())
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Scrubs `body` and checks the accounting: output length is the input length minus
    /// the removed bytes plus one REDACTED per match.
    fn scrub_checked(s: &Scrubber, body: &[u8]) -> (Vec<u8>, usize) {
        let (out, removed) = s.scrub(Bytes::copy_from_slice(body));
        let marks = out
            .windows(REDACTED.len())
            .filter(|w| *w == REDACTED.as_bytes())
            .count();
        assert_eq!(
            out.len() + removed,
            body.len() + marks * REDACTED.len(),
            "accounting"
        );
        (out.to_vec(), removed)
    }

    fn assert_gone(secret: &str, body: &[u8], forbidden: &[&[u8]]) {
        let s = Scrubber::new(secret);
        let (out, removed) = scrub_checked(&s, body);
        assert!(removed > 0);
        assert!(contains(&out, REDACTED.as_bytes()));
        for f in forbidden {
            assert!(!contains(&out, f), "a forbidden form survived");
        }
        assert_eq!(s.scrub(Bytes::from(out)).1, 0, "idempotent");
    }

    const TOKEN: &str = "ghp_abcdefGHIJKL0123456789xyz";
    const BEARER: &str = "Bearer ghp_abcdefGHIJKL0123456789xyz";

    #[test]
    fn plain_value_and_bare_token_are_removed_with_exact_count() {
        let s = Scrubber::new(BEARER);
        let body = format!("a {BEARER} b {TOKEN} c");
        let (out, removed) = scrub_checked(&s, body.as_bytes());
        assert_eq!(removed, BEARER.len() + TOKEN.len());
        assert_eq!(out, format!("a {REDACTED} b {REDACTED} c").into_bytes());
    }

    #[test]
    fn base64_forms_are_removed() {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            // `?>` produces `+`/`/` in standard base64, `-`/`_` in URL-safe.
            let secret = "Bearer tok?>?>en-0123456789";
            let enc = engine.encode("tok?>?>en-0123456789");
            let whole = engine.encode(secret);
            let body = format!("{{\"x\":\"{enc}\",\"y\":\"{whole}\"}}");
            assert_gone(secret, body.as_bytes(), &[enc.as_bytes(), whole.as_bytes()]);
        }
    }

    #[test]
    fn base64_blob_at_every_alignment_is_broken() {
        for prefix in ["", "x", "x-", "x-access-token:", "x-access-token:a"] {
            for suffix in ["", "!", "!!", "!!!"] {
                let blob = STANDARD.encode(format!("{prefix}{TOKEN}{suffix}"));
                let body = format!("Authorization: Basic {blob}\r\n");
                let s = Scrubber::new(BEARER);
                let (out, removed) = scrub_checked(&s, body.as_bytes());
                assert!(removed > 0, "prefix len {}", prefix.len());
                let core = base64_core(&STANDARD_NO_PAD, TOKEN.as_bytes(), prefix.len() % 3);
                assert!(!contains(&out, &core));
                assert!(!contains(&out, blob.as_bytes()));
            }
        }
    }

    #[test]
    fn percent_and_form_encodings_are_removed() {
        let secret = "token p@ss/word+x y";
        let upper = percent_encode(b"p@ss/word+x y", b"0123456789ABCDEF", false);
        let lower = percent_encode(b"p@ss/word+x y", b"0123456789abcdef", false);
        let form = percent_encode(b"p@ss/word+x y", b"0123456789ABCDEF", true);
        assert_eq!(form, b"p%40ss%2Fword%2Bx+y");
        assert_eq!(lower, b"p%40ss%2fword%2bx%20y");
        let mut body = b"q=".to_vec();
        for part in [&upper, &lower, &form] {
            body.extend_from_slice(part);
            body.push(b'&');
        }
        assert_gone(secret, &body, &[&upper, &lower, &form, b"p@ss/word+x y"]);
    }

    #[test]
    fn json_escaped_forms_are_removed() {
        let rest = r#"ab"cd/ef\gh"#;
        let secret = format!("Bearer {rest}");
        let escaped = r#"ab\"cd/ef\\gh"#;
        let slash_escaped = r#"ab\"cd\/ef\\gh"#;
        let body = format!(r#"{{"a":"{escaped}","b":"{slash_escaped}","c":"Bearer {escaped}"}}"#);
        let s = Scrubber::new(&secret);
        let (out, removed) = scrub_checked(&s, body.as_bytes());
        assert_eq!(
            removed,
            escaped.len() + slash_escaped.len() + "Bearer ".len() + escaped.len()
        );
        assert!(!contains(&out, b"cd"));
    }

    #[test]
    fn basic_credential_is_removed_in_its_parts() {
        let secret = format!("Basic {}", STANDARD.encode("alice:s3cr3t pw!"));
        let body = "user alice:s3cr3t pw! password=s3cr3t+pw%21 raw s3cr3t pw! end";
        assert_gone(
            &secret,
            body.as_bytes(),
            &[b"s3cr3t pw!", b"s3cr3t+pw%21", b"alice:s3cr3t"],
        );
        let s = Scrubber::new(&secret);
        let (out, _) = scrub_checked(&s, body.as_bytes());
        assert_eq!(
            out,
            format!("user {REDACTED} password={REDACTED} raw {REDACTED} end").into_bytes()
        );
    }

    #[test]
    fn short_basic_password_is_not_a_plain_needle() {
        let secret = format!("Basic {}", STANDARD.encode("bob:pw1234"));
        let s = Scrubber::new(&secret);
        let (out, removed) = s.scrub(Bytes::from_static(b"pw1234 is fine on its own"));
        assert_eq!(removed, 0);
        assert_eq!(&out[..], b"pw1234 is fine on its own");
    }

    #[test]
    fn clean_body_is_the_same_allocation() {
        let s = Scrubber::new(BEARER);
        let body = Bytes::from(b"{\"ok\":true,\"token\":\"ghp_other\"}".to_vec());
        let ptr = body.as_ptr();
        let (out, removed) = s.scrub(body);
        assert_eq!(removed, 0);
        assert_eq!(out.as_ptr(), ptr);
    }

    #[test]
    fn headers_are_scrubbed_or_left_alone() {
        let s = Scrubber::new(BEARER);
        let mut echoed = HeaderValue::from_str(&format!("seen {TOKEN}; ok")).unwrap();
        echoed.set_sensitive(true);
        let (v, removed) = s.scrub_header(&echoed).unwrap();
        assert_eq!(v.as_bytes(), format!("seen {REDACTED}; ok").as_bytes());
        assert_eq!(removed, TOKEN.len());
        assert!(v.is_sensitive());
        assert!(
            s.scrub_header(&HeaderValue::from_static("no secret"))
                .is_none()
        );
    }

    #[test]
    fn empty_secret_matches_nothing() {
        let s = Scrubber::new("");
        assert_eq!(s.needle_count(), 0);
        assert_eq!(s.scrub(Bytes::from_static(b"anything")).1, 0);
    }

    #[test]
    fn debug_reveals_no_needle() {
        let secret = format!("Basic {}", STANDARD.encode("alice:s3cr3t pw!"));
        let s = Scrubber::new(&secret);
        let debug = format!("{s:?}");
        assert_eq!(
            debug,
            format!("Scrubber {{ needles: {} }}", s.needle_count())
        );
        for n in needles(&secret) {
            assert!(!contains(debug.as_bytes(), &n));
        }
    }

    #[test]
    fn needle_rules() {
        let n = texts(BEARER);
        assert!(n.iter().all(|x| x.len() >= MIN_DERIVED_LEN));
        assert!(n.contains(&TOKEN.as_bytes().to_vec()));
        // The whole value stays even when it is short; its derived forms do not.
        assert_eq!(texts("abc"), vec![b"abc".to_vec()]);
        // A scheme that is not a token is not split off.
        assert!(!texts("Bea(rer) 0123456789ab").contains(&b"0123456789ab".to_vec()));
        assert!(Scrubber::new(BEARER).needle_count() == n.len());
        assert!(spellings_regex(&n).is_some());
    }

    #[test]
    fn plain_fallback_matches_like_the_automaton() {
        let s = Scrubber {
            matcher: Matcher::Plain(b"aba".to_vec()),
            spellings: None,
            needle_count: 1,
            window: 3,
            prefixes: std::sync::OnceLock::from(None),
            texts: vec![b"aba".to_vec()],
        };
        assert!(!s.sees_whole(b"a%62a"));
        assert!(s.sees_whole(b"aba"));
        let (out, removed) = s.scrub(Bytes::from_static(b"xababa-aba"));
        assert_eq!(&out[..], b"x[redacted]ba-[redacted]");
        assert_eq!(removed, 6);
    }

    /// One spelling of `c`, chosen by `pick` (any number; taken modulo the choices).
    fn spell(c: char, pick: usize) -> String {
        let code = u32::from(c);
        let mut choices = vec![
            c.to_string(),
            format!("%{code:02X}"),
            format!("%{code:02x}"),
            format!("\\u{code:04X}"),
            format!("\\u{code:04x}"),
            format!("&#{code};"),
            format!("&#00{code};"),
            format!("&#x{code:X};"),
            format!("&#X{code:04x};"),
        ];
        choices.extend(html_names(c).iter().map(|n| format!("&{n};")));
        if c == ' ' {
            choices.push("+".into());
        }
        if c == '/' {
            choices.push("\\/".into());
        }
        choices.swap_remove(pick % choices.len())
    }

    #[test]
    fn what_real_serializers_write_is_removed() {
        let secret = "Bearer tok+en/with=sign+slash/0123";
        let cases = [
            // .NET's JSON writer escapes `+` as \u002B.
            "tok\\u002Ben/with=sign\\u002Bslash/0123",
            // Python's quote() and JS encodeURI leave `/` alone.
            "tok%2Ben/with%3Dsign%2Bslash/0123",
            "Bearer%20tok%2ben/with%3dsign%2bslash/0123",
            // HTML templates.
            "tok&#43;en&#x2F;with&equals;sign&plus;slash&sol;0123",
            "Bearer&#32;tok&#0043en/with=sign+slash/0123",
        ];
        for body in cases {
            assert_gone(secret, body.as_bytes(), &[body.as_bytes()]);
        }
    }

    /// Feeds `body` to a stream scrubber in pieces cut at `cuts` (positions, any
    /// order, clamped); returns everything released and the bytes removed.
    fn stream_scrub(s: &Arc<Scrubber>, body: &[u8], cuts: &[usize]) -> (Vec<u8>, u64) {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        at.push(0);
        at.push(body.len());
        at.sort_unstable();
        let mut stream = StreamScrubber::new(s.clone());
        let mut out = Vec::new();
        for w in at.windows(2) {
            out.extend_from_slice(&stream.push(&body[w[0]..w[1]]).unwrap());
            assert!(stream.held() <= s.window(), "held more than the window");
        }
        out.extend_from_slice(&stream.finish().unwrap());
        (out, stream.removed())
    }

    #[test]
    fn one_byte_chunks_are_scrubbed_like_the_whole() {
        let s = Arc::new(Scrubber::new(BEARER));
        let body = format!("data: {{\"k\":\"{BEARER}\"}}\n\ndata: {TOKEN}%20\n\n");
        let cuts: Vec<usize> = (0..body.len()).collect();
        let (out, removed) = stream_scrub(&s, body.as_bytes(), &cuts);
        let (whole, whole_removed) = s.scrub(Bytes::from(body));
        assert_eq!(out, whole.to_vec());
        assert_eq!(removed, whole_removed as u64);
        assert!(!contains(&out, TOKEN.as_bytes()));
    }

    #[test]
    fn overpadded_references_are_unscrubbable_however_split() {
        let s = Arc::new(Scrubber::new(BEARER));
        let body = format!("x &#x{}67; y", "0".repeat(MAX_REFERENCE_ZEROS + 1));
        assert!(!s.sees_whole(body.as_bytes()));
        let fits = format!("x &#x{}67; y", "0".repeat(MAX_REFERENCE_ZEROS));
        assert!(s.sees_whole(fits.as_bytes()));
        for cut in 0..body.len() {
            let mut stream = StreamScrubber::new(s.clone());
            let mut released = Vec::new();
            let result = stream
                .push(&body.as_bytes()[..cut])
                .and_then(|a| {
                    released.extend_from_slice(&a);
                    stream.push(&body.as_bytes()[cut..])
                })
                .and_then(|b| {
                    released.extend_from_slice(&b);
                    stream.finish()
                });
            assert_eq!(result, Err(Unscrubbable), "cut at {cut}");
            assert!(!contains(&released, b"&#x0"), "cut at {cut}");
        }
    }

    #[test]
    fn window_covers_the_longest_spelling() {
        let secret = "Bearer a/b";
        let s = Scrubber::new(secret);
        let longest: String = secret
            .chars()
            .map(|c| format!("&#x{}{:x};", "0".repeat(MAX_REFERENCE_ZEROS), u32::from(c)))
            .collect();
        assert!(longest.len() <= s.window());
        let (out, removed) = s.scrub(Bytes::from(longest.clone()));
        assert_eq!(removed, longest.len());
        assert_eq!(&out[..], REDACTED.as_bytes());
    }

    #[test]
    fn a_clean_event_leaves_at_once_and_a_possible_start_is_held() {
        let s = Arc::new(Scrubber::new(BEARER));
        let mut stream = StreamScrubber::new(s.clone());
        let event = b"event: message\ndata: {\"n\":1}\n\n";
        assert_eq!(&stream.push(event).unwrap()[..], &event[..]);
        assert_eq!(stream.held(), 0);
        // `ghp_ab` may begin the token, `%67` its first character percent-encoded,
        // `&#x0` a character reference: held until the next bytes decide.
        for tail in [
            &b"data: ghp_ab"[..],
            b"data: %6",
            b"data: &#x0",
            b"data: Bearer",
        ] {
            let mut stream = StreamScrubber::new(s.clone());
            let out = stream.push(tail).unwrap();
            assert_eq!(&out[..], b"data: ", "{}", String::from_utf8_lossy(tail));
            assert_eq!(stream.finish().unwrap().len(), tail.len() - 6);
        }
    }

    proptest! {
        // Each case builds a scrubber (its prefix regex is the slow part in a debug
        // build) and tries eight splits.
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The chunk-boundary property: a body holding the credential, each character
        /// in any spelling, cut anywhere into any number of pieces, comes out of the
        /// stream scrubber exactly as the whole-buffer scrub, and redacted.
        #[test]
        fn every_split_is_scrubbed_like_the_whole(
            token in "[!-Z^-~]{8,40}",
            picks in proptest::collection::vec(any::<usize>(), 48),
            scheme in prop::bool::ANY,
            base64 in prop::bool::ANY,
            before in "[ -~]{0,40}",
            after in "[ -~]{0,40}",
            splits in proptest::collection::vec(
                proptest::collection::vec(any::<usize>(), 0..12), 8),
        ) {
            let secret = if scheme { format!("Bearer {token}") } else { token.clone() };
            let shown = if base64 { STANDARD.encode(&secret) } else { secret.clone() };
            let spelled: String = shown
                .chars()
                .zip(picks.iter().cycle())
                .map(|(c, pick)| spell(c, *pick))
                .collect();
            let body = format!("{before}{spelled}{after}{spelled}");
            let s = Arc::new(Scrubber::new(&secret));
            let (whole, whole_removed) = s.scrub(Bytes::from(body.clone()));
            for cuts in &splits {
                let (out, removed) = stream_scrub(&s, body.as_bytes(), cuts);
                prop_assert_eq!(&out, &whole.to_vec());
                prop_assert_eq!(removed, whole_removed as u64);
                prop_assert!(removed > 0);
                prop_assert!(!contains(&out, spelled.as_bytes()));
                prop_assert!(!contains(&out, token.as_bytes()));
            }
        }
    }

    proptest! {
        /// The reason cores exist: wherever `s` sits in a longer plaintext, the
        /// standard and URL-safe encodings of that plaintext contain the core for its
        /// alignment, padded or not.
        #[test]
        fn alignment_core_is_inside_any_enclosing_base64(
            prefix in proptest::collection::vec(any::<u8>(), 0..16),
            s in proptest::collection::vec(any::<u8>(), 1..64),
            suffix in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut blob = prefix.clone();
            blob.extend_from_slice(&s);
            blob.extend_from_slice(&suffix);
            let k = prefix.len() % 3;
            for (padded, unpadded) in [(&STANDARD, &STANDARD_NO_PAD), (&URL_SAFE, &URL_SAFE_NO_PAD)] {
                let core = base64_core(unpadded, &s, k);
                prop_assert!(core.is_empty() || contains(padded.encode(&blob).as_bytes(), &core));
                prop_assert!(core.is_empty() || contains(unpadded.encode(&blob).as_bytes(), &core));
            }
        }

        /// Every character of the credential spelled independently (raw, percent in
        /// either case, JSON `\\u` in either case, an HTML reference decimal, hex or
        /// named, `+` for a space), in any mix, anywhere in a body: always redacted.
        #[test]
        fn any_mix_of_character_spellings_is_redacted(
            token in "[!-Z^-~]{8,40}",
            picks in proptest::collection::vec(any::<usize>(), 48),
            scheme in prop::bool::ANY,
            before in "[ -~]{0,20}",
            after in "[ -~]{0,20}",
        ) {
            let secret = if scheme { format!("Bearer {token}") } else { token.clone() };
            let spelled: String = secret
                .chars()
                .zip(picks.iter().cycle())
                .map(|(c, pick)| spell(c, *pick))
                .collect();
            let body = format!("{before}{spelled}{after}");
            let s = Scrubber::new(&secret);
            let (out, removed) = s.scrub(Bytes::from(body.clone()));
            prop_assert!(removed > 0, "{spelled:?} not found in {body:?}");
            prop_assert!(!contains(&out, spelled.as_bytes()), "{spelled:?} survived");
        }

        /// Secrets exclude `[` and `]`, and the assumption below rejects the rare
        /// needle that could still overlap a REDACTED (one containing a bracket, e.g.
        /// from a decoded Basic pair, or one inside the text `redacted`): only such a
        /// needle could form anew around an inserted REDACTED, since the gaps between
        /// leftmost matches hold no whole needle. Without the restriction a secret like
        /// `x[redacted]y` makes scrubbing non-idempotent by construction.
        #[test]
        fn scrubbed_output_holds_no_secret_and_is_stable(
            secret in "[ -Z^-~\\\\]{8,64}",
            before in proptest::collection::vec(any::<u8>(), 0..40),
            between in proptest::collection::vec(any::<u8>(), 0..40),
            after in proptest::collection::vec(any::<u8>(), 0..40),
            pre in proptest::collection::vec(any::<u8>(), 0..5),
            post in proptest::collection::vec(any::<u8>(), 0..5),
        ) {
            let all = needles(&secret);
            prop_assume!(all.iter().all(|n| {
                !n.contains(&b'[') && !n.contains(&b']') && !contains(REDACTED.as_bytes(), n)
            }));
            let s = Scrubber::new(&secret);
            let mut embedded = pre.clone();
            embedded.extend_from_slice(secret.as_bytes());
            embedded.extend_from_slice(&post);
            let mut body = before.clone();
            body.extend_from_slice(secret.as_bytes());
            body.extend_from_slice(&between);
            body.extend_from_slice(STANDARD.encode(&embedded).as_bytes());
            body.extend_from_slice(&after);

            let (out, removed) = scrub_checked(&s, &body);
            prop_assert!(removed > 0);
            prop_assert!(!contains(&out, secret.as_bytes()));
            for k in 0..3 {
                let core = base64_core(&STANDARD_NO_PAD, secret.as_bytes(), k);
                prop_assert!(!contains(&out, &core));
            }
            for n in &all {
                prop_assert!(!contains(&out, n));
            }
            prop_assert_eq!(s.scrub(Bytes::from(out)).1, 0);
        }
    }
}
