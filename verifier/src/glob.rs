//! The one wildcard of agent identity patterns (`TRUST:PATTERN` in the catalogue's
//! `agents`/`subjects` and in deny-list entries): `*`, matched without recursion or
//! backtracking blow-up, so a hostile subject or a careless pattern cannot turn an
//! authorisation check into a CPU sink.

/// `*` matches any run of bytes (including none, slashes and colons); every other
/// byte matches itself. Classic two-pointer wildcard matching: when a literal
/// fails after a `*`, only the most recent `*` is widened by one byte, which is
/// sufficient for `*`-only globs. O(|pattern| × |text|) worst case, no recursion.
/// Byte-wise matching is sound for UTF-8 because literal runs are whole UTF-8
/// sequences, which can only align at character boundaries.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    glob_match_counting(pattern, text).0
}

/// [`glob_match`], and how many steps it took: tests bound the work by
/// `(|pattern| + 1) × (|text| + 1)` without measuring time.
pub fn glob_match_counting(pattern: &[u8], text: &[u8]) -> (bool, usize) {
    let (mut p, mut t) = (0usize, 0usize);
    let mut steps = 0usize;
    // Position in `pattern` just after the last `*` seen, and the text position
    // that `*` currently extends to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        steps += 1;
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                star = Some((p, t));
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((after_star, upto)) => {
                    p = after_star;
                    t = upto + 1;
                    star = Some((after_star, t));
                }
                None => return (false, steps),
            },
        }
    }
    (pattern[p..].iter().all(|&b| b == b'*'), steps)
}
