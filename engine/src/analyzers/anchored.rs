//! Keyword-gated, bounded regex rules, matched exactly once across chunk boundaries.
//!
//! Used by `secrets` and `components`. Every rule starts with one of its keywords (a literal,
//! case variants spelled out so the Aho-Corasick prefilter stays on its SIMD path), and its
//! regex runs *anchored* at each keyword hit only, so a rule costs nothing where its keyword is
//! absent. Every regex has a finite maximum length `L` (checked when the rules are built).
//!
//! Exactness across windows: a candidate is identified by its key span (the named group `k`, or
//! the whole match). It is decided in the first window where its key starts before
//! `window end - (L + 1)`: the whole match and one trailing context byte are then visible, so the
//! match is the same as in an unbroken stream. Candidates are taken in key order and one is
//! accepted only if its key starts at or after the end of the last accepted key, so two rules
//! matching the same bytes report once (the rule listed first wins a tie). Keyword hits are
//! searched from `resolved - L`, the earliest start a still-undecided candidate can have, which
//! needs a carried tail of `2L + 2` bytes.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Input as AcInput, MatchKind};
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, meta};

use crate::Window;

/// One rule as written in a rule table.
pub(crate) struct RuleSpec {
    pub id: &'static str,
    /// Literals the match starts with. None may be a prefix of another keyword of the set.
    pub keywords: &'static [&'static str],
    /// Bounded regex; the optional named group `k` is the part that identifies the match.
    pub pattern: &'static str,
}

/// A match found at a keyword hit, as indices into the searched haystack.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub rule: usize,
    pub start: usize,
    pub end: usize,
    pub key_start: usize,
    pub key_end: usize,
}

pub(crate) struct RuleSet {
    ac: AhoCorasick,
    /// For each Aho-Corasick pattern, the rules it gates.
    gates: Vec<Vec<usize>>,
    regexes: Vec<meta::Regex>,
    max_len: usize,
}

impl RuleSet {
    /// Compiles the rules. Errors name the rule; they are programming errors in a rule table.
    pub fn new(specs: &[RuleSpec]) -> Result<Self, String> {
        let mut keywords: Vec<&str> = Vec::new();
        let mut gates: Vec<Vec<usize>> = Vec::new();
        let mut regexes = Vec::with_capacity(specs.len());
        let mut max_len = 1;
        let syntax = syntax::Config::new().unicode(false).utf8(false);
        for (i, spec) in specs.iter().enumerate() {
            let hir = syntax::parse_with(spec.pattern, &syntax).map_err(|e| format!("rule {}: {e}", spec.id))?;
            let len = hir
                .properties()
                .maximum_len()
                .ok_or_else(|| format!("rule {}: unbounded regex", spec.id))?;
            max_len = max_len.max(len);
            let re = meta::Regex::builder()
                .syntax(syntax)
                .configure(meta::Regex::config().utf8_empty(false))
                .build(spec.pattern)
                .map_err(|e| format!("rule {}: {e}", spec.id))?;
            regexes.push(re);
            for kw in spec.keywords {
                match keywords.iter().position(|k| k == kw) {
                    Some(p) => gates[p].push(i),
                    None => {
                        keywords.push(kw);
                        gates.push(vec![i]);
                    }
                }
            }
        }
        for a in &keywords {
            for b in &keywords {
                if a != b && b.starts_with(a) {
                    return Err(format!("keyword {a:?} is a prefix of {b:?}"));
                }
            }
        }
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&keywords)
            .map_err(|e| format!("keywords: {e}"))?;
        Ok(RuleSet {
            ac,
            gates,
            regexes,
            max_len,
        })
    }

    /// Longest possible match of any rule.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Carried tail these rules need to be exact across windows.
    pub fn overlap(&self) -> usize {
        2 * self.max_len + 2
    }

    /// All candidates whose match starts at a keyword occurring at or after `from`.
    pub fn candidates(&self, hay: &[u8], from: usize, out: &mut Vec<Candidate>) {
        let mut caps: Vec<Option<Captures>> = (0..self.regexes.len()).map(|_| None).collect();
        let mut pos = from;
        // Restart after each hit's first byte rather than its end, so that the set of hits does
        // not depend on where the search began (it would with non-overlapping iteration).
        while pos < hay.len() {
            let Some(hit) = self.ac.find(AcInput::new(hay).span(pos..hay.len())) else {
                break;
            };
            let at = hit.start();
            for &rule in &self.gates[hit.pattern().as_usize()] {
                let re = &self.regexes[rule];
                let caps = caps[rule].get_or_insert_with(|| re.create_captures());
                let end = hay.len().min(at + self.max_len + 1);
                // The haystack keeps the bytes before `at`, so `\b` sees its left context.
                let input = Input::new(&hay[..end]).span(at..end).anchored(Anchored::Yes);
                re.search_captures(&input, caps);
                if let Some(m) = caps.get_match() {
                    let key = caps.get_group_by_name("k").unwrap_or(m.span());
                    out.push(Candidate {
                        rule,
                        start: m.start(),
                        end: m.end(),
                        key_start: key.start,
                        key_end: key.end,
                    });
                }
            }
            pos = at + 1;
        }
    }
}

/// Window bookkeeping for exactly-once matching; `resolved` is the only state to checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Resolver {
    /// Stream offset before which every candidate key has been decided.
    pub resolved: u64,
}

/// The part of a window one scan looks at.
pub(crate) struct View<'a> {
    pub hay: &'a [u8],
    /// Stream offset of `hay[0]`.
    pub offset: u64,
    /// Index in `hay` from which keyword hits (candidate starts) are searched.
    pub from: usize,
    /// Index in `hay` of `resolved`: keys starting before it were decided earlier.
    pub resolved: usize,
    /// Keys starting at or after this index are left for the next window.
    pub limit: usize,
}

impl Resolver {
    /// `lookback`: how far a candidate can start before its key; `settle`: bytes that must follow
    /// a key start for it to be decided (longest match + 1).
    pub fn view<'a>(&self, window: &Window<'a>, overlap: usize, lookback: usize, settle: usize) -> View<'a> {
        let (hay, offset) = window.with_overlap(overlap);
        let resolved = self.resolved.saturating_sub(offset).min(hay.len() as u64) as usize;
        let limit = if window.is_last {
            hay.len()
        } else {
            hay.len().saturating_sub(settle)
        };
        View {
            hay,
            offset,
            from: resolved.saturating_sub(lookback),
            resolved,
            limit,
        }
    }

    /// Keeps the candidates to report, in key order, and advances `resolved`.
    pub fn accept(&mut self, view: &View<'_>, candidates: &mut [Candidate], accepted: &mut Vec<Candidate>) {
        candidates.sort_by_key(|c| (c.key_start, c.rule));
        let mut next = view.resolved;
        for c in candidates.iter() {
            if c.key_start >= view.limit {
                break;
            }
            if c.key_start < next {
                continue;
            }
            accepted.push(*c);
            next = c.key_end.max(c.key_start + 1);
        }
        let settled = next.max(view.limit);
        self.resolved = self.resolved.max(view.offset + settled as u64);
    }
}
