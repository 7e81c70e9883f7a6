//! The names a ServiceBus has on JetStream: one stream per bus, one subject per event type,
//! one durable consumer and one dead-letter subject per subscribing service. The SDK, the
//! operator, `busbar dlq` and the NATS permissions all derive them here.

/// The bus's event stream, e.g. `BUSBAR_BLOG`.
pub fn stream_name(bus: &str) -> String {
    format!("BUSBAR_{}", token(bus).to_uppercase())
}

/// The bus's dead-letter stream, e.g. `BUSBAR_BLOG_DLQ`.
pub fn dead_letter_stream_name(bus: &str) -> String {
    format!("{}_DLQ", stream_name(bus))
}

/// The bus's key-value bucket of parked figures, e.g. `BUSBAR_BLOG_PARKED`: one key per
/// durable (see [`durable`]), where each subscriber reports what it holds parked. JetStream
/// stores it as stream `KV_BUSBAR_BLOG_PARKED`, subjects `$KV.BUSBAR_BLOG_PARKED.<key>`.
pub fn parked_bucket(bus: &str) -> String {
    format!("{}_PARKED", stream_name(bus))
}

/// The subject events of `event_type` are published on, e.g. `busbar.blog.PostCreated`.
pub fn subject(bus: &str, event_type: &str) -> String {
    format!("busbar.{}.{event_type}", token(bus))
}

/// Every event subject of the bus.
pub fn all_subjects(bus: &str) -> String {
    format!("busbar.{}.>", token(bus))
}

/// Where `durable`'s dead letters go, e.g. `busbar-dlq.blog.query`.
pub fn dead_letter_subject(bus: &str, durable: &str) -> String {
    format!("busbar-dlq.{}.{}", token(bus), token(durable))
}

/// Every dead-letter subject of the bus.
pub fn all_dead_letter_subjects(bus: &str) -> String {
    format!("busbar-dlq.{}.>", token(bus))
}

/// The durable consumer name of a subscribing service.
pub fn durable(service: &str) -> String {
    token(service)
}

/// The inbox prefix a service's NATS connection uses, so that only it reads its replies.
pub fn inbox_prefix(service: &str) -> String {
    format!("_INBOX_{service}")
}

/// Stream names and subject tokens allow no `.`, `*`, `>` or spaces.
pub fn token(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_nats_tokens() {
        assert_eq!(stream_name("blog"), "BUSBAR_BLOG");
        assert_eq!(stream_name("my.bus"), "BUSBAR_MY_BUS");
        assert_eq!(subject("blog", "PostCreated"), "busbar.blog.PostCreated");
        assert_eq!(dead_letter_stream_name("blog"), "BUSBAR_BLOG_DLQ");
        assert_eq!(dead_letter_subject("blog", "query"), "busbar-dlq.blog.query");
        assert_eq!(all_subjects("a b"), "busbar.a_b.>");
        assert_eq!(parked_bucket("blog"), "BUSBAR_BLOG_PARKED");
    }
}
