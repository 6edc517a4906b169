//! Finding personal data in text and putting placeholders in its place, whole or as a stream.
//!
//! Each detector is a regular expression, with a check of what it matched for the kinds that
//! have one (Luhn for card numbers, mod 97 for IBANs, the SSA's rules for SSNs). Matches are
//! taken leftmost first; of matches starting at the same place the longest wins, then the
//! detector listed first.
//!
//! A stream cannot be searched the way a whole text is: a value may arrive split over deltas.
//! For each detector a lazy DFA ([`regex_automata::hybrid`]) tells, from a start position,
//! whether what follows could still grow into a match ("live") or not ("dead"). Text before
//! the earliest live start is final: every match starting there is complete, so it is redacted
//! and sent. Only the text from the earliest live start on is held back, which is exactly the
//! text a match can still need; a stream filter therefore sends the same text, in pieces, as
//! the whole-text filter would, and never half of a value.

use std::sync::Arc;

use regex::Regex;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson::NFA;
use regex_automata::{Anchored, Input};
use regex_syntax::hir::{Capture, Hir, HirKind, Look, Repetition};

use crate::ai::{AnswerFilter, AnswerStreamFilter};

/// What a detector's match must also pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Nothing: the pattern says it all.
    None,
    /// 13 to 19 digits passing the Luhn check.
    Luhn,
    /// An IBAN: its country's letters, check digits passing ISO 7064 mod 97-10, at most 34
    /// characters.
    Iban,
    /// A US Social Security number the SSA could issue (no 000, 666 or 9xx area, no 00 group,
    /// no 0000 serial).
    Ssn,
    /// A phone number: 7 to 15 digits with a `+` or an area code in brackets, 9 to 15 without.
    Phone,
}

/// One kind of personal data.
pub(crate) struct Detector {
    /// Its name in configuration and refusals (`email`).
    pub(crate) name: String,
    /// What replaces a match (`<EMAIL>`, or the configured mask).
    pub(crate) replacement: String,
    regex: Regex,
    dfa: DFA,
    check: Check,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Detector").field("name", &self.name).field("pattern", &self.regex.as_str()).finish()
    }
}

impl Detector {
    /// A detector of `pattern`; the error says why the pattern does not compile.
    pub(crate) fn new(name: &str, replacement: String, pattern: &str, check: Check) -> Result<Self, String> {
        let regex = Regex::new(pattern).map_err(|err| err.to_string())?;
        let parsed = regex_syntax::ParserBuilder::new().build().parse(pattern).map_err(|err| err.to_string())?;
        let nfa =
            NFA::compiler().build_from_hir(&without_unicode_word_boundaries(&parsed)).map_err(|err| err.to_string())?;
        let dfa = DFA::builder().build_from_nfa(nfa).map_err(|err| err.to_string())?;
        Ok(Self { name: name.to_owned(), replacement, regex, dfa, check })
    }

    /// The leftmost match at or after `from` that passes the check, as a byte range.
    fn find(&self, text: &str, mut from: usize) -> Option<(usize, usize)> {
        while from <= text.len() {
            let found = self.regex.find_at(text, from)?;
            if let Some(length) = accepted(self.check, found.as_str()).filter(|&length| length > 0) {
                return Some((found.start(), found.start() + length));
            }
            from = if self.check == Check::Phone {
                // A run of digits too long for a phone number is some other number as a whole.
                found.end().max(found.start() + 1)
            } else {
                // A card number or IBAN may begin inside a refused match (`12 4111 1111 ...`).
                found.start() + text[found.start()..].chars().next().map_or(1, char::len_utf8)
            };
        }
        None
    }

    /// Whether text from `start` to the end of `text` could still grow into a match of this
    /// detector with more text after it.
    fn is_live(&self, cache: &mut Cache, text: &str, start: usize) -> bool {
        let input = Input::new(text).range(start..).anchored(Anchored::Yes);
        let Ok(mut state) = self.dfa.start_state_forward(cache, &input) else { return true };
        for &byte in &text.as_bytes()[start..] {
            match self.dfa.next_state(cache, state, byte) {
                Ok(next) if next.is_dead() => return false,
                Ok(next) => state = next,
                Err(_) => return true,
            }
        }
        !state.is_dead()
    }
}

/// `hir` without its Unicode word boundaries (`\b`, `\B` and their start and end forms),
/// which a lazy DFA follows only by giving up on any non-ASCII byte near one. Without them the
/// pattern matches more, never less, so the DFA still never calls a start dead that a match
/// could begin at: the stream filter's question stays answered safely, on any text, and the
/// boundaries are still checked by the `regex` that finds the matches.
fn without_unicode_word_boundaries(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Look(
            Look::WordUnicode
            | Look::WordUnicodeNegate
            | Look::WordStartUnicode
            | Look::WordEndUnicode
            | Look::WordStartHalfUnicode
            | Look::WordEndHalfUnicode,
        ) => Hir::empty(),
        HirKind::Repetition(repetition) => Hir::repetition(Repetition {
            sub: Box::new(without_unicode_word_boundaries(&repetition.sub)),
            ..repetition.clone()
        }),
        HirKind::Capture(capture) => {
            Hir::capture(Capture { sub: Box::new(without_unicode_word_boundaries(&capture.sub)), ..capture.clone() })
        }
        HirKind::Concat(subs) => Hir::concat(subs.iter().map(without_unicode_word_boundaries).collect()),
        HirKind::Alternation(subs) => Hir::alternation(subs.iter().map(without_unicode_word_boundaries).collect()),
        _ => hir.clone(),
    }
}

/// How much of a match is personal data, after its kind's check; `None` when none is.
/// Candidates with separators (`4111 1111 1111 1111 and 2024`) are tried from the longest down
/// to each shorter run of whole groups, so a following number or word does not hide a value.
fn accepted(check: Check, matched: &str) -> Option<usize> {
    let valid = |candidate: &str| match check {
        Check::None => true,
        Check::Luhn => luhn(candidate),
        Check::Iban => iban(candidate),
        Check::Ssn => ssn(candidate),
        Check::Phone => phone(candidate),
    };
    // A phone number is taken whole: its shorter runs of groups are mostly other numbers
    // (the first 12 digits of a card number that failed its check).
    if matches!(check, Check::None | Check::Phone) {
        return valid(matched).then_some(matched.len());
    }
    let ends = matched
        .char_indices()
        .filter(|&(at, _)| matched[at..].starts_with([' ', '-', '.']))
        .map(|(at, _)| at)
        .chain(std::iter::once(matched.len()));
    let mut ends: Vec<usize> = ends.collect();
    ends.dedup();
    ends.into_iter().rev().find(|&end| end > 0 && valid(&matched[..end]))
}

fn digits(text: &str) -> Vec<u32> {
    text.chars().filter_map(|c| c.to_digit(10)).collect()
}

fn luhn(text: &str) -> bool {
    let digits = digits(text);
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, &digit)| {
            if index % 2 == 1 {
                if digit * 2 > 9 {
                    digit * 2 - 9
                } else {
                    digit * 2
                }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn iban(text: &str) -> bool {
    let compact: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder: u32 = 0;
    for c in rearranged {
        let Some(value) = c.to_digit(36) else { return false };
        remainder = if value < 10 { (remainder * 10 + value) % 97 } else { (remainder * 100 + value) % 97 };
    }
    remainder == 1
}

fn ssn(text: &str) -> bool {
    let mut parts = text.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else { return false };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

fn phone(text: &str) -> bool {
    // `123-45-6789` is the shape of an SSN: an unissued one is no phone number either.
    let groups: Vec<usize> = text.split('-').map(str::len).collect();
    if groups == [3, 2, 4] {
        return false;
    }
    let count = digits(text).len();
    let marked = text.starts_with('+') || text.starts_with('(');
    (if marked { 7..=15 } else { 9..=15 }).contains(&count)
}

/// The built-in detectors' patterns. Word boundaries are ASCII ones (`(?-u:\b)`): digits and
/// Latin letters are what these values are made of, and the lazy DFA follows these exactly.
pub(crate) const EMAIL: &str = r"[A-Za-z0-9_%+-][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?-u:\b)";
pub(crate) const CREDIT_CARD: &str = r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)";
pub(crate) const IBAN: &str = r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)";
pub(crate) const US_SSN: &str = r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)";
pub(crate) const IPV4: &str = r"(?-u:\b)(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?-u:\b)";
pub(crate) const PHONE: &str = r"(?:\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?|\([0-9]{1,4}\)[ .-]?|(?-u:\b))[0-9]{2,4}(?:[ .-]?[0-9]{2,4}){1,4}(?-u:\b)";

/// Longest text a stream filter holds back: past it the held text is redacted as if the
/// stream ended there. Only a custom pattern without an upper bound (`\w+@corp`) can hold
/// this much.
const MAX_HELD_BYTES: usize = 64 * 1024;

/// A match: its byte range and detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    start: usize,
    end: usize,
    detector: usize,
}

/// Every detector of a policy.
#[derive(Debug)]
pub(crate) struct Redactor {
    pub(crate) detectors: Vec<Detector>,
}

impl Redactor {
    /// The first match at or after `from`, over every detector. `next` caches each detector's
    /// next match, still valid while it starts at or after `from`.
    fn next(&self, text: &str, from: usize, next: &mut [Option<Option<(usize, usize)>>]) -> Option<Found> {
        let mut best: Option<Found> = None;
        for (index, (detector, cached)) in self.detectors.iter().zip(next.iter_mut()).enumerate() {
            let found = match *cached {
                Some(Some((start, end))) if start >= from => Some((start, end)),
                Some(None) => None,
                _ => {
                    let found = detector.find(text, from);
                    *cached = Some(found);
                    found
                }
            };
            let Some((start, end)) = found else { continue };
            if best.is_none_or(|best| start < best.start || (start == best.start && end > best.end)) {
                best = Some(Found { start, end, detector: index });
            }
        }
        best
    }

    /// The names of the detectors whose matches redaction would replace in `text`, each once,
    /// in the order found.
    pub(crate) fn kinds_in(&self, text: &str) -> Vec<&str> {
        let mut kinds: Vec<&str> = Vec::new();
        let mut cache = vec![None; self.detectors.len()];
        let mut at = 0;
        while let Some(found) = self.next(text, at, &mut cache) {
            let name = self.detectors[found.detector].name.as_str();
            if !kinds.contains(&name) {
                kinds.push(name);
            }
            at = found.end;
        }
        kinds
    }

    /// `text` with every match replaced; `None` when there is none.
    pub(crate) fn redact(&self, text: &str) -> Option<String> {
        let mut out = String::with_capacity(text.len());
        let mut cache = vec![None; self.detectors.len()];
        let mut at = 0;
        while let Some(found) = self.next(text, at, &mut cache) {
            out.push_str(&text[at..found.start]);
            out.push_str(&self.detectors[found.detector].replacement);
            at = found.end;
        }
        if at == 0 {
            return None;
        }
        out.push_str(&text[at..]);
        Some(out)
    }

    /// The earliest start at or after `from` from which some detector could still match with
    /// more text; `text.len()` when there is none.
    fn earliest_live_start(&self, caches: &mut [Cache], text: &str, from: usize) -> usize {
        text[from..]
            .char_indices()
            .map(|(offset, _)| from + offset)
            .find(|&start| {
                self.detectors
                    .iter()
                    .zip(caches.iter_mut())
                    .any(|(detector, cache)| detector.is_live(cache, text, start))
            })
            .unwrap_or(text.len())
    }
}

/// The answer filter of `ai_pii_redaction`.
#[derive(Debug)]
pub(crate) struct PiiAnswerFilter(pub(crate) Arc<Redactor>);

impl AnswerFilter for PiiAnswerFilter {
    fn filter(&self, text: &str) -> String {
        self.0.redact(text).unwrap_or_else(|| text.to_owned())
    }

    fn stream(&self) -> Box<dyn AnswerStreamFilter> {
        let caches = self.0.detectors.iter().map(|detector| detector.dfa.create_cache()).collect();
        Box::new(PiiStream { redactor: self.0.clone(), caches, held: String::new(), sent: 0 })
    }
}

/// One streamed choice: `held[..sent]` is the end of what was already sent, kept as the
/// context of `\b` and `^`; `held[sent..]` is the text held back.
struct PiiStream {
    redactor: Arc<Redactor>,
    caches: Vec<Cache>,
    held: String,
    sent: usize,
}

impl PiiStream {
    /// Sends what is final, keeps the rest.
    fn release(&mut self, at_end: bool) -> String {
        let mut out = String::new();
        let mut next = vec![None; self.redactor.detectors.len()];
        let mut at = self.sent;
        let force = at_end || self.held.len() - self.sent > MAX_HELD_BYTES;
        loop {
            let live = if force {
                self.held.len()
            } else {
                self.redactor.earliest_live_start(&mut self.caches, &self.held, at)
            };
            match self.redactor.next(&self.held, at, &mut next) {
                Some(found) if found.start < live => {
                    out.push_str(&self.held[at..found.start]);
                    out.push_str(&self.redactor.detectors[found.detector].replacement);
                    at = found.end;
                }
                _ => {
                    out.push_str(&self.held[at..live]);
                    at = live;
                    break;
                }
            }
        }
        // Keep the last character sent as the context of what follows.
        let keep_from = self.held[..at].char_indices().next_back().map_or(at, |(start, _)| start);
        self.held.drain(..keep_from);
        self.sent = at - keep_from;
        out
    }
}

impl AnswerStreamFilter for PiiStream {
    fn push(&mut self, delta: &str) -> String {
        self.held.push_str(delta);
        self.release(false)
    }

    fn finish(&mut self) -> String {
        self.release(true)
    }
}
