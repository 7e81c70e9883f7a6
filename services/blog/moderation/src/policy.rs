//! The moderation rule, pure: reject content containing any listed word.

use blog_events::CommentStatus;

#[derive(Debug, Clone, PartialEq)]
pub struct WordList(Vec<String>);

impl WordList {
    /// Comma-separated, case-insensitive; empty entries are dropped.
    pub fn parse(list: &str) -> Self {
        WordList(list.split(',').map(|w| w.trim().to_lowercase()).filter(|w| !w.is_empty()).collect())
    }

    /// `MODERATION_WORDS`, default `orange` (the course's rule).
    pub fn from_env() -> Self {
        Self::parse(&std::env::var("MODERATION_WORDS").unwrap_or_else(|_| "orange".into()))
    }

    pub fn words(&self) -> &[String] {
        &self.0
    }

    pub fn decide(&self, content: &str) -> CommentStatus {
        let lower = content.to_lowercase();
        if self.0.iter().any(|w| lower.contains(w.as_str())) {
            CommentStatus::Rejected
        } else {
            CommentStatus::Approved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_listed_words_in_any_case() {
        let w = WordList::parse("orange");
        assert_eq!(w.decide("I like orange"), CommentStatus::Rejected);
        assert_eq!(w.decide("ORANGES!"), CommentStatus::Rejected);
        assert_eq!(w.decide("hello"), CommentStatus::Approved);
    }

    #[test]
    fn the_list_is_configurable() {
        let w = WordList::parse(" spam , ,Eggs");
        assert_eq!(w.words(), ["spam", "eggs"]);
        assert_eq!(w.decide("green eggs"), CommentStatus::Rejected);
        assert_eq!(w.decide("orange"), CommentStatus::Approved);
        assert_eq!(WordList::parse("").decide("anything"), CommentStatus::Approved);
    }
}
