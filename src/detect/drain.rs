//! Online log template mining in the style of Drain (He et al., ICWS 2017).
//!
//! A message is split into tokens; tokens that carry numbers, hex ids or paths
//! are masked to `<*>`. Messages are grouped by service, token count and first
//! token; in a group the closest template (share of equal tokens) takes the
//! message if the share reaches `similarity`, and the positions where they
//! differ become `<*>`; otherwise the message starts a new template. Memory is
//! bounded: at most `max_templates` templates; messages beyond that count as the
//! overflow template of their service.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Tokens compared at most (longer messages are cut for matching).
const MAX_TOKENS: usize = 64;
const WILDCARD: &str = "<*>";

/// A template: its id, service and text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub id: u32,
    pub service: String,
    pub tokens: Vec<String>,
    /// Messages matched so far.
    pub count: u64,
}

impl Template {
    pub fn text(&self) -> String {
        self.tokens.join(" ")
    }
}

/// The miner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drain {
    similarity: f64,
    max_templates: usize,
    templates: Vec<Template>,
    /// Hash of (service, token count, first token) -> template indices; rebuilt
    /// from the templates after a restore.
    #[serde(skip)]
    groups: HashMap<u64, Vec<u32>>,
    /// Messages that found no room.
    pub overflow: u64,
    /// Recent messages, exactly as they came (a hash of service and text), and
    /// the template each went to: most log lines repeat word for word, and one
    /// lookup replaces splitting, masking and comparing them again. Bounded by
    /// [`RECENT_MESSAGES`] (cleared when full); rebuilt as messages come.
    #[serde(skip)]
    recent: HashMap<u64, u32, foldhash::fast::RandomState>,
}

/// Exact messages remembered at most (about 200 KiB).
const RECENT_MESSAGES: usize = 8192;

/// Where a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// The template id (`u32::MAX` for overflow).
    pub id: u32,
    /// Whether this message created the template.
    pub new: bool,
}

impl Drain {
    pub fn new(similarity: f64, max_templates: usize) -> Self {
        Self {
            similarity,
            max_templates,
            templates: Vec::new(),
            groups: HashMap::new(),
            overflow: 0,
            recent: HashMap::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    pub fn template(&self, id: u32) -> Option<&Template> {
        self.templates.get(id as usize)
    }

    /// Assigns `message` of `service` to a template. A message seen before
    /// word for word goes where it went then: to the template that took it,
    /// which matches it fully still (a template only ever gains wildcards).
    pub fn add(&mut self, service: &str, message: &str) -> Match {
        let key = message_key(service, message);
        if let Some(&id) = self.recent.get(&key)
            && let Some(t) = self.templates.get_mut(id as usize)
        {
            t.count += 1;
            return Match { id, new: false };
        }
        let m = self.mine(service, message);
        if m.id != u32::MAX {
            if self.recent.len() >= RECENT_MESSAGES {
                self.recent.clear();
            }
            self.recent.insert(key, m.id);
        }
        m
    }

    /// [`Drain::add`] without the memory of recent messages.
    fn mine(&mut self, service: &str, message: &str) -> Match {
        let mut tokens: [&str; MAX_TOKENS] = [""; MAX_TOKENS];
        let mut len = 0;
        for token in message.split_whitespace().take(MAX_TOKENS) {
            tokens[len] = mask(token);
            len += 1;
        }
        let tokens = &tokens[..len];
        if self.groups.is_empty() && !self.templates.is_empty() {
            self.regroup();
        }
        let group = group_key(service, tokens);
        let candidates = self.groups.get(&group).map(Vec::as_slice).unwrap_or(&[]);
        let mut best: Option<(u32, f64)> = None;
        for &id in candidates {
            let Some(t) = self.templates.get(id as usize) else {
                continue;
            };
            if t.service != service
                || t.tokens.len() != len
                || t.tokens.first().map(String::as_str) != tokens.first().copied()
            {
                continue;
            }
            let same = t
                .tokens
                .iter()
                .zip(tokens)
                .filter(|(a, b)| a == b || a.as_str() == WILDCARD)
                .count();
            let share = same as f64 / len.max(1) as f64;
            if share >= self.similarity && best.is_none_or(|(_, s)| share > s) {
                best = Some((id, share));
            }
        }
        if let Some((id, _)) = best {
            if let Some(t) = self.templates.get_mut(id as usize) {
                for (slot, token) in t.tokens.iter_mut().zip(tokens) {
                    if slot != token {
                        *slot = WILDCARD.to_string();
                    }
                }
                t.count += 1;
            }
            return Match { id, new: false };
        }
        if self.templates.len() >= self.max_templates {
            self.overflow += 1;
            return Match {
                id: u32::MAX,
                new: false,
            };
        }
        let id = self.templates.len() as u32;
        self.templates.push(Template {
            id,
            service: service.to_string(),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            count: 1,
        });
        self.groups.entry(group).or_default().push(id);
        Match { id, new: true }
    }

    /// Rebuilds the group index from the templates (after a restore).
    fn regroup(&mut self) {
        for t in &self.templates {
            let tokens: Vec<&str> = t.tokens.iter().map(String::as_str).collect();
            self.groups
                .entry(group_key(&t.service, &tokens))
                .or_default()
                .push(t.id);
        }
    }
}

/// The identity of a message, word for word, in [`Drain::recent`].
fn message_key(service: &str, message: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x006d_6573_7361_6765).hash_one((service, message))
}

/// The group of a message: its service, token count and first token.
fn group_key(service: &str, tokens: &[&str]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x6472_6169_6e21).hash_one((
        service,
        tokens.len(),
        tokens.first().copied().unwrap_or(""),
    ))
}

/// Masks a token that is, or carries, a variable: digits, long hex, paths, quotes.
fn mask(token: &str) -> &str {
    let has_digit = token.chars().any(|c| c.is_ascii_digit());
    let hexish = token.len() >= 8 && token.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    let path = token.contains('/') && token.len() > 1;
    if has_digit || hexish || path {
        WILDCARD
    } else {
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_collapse_into_one_template() {
        let mut d = Drain::new(0.5, 100);
        let a = d.add("api", "connection to 10.0.0.1:5432 failed after 3 retries");
        let b = d.add("api", "connection to 10.0.0.7:5432 failed after 5 retries");
        let c = d.add("api", "user alice logged in");
        let e = d.add("api", "user bob logged in");
        assert!(a.new && !b.new && c.new && !e.new);
        assert_eq!(a.id, b.id);
        assert_eq!(c.id, e.id);
        assert_eq!(
            d.template(c.id).map(Template::text).as_deref(),
            Some("user <*> logged in")
        );
        assert_eq!(
            d.template(a.id).map(Template::text).as_deref(),
            Some("connection to <*> failed after <*> retries")
        );
        // Same text from another service is its own template.
        assert!(d.add("web", "user carol logged in").new);
    }

    #[test]
    fn a_message_repeated_word_for_word_goes_where_it_went_and_is_counted() {
        let mut d = Drain::new(0.5, 100);
        let first = d.add("api", "user alice logged in");
        // The template generalises after the first message was remembered.
        let other = d.add("api", "user bob logged in");
        let again = d.add("api", "user alice logged in");
        assert_eq!((other.id, again.id, again.new), (first.id, first.id, false));
        assert_eq!(d.template(first.id).map(|t| t.count), Some(3));
        // The same words from another service are not the remembered message.
        assert!(d.add("web", "user alice logged in").new);
        // The memory is bounded; what it forgot is mined again, to the same place.
        for i in 0..RECENT_MESSAGES + 10 {
            d.add("api", &format!("job j{i}x done"));
        }
        assert!(d.recent.len() <= RECENT_MESSAGES);
        assert_eq!(d.add("api", "user alice logged in").id, first.id);
    }

    #[test]
    fn the_number_of_templates_is_bounded() {
        let mut d = Drain::new(0.9, 3);
        for word in ["alpha", "beta", "gamma", "delta", "epsilon"] {
            d.add("s", &format!("{word} happened"));
        }
        assert_eq!(d.len(), 3);
        assert_eq!(d.overflow, 2);
    }

    #[test]
    fn a_restored_miner_matches_the_templates_it_had() {
        let mut d = Drain::new(0.5, 100);
        let first = d.add("api", "payment 41 declined by issuer");
        let json = serde_json::to_string(&d).expect("serialize");
        let mut restored: Drain = serde_json::from_str(&json).expect("deserialize");
        let again = restored.add("api", "payment 42 declined by issuer");
        assert_eq!((again.id, again.new), (first.id, false));
        assert!(restored.add("web", "payment 43 declined by issuer").new);
    }
}
