//! `/status`: a page anyone who can reach the webhook may read, refreshing itself: each queue's
//! depth and consumers as the broker said at most a few seconds ago, and the last deliveries
//! (event, repository, outcome, when). It shows nothing a delivery's sender could not see
//! already, and no secret; everything shown is escaped.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::publisher::Depths;

/// How many deliveries the page lists.
pub const SHOWN: usize = 20;
/// How often the page reloads itself, in seconds.
const REFRESH_SECONDS: u32 = 5;

/// A handled delivery, as the page shows it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: SystemTime,
    /// The event's label, as the metrics count it (never the raw header).
    pub event: &'static str,
    /// From a signed body only.
    pub repository: Option<String>,
    pub outcome: &'static str,
}

/// The last [`SHOWN`] deliveries, newest first.
#[derive(Default)]
pub struct Deliveries {
    seen: Mutex<VecDeque<Seen>>,
}

impl Deliveries {
    pub fn record(&self, seen: Seen) {
        let mut list = self.seen.lock().expect("no panics while held");
        list.push_front(seen);
        list.truncate(SHOWN);
    }

    pub fn list(&self) -> Vec<Seen> {
        self.seen.lock().expect("no panics while held").iter().cloned().collect()
    }
}

fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(text)
}

/// The page, at `now`, for the broker's answer (or why there is none) and the deliveries.
/// With `prometheus`, the page links to it: its alerts and its targets.
pub fn render(
    depths: Result<&Depths, String>,
    deliveries: &[Seen],
    now: SystemTime,
    prometheus: Option<&str>,
) -> String {
    let mut page = format!(
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content={REFRESH_SECONDS}>\
         <title>Workbench status</title><style>body{{font-family:sans-serif;margin:2em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}\
         td.n{{text-align:right}}</style></head><body>\n<h1>Workbench status</h1>\n<h2>Queues</h2>\n"
    );
    match depths {
        Ok(depths) => {
            page.push_str("<table id=queues><tr><th>queue</th><th>messages ready</th><th>consumers</th></tr>\n");
            for (queue, state) in depths {
                let (messages, consumers) = match state {
                    Some(state) => (state.messages.to_string(), state.consumers.to_string()),
                    None => ("does not exist".to_owned(), String::new()),
                };
                page.push_str(&format!(
                    "<tr><td>{}</td><td class=n>{messages}</td><td class=n>{consumers}</td></tr>\n",
                    escape(queue)
                ));
            }
            page.push_str("</table>\n");
        }
        Err(why) => page.push_str(&format!("<p id=queues>The broker cannot be asked: {}</p>\n", escape(&why))),
    }
    page.push_str("<h2>Last deliveries</h2>\n");
    if deliveries.is_empty() {
        page.push_str("<p id=deliveries>None yet.</p>\n");
    } else {
        page.push_str("<table id=deliveries><tr><th>when</th><th>event</th><th>repository</th><th>outcome</th></tr>\n");
        for seen in deliveries {
            let ago = now.duration_since(seen.at).map_or(0, |ago| ago.as_secs());
            let repository = seen.repository.as_deref().unwrap_or("-");
            page.push_str(&format!(
                "<tr><td>{ago} s ago</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(seen.event),
                escape(repository),
                escape(seen.outcome)
            ));
        }
        page.push_str("</table>\n");
    }
    if let Some(url) = prometheus {
        let url = escape(url.trim_end_matches('/'));
        page.push_str(&format!(
            "<p id=prometheus>Prometheus: <a href=\"{url}/\">{url}</a> &#183; <a href=\"{url}/alerts\">alerts</a> &#183; \
             <a href=\"{url}/targets\">targets</a></p>\n"
        ));
    }
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_page_lists_queues_and_deliveries_newest_first_escaped() {
        let deliveries = Deliveries::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for n in 0..SHOWN + 3 {
            let at = start + Duration::from_secs(n as u64);
            deliveries.record(Seen { at, event: "status", repository: None, outcome: "ignored" });
        }
        let repository = Some("owner/<script>alert(1)</script>".to_owned());
        let at = start + Duration::from_secs(100);
        deliveries.record(Seen { at, event: "pull_request", repository, outcome: "published" });
        let listed = deliveries.list();
        assert_eq!(listed.len(), SHOWN);
        let depths: Depths = vec![
            ("webhook", Some(amqp::QueueState { messages: 0, consumers: 1 })),
            ("public", Some(amqp::QueueState { messages: 12, consumers: 0 })),
            ("workbench.dead-letter", None),
        ];
        let page = render(Ok(&depths), &listed, start + Duration::from_secs(130), None);
        assert!(!page.contains("Prometheus"), "no Prometheus, no link: {page}");
        let linked = render(Ok(&depths), &listed, start, Some("http://127.0.0.1:9090/"));
        assert!(linked.contains("<a href=\"http://127.0.0.1:9090/alerts\">alerts</a>"), "{linked}");
        assert!(page.contains("<meta http-equiv=refresh content=5>"), "{page}");
        assert!(page.contains("<tr><td>public</td><td class=n>12</td><td class=n>0</td></tr>"), "{page}");
        assert!(page.contains("<tr><td>workbench.dead-letter</td><td class=n>does not exist</td>"), "{page}");
        let first = page.find("<tr><td>30 s ago</td><td>pull_request</td>").expect("the newest first");
        assert!(first < page.find("<td>status</td>").unwrap(), "{page}");
        assert!(page.contains("<td>owner/&lt;script&gt;alert(1)&lt;/script&gt;</td>"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
        let down = render(Err("not connected to the broker".into()), &[], start, None);
        assert!(down.contains("The broker cannot be asked: not connected to the broker"), "{down}");
        assert!(down.contains("<p id=deliveries>None yet.</p>"), "{down}");
    }
}
