//! `busbar-bench blog --target-url`: the base URLs of a blog the benchmark did not start,
//! any stack that speaks the blog's HTTP contract (DESIGN.md, "The blog"), for example the
//! course's Node.js blog. Only those three services' public routes are used.

use reqwest::Url;
use serde::Serialize;

/// The course's ports, used when --target-url gives a bare host.
const DEFAULT_PORTS: [(&str, u16); 3] = [("posts", 4000), ("comments", 4001), ("query", 4002)];

/// Where an external blog's services answer: each a base URL (`scheme://host:port`, no
/// trailing slash) to which the contract's paths are appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetUrls {
    /// `POST /posts` {title} -> 201 {id,title}.
    pub posts: String,
    /// `POST /posts/:id/comments` {content} -> 201 [..]; `GET /posts/:id/comments`.
    pub comments: String,
    /// `GET /posts` -> {<id>: {id,title,comments:[{id,content,status}]}}.
    pub query: String,
}

/// Parses --target-url: either `posts=URL,comments=URL,query=URL` (each once, any order),
/// or a bare `http://HOST` whose services listen on the course's ports 4000, 4001 and 4002.
pub fn parse(s: &str) -> Result<TargetUrls, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(usage("it is empty"));
    }
    if !s.contains('=') {
        let url = base_url(s, "--target-url")?;
        if has_port(s) {
            return Err(usage(&format!(
                "`{s}` names one port, but the blog has three services; name each, or give the host alone"
            )));
        }
        let at = |port: u16| {
            let mut u = url.clone();
            u.set_port(Some(port)).map_err(|()| usage(&format!("`{s}` cannot take a port")))?;
            Ok::<_, String>(origin(&u))
        };
        return Ok(TargetUrls {
            posts: at(DEFAULT_PORTS[0].1)?,
            comments: at(DEFAULT_PORTS[1].1)?,
            query: at(DEFAULT_PORTS[2].1)?,
        });
    }
    let (mut posts, mut comments, mut query) = (None, None, None);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(usage(&format!("`{part}` is not NAME=URL")));
        };
        let slot = match name.trim() {
            "posts" => &mut posts,
            "comments" => &mut comments,
            "query" => &mut query,
            other => {
                return Err(usage(&format!(
                    "unknown service `{other}`: the benchmark talks to posts, comments and query only"
                )));
            }
        };
        if slot.is_some() {
            return Err(usage(&format!("{} is given twice", name.trim())));
        }
        *slot = Some(origin(&base_url(url.trim(), name.trim())?));
    }
    let missing: Vec<&str> = [("posts", &posts), ("comments", &comments), ("query", &query)]
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| *n)
        .collect();
    match (posts, comments, query) {
        (Some(posts), Some(comments), Some(query)) => Ok(TargetUrls { posts, comments, query }),
        _ => Err(usage(&format!("no URL for {}", missing.join(", ")))),
    }
}

/// A service's base URL: http or https, a host, and nothing after the port.
fn base_url(s: &str, what: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| usage(&format!("{what}: `{s}` is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(usage(&format!("{what}: `{s}` is not http:// or https://")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(usage(&format!("{what}: `{s}` has no host")));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(usage(&format!(
            "{what}: `{s}` has a path, query or fragment; give the service's base URL, the benchmark appends the \
             contract's paths (/posts, /posts/:id/comments)"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(usage(&format!("{what}: `{s}` carries credentials, which the benchmark does not send")));
    }
    Ok(url)
}

/// Whether `url` (already parsed) writes a port, even its scheme's default one.
fn has_port(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host_end = authority.rfind(']').map_or(0, |i| i + 1); // past an IPv6 literal
    authority[host_end..].contains(':')
}

/// `scheme://host[:port]`, without a trailing slash.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn usage(why: &str) -> String {
    format!(
        "{why}. Expected posts=URL,comments=URL,query=URL (for example \
         posts=http://127.0.0.1:4000,comments=http://127.0.0.1:4001,query=http://127.0.0.1:4002), or a bare \
         http://HOST whose services listen on ports 4000, 4001 and 4002"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(posts: &str, comments: &str, query: &str) -> TargetUrls {
        TargetUrls { posts: posts.into(), comments: comments.into(), query: query.into() }
    }

    #[test]
    fn named_services_in_any_order() {
        let want = urls("http://127.0.0.1:4000", "http://127.0.0.1:4001", "http://10.0.0.5:9002");
        assert_eq!(
            parse("posts=http://127.0.0.1:4000,comments=http://127.0.0.1:4001,query=http://10.0.0.5:9002"),
            Ok(want.clone())
        );
        assert_eq!(
            parse(" query=http://10.0.0.5:9002/ , posts=http://127.0.0.1:4000/,comments=http://127.0.0.1:4001 "),
            Ok(want)
        );
    }

    #[test]
    fn a_bare_host_means_the_course_ports() {
        let want = urls("http://localhost:4000", "http://localhost:4001", "http://localhost:4002");
        assert_eq!(parse("http://localhost"), Ok(want.clone()));
        assert_eq!(parse("http://localhost/"), Ok(want));
        assert_eq!(parse("https://blog.example").unwrap().query, "https://blog.example:4002");
        assert_eq!(parse("http://[::1]").unwrap().posts, "http://[::1]:4000");
    }

    #[test]
    fn bad_input_says_what_is_wrong_and_what_is_expected() {
        let cases = [
            ("", "it is empty"),
            ("http://127.0.0.1:4000", "names one port"),
            ("http://127.0.0.1:80", "names one port"),
            ("http://[::1]:4000/", "names one port"),
            ("posts=http://a:1,comments=http://a:2", "no URL for query"),
            ("posts=http://a:1", "no URL for comments, query"),
            ("posts=http://a:1,posts=http://a:2,comments=http://a:3,query=http://a:4", "posts is given twice"),
            (
                "posts=http://a:1,comments=http://a:2,query=http://a:3,moderation=http://a:4",
                "unknown service `moderation`",
            ),
            ("posts=http://a:1,comments,query=http://a:3", "`comments` is not NAME=URL"),
            ("posts=127.0.0.1:4000,comments=http://a:2,query=http://a:3", "posts: `127.0.0.1:4000` is not a URL"),
            ("posts=ftp://a:1,comments=http://a:2,query=http://a:3", "not http:// or https://"),
            ("posts=http://a:1/posts,comments=http://a:2,query=http://a:3", "has a path, query or fragment"),
            ("posts=http://a:1?x=1,comments=http://a:2,query=http://a:3", "has a path, query or fragment"),
            ("posts=http://u:p@a:1,comments=http://a:2,query=http://a:3", "carries credentials"),
            ("posts=http://a:99999,comments=http://a:2,query=http://a:3", "is not a URL"),
            ("localhost", "is not a URL"),
        ];
        for (input, why) in cases {
            let e = parse(input).expect_err(input);
            assert!(e.contains(why), "{input:?}: {e}");
            assert!(e.contains("Expected posts=URL,comments=URL,query=URL"), "{input:?}: {e}");
        }
    }
}
